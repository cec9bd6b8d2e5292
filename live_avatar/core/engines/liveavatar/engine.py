"""``LiveAvatarEngine``: the causal Wan2.2-S2V (Live Avatar) engine behind the engine contract.

Per block of 12 frames (0.48 s): wav2vec2 features of the block's rolling audio window
(``audio_features``) -> ``CausalStepper.step_block`` (4 Euler steps over the KV rings + sink)
-> streaming Wan VAE decode (``vae_stream``) -> uint8 frames ``[12, H, W, 3]``.

Options (``LiveAvatarEngine(**options)``, also ``avatar serve --engine liveavatar``):

=================  ===================================================================================
``weights_dir``    checkpoint folder (layout below); alias ``weights``
``tiny``           seeded random tiny models for every part (CPU, tests, no downloads)
``random_weights`` the real 14B architecture with random weights (benchmarks); no text encoder (a seeded
                   random prompt context stands in for umT5)
``device``         "auto" (cuda if available), "cuda", "cuda:1", "cpu"
``dtype``          "auto" (bf16 on GPU, float32 on CPU), "bfloat16", "float32"
``compile``        torch.compile the DiT blocks (GPU; the first session compiles for ~45 s)
``compile_mode``   torch.compile mode of the DiT halves (None; "max-autotune-no-cudagraphs"; "reduce-overhead": CUDA graphs)
``compile_backend`` "inductor" (default); "eager" traces with dynamo only (tests count graphs on a CPU)
``tune_kernels``   inductor tunes the launch configurations of the kernels it generates (coordinate descent;
                   the whole process). Off: at 320x512 on an H200 it gave 449 vs 455 ms a block (the largest
                   FP8 amax/LayerNorm reduction 15.3 -> 8.6 ms) for a first compile of 551 s instead of 87 s
``warmup``         run one throwaway session before serving (default: when compiling or on a GPU), so that no
                   live session compiles; see :mod:`.warmup`
``kv_layout``      "contiguous" (default: a sink copy beside each step's KV ring, one slice per attention) or
                   "compact" (one sink copy, concatenated per call): 14.6 % less per-session state, speed
                   not yet measured on a GPU
``text_encoder_device`` "auto" (the engine's device) or "cpu": umT5-XXL (11.4 GB bf16) stays off the GPU; a
                   new prompt is then encoded on the CPU (seconds; outside the compute lock; cached)
``cuda_graphs``    record the DiT calls as CUDA graphs, one per step and ring length (the ring fills over a
                   session's first 3 blocks) and session, so that a call is one launch whatever else holds
                   the GIL (default: on for CUDA devices; 320x512 FP8 on an H200: DiT 517 -> 443 ms a block,
                   and the live session's block costs what the benchmark's does; no extra GPU memory with the
                   4 full-ring graphs, the 16 per ring length not yet measured on a GPU); the live windows'
                   wav2vec call replays a graph too (the "audio" stage: ~650 ATen ops a window otherwise)
``reuse_sessions`` keep a closed session's stepper (its KV rings, sink and CUDA graphs) for the next session
                   of the same size, up to ``capacity`` of them (the warm-up prepares that many): a session's
                   start records no graph and allocates nothing (default: with ``cuda_graphs``; the memory
                   stays with the engine)
``vae_graphs``     with cuda_graphs: the steady-state VAE decoder calls (from a session's priming on) replay one
                   CUDA graph per session too; off: the eager decode is GPU-bound, not launch-bound (320x512 on
                   an H200: 120 vs 126 ms a block), so it saves little; worth it where launches are slow
``vae_channels_last`` the streaming VAE decoder with its 3D convolutions channels-last (default: on a CUDA
                   device): cuDNN's Hopper kernels want that layout and transpose around every convolution
                   otherwise; 77 -> 65 ms a 320x512 block (compiled) on an H200 (``python -m bench.vae_layout``)
``overlap_vae``    decode block k on a thread and CUDA stream of its own while block k+1 is denoised (the
                   generator pipelines: the live session keeps 2 blocks in it); same frames. Off: at 320x512
                   on an H200 the graphed DiT saturates the GPU and the overlap gave 580 vs 572 ms a block
``gil_switch_interval_ms`` the interpreter's GIL switch interval (``sys.setswitchinterval``) while the
                   engine runs; the DiT thread issues thousands of kernel launches a block under the GIL, and
                   with Python's default 5 ms another busy thread (the event loop: RTP, encoding) can hold
                   the GIL for 5 ms at a time while the GPU runs dry
``compile_vae``    torch.compile the streaming VAE decoder too (default: with ``compile`` on a CUDA device; 126 -> 78
                   ms a 320x512 block on an H200). A second session on a GPU compiles some of its nested frames
                   again; the warm-up runs sessions until one compiles nothing, so live sessions do not
``fp8``            FP8 (e4m3) Linears in the DiT (spec §9; Hopper/Ada GPUs), quantised after the LoRA merge
``fp8_scaling``    "tensor" (spec §9: one scale per weight and per activation matrix) or "row" (per output
                   channel and per token: finer scales; on an H200 no faster, DiT 393 vs 397 ms at 320x512)
``size``           area cap "W*H" (reference ``--size`` rule, spec §7), applied to a frame of ``aspect``
``aspect``         "9:16" (portrait, default), "16:9", "1:1", ... : the output frame's aspect ratio
``prompt``         default prompt; ``seed`` noise seed (clip r uses seed + r)
``context_s`` / ``lookahead_s``   the live audio window (left context 2 s / lookahead 0.08 s; the
                   lookahead adds to speech-to-lips)
``sink_refresh``   before clip 1 the sink is rebuilt once from the first generated latent, with
                   "keep_motion" (default: the reference's streaming (TPP) pipeline, spec §3.4: the motion
                   latents stay the portrait's), "reencode" (the single-GPU online-decode script: motion =
                   VAE encoding of the last 73 frames) or "none" (the sink of clip 0 kept forever).
                   Why keep_motion: it is what the real-time reference runs, and "reencode" costs a VAE
                   encode of 73 frames at the clip boundary (sink refresh 0.51-0.56 s on an H200 at
                   320x512, more than a whole block's 480 ms budget: a session skips frames at every
                   first clip boundary) and keeps 73 full-size frames per session for it
``capacity``       real-time sessions at once (default 1: one session holds one GPU)
``num_gpus_dit``   N > 1: the 4 steps of a block over N ranks, one process per device (:mod:`.pipeline`);
                   ``vae_gpu`` decodes on a rank of its own; ``share_device`` puts every rank on one device
``config``         optional engine YAML (``dit:``/``streaming:``/``weights:`` sections, see ``config.py``)
=================  ===================================================================================

Expected ``weights_dir`` layout (official downloads, nothing renamed)::

    WEIGHTS_DIR/
      Wan2.2-S2V-14B/                       # huggingface Wan-AI/Wan2.2-S2V-14B (or WEIGHTS_DIR itself)
        config.json                         # DiT architecture (model_type "s2v")
        diffusion_pytorch_model-0000{1..4}-of-00004.safetensors
        diffusion_pytorch_model.safetensors.index.json
        Wan2.1_VAE.pth                      # Wan2.1 VAE (converted to diffusers keys on load)
        models_t5_umt5-xxl-enc-bf16.pth     # umT5-XXL encoder (Wan key names)
        google/umt5-xxl/                    # its tokenizer
        wav2vec2-large-xlsr-53-english/     # transformers Wav2Vec2ForCTC folder
      LiveAvatar/liveavatar.safetensors     # huggingface Quark-Vision/Live-Avatar: the LoRA (rank 128)

Also accepted: ``liveavatar.safetensors`` directly in WEIGHTS_DIR or in the Wan folder, a diffusers
``vae/`` folder instead of ``Wan2.1_VAE.pth``, and ``text_encoder/`` + ``tokenizer/`` folders instead
of the Wan T5 files.

Frame alignment: frame k of a session shows the frame generated from audio frame k. The reference
drops the first 3 decoded frames of a session (its video then runs 3 frames ahead of the audio);
here they are replaced by copies of the first kept frame (``vae_stream``), so every block has 12
frames and the A/V offset is zero.

Around this module: :mod:`.options` (the options above, device/dtype, frame size), :mod:`.parts` (weight
discovery and the models an engine holds), :mod:`.generator` (the prepared avatar and the per-session generator).
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from typing import Any

import numpy as np
import torch

from live_avatar.core.contract import AvatarError, EngineBusyError

from .generator import LiveAvatar, LiveAvatarGenerator
from .options import (
    EngineConfigError,
    LiveAvatarOptions,
    frame_size,
    resolve_device,
    resolve_dtype,
    vae_channels_last_wanted,
    vae_compile_wanted,
)
from .parts import load_parts, random_full_parts, tiny_parts
from .step_graphs import GraphContext, graphs_wanted
from .warmup import WarmupReport, compiled_graphs, warm_up

logger = logging.getLogger(__name__)


class LiveAvatarEngine:
    """Engine contract implementation (see the module docstring for options and the weights layout)."""

    name = "liveavatar"
    sample_rate = 16000

    def __init__(self, **options: Any) -> None:
        self.options = LiveAvatarOptions.from_kwargs(options)
        opts = self.options
        if opts.num_gpus_dit > 1 or opts.vae_gpu:  # under torchrun, ranks > 0 serve the pipeline from here on
            from .pipeline.launcher import serve_if_torchrun_worker

            serve_if_torchrun_worker(opts)
        self.device = resolve_device(opts.device)
        self.dtype = resolve_dtype(opts.dtype, self.device)
        size = opts.size or ("128*64" if opts.tiny else "704*384")
        self.size = frame_size(size, opts.aspect)  # (width, height)
        t0 = time.perf_counter()
        if opts.tiny:
            self.parts = tiny_parts(opts, self.device, self.dtype)
        elif opts.random_weights:
            self.parts = random_full_parts(opts, self.device, self.dtype)
        else:
            self.parts = load_parts(opts, self.device, self.dtype)
        streaming = self.parts.model_config.streaming
        self.fps = streaming.fps
        self.block_frames = streaming.video_frames_per_block
        self.capacity = opts.capacity
        if opts.fp8 and not opts.weights_dir:  # load_dit quantises checkpoints itself
            from .fp8 import quantize_fp8_

            quantize_fp8_(self.parts.dit, opts.fp8_scaling)
            self.parts.description += ", FP8 Linears"
        self.compute_lock = threading.RLock()  # one model, several threads (sessions, avatar preparation)
        self._sessions = 0
        self._sessions_lock = threading.Lock()
        self._idle_steppers: list = []  # closed sessions' steppers, for the next sessions (reuse_sessions)
        if opts.tune_kernels and opts.compile_backend == "inductor":
            import torch._inductor.config as inductor_config

            inductor_config.coordinate_descent_tuning = True  # process-wide, read when a graph compiles
        if opts.compile:
            compile_kwargs = {"backend": opts.compile_backend}
            if opts.compile_mode:
                compile_kwargs["mode"] = opts.compile_mode
            self.parts.dit.compile_blocks(**compile_kwargs)  # the dense block halves; attention and caches stay eager
        self.compile_vae = vae_compile_wanted(opts.compile_vae, opts.compile, self.device.type)
        self.parts.codec.configure(channels_last=vae_channels_last_wanted(opts.vae_channels_last, self.device.type),
                                   compile_decoder=self.compile_vae, backend=opts.compile_backend)
        self.graph_context: GraphContext | None = None
        if graphs_wanted(opts.cuda_graphs, self.device):
            if self.device.type != "cuda":
                raise EngineConfigError("cuda_graphs needs a CUDA device")
            self.graph_context = GraphContext.for_device(self.device)
            self.parts.audio.use_cuda_graphs()  # the live windows' wav2vec call too (audio_features)
            if opts.vae_graphs:
                self.parts.codec.decoder_graphs = "cuda"  # the steady-state VAE decoder calls too (vae_stream.DecoderGraph)
        if opts.gil_switch_interval_ms is not None:
            sys.setswitchinterval(opts.gil_switch_interval_ms / 1000.0)
        self.pipeline = None
        if opts.num_gpus_dit > 1 or opts.vae_gpu:
            from .pipeline.driver import StepPipeline

            self.pipeline = StepPipeline(self)  # starts ranks 1..N-1 and waits for their models
            self.capacity = self.pipeline.capacity
        self.reuse_sessions = opts.reuse_sessions if opts.reuse_sessions is not None else self.graph_context is not None
        self.warmup_report: WarmupReport | None = None
        self.warming_up = False
        self._graphs_at_ready = compiled_graphs()
        logger.info("liveavatar engine ready: %s, %s %s, %dx%d, %.1f s", self.parts.description, self.device,
                    self.dtype, *self.size, time.perf_counter() - t0)

    @property
    def wants_warmup(self) -> bool:
        opts = self.options
        return opts.warmup if opts.warmup is not None else (opts.compile or self.compile_vae or self.device.type == "cuda")

    def warm_up(self, progress=None) -> WarmupReport:
        """Throwaway sessions at the engine's size until one compiles nothing (see :mod:`.warmup`);
        sessions opened afterwards should compile nothing (``compiles_since_ready`` in their stats)."""
        self.warming_up = True  # its generator compiles by design: no "compiled during a session" warning
        try:
            self.warmup_report = warm_up(self, progress)
        finally:
            self.warming_up = False
        self._graphs_at_ready = compiled_graphs()
        return self.warmup_report

    def compiles_since_ready(self) -> int:
        """Graphs compiled since the engine was ready (after its warm-up, when it ran one)."""
        return compiled_graphs() - self._graphs_at_ready

    def set_size(self, size: str, aspect: str | None = None) -> tuple[int, int]:
        """Change the output size (reference --size rule) for avatars prepared and sessions opened from now on."""
        self.size = frame_size(size, aspect or self.options.aspect)
        return self.size

    # ---- avatars -----------------------------------------------------------------------------------------
    def crop_to_size(self, image: np.ndarray) -> np.ndarray:
        """Resize to cover the engine size (aspect kept, bilinear) and center-crop: no black bars."""
        from PIL import Image

        w, h = self.size
        ih, iw = image.shape[:2]
        scale = max(w / iw, h / ih)
        rw, rh = max(w, round(iw * scale)), max(h, round(ih * scale))
        resized = np.asarray(Image.fromarray(image).resize((rw, rh), Image.BILINEAR))
        top, left = (rh - h) // 2, (rw - w) // 2
        return np.array(resized[top : top + h, left : left + w])  # a writable copy

    def prepare_avatar(self, image: np.ndarray) -> LiveAvatar:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise AvatarError("the portrait must be an RGB image (uint8 array [H, W, 3])")
        if min(image.shape[:2]) < 64:
            raise AvatarError(f"the portrait is too small ({image.shape[1]}x{image.shape[0]}); use at least 64x64 pixels")
        crop = self.crop_to_size(image)
        pixels = torch.from_numpy(crop).to(self.device).permute(2, 0, 1).float().div(127.5).sub(1.0).to(self.dtype)
        with self.compute_lock:
            latents = self.parts.codec.encode_portrait(pixels)
        return LiveAvatar(image=crop, pixels=pixels, reference_latent=latents.reference, motion_latents=latents.motion)

    # ---- sessions ----------------------------------------------------------------------------------------
    def _acquire_session(self) -> None:
        with self._sessions_lock:
            if self._sessions >= self.capacity:
                raise EngineBusyError(f"the liveavatar engine is at capacity ({self.capacity} session(s))")
            self._sessions += 1

    def _release_session(self) -> None:
        with self._sessions_lock:
            self._sessions = max(0, self._sessions - 1)

    @property
    def active_sessions(self) -> int:
        return self._sessions

    @property
    def idle_steppers(self) -> list:
        """Closed sessions' steppers kept for the next sessions (``reuse_sessions``)."""
        with self._sessions_lock:
            return list(self._idle_steppers)

    def take_stepper(self, geometry) -> tuple[Any, bool]:
        """The stepper of a new session and whether it is a closed session's at this geometry
        (``reuse_sessions``: its rings, sink and CUDA graphs kept; the session's prefill resets what a
        session changes), else a new one."""
        from .stepper import CausalStepper

        with self._sessions_lock:
            # another size's (set_size) are dropped here, before this size allocates
            self._idle_steppers = [s for s in self._idle_steppers if s.geometry == geometry]
            stepper = self._idle_steppers.pop() if self._idle_steppers else None
        # the rolling-reference RoPE offset is random per DiT call (as the reference); seeding it from the
        # session seed makes a session reproducible (the reference leaves it unseeded)
        rope_rng = random.Random(self.options.seed)
        if stepper is not None:
            stepper.rope_rng = rope_rng  # as a new stepper's
            return stepper, True
        streaming = self.parts.model_config.streaming
        stepper = CausalStepper(self.parts.dit, streaming, geometry, rope_rng=rope_rng)
        if self.graph_context is not None:
            stepper.use_graphs(self.graph_context)
        return stepper, False

    def return_stepper(self, stepper) -> None:
        """A closed session's stepper: kept for the next session (``reuse_sessions``), else freed."""
        if not self.reuse_sessions or stepper is None:
            return
        if self.graph_context is not None and stepper.graphs is None:
            return  # its graphs failed to record: a new stepper tries again
        with self._sessions_lock:
            if len(self._idle_steppers) < self.capacity:
                self._idle_steppers.append(stepper)

    def new_generator(self, avatar: LiveAvatar, prompt: str | None = None, **options: Any) -> LiveAvatarGenerator:
        if not isinstance(avatar, LiveAvatar):
            raise AvatarError("not a liveavatar avatar (prepare it with this engine's prepare_avatar)")
        if avatar.image.shape[:2] != (self.size[1], self.size[0]):
            raise AvatarError(f"the avatar was prepared for another frame size than the engine's {self.size[0]}x{self.size[1]}")
        unknown = sorted(set(options) - {"sync_timing"})
        if unknown:
            raise EngineConfigError(f"unknown generator option(s): {', '.join(unknown)}")
        self._acquire_session()
        try:
            if self.pipeline is not None:
                from .pipeline.driver import PipelinedGenerator

                return PipelinedGenerator(self, self.pipeline, avatar, prompt)
            kind = LiveAvatarGenerator
            if self.options.overlap_vae:
                from .vae_overlap import VaeOverlapGenerator as kind
            return kind(self, avatar, prompt, sync_timing=bool(options.get("sync_timing", False)))
        except BaseException:
            self._release_session()
            raise

    def open_session(self, avatar: LiveAvatar, prompt: str | None = None, **options: Any):
        from live_avatar.core.stream import StreamSession

        config = options.pop("config", None)
        generator = self.new_generator(avatar, prompt, **options)
        try:
            # the sink prefill and VAE priming (~0.4 s warm) now, while the peer connects, not after its first audio
            generator.start()
        except BaseException:
            generator.close()
            raise
        return StreamSession(generator, fps=self.fps, sample_rate=self.sample_rate, config=config)

    def close(self) -> None:
        if getattr(self, "pipeline", None) is not None:
            self.pipeline.close()
            self.pipeline = None
        self._idle_steppers = []
        self.parts = None
