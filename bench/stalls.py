"""The peer's stalls, each lined up with the pauses of the two processes (live_avatar/server/pause_watch.py).

A stall is a gap between two frames' arrivals at the peer over ``over_s``. The server and the peer run
on one machine and share ``time.monotonic()``, so a pause of either process (its event loop late, or a
garbage collection) that overlaps the gap is a candidate cause, and so is a gap in the server's handing
of frames to its sender (``send``: the sender asks for a frame only once the last is encoded). A gap is
put down to the event whose overlap is longest, if it covers at least half of what the gap has beyond
one frame interval; otherwise it is "unexplained" (a cause no probe sees: the network stack, the peer's
receive path, generation itself). Every overlapping event is listed with the stall.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

FRAME_S = 0.04
SLACK_S = 0.02  # the frame in flight (encode, loopback, decode) when a pause begins or ends


def _overlap(a: float, b: float, start: float, end: float) -> float:
    return max(0.0, min(b, end + SLACK_S) - max(a, start - SLACK_S))


def attribute_stalls(arrivals: Iterable[float], pauses: dict[str, list[list]], *, over_s: float = 0.12,
                     t0: float | None = None, listed: int = 30) -> dict[str, Any]:
    """``arrivals``: monotonic arrival times; ``pauses``: side ("server", "peer") -> events as
    [monotonic start s, ms, kind] (PauseWatch.summary). Returns the stalls (``at_s`` from ``t0``, default
    the first arrival), each with its cause, and the count per cause."""
    times = np.sort(np.asarray(list(arrivals), dtype=float))
    if times.size < 2:
        return {"over_ms": over_s * 1000.0, "stalls": [], "causes": {}}
    t0 = float(times[0]) if t0 is None else t0
    gaps = np.diff(times)
    causes: dict[str, int] = {}
    stalls = []
    for i in np.flatnonzero(gaps > over_s):
        a, b = float(times[i]), float(times[i + 1])
        best, best_s = "unexplained", 0.0
        found = {}
        for side, events in pauses.items():
            for start, ms, kind in events or []:
                covered = _overlap(a, b, start, start + ms / 1000.0)
                if covered > 0:
                    found[f"{side}_{kind}"] = max(found.get(f"{side}_{kind}", 0.0), round(ms, 1))
                    if covered > best_s:
                        best, best_s = f"{side}_{'gc' if kind.startswith('gc') else kind}", covered
        if best_s < 0.5 * (b - a - FRAME_S):
            best = "unexplained"
        causes[best] = causes.get(best, 0) + 1
        stalls.append({"at_s": round(a - t0, 3), "ms": round((b - a) * 1000.0, 1), "cause": best, "pauses_ms": found})
    stalls.sort(key=lambda s: -s["ms"])
    return {"over_ms": over_s * 1000.0, "stalls": sorted(stalls[:listed], key=lambda s: s["at_s"]), "causes": causes}
