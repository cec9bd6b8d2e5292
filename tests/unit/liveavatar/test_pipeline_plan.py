"""The step pipeline's plan: which rank runs which steps and where the VAE decodes (issue 9)."""

from __future__ import annotations

import pytest

from live_avatar.core.engines.liveavatar.pipeline.plan import (
    PlanError,
    StageCosts,
    expected_block_seconds,
    plan_pipeline,
)


def _steps(plan):
    return [[list(s) for s in p.steps] for p in plan.pipelines]


def test_one_to_four_gpus_split_the_four_steps():
    assert _steps(plan_pipeline(1)) == [[[0, 1, 2, 3]]]
    assert _steps(plan_pipeline(2)) == [[[0, 1], [2, 3]]]
    assert _steps(plan_pipeline(4)) == [[[0], [1], [2], [3]]]
    for n in (1, 2, 3, 4):
        plan = plan_pipeline(n)
        assert plan.world_size == n and len(plan.pipelines) == 1
        assert sorted(s for stage in plan.pipelines[0].steps for s in stage) == [0, 1, 2, 3]


def test_three_gpus_keep_the_vae_off_the_two_step_rank():
    plan = plan_pipeline(3)
    pipe = plan.pipelines[0]
    two_step_rank = next(r for r, s in zip(pipe.ranks, pipe.steps, strict=True) if len(s) == 2)
    assert pipe.vae_rank != two_step_rank and pipe.vae_rank != 0  # rank 0 also runs the front end
    costs = StageCosts(step=1.0, vae=0.7, front=0.1)
    assert max(plan_pipeline(3, costs=costs).loads(costs)) == pytest.approx(2.0)


def test_more_than_four_gpus_make_more_pipelines():
    plan = plan_pipeline(8)
    assert [p.ranks for p in plan.pipelines] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert all(p.vae_rank in p.ranks for p in plan.pipelines)
    assert [len(p.ranks) for p in plan_pipeline(6).pipelines] == [3, 3]
    assert len(plan_pipeline(5).pipelines) == 2


def test_vae_gpu_is_one_more_rank_that_only_decodes():
    plan = plan_pipeline(4, vae_gpu=True)
    assert plan.world_size == 5 and plan.pipelines[0].vae_rank == 4
    assert plan.pipeline_of(4) is None and plan.decodes(4)
    assert plan.pipelines[0].steps_of(4) == ()


def test_expected_block_time_is_the_slowest_rank():
    costs = StageCosts(step=0.110, vae=0.076, front=0.010)
    one, four = plan_pipeline(1), plan_pipeline(4)
    assert expected_block_seconds(one, costs) == pytest.approx(4 * 0.110 + 0.076 + 0.010)
    assert expected_block_seconds(four, costs) == pytest.approx(0.110 + 0.076)
    assert expected_block_seconds(four, costs, transfer_s=0.002) == pytest.approx(0.188)


def test_bad_gpu_count_is_refused():
    with pytest.raises(PlanError, match="num_gpus_dit"):
        plan_pipeline(0)


def test_gpu_ranks_split_the_hosts_threads_and_cpu_ranks_keep_rank_zeros(monkeypatch):
    import torch

    from live_avatar.core.engines.liveavatar.options import LiveAvatarOptions
    from live_avatar.core.engines.liveavatar.pipeline.launcher import rank_threads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 32)
    cpu = LiveAvatarOptions(tiny=True, device="cpu", num_gpus_dit=2)
    assert rank_threads(cpu, 2) == 32  # the same float sums on every CPU rank as in one process
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = LiveAvatarOptions(random_weights=True, device="cuda", num_gpus_dit=4)
    assert rank_threads(gpu, 2) == 16 and rank_threads(gpu, 4) == 8 and rank_threads(gpu, 64) == 1
    assert rank_threads(LiveAvatarOptions(random_weights=True, num_gpus_dit=2), 2) == 16  # device "auto" on a GPU host
