"""Do the installed distributions' requirements hold? ``bench/device_e2e.sh start-seq`` asks before
it starts anything on the GPU machine, where the wheels are installed with ``--no-deps``: there a
cryptography release that pyOpenSSL refuses makes aiortc's DTLS handshake fail without an error,
and a run then waits for video that never comes.

    python3 bench/wheel_check.py aiortc aioice pyOpenSSL av     exit 1 with what does not fit
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement


def unmet(dists: Iterable[str], *, requires_of: Callable[[str], list[str] | None] = requires,
          version_of: Callable[[str], str] = version) -> list[str]:
    """One line per requirement of ``dists`` (their non-extra ones) that the installed versions miss."""
    problems = []
    for dist in dists:
        try:
            reqs = requires_of(dist) or []
        except PackageNotFoundError:
            problems.append(f"{dist}: not installed")
            continue
        for req in map(Requirement, reqs):
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                found = version_of(req.name)
            except PackageNotFoundError:
                problems.append(f"{dist} needs {req}: not installed")
                continue
            if not req.specifier.contains(found, prereleases=True):
                problems.append(f"{dist} needs {req}, found {found}")
    return problems


def main(argv: list[str]) -> int:
    problems = unmet(argv or ["aiortc", "aioice", "pyOpenSSL", "av"])
    if problems:
        print("the installed wheels do not fit together:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
