"""``avatar generate``: render a talking-portrait video offline from one photo and one recording.

The Live Avatar reference tool's offline workflow with its option names, on either engine, with
constant memory (online decode), crash-safe progress and ``--resume``. The work is done by
``live_avatar.core.offline``; this module turns options into a plan, runs it and reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Render a talking-portrait video offline from one photo (--image) and one recording (--audio).

Options have the meaning they have in the Live Avatar reference tool:
  --size "W*H"   an AREA CAP, not a resolution: the output keeps the photo's aspect ratio, with
                 sides in multiples of 64 (liveavatar; 16 for lite) whose product is <= W*H.
                 E.g. a 16:9 photo with "704*384" gives 704*384, with "688*368" gives 640*384.
  clip           infer_frames frames at 25 fps (48 frames = 1.92 s). The number of clips is what
                 the audio needs, capped by --num_clip; video past the audio's end is rendered on
                 silence. The plan (size, clips, frames, seconds, audio unused/padded) is printed
                 before rendering starts.

Never lose work: while rendering, OUTPUT.partial.ts holds every finished clip (it plays in any
player, even after a crash or kill -9) and OUTPUT.state the resume point. Run the same command
with --resume to continue from the last finished clip; the result is the same length as an
uninterrupted render, with the motion continuing across the seam.

Presets (configs/presets/*.yaml) set several options at once; explicit flags override them:
  preview   384*256 area, at most 10 clips, 2 steps, online decode  (a quick look)
  standard  704*384 area, whole audio, 4 steps, decode at the end    (the reference's defaults)
  long      like standard with online decode: constant memory, for talks up to hours
  hq        1280*720 area, 4 steps, online decode

Examples:
  avatar generate --image me.jpg --audio talk.m4a --preset long --output talk.mp4
  avatar generate --image me.jpg --audio hello.wav --size "512*512" --num_clip 5 --engine lite
  avatar generate --image me.jpg --audio talk.m4a --preset long --output talk.mp4 --resume

Exit status: 0 done, 2 invalid input (nothing written), 130 interrupted (progress kept, use
--resume), 1 failure during rendering (progress kept, use --resume).
"""

EXIT_INVALID = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
LONG_PLAN_WARNING_BYTES = 2 << 30  # warn above 2 GiB of frames kept in memory (no online decode)


class _Refused(Exception):
    """Invalid input: print the message, exit 2, leave nothing behind."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    io = p.add_argument_group("input and output")
    io.add_argument("--image", required=True, type=Path, help="the portrait photo (JPEG, PNG, WebP...); one face, looking roughly at the camera")
    io.add_argument("--audio", required=True, type=Path, help="the speech recording; any format FFmpeg/PyAV decodes (WAV, MP3, M4A, OGG, FLAC, a video's audio track...)")
    io.add_argument("--prompt", default=None, help="text description of the scene/motion (used by the liveavatar engine; lite ignores it)")
    out = io.add_mutually_exclusive_group()
    out.add_argument("--output", type=Path, default=None, help="the MP4 to write (default: IMAGE-STEM_AUDIO-STEM.mp4 in the current folder)")
    out.add_argument("--output_prefix", default=None, help="write PREFIX_IMAGE-STEM_AUDIO-STEM.mp4 instead (PREFIX may include a folder)")
    io.add_argument("--save_last_frame", action="store_true", help="also write OUTPUT-STEM.last.png next to the video: its last frame, e.g. as the photo of a follow-on segment")

    plan = p.add_argument_group("what to render (a preset sets these; explicit flags win)")
    plan.add_argument("--preset", default=None, help="preview | standard | long | hq, or any NAME with configs/presets/NAME.yaml (default: standard)")
    plan.add_argument("--size", default=None, help='area cap "W*H" (default 704*384): aspect ratio of the photo kept, sides multiples of 64 (lite: 16), W*H not exceeded')
    plan.add_argument("--num_clip", type=int, default=None, help="at most this many clips (default: as many as the audio needs); audio past the last clip is left out")
    plan.add_argument("--infer_frames", type=int, default=None, help="frames per clip at 25 fps (default 48 = 1.92 s); must be a multiple of the engine's block (liveavatar 12, lite 2)")
    plan.add_argument("--sample_steps", type=int, default=None, help="denoising steps per block, liveavatar only (default 4, the distilled model's count; the engine does not take other counts yet, so another value is reported as unused)")
    plan.add_argument("--sample_solver", default=None, help="sampler (liveavatar; default euler, the only one the distilled model is trained for)")
    plan.add_argument("--sample_guide_scale", type=float, default=None, help="classifier-free guidance (liveavatar; default 0: the distilled model needs none and the reference ignores it)")
    plan.add_argument("--seed", type=int, default=None, help="random seed: same seed + same inputs = same video (default 42)")

    run = p.add_argument_group("how to render")
    run.add_argument("--engine", default="lite", choices=["lite", "liveavatar"], help="lite: CPU, no model download (default); liveavatar: the diffusion model, GPU")
    run.add_argument("--enable_online_decode", action=argparse.BooleanOptionalAction, default=None, help="encode and append each block as soon as it exists: memory stays flat whatever the length, and a kill -9 loses at most one clip. Without it, like the reference, frames are kept until the end (a warning says when that needs a lot of memory)")
    run.add_argument("--offload_model", action=argparse.BooleanOptionalAction, default=None, help="the reference's switch for GPUs with little memory (model parts parked in CPU memory between uses); accepted for compatibility and reported as unused: neither engine offloads yet")
    run.add_argument("--weights_dir", type=Path, default=None, help="liveavatar: the checkpoint folder (Wan2.2-S2V-14B + the Live Avatar LoRA, see the engine's documentation)")
    run.add_argument("--tiny", action="store_true", help="liveavatar: the tiny random-weight configuration that runs on a CPU (tests; the video is noise)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted render of the same OUTPUT from its last finished clip (same options required); without a saved state it starts from the beginning")

    audio = p.add_argument_group("audio preparation")
    audio.add_argument("--trim-silence", dest="trim_silence", action="store_true", help="cut leading and trailing silence from the audio before planning")
    audio.add_argument("--normalize-loudness", dest="normalize_loudness", nargs="?", type=float, const=-16.0, default=None, metavar="LUFS", help="normalise loudness to this EBU R128 integrated level (default -16 LUFS when given without a value)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _default_output(args: argparse.Namespace) -> Path:
    stem = f"{args.image.stem}_{args.audio.stem}"
    if args.output_prefix:
        prefix = Path(args.output_prefix)
        return prefix.with_name(f"{prefix.name}_{stem}.mp4")
    return Path(f"{stem}.mp4")


def _read_image(path: Path):
    import cv2

    if not path.is_file():
        raise _Refused(f"--image {path}: no such file")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise _Refused(f"--image {path}: not a readable image; use a JPEG, PNG or WebP photo")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _engine_config(args, settings, size: tuple[int, int]) -> tuple[dict[str, Any], list[str]]:
    """(options for load_engine, notes about flags this engine does not use)."""
    width, height = size
    notes: list[str] = []
    if args.engine == "lite":
        config: dict[str, Any] = {"size": (width, height), "seed": settings["seed"]}
        unused = [
            ("--prompt", args.prompt is not None),
            ("--sample_steps", args.sample_steps is not None),
            ("--sample_solver", args.sample_solver is not None),
            ("--sample_guide_scale", args.sample_guide_scale is not None),
            ("--offload_model", bool(args.offload_model)),
            ("--tiny", args.tiny),
            ("--weights_dir", args.weights_dir is not None),
        ]
        notes += [flag for flag, given in unused if given]
        return config, notes
    # liveavatar: the chosen frame as its own area cap and aspect, so it renders exactly that size.
    config = {"size": f"{width}*{height}", "aspect": f"{width}:{height}", "seed": settings["seed"]}
    if args.tiny:
        config["tiny"] = True
    elif args.weights_dir:
        config["weights_dir"] = str(args.weights_dir)
    if settings["sample_steps"] not in (None, 4):
        notes.append(f"--sample_steps {settings['sample_steps']} (the engine runs the distilled model's 4 steps)")
    if settings["offload_model"]:
        notes.append("--offload_model (the engine does not offload yet)")
    if settings["sample_guide_scale"]:
        notes.append("--sample_guide_scale (the distilled model uses no guidance, as in the reference)")
    return config, notes


def _load_engine(name: str, config: dict[str, Any]):
    # MediaPipe/TFLite log banners on stderr would bury the plan and the progress bar.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from live_avatar.core.engines import load_engine

    try:
        return load_engine(name, **config)
    except (ValueError, OSError) as exc:  # engine option errors and missing weights are user-facing
        raise _Refused(f"the {name} engine cannot start: {exc}") from None


def _say(text: str) -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from live_avatar.core.offline.resume import RenderFiles

    output = args.output or _default_output(args)
    files = RenderFiles(Path(output))
    created: list[Path] = []  # what this run made before rendering: removed again if it refuses
    try:
        return _run(args, files, created)
    except _Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        _remove(created)
        return EXIT_INVALID
    except BaseException:  # Ctrl-C or a crash before rendering started: leave nothing behind
        _remove(created)
        raise


def _remove(paths: list[Path]) -> None:
    import shutil

    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _run(args: argparse.Namespace, files, created: list[Path]) -> int:
    from live_avatar.core.contract import AvatarError
    from live_avatar.core.offline.audio_prep import AudioInputError, file_sha1, prepare_audio
    from live_avatar.core.offline.plan import ENGINE_LIMITS, PlanError, make_plan, parse_size
    from live_avatar.core.presets import DEFAULT_PRESET, PresetError, load_preset
    from live_avatar.core.offline.resume import ResumeError, check_compatible, load_state, options_fingerprint

    # 1. Options: preset <- explicit flags; cheap checks first, before any file is touched.
    try:
        preset = load_preset(args.preset or DEFAULT_PRESET)
    except PresetError as exc:
        raise _Refused(str(exc)) from None
    settings = preset.merged({k: getattr(args, k, None) for k in vars(args)})
    seed = 42 if args.seed is None else args.seed
    options = {
        "size": settings.size, "num_clip": settings.num_clip, "infer_frames": settings.infer_frames,
        "sample_steps": settings.sample_steps, "sample_solver": settings.sample_solver,
        "sample_guide_scale": settings.sample_guide_scale, "seed": seed,
        "enable_online_decode": settings.enable_online_decode, "offload_model": settings.offload_model,
    }
    limits = ENGINE_LIMITS[args.engine]
    try:
        max_w, max_h = parse_size(settings.size)
        if settings.num_clip is not None and settings.num_clip <= 0:
            raise PlanError(f"--num_clip {settings.num_clip}: must be at least 1 (or leave it out to cover the whole audio)")
        if settings.sample_steps is not None and settings.sample_steps < 1:
            raise PlanError(f"--sample_steps {settings.sample_steps}: must be at least 1 (4 is the distilled model's count)")
        if settings.sample_solver != "euler":
            raise PlanError(f"--sample_solver {settings.sample_solver!r}: only 'euler' is available (the distilled model's sampler)")
        if args.output and args.output.suffix.lower() != ".mp4":
            raise PlanError(f"--output {args.output}: the output is an MP4; give it a .mp4 name")
    except PlanError as exc:
        raise _Refused(str(exc)) from None
    image = _read_image(args.image)
    if not args.audio.is_file():
        raise _Refused(f"--audio {args.audio}: no such file")
    if not files.output.parent.exists():
        raise _Refused(f"output folder {files.output.parent} does not exist")

    # 2. An unfinished render of the same output: continue it (--resume) or refuse to overwrite it.
    state = None
    if files.state.exists():
        if not args.resume:
            raise _Refused(
                f"{files.output} has an unfinished render ({files.partial.name}, {files.state.name}); "
                "add --resume to continue it, or delete those files to start over"
            )
        try:
            state = load_state(files.state)
        except ResumeError as exc:
            raise _Refused(str(exc)) from None
    elif args.resume:
        _say(f"nothing to resume for {files.output}: starting from the beginning")

    # 3. Audio: decode (any format), trim, normalise; then the plan.
    if not files.work_dir.exists():
        created.append(files.work_dir)
    try:
        files.work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only or special folder, or a file in the way
        raise _Refused(f"cannot create {files.work_dir}: {exc.strerror}") from None
    try:
        prepared = prepare_audio(
            args.audio, files.work_dir, trim_silence=args.trim_silence, target_lufs=args.normalize_loudness
        )
    except AudioInputError as exc:
        raise _Refused(str(exc)) from None
    if prepared.gain_db:
        _say(f"audio: loudness normalised to {args.normalize_loudness:g} LUFS (gain {prepared.gain_db:+.1f} dB)")
    if args.trim_silence:
        _say(f"audio: kept {prepared.seconds:.2f} s of {prepared.source_seconds:.2f} s (silence trimmed)")
    try:
        plan = make_plan(
            image_size=(image.shape[1], image.shape[0]),
            max_area=max_w * max_h,
            audio_samples=prepared.num_samples,
            infer_frames=settings.infer_frames,
            num_clip=settings.num_clip,
            limits=limits,
        )
    except PlanError as exc:
        raise _Refused(str(exc)) from None

    _say(plan.describe())

    # 4. Engine and avatar (a photo without a usable face is refused here).
    engine_config, ignored = _engine_config(args, options, (plan.width, plan.height))
    engine = _load_engine(args.engine, engine_config)
    try:
        if plan.infer_frames % engine.block_frames:
            raise _Refused(
                f"--infer_frames {plan.infer_frames}: the {args.engine} engine renders blocks of {engine.block_frames} "
                f"frames; use a multiple of {engine.block_frames} (e.g. 48)"
            )
        try:
            avatar = engine.prepare_avatar(image)
        except AvatarError as exc:
            raise _Refused(f"--image {args.image}: {exc}") from None
        width, height = engine.size
        if (width, height) != (plan.width, plan.height):
            _say(f"note: the {args.engine} engine renders {width}*{height} (planned {plan.width}*{plan.height})")
        plan = dataclasses.replace(plan, width=width, height=height, block_frames=engine.block_frames)
        if ignored:
            _say(f"note: the {args.engine} engine has no use for: {', '.join(ignored)}")
        kept_bytes = plan.kept_frames_bytes
        if not settings.enable_online_decode and kept_bytes > LONG_PLAN_WARNING_BYTES:
            _warn(
                f"without --enable_online_decode all {plan.frames} frames ({kept_bytes / 2**30:.1f} GiB) are kept "
                "in memory until the end, like the reference tool, and a kill -9 loses them; "
                "add --enable_online_decode (or use --preset long) for constant memory"
            )

        # 5. Fingerprint of everything that changes the frames (not num_clip: a resume may extend).
        fingerprint_options = {
            "engine": args.engine, "image": file_sha1(args.image), "audio": prepared.source_sha1,
            "prompt": args.prompt, "size": [width, height], "infer_frames": plan.infer_frames,
            "sample_steps": settings.sample_steps, "sample_solver": settings.sample_solver,
            "sample_guide_scale": settings.sample_guide_scale, "seed": seed, "tiny": args.tiny,
            "trim_silence": args.trim_silence, "normalize_loudness": args.normalize_loudness,
        }
        fingerprint = options_fingerprint(fingerprint_options)
        if state is not None:
            try:
                check_compatible(state, fingerprint, fingerprint_options)
            except ResumeError as exc:
                raise _Refused(str(exc)) from None
        return _render(args, files, created, engine, avatar, prepared, plan, settings, state, fingerprint, fingerprint_options)
    finally:
        engine.close()


def _render(args, files, created, engine, avatar, prepared, plan, settings, state, fingerprint, fingerprint_options) -> int:
    from live_avatar.core.offline.progress import RenderProgress, peak_rss_mb
    from live_avatar.core.offline.render import OfflineRenderer, RenderCheckpoint
    from live_avatar.core.offline.video_writer import PartialVideo, finalize, save_last_frame

    generator = engine.new_generator(avatar, args.prompt)
    try:
        generator.state_dict()
        resumable = True
    except NotImplementedError as exc:
        resumable = False
        _warn(f"this render cannot be resumed if interrupted ({exc}); finished clips are still kept in {files.partial}")
    partial = PartialVideo(files.partial, width=plan.width, height=plan.height, fps=plan.fps)
    start_clip = 0
    vad = None
    if state is not None:
        if state.generator_state is None or not resumable:
            generator.close()
            raise _Refused(
                f"the {args.engine} engine cannot continue a render (its state cannot be saved); "
                f"{files.partial} plays the {state.clips_done} finished clip(s); delete it and "
                f"{files.state.name} to render again from the start"
            )
        have = files.partial.stat().st_size if files.partial.exists() else -1
        if have < state.partial_bytes:
            generator.close()
            raise _Refused(
                f"cannot resume: {files.partial} is missing or shorter than the saved state says "
                f"({max(have, 0)} < {state.partial_bytes} bytes); delete {files.state.name} to start over"
            )
        generator.load_state_dict(state.generator_state)
        vad = state.vad_state
        partial.open(resume_bytes=state.partial_bytes)
        start_clip = min(state.clips_done, plan.clips)
        _say(f"resuming after clip {state.clips_done} ({state.frames_done} frames already rendered)")
    else:
        partial.open()
    created.clear()  # from here on, nothing is refused any more: progress is kept, not removed

    progress = RenderProgress(plan.clips, start_clip, frames_per_clip=plan.infer_frames, enabled=not args.quiet)
    renderer = OfflineRenderer(
        generator, prepared, plan, partial,
        RenderCheckpoint(fingerprint, fingerprint_options, files.state),
        online_decode=settings.enable_online_decode, vad=vad,
        on_clip_done=lambda clip: progress.clip_done(), save_generator_state=resumable,
    )
    started, cpu_started = time.monotonic(), time.process_time()
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        renderer.run(start_clip)
    except KeyboardInterrupt:
        progress.close()
        _report_unfinished(files, "interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - any engine failure: keep what is done, say how to go on
        progress.close()
        import traceback

        traceback.print_exc()
        _report_unfinished(files, f"failed ({type(exc).__name__}: {exc})")
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        generator.close()
    progress.close()

    info = finalize(files.partial, files.output, frames=plan.frames, fps=plan.fps, prepared=prepared)
    if args.save_last_frame:
        png = files.output.with_name(files.output.stem + ".last.png")
        save_last_frame(files.output, png)
        _say(f"last frame: {png}")
    files.remove_all()
    wall = time.monotonic() - started
    cpu = time.process_time() - cpu_started  # all threads; tells a loaded machine from a slow render
    rendered_s = (plan.clips - start_clip) * plan.infer_frames / plan.fps
    rtf = wall / rendered_s if rendered_s else 0.0
    _say(
        f"done: {files.output}  {info['video_seconds']:.2f} s video ({info['frames']} frames, audio "
        f"{info['audio_seconds']:.2f} s)  wall {wall:.1f} s  real-time factor {rtf:.2f} "
        f"(wall/video; <1 is faster than real time)  cpu {cpu:.1f} s  peak RSS {peak_rss_mb():.0f} MB"
    )
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _report_unfinished(files, what: str) -> None:
    import shutil

    shutil.rmtree(files.work_dir, ignore_errors=True)
    if files.state.exists():
        from live_avatar.core.offline.resume import load_state

        state = load_state(files.state)
        how = (
            "run the same command with --resume to continue"
            if state.generator_state is not None
            else "this engine cannot resume; delete it and the .state file to render again"
        )
        print(f"{what} after {state.clips_done} finished clip(s): {files.partial} plays what is done; {how}", file=sys.stderr)
    else:
        files.partial.unlink(missing_ok=True)
        print(f"{what} before the first clip was finished; nothing was kept", file=sys.stderr)
