"""latency_budget.first_frame_stages: the first frame's time, stage by stage, from the first audio."""

from __future__ import annotations

import pytest

from live_avatar.core.contract import BlockTimings
from live_avatar.server.latency_budget import first_frame_stages


def test_stages_follow_each_other_and_add_up() -> None:
    timings = BlockTimings(audio_ready_at=10.56, started_at=10.60, finished_at=11.06, compute_s=0.46)
    stages = first_frame_stages(10.0, timings, added_at=11.07, slot_at=11.11)
    assert stages == pytest.approx({"block_ready": 560.0, "queued": 40.0, "compute": 460.0, "handoff": 10.0,
                                    "playout": 40.0, "total": 1110.0})


def test_without_block_timings_only_what_is_known() -> None:
    stages = first_frame_stages(10.0, None, added_at=None, slot_at=10.2)
    assert stages == pytest.approx({"playout": 200.0, "total": 200.0})


def test_a_mark_before_the_first_audio_counts_as_zero() -> None:
    # the first block's audio can be complete before the session saw its first packet (a prefilled
    # timeline): nothing negative, and the later stages are measured from the latest mark
    timings = BlockTimings(audio_ready_at=9.9, started_at=10.1, finished_at=10.5, compute_s=0.4)
    stages = first_frame_stages(10.0, timings, added_at=10.5, slot_at=10.54)
    assert stages["block_ready"] == 0.0 and stages["queued"] == pytest.approx(100.0)
    assert sum(v for k, v in stages.items() if k != "total") == pytest.approx(stages["total"])
