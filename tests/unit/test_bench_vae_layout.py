"""bench/vae_layout.py: the channels-last decoder gives the same pixels and the JSON says what it timed."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")


def test_both_layouts_decode_the_same_pixels_on_the_tiny_vae(tmp_path) -> None:
    from bench import vae_layout

    out = tmp_path / "vae_layout.json"
    assert vae_layout.main(["--tiny", "--size", "256*128", "--blocks", "1", "--warmup", "1", "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["vae"] == "tiny random"
    assert set(data["results"]) == {"eager/contiguous", "eager/channels_last_3d"}
    for r in data["results"].values():
        assert r["blocks_timed"] == 1 and r["block_ms_median"] > 0 and r["graphs_compiled_while_timed"] == 0
        # float32 on a CPU: the same pixels, so the same uint8 frames (a rounding boundary at most one level)
        assert r["max_abs_diff_vs_first"] <= 1


def test_bad_counts_are_refused(capsys) -> None:
    from bench import vae_layout

    with pytest.raises(SystemExit) as exc:
        vae_layout.main(["--tiny", "--blocks", "0"])
    assert exc.value.code == 2 and "--blocks" in capsys.readouterr().err
