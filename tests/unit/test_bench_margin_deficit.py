"""bench/analysis_margin_deficit.py: its two variants really differ where they should (the held variant
makes no later move while the generator is behind), so its comparison measures what it says."""

from __future__ import annotations

import asyncio

import pytest

deficit = pytest.importorskip("bench.analysis_margin_deficit")


def test_the_held_variant_makes_no_later_move_while_behind_and_both_report_their_latency():
    program = deficit.speech_program(12.0, seed=0)
    held = asyncio.run(deficit.one_run(program, over=1.12, recover_at=None, hold=True, seed=0))
    assert held["variant"] == "hold later moves while behind"
    assert held["later_moves_held"] > 0 and held["grid_moved_ms"] <= 0, held
    assert held["compute_margin_pct_at_end"] < 0
    assert held["speech_to_lips_ms"]["each"] and held["speech_to_lips_ms"]["p50"] > 0
