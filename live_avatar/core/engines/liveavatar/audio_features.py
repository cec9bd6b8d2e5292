"""Wav2Vec2 hidden-state features at 25 fps for the liveavatar DiT (spec §5).

The DiT consumes, per video frame, all hidden states of ``Wav2Vec2ForCTC`` (the embedding output plus
every layer: 25 x 1024 for wav2vec2-large-xlsr-53) sampled at 25 fps. Two paths:

* ``offline`` — the reference's whole-file path: normalise the whole waveform, run wav2vec once
  (50 Hz frames), resample 50 Hz -> 30 fps by linear interpolation with ``align_corners`` over the
  whole sequence (ratio (T50-1)/(T30-1), T30 = int(0.6·T50)), then video frame i takes 30-fps sample
  round(1.2·i); frames past the audio get zeros.
* ``block`` — the live path (spec §5 [DESIGN]): wav2vec runs on a rolling window
  ``[left context | the block | lookahead]`` of the session timeline, so a block needs no audio after
  its end plus the lookahead. The 50 Hz frames are indexed in *global* time and the 30-fps sample k is
  read at the nominal 50 Hz position k·5/3 (the whole-file ratio depends on the file length, which
  a live stream does not have). The two-stage mapping (frame i -> k = round(1.2·i)) is kept, so the
  sampling jitter matches training. ``offline(..., interpolation="nominal")`` is the same definition
  applied to a whole file: a block's features equal it whenever the window spans the whole file.

Deviation from the reference (documented): the live path normalises each window with its own mean and
standard deviation, the latter floored at ``norm_min_std`` so that near-silent windows are not
amplified into loud noise (the reference normalises with whole-file statistics, which a stream has not).

wav2vec frame j covers samples [320·j, 320·j + 400) of its input (conv stack kernel/stride 10/5, 3/2 ×4,
2/2 ×2); windows therefore start on multiples of 320 samples.

On a CUDA device the live windows' wav2vec call can replay a CUDA graph (:meth:`Wav2VecFeatures.use_cuda_graphs`,
the engine's ``cuda_graphs``): every live window has the same length, and eagerly wav2vec2-large's ~650 ATen
ops a window (counted on the CPU) are launched one by one from Python. The "audio" stage of a 320x512 block
on an H200 went from 16.3 to 4.9 ms.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .audio_window import lookahead_samples, round_up

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudioFeatureConfig:
    sample_rate: int = 16000
    fps: int = 25  # video frame rate the features are sampled at
    intermediate_fps: int = 30  # the reference resamples 50 Hz -> 30 fps, then picks frames for 25 fps
    context_s: float = 2.0  # left context of the live window (wav2vec attends over the whole window)
    # audio after the block's end that the block may use; every bit of it adds to speech-to-lips.
    # 0.08 s, not 0.16: measured against whole-file features (bench/results/audio_windows_lookahead.json)
    # it costs ~0.001 of mean cosine (wav2vec2-large, random), 0.014 at a block's last frame (tiny)
    lookahead_s: float = 0.08
    norm_eps: float = 1e-7  # (x - mean) / sqrt(var + eps), as Wav2Vec2FeatureExtractor
    norm_min_std: float = 0.01  # live path only: floor of the per-window standard deviation


class Wav2VecFeatures:
    """Hidden-state features of one Wav2Vec2ForCTC model (shared by the sessions of an engine)."""

    def __init__(self, model: torch.nn.Module, *, do_normalize: bool = True, config: AudioFeatureConfig | None = None):
        self.model = model.eval().requires_grad_(False)
        self.config = config or AudioFeatureConfig()
        self.do_normalize = do_normalize
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        mcfg = model.config
        self.hop = int(np.prod(mcfg.conv_stride))  # 320 samples = 50 Hz
        # receptive field of one frame: 400 samples for the standard conv stack
        rf = 1
        for k, s in zip(reversed(mcfg.conv_kernel), reversed(mcfg.conv_stride), strict=True):
            rf = (rf - 1) * s + k
        self.receptive_field = rf
        self.num_layers = int(mcfg.num_hidden_layers) + 1
        self.dim = int(mcfg.hidden_size)
        self.samples_per_frame = self.config.sample_rate // self.config.fps
        if self.config.sample_rate % self.config.fps:
            raise ValueError("sample_rate must be a multiple of fps")
        self.feature_rate = self.config.sample_rate / self.hop
        self._graphs: dict[int, _Wav2VecGraph] | None = None  # live window length -> graph (use_cuda_graphs)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        config: AudioFeatureConfig | None = None,
    ) -> "Wav2VecFeatures":
        """Load a local transformers folder (config.json + weights [+ preprocessor_config.json]); never the hub."""
        from transformers import Wav2Vec2ForCTC

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no wav2vec2 model in {folder} (config.json missing)")
        model = Wav2Vec2ForCTC.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        do_normalize = True
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            import json

            do_normalize = bool(json.loads(pre.read_text()).get("do_normalize", True))
        return cls(model.to(device), do_normalize=do_normalize, config=config)

    # ------------------------------------------------------------------ live window geometry
    @property
    def context_samples(self) -> int:
        return round_up(int(round(self.config.context_s * self.config.sample_rate)), self.hop)

    @property
    def lookahead_samples(self) -> int:
        return lookahead_samples(self.config.lookahead_s, self.config.sample_rate, self.hop, self.receptive_field)

    def num_feature_frames(self, num_samples: int) -> int:
        if num_samples < self.receptive_field:
            return 0
        return (num_samples - self.receptive_field) // self.hop + 1

    # ------------------------------------------------------------------ model
    def _normalize(self, x: np.ndarray, min_std: float = 0.0) -> np.ndarray:
        if not self.do_normalize:
            return x
        mean = float(x.mean())
        std = max(math.sqrt(float(x.var()) + self.config.norm_eps), min_std)
        return (x - mean) / std

    @torch.inference_mode()
    def hidden_states(self, samples: np.ndarray) -> torch.Tensor:
        """Already-normalised samples [n] -> all hidden states [L, T50, D] (model dtype)."""
        x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device, self.dtype)[None]
        return _stacked_hidden_states(self.model, x)

    def use_cuda_graphs(self) -> bool:
        """Replay a CUDA graph for the live windows' wav2vec call from now on (one per window length,
        recorded by its first call); False on a device without CUDA. Callers serialise the calls (the
        engine's compute lock): a replay overwrites the previous call's hidden states."""
        if self.device.type != "cuda":
            return False
        if self._graphs is None:
            self._graphs = {}
        return True

    def _window_states(self, samples: np.ndarray) -> torch.Tensor:
        """:meth:`hidden_states` of a live window, from its CUDA graph when graphs are on. The result is
        the graph's output buffer: read it before the next call."""
        if self._graphs is None:
            return self.hidden_states(samples)
        n = samples.shape[0]
        graph = self._graphs.get(n)
        if graph is None:
            try:
                graph = _Wav2VecGraph(self.model, n, self.device, self.dtype)
            except RuntimeError as exc:  # an op that cannot be captured: stay eager, say so once
                logger.warning("wav2vec: no CUDA graph of the %d-sample window (%s); it runs eagerly", n, exc)
                self._graphs = None
                return self.hidden_states(samples)
            self._graphs[n] = graph
        return graph.run(samples)

    # ------------------------------------------------------------------ frame mapping
    def _frame_positions(self, first_frame: int, num_frames: int) -> np.ndarray:
        """50 Hz positions (global, fractional) of video frames, through the 30-fps grid at the nominal ratio."""
        cfg = self.config
        frames = np.arange(first_frame, first_frame + num_frames)
        k = np.array([round(cfg.intermediate_fps / cfg.fps * i) for i in frames], dtype=np.float64)
        return k * (self.feature_rate / cfg.intermediate_fps)

    @staticmethod
    def _interpolate(states: torch.Tensor, positions: np.ndarray) -> torch.Tensor:
        """Linear interpolation of [L, T, D] at fractional frame positions -> [L, D, n] float32."""
        lo = np.floor(positions).astype(np.int64)
        hi = np.minimum(lo + 1, states.shape[1] - 1)
        w = torch.from_numpy(positions - lo).to(states.device, torch.float32).view(1, -1, 1)
        s = states.float()
        lo_t, hi_t = torch.from_numpy(lo).to(states.device), torch.from_numpy(hi).to(states.device)
        out = s[:, lo_t] * (1 - w) + s[:, hi_t] * w
        return out.permute(0, 2, 1).contiguous()

    # ------------------------------------------------------------------ offline (whole file)
    @torch.inference_mode()
    def offline(
        self,
        samples: np.ndarray,
        num_frames: int | None = None,
        *,
        interpolation: Literal["align_corners", "nominal"] = "align_corners",
    ) -> torch.Tensor:
        """Whole-file features [L, D, num_frames] (float32). Default length: 48·(floor(T30/57.6)+1), as the reference."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        states = self.hidden_states(self._normalize(samples))  # [L, T50, D]
        t50 = states.shape[1]
        cfg = self.config
        ratio = cfg.intermediate_fps / self.feature_rate
        t30 = int(t50 * ratio)
        if num_frames is None:
            num_frames = 48 * (int(t30 / (48 * cfg.intermediate_fps / cfg.fps)) + 1)
        out = torch.zeros(self.num_layers, self.dim, num_frames, device=states.device)
        k = np.array([round(cfg.intermediate_fps / cfg.fps * i) for i in range(num_frames)])
        valid = k < t30  # frames past the audio get zeros
        if not valid.any():
            return out
        if interpolation == "align_corners":
            resampled = F.interpolate(states.float().permute(0, 2, 1), size=t30, mode="linear", align_corners=True)
            out[:, :, valid] = resampled[:, :, k[valid]]
        elif interpolation == "nominal":
            positions = self._frame_positions(0, num_frames)[valid]
            out[:, :, valid] = self._interpolate(states, np.minimum(positions, t50 - 1))
        else:
            raise ValueError(f"unknown interpolation {interpolation!r}")
        return out

    # ------------------------------------------------------------------ live (rolling window)
    @torch.inference_mode()
    def block(self, window: np.ndarray, first_frame: int, num_frames: int, context: int, lookahead: int) -> torch.Tensor:
        """Features [L, D, num_frames] (float32) of video frames [first_frame, first_frame + num_frames).

        ``window`` holds timeline samples [first_frame·S - context, (first_frame + num_frames)·S + lookahead)
        (S = samples per frame), exactly what ``contract.AudioBlock.samples`` carries; it alone determines
        the result, so later audio can never change a block.
        """
        window = np.asarray(window, dtype=np.float32).reshape(-1)
        spf = self.samples_per_frame
        expected = context + num_frames * spf + lookahead
        if window.shape[0] != expected:
            raise ValueError(f"audio window has {window.shape[0]} samples, expected {expected}")
        if lookahead < self.receptive_field:
            # the last frame's interpolation reads a wav2vec frame that reaches past the block's end
            raise ValueError(f"lookahead {lookahead} is too short: need lookahead >= {self.receptive_field} samples")
        start = first_frame * spf - context  # global sample index of window[0]
        if start % self.hop:
            raise ValueError(f"window start {start} is not on the {self.hop}-sample wav2vec grid (context {context})")
        states = self._window_states(self._normalize(window, self.config.norm_min_std))
        positions = self._frame_positions(first_frame, num_frames) - start / self.hop
        if positions.min() < 0 or math.ceil(positions.max()) > states.shape[1] - 1:
            raise ValueError(
                f"window too short for frames {first_frame}..{first_frame + num_frames - 1}: "
                f"need lookahead >= {self.receptive_field} samples"
            )
        return self._interpolate(states, positions)

    def block_features(self, audio_block) -> torch.Tensor:
        """``contract.AudioBlock`` -> [L, D, num_frames]."""
        return self.block(
            audio_block.samples, audio_block.first_frame, audio_block.num_frames, audio_block.context, audio_block.lookahead
        )


def _stacked_hidden_states(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[1, n]`` input -> every hidden state of ``model`` stacked ``[L, T50, D]``."""
    out = model(x, output_hidden_states=True)
    return torch.stack([h[0] for h in out.hidden_states], dim=0)


class _Wav2VecGraph:
    """One CUDA graph of the wav2vec call on ``n`` samples: a fixed input buffer in, a fixed output out."""

    def __init__(self, model: torch.nn.Module, n: int, device: torch.device, dtype: torch.dtype) -> None:
        from .cuda_graph import record_graph

        self.input = torch.zeros(1, n, device=device, dtype=dtype)
        with torch.inference_mode():
            _stacked_hidden_states(model, self.input)  # lazy cuBLAS/attention set-up outside the capture
            self.graph, self.output = record_graph(lambda: _stacked_hidden_states(model, self.input), device)

    def run(self, samples: np.ndarray) -> torch.Tensor:
        self.input.copy_(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))[None])
        self.graph.replay()
        return self.output
