"""One offline render (``avatar generate``) from options to the final MP4.

``GenerateJob(request).run()`` does the whole job in order: preset <- explicit options and the cheap
checks (before any file is touched), the input files, an unfinished render of the same output
(continue it with ``resume`` or refuse to overwrite it), audio preparation and the plan, the engine
and the avatar, the options fingerprint, and the render loop over ``OfflineRenderer`` with the
partial file, the resume state and the final mux.

Outcomes:
* a ``GenerateResult`` when the MP4 is written (only it is left, plus the last frame if asked);
* ``GenerateRefused`` for invalid input: the message is user-facing and nothing this run created
  is left behind (an unfinished render of an earlier run is never removed);
* ``GenerateInterrupted`` (KeyboardInterrupt while rendering) or ``GenerateFailed`` (any other
  exception while rendering, as its ``__cause__``): what is finished is kept and ``unfinished``
  says what, so that the caller can tell how to go on.

Messages go through the ``say`` (information) and ``warn`` callbacks, the progress bar is
``progress.RenderProgress``. Process-level matters (signals, exit codes) belong to the caller:
``during_render`` is entered around the render loop only, e.g. to turn SIGTERM into a
KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from live_avatar.core.contract import AvatarError
from live_avatar.core.offline.audio_prep import (
    AudioInputError,
    PreparedAudio,
    file_sha1,
    prepare_audio,
)
from live_avatar.core.offline.plan import (
    ENGINE_LIMITS,
    PlanError,
    RenderPlan,
    choose_size,
    make_plan,
    parse_size,
)
from live_avatar.core.offline.progress import RenderProgress, peak_rss_mb
from live_avatar.core.offline.render import OfflineRenderer, RenderCheckpoint
from live_avatar.core.offline.resume import (
    RenderFiles,
    RenderState,
    ResumeError,
    check_compatible,
    load_state,
    options_fingerprint,
)
from live_avatar.core.offline.video_writer import (
    PartialVideo,
    finalize,
    save_last_frame,
)
from live_avatar.core.presets import DEFAULT_PRESET, Preset, PresetError, load_preset


def available_memory_bytes() -> int | None:
    """Memory the system can give without swapping (Linux MemAvailable; elsewhere free pages), or None."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


LONG_PLAN_WARNING_BYTES = 2 << 30  # warn above 2 GiB of frames kept in memory (no online decode)
DEFAULT_SEED = 42

_log = logging.getLogger(__name__)


class GenerateRefused(Exception):
    """Invalid input: the message says what and how to fix it; nothing was written."""


@dataclass(frozen=True)
class Unfinished:
    """What an interrupted or failed render left on disk."""

    partial: Path  # the playable partial file (absent when clips_done is None)
    clips_done: int | None  # None: stopped before the first clip was finished, nothing kept
    resumable: bool  # the saved state holds the generator's state, so the render can continue


class GenerateStopped(Exception):
    """Rendering stopped before the end; finished clips are kept (see ``unfinished``)."""

    def __init__(self, unfinished: Unfinished):
        super().__init__(unfinished)
        self.unfinished = unfinished


class GenerateInterrupted(GenerateStopped):
    """KeyboardInterrupt (Ctrl-C, or whatever ``during_render`` turns into one) while rendering."""


class GenerateFailed(GenerateStopped):
    """An exception while rendering; it is this exception's ``__cause__``."""


@dataclass(frozen=True)
class GenerateRequest:
    """The options of one render, with the reference tool's names. None: the preset's value."""

    image: Path
    audio: Path
    prompt: str | None = None
    output: Path | None = None  # default: IMAGE-STEM_AUDIO-STEM.mp4 (see output_path)
    output_prefix: str | None = None
    save_last_frame: bool = False
    preset: str | None = None  # default DEFAULT_PRESET
    size: str | None = None
    num_clip: int | None = None
    infer_frames: int | None = None
    sample_steps: int | None = None
    sample_solver: str | None = None
    sample_guide_scale: float | None = None
    seed: int | None = None  # default DEFAULT_SEED
    engine: str = "lite"
    enable_online_decode: bool | None = None
    offload_model: bool | None = None
    weights_dir: Path | None = None
    tiny: bool = False
    num_gpus_dit: int = 1  # liveavatar: the 4 steps over this many devices (same frames whatever N)
    vae_gpu: bool = False
    resume: bool = False
    trim_silence: bool = False
    normalize_loudness: float | None = None  # target LUFS

    def output_path(self) -> Path:
        if self.output:
            return Path(self.output)
        stem = f"{self.image.stem}_{self.audio.stem}"
        if self.output_prefix:
            prefix = Path(self.output_prefix)
            return prefix.with_name(f"{prefix.name}_{stem}.mp4")
        return Path(f"{stem}.mp4")


@dataclass(frozen=True)
class GenerateResult:
    output: Path
    video_seconds: float
    frames: int
    audio_seconds: float
    wall_s: float  # rendering and muxing, from the first clip of this run
    cpu_s: float  # process CPU time over the same span (all threads)
    real_time_factor: float  # wall / seconds of video rendered by this run
    peak_rss_mb: float
    last_frame: Path | None = None


def _read_image(path: Path):
    import cv2

    if not path.is_file():
        raise GenerateRefused(f"--image {path}: no such file")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise GenerateRefused(f"--image {path}: not a readable image; use a JPEG, PNG or WebP photo")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _engine_config(
    request: GenerateRequest, settings: Preset, seed: int, size: tuple[int, int]
) -> tuple[dict[str, Any], list[str]]:
    """(options for load_engine, notes about options this engine does not use)."""
    width, height = size
    notes: list[str] = []
    if request.engine == "lite":
        config: dict[str, Any] = {"size": (width, height), "seed": seed}
        unused = [
            ("--prompt", request.prompt is not None),
            ("--sample_steps", request.sample_steps is not None),
            ("--sample_solver", request.sample_solver is not None),
            ("--sample_guide_scale", request.sample_guide_scale is not None),
            ("--offload_model", bool(request.offload_model)),
            ("--tiny", request.tiny),
            ("--weights_dir", request.weights_dir is not None),
            ("--num_gpus_dit", request.num_gpus_dit != 1),
            ("--vae_gpu", request.vae_gpu),
        ]
        notes += [flag for flag, given in unused if given]
        return config, notes
    # liveavatar: the chosen frame as its own area cap and aspect, so it renders exactly that size.
    config = {"size": f"{width}*{height}", "aspect": f"{width}:{height}", "seed": seed}
    if request.tiny:
        config["tiny"] = True
    elif request.weights_dir:
        config["weights_dir"] = str(request.weights_dir)
    if request.num_gpus_dit != 1 or request.vae_gpu:
        config.update(num_gpus_dit=request.num_gpus_dit, vae_gpu=request.vae_gpu)
    if settings.sample_steps not in (None, 4):
        notes.append(f"--sample_steps {settings.sample_steps} (the engine runs the distilled model's 4 steps)")
    if settings.offload_model:
        notes.append("--offload_model (the engine does not offload yet)")
    if settings.sample_guide_scale:
        notes.append("--sample_guide_scale (the distilled model uses no guidance, as in the reference)")
    return config, notes


def _torchrun_worker() -> bool:
    from live_avatar.core.engines.liveavatar.pipeline.launcher import is_torchrun_worker

    return is_torchrun_worker()


def _load_engine(name: str, config: dict[str, Any]):
    from live_avatar.core.engines import load_engine

    try:
        return load_engine(name, **config)
    except (ValueError, OSError) as exc:  # engine option errors and missing weights are user-facing
        raise GenerateRefused(f"the {name} engine cannot start: {exc}") from None


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _unfinished(files: RenderFiles) -> Unfinished:
    """After an interruption or a failure: drop the work folder, keep the partial file if a state
    says which clips it holds, else remove it too."""
    shutil.rmtree(files.work_dir, ignore_errors=True)
    if files.state.exists():
        state = load_state(files.state)
        return Unfinished(files.partial, state.clips_done, resumable=state.generator_state is not None)
    files.partial.unlink(missing_ok=True)
    return Unfinished(files.partial, None, resumable=False)


class GenerateJob:
    def __init__(
        self,
        request: GenerateRequest,
        *,
        say: Callable[[str], None] = _log.info,
        warn: Callable[[str], None] = _log.warning,
        show_progress: bool = True,
        during_render: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    ):
        self.request = request
        self.files = RenderFiles(request.output_path())
        self.say = say
        self.warn = warn
        self.show_progress = show_progress
        self.during_render = during_render
        self._created: list[Path] = []  # what this run made before rendering: removed again if it stops

    def run(self) -> GenerateResult:
        try:
            return self._run()
        except BaseException:  # a refusal, Ctrl-C or a crash before rendering started: leave nothing behind
            _remove(self._created)
            raise

    def _settings(self) -> tuple[Preset, int, int]:
        """Preset <- explicit options, and the checks that need no file: (settings, seed, area cap)."""
        request = self.request
        try:
            preset = load_preset(request.preset or DEFAULT_PRESET)
        except PresetError as exc:
            raise GenerateRefused(str(exc)) from None
        settings = preset.merged({f.name: getattr(request, f.name) for f in dataclasses.fields(request)})
        seed = DEFAULT_SEED if request.seed is None else request.seed
        try:
            max_w, max_h = parse_size(settings.size)
            if settings.num_clip is not None and settings.num_clip <= 0:
                raise PlanError(f"--num_clip {settings.num_clip}: must be at least 1 (or leave it out to cover the whole audio)")
            if settings.sample_steps is not None and settings.sample_steps < 1:
                raise PlanError(f"--sample_steps {settings.sample_steps}: must be at least 1 (4 is the distilled model's count)")
            if settings.sample_solver != "euler":
                raise PlanError(f"--sample_solver {settings.sample_solver!r}: only 'euler' is available (the distilled model's sampler)")
            if request.output and request.output.suffix.lower() != ".mp4":
                raise PlanError(f"--output {request.output}: the output is an MP4; give it a .mp4 name")
        except PlanError as exc:
            raise GenerateRefused(str(exc)) from None
        return settings, seed, max_w * max_h

    def _run(self) -> GenerateResult:
        request, files = self.request, self.files

        # 1. Options: preset <- explicit options; cheap checks first, before any file is touched.
        settings, seed, max_area = self._settings()
        try:  # a missing extra is said before any decoding (find_spec only: nothing heavy is imported)
            from live_avatar.core.engines import check_engine_available

            check_engine_available(request.engine)
        except ValueError as exc:
            raise GenerateRefused(f"the {request.engine} engine cannot start: {exc}") from None
        image = _read_image(request.image)
        if not request.audio.is_file():
            raise GenerateRefused(f"--audio {request.audio}: no such file")
        if not files.output.parent.exists():
            raise GenerateRefused(f"output folder {files.output.parent} does not exist")

        if request.engine == "liveavatar" and _torchrun_worker():  # torch is there: the extra was checked above
            # Under torchrun every rank runs this command; ranks > 0 only serve the step pipeline. They
            # need the engine's options (the frame size follows the photo), never the audio or the
            # output's files, which rank 0 alone prepares (two ranks writing them raced).
            limits = ENGINE_LIMITS[request.engine]
            size = choose_size(image.shape[1], image.shape[0], max_area, limits.size_divisor)
            engine_config, _ = _engine_config(request, settings, seed, size)
            _load_engine(request.engine, engine_config)  # a worker serves the pipeline and leaves the process there
            raise RuntimeError("a step pipeline worker came back from serving")  # pragma: no cover - unreachable

        # 2. An unfinished render of the same output: continue it (resume) or refuse to overwrite it.
        state = None
        if files.state.exists():
            if not request.resume:
                raise GenerateRefused(
                    f"{files.output} has an unfinished render ({files.partial.name}, {files.state.name}); "
                    "add --resume to continue it, or delete those files to start over"
                )
            try:
                state = load_state(files.state)
            except ResumeError as exc:
                raise GenerateRefused(str(exc)) from None
        elif request.resume:
            self.say(f"nothing to resume for {files.output}: starting from the beginning")

        # 3. Audio: decode (any format), trim, normalise; then the plan.
        if not files.work_dir.exists():
            self._created.append(files.work_dir)
        try:
            files.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only or special folder, or a file in the way
            raise GenerateRefused(f"cannot create {files.work_dir}: {exc.strerror}") from None
        try:
            prepared = prepare_audio(
                request.audio, files.work_dir, trim_silence=request.trim_silence, target_lufs=request.normalize_loudness
            )
        except AudioInputError as exc:
            raise GenerateRefused(str(exc)) from None
        if prepared.gain_db:
            self.say(f"audio: loudness normalised to {request.normalize_loudness:g} LUFS (gain {prepared.gain_db:+.1f} dB)")
        if request.trim_silence:
            self.say(f"audio: kept {prepared.seconds:.2f} s of {prepared.source_seconds:.2f} s (silence trimmed)")
        try:
            plan = make_plan(
                image_size=(image.shape[1], image.shape[0]),
                max_area=max_area,
                audio_samples=prepared.num_samples,
                infer_frames=settings.infer_frames,
                num_clip=settings.num_clip,
                limits=ENGINE_LIMITS[request.engine],
            )
        except PlanError as exc:
            raise GenerateRefused(str(exc)) from None

        self.say(plan.describe())

        # 4. Engine and avatar (a photo without a usable face is refused here).
        engine_config, ignored = _engine_config(request, settings, seed, (plan.width, plan.height))
        engine = _load_engine(request.engine, engine_config)
        try:
            if plan.infer_frames % engine.block_frames:
                raise GenerateRefused(
                    f"--infer_frames {plan.infer_frames}: the {request.engine} engine renders blocks of {engine.block_frames} "
                    f"frames; use a multiple of {engine.block_frames} (e.g. 48)"
                )
            try:
                avatar = engine.prepare_avatar(image)
            except AvatarError as exc:
                raise GenerateRefused(f"--image {request.image}: {exc}") from None
            width, height = engine.size
            if (width, height) != (plan.width, plan.height):
                self.say(f"note: the {request.engine} engine renders {width}*{height} (planned {plan.width}*{plan.height})")
            plan = dataclasses.replace(plan, width=width, height=height, block_frames=engine.block_frames)
            if ignored:
                self.say(f"note: the {request.engine} engine has no use for: {', '.join(ignored)}")
            kept_bytes = plan.kept_frames_bytes
            available = available_memory_bytes()
            if not settings.enable_online_decode and available is not None and kept_bytes > 0.8 * available:
                raise GenerateRefused(
                    f"without --enable_online_decode all {plan.frames} frames ({kept_bytes / 2**30:.1f} GiB) would be kept "
                    f"in memory until the end, and this machine has {available / 2**30:.1f} GiB available; "
                    "add --enable_online_decode (the default of every preset) for constant memory"
                )
            if not settings.enable_online_decode and kept_bytes > LONG_PLAN_WARNING_BYTES:
                self.warn(
                    f"without --enable_online_decode all {plan.frames} frames ({kept_bytes / 2**30:.1f} GiB) are kept "
                    "in memory until the end, like the reference tool, and a kill -9 loses them; "
                    "add --enable_online_decode (or use --preset long) for constant memory"
                )

            # 5. Fingerprint of everything that changes the frames (not num_clip: a resume may extend).
            fingerprint_options = {
                "engine": request.engine, "image": file_sha1(request.image), "audio": prepared.source_sha1,
                "prompt": request.prompt, "size": [width, height], "infer_frames": plan.infer_frames,
                "sample_steps": settings.sample_steps, "sample_solver": settings.sample_solver,
                "sample_guide_scale": settings.sample_guide_scale, "seed": seed, "tiny": request.tiny,
                "trim_silence": request.trim_silence, "normalize_loudness": request.normalize_loudness,
            }
            fingerprint = options_fingerprint(fingerprint_options)
            if state is not None:
                try:
                    check_compatible(state, fingerprint, fingerprint_options)
                except ResumeError as exc:
                    raise GenerateRefused(str(exc)) from None
            checkpoint = RenderCheckpoint(fingerprint, fingerprint_options, files.state)
            return self._render(engine, avatar, prepared, plan, settings, state, checkpoint)
        finally:
            engine.close()

    def _render(
        self,
        engine,
        avatar,
        prepared: PreparedAudio,
        plan: RenderPlan,
        settings: Preset,
        state: RenderState | None,
        checkpoint: RenderCheckpoint,
    ) -> GenerateResult:
        request, files = self.request, self.files
        generator = engine.new_generator(avatar, request.prompt)
        try:
            generator.state_dict()
            resumable = True
        except NotImplementedError as exc:
            resumable = False
            self.warn(f"this render cannot be resumed if interrupted ({exc}); finished clips are still kept in {files.partial}")
        partial = PartialVideo(files.partial, width=plan.width, height=plan.height, fps=plan.fps)
        start_clip = 0
        vad = None
        if state is not None:
            if state.generator_state is None or not resumable:
                generator.close()
                raise GenerateRefused(
                    f"the {request.engine} engine cannot continue a render (its state cannot be saved); "
                    f"{files.partial} plays the {state.clips_done} finished clip(s); delete it and "
                    f"{files.state.name} to render again from the start"
                )
            have = files.partial.stat().st_size if files.partial.exists() else -1
            if have < state.partial_bytes:
                generator.close()
                raise GenerateRefused(
                    f"cannot resume: {files.partial} is missing or shorter than the saved state says "
                    f"({max(have, 0)} < {state.partial_bytes} bytes); delete {files.state.name} to start over"
                )
            generator.load_state_dict(state.generator_state)
            vad = state.vad_state
            partial.open(resume_bytes=state.partial_bytes)
            start_clip = min(state.clips_done, plan.clips)
            self.say(f"resuming after clip {state.clips_done} ({state.frames_done} frames already rendered)")
        else:
            partial.open()
        self._created.clear()  # from here on, nothing is refused any more: progress is kept, not removed

        progress = RenderProgress(plan.clips, start_clip, frames_per_clip=plan.infer_frames, enabled=self.show_progress)
        renderer = OfflineRenderer(
            generator, prepared, plan, partial, checkpoint,
            online_decode=settings.enable_online_decode, vad=vad,
            on_clip_done=lambda clip: progress.clip_done(), save_generator_state=resumable,
        )
        started, cpu_started = time.monotonic(), time.process_time()
        with self.during_render():
            try:
                renderer.run(start_clip)
            except KeyboardInterrupt:
                progress.close()
                raise GenerateInterrupted(_unfinished(files)) from None
            except Exception as exc:  # any engine failure: keep what is done, say how to go on
                progress.close()
                raise GenerateFailed(_unfinished(files)) from exc
            finally:
                generator.close()
        progress.close()

        info = finalize(files.partial, files.output, frames=plan.frames, fps=plan.fps, prepared=prepared)
        png = None
        if request.save_last_frame:
            png = files.output.with_name(files.output.stem + ".last.png")
            save_last_frame(files.output, png)
            self.say(f"last frame: {png}")
        files.remove_all()
        wall = time.monotonic() - started
        cpu = time.process_time() - cpu_started  # all threads; tells a loaded machine from a slow render
        rendered_s = (plan.clips - start_clip) * plan.infer_frames / plan.fps
        return GenerateResult(
            output=files.output,
            video_seconds=info["video_seconds"],
            frames=info["frames"],
            audio_seconds=info["audio_seconds"],
            wall_s=wall,
            cpu_s=cpu,
            real_time_factor=wall / rendered_s if rendered_s else 0.0,
            peak_rss_mb=peak_rss_mb(),
            last_frame=png,
        )
