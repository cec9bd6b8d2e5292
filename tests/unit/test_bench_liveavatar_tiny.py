"""avatar bench liveavatar on the tiny models (CPU): the JSON carries every timed block beside the medians."""

from __future__ import annotations

import json
import statistics

import pytest

pytest.importorskip("diffusers")


def test_every_timed_block_is_kept_in_order_beside_the_median(tmp_path) -> None:
    from bench import liveavatar

    out = tmp_path / "liveavatar.json"
    code = liveavatar.main(["--tiny", "--blocks", "3", "--warmup", "1", "--no-profile", "--modes", "eager", "--output", str(out)])
    assert code == 0
    (size, r), = json.loads(out.read_text())["results"]["eager"].items()
    assert r["timed_blocks"] == 3 and len(r["blocks_ms"]) == 3 and len(r["dit_blocks_ms"]) == 3
    assert r["block_ms_median"] == pytest.approx(statistics.median(r["blocks_ms"]), abs=0.1)
    assert r["block_ms_min"] == pytest.approx(min(r["blocks_ms"]), abs=0.1)
    assert all(0 < dit < block for dit, block in zip(r["dit_blocks_ms"], r["blocks_ms"], strict=True))
