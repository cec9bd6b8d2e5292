"""Which rank runs which denoising steps, and which rank decodes the VAE (no torch: ``avatar preflight``
uses it on machines without it).

A pipeline is a few ranks holding contiguous runs of the steps. Rank loads are in units of one DiT step:
the split that minimises the slowest rank wins (the slowest rank sets the block rate), the VAE decode
goes where it adds least (``vae_gpu``: a rank of its own, shared by every pipeline), and rank 0 also pays
the front end (audio features and tokens, noise). N > num_steps devices make several pipelines of at most
num_steps ranks, one session each.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass


class PlanError(ValueError):
    """An impossible pipeline request (user-facing)."""


@dataclass(frozen=True)
class StageCosts:
    """Seconds (or any unit) of one DiT step, one block's VAE decode and rank 0's per-block front end."""

    step: float = 1.0
    vae: float = 0.17  # 76 ms VAE / 110 ms a step at 320x512 on an H200 (bench/results, issue 8)
    front: float = 0.05


@dataclass(frozen=True)
class Pipeline:
    """One pipeline: ``ranks[i]`` runs ``steps[i]``; ``vae_rank`` decodes its blocks."""

    ranks: tuple[int, ...]
    steps: tuple[tuple[int, ...], ...]
    vae_rank: int

    def owner(self, step: int) -> int:
        for rank, owned in zip(self.ranks, self.steps, strict=True):
            if step in owned:
                return rank
        raise KeyError(step)

    def steps_of(self, rank: int) -> tuple[int, ...]:
        return self.steps[self.ranks.index(rank)] if rank in self.ranks else ()


@dataclass(frozen=True)
class PipelinePlan:
    world_size: int
    num_steps: int
    pipelines: tuple[Pipeline, ...]

    def pipeline_of(self, rank: int) -> int | None:
        for index, pipe in enumerate(self.pipelines):
            if rank in pipe.ranks:
                return index
        return None

    def decodes(self, rank: int) -> bool:
        return any(p.vae_rank == rank for p in self.pipelines)

    def loads(self, costs: StageCosts) -> list[float]:
        """Per-rank work of one block of every pipeline (same units as ``costs``)."""
        load = [0.0] * self.world_size
        load[0] += costs.front * len(self.pipelines)
        for pipe in self.pipelines:
            for rank, owned in zip(pipe.ranks, pipe.steps, strict=True):
                load[rank] += costs.step * len(owned)
            load[pipe.vae_rank] += costs.vae
        return load

    def describe(self) -> str:
        parts = []
        for index, pipe in enumerate(self.pipelines):
            stages = ", ".join(f"rank {r}: steps {list(s)}" for r, s in zip(pipe.ranks, pipe.steps, strict=True))
            parts.append(f"pipeline {index}: {stages}; VAE on rank {pipe.vae_rank}")
        return "; ".join(parts)


def _splits(num_steps: int, parts: int):
    """Contiguous runs of range(num_steps) into ``parts`` non-empty pieces."""
    for cuts in itertools.combinations(range(1, num_steps), parts - 1):
        bounds = (0, *cuts, num_steps)
        yield tuple(tuple(range(bounds[i], bounds[i + 1])) for i in range(parts))


def _best_pipeline(ranks: tuple[int, ...], num_steps: int, costs: StageCosts, vae_rank: int | None) -> Pipeline:
    best, best_key = None, None
    for steps in _splits(num_steps, len(ranks)):
        for vae in ((vae_rank,) if vae_rank is not None else ranks):
            load = {r: costs.step * len(s) + (costs.front if r == 0 else 0.0) for r, s in zip(ranks, steps, strict=True)}
            load[vae] = load.get(vae, 0.0) + costs.vae
            # slowest rank first, then the spread, then the VAE late in the pipe (its input comes out last)
            key = (round(max(load.values()), 9), round(sum(v * v for v in load.values()), 9), -ranks.index(vae) if vae in ranks else 0)
            if best_key is None or key < best_key:
                best, best_key = Pipeline(ranks, steps, vae), key
    return best


def plan_pipeline(num_gpus: int, num_steps: int = 4, *, vae_gpu: bool = False, costs: StageCosts | None = None) -> PipelinePlan:
    """The plan for ``num_gpus`` DiT devices (plus one VAE device with ``vae_gpu``)."""
    if num_gpus < 1:
        raise PlanError(f"--num_gpus_dit must be >= 1, got {num_gpus}")
    costs = costs or StageCosts()
    world = num_gpus + (1 if vae_gpu else 0)
    vae_rank = num_gpus if vae_gpu else None
    count = math.ceil(num_gpus / num_steps)
    sizes = [num_gpus // count + (1 if i < num_gpus % count else 0) for i in range(count)]
    pipelines, start = [], 0
    for size in sizes:
        pipelines.append(_best_pipeline(tuple(range(start, start + size)), num_steps, costs, vae_rank))
        start += size
    return PipelinePlan(world, num_steps, tuple(pipelines))


def expected_block_seconds(plan: PipelinePlan, costs: StageCosts, transfer_s: float = 0.0) -> float:
    """Steady-state seconds between two finished blocks of one pipeline: its slowest rank (plus the hand-offs
    that rank waits for when ranks are not overlapped with transfers)."""
    return max(plan.loads(costs)) + transfer_s
