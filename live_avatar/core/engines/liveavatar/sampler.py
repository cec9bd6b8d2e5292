"""4-step flow-matching Euler sampler (spec section 4, golden README section 6).

The schedule reproduces diffusers' ``FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift)`` after
``set_timesteps(num_steps)`` (the unit tests compare against diffusers itself), written out here so the
GPU machine needs no diffusers: note the double shift of the last sigma (0.008929, not 0.002994).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FlowMatchSchedule:
    timesteps: tuple[float, ...]  # fed to the model (float32 values), one per step
    sigmas: tuple[float, ...]  # num_steps + 1 values, last is 0

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def _shifted(sigma, shift: float):
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_match_schedule(num_steps: int, shift: float, num_train_timesteps: int = 1000) -> FlowMatchSchedule:
    n = num_train_timesteps
    # Training sigmas in float32 (as the scheduler's constructor); their ends bound the inference grid.
    train = _shifted(torch.arange(n, 0, -1, dtype=torch.float32) / n, shift)
    sigma_max, sigma_min = float(train[0]), float(train[-1])
    # Inference grid in float64, shifted once more (this second shift moves the last sigma off 0.003).
    grid = np.linspace(sigma_max * n, sigma_min * n, num_steps) / n
    sigmas = torch.from_numpy(_shifted(grid, shift)).to(torch.float32)
    timesteps = sigmas * n
    sigmas = torch.cat([sigmas, torch.zeros(1)])
    return FlowMatchSchedule(timesteps=tuple(float(t) for t in timesteps), sigmas=tuple(float(s) for s in sigmas))


def euler_update(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """``x + (sigma_next - sigma) * v`` in float32, rounded to the velocity's dtype."""
    dt = torch.tensor(sigma_next, dtype=torch.float32) - torch.tensor(sigma, dtype=torch.float32)
    return (x.float() + dt.to(x.device) * velocity.float()).to(velocity.dtype)


class ClipNoise:
    """Initial latents drawn per clip (``[C, clip_frames, h, w]``, generator seeded ``seed + clip``) and
    sliced per block, as the reference does (spec pitfall 16)."""

    def __init__(self, seed: int, shape: tuple[int, int, int, int], frames_per_block: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.seed, self.shape, self.frames_per_block = seed, tuple(shape), frames_per_block
        self.device, self.dtype = torch.device(device), dtype
        self._clip_index = -1
        self._clip: torch.Tensor | None = None

    def block(self, block_index: int) -> torch.Tensor:
        blocks_per_clip = self.shape[1] // self.frames_per_block
        clip, b = divmod(block_index, blocks_per_clip)
        if clip != self._clip_index:
            gen = torch.Generator(device=self.device).manual_seed(self.seed + clip)
            self._clip = torch.randn(self.shape, generator=gen, device=self.device, dtype=self.dtype)
            self._clip_index = clip
        f = self.frames_per_block
        return self._clip[:, b * f : (b + 1) * f]
