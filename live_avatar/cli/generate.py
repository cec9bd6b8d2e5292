"""``avatar generate``: render a talking-portrait video offline from one photo and one recording.

The Live Avatar reference tool's offline workflow with its option names, on either engine, with
constant memory (online decode), crash-safe progress and ``--resume``. The job is
``live_avatar.core.offline.job``; this module defines the options, turns them into a
``GenerateRequest``, runs the job and reports (messages, exit status, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
from pathlib import Path

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

Presets (live_avatar/configs/presets/*.yaml) set several options at once; explicit flags override
them. Every preset decodes online (memory flat whatever the length):
  preview   384*256 area, at most 10 clips, 2 steps, online decode  (a quick look)
  standard  704*384 area, whole audio, 4 steps                       (the reference's defaults)
  long      like standard, for talks up to hours, resumable
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
    run.add_argument("--enable_online_decode", action=argparse.BooleanOptionalAction, default=None, help="encode and append each block as soon as it exists: memory stays flat whatever the length, and a kill -9 loses at most one clip. On in every preset; --no-enable_online_decode keeps the frames until the end like the reference (refused when they would not fit in the memory this machine has)")
    run.add_argument("--offload_model", action=argparse.BooleanOptionalAction, default=None, help="the reference's switch for GPUs with little memory (model parts parked in CPU memory between uses); accepted for compatibility and reported as unused: neither engine offloads yet")
    run.add_argument("--weights_dir", type=Path, default=None, help="liveavatar: the checkpoint folder (Wan2.2-S2V-14B + the Live Avatar LoRA, see the engine's documentation)")
    run.add_argument("--tiny", action="store_true", help="liveavatar: the tiny random-weight configuration that runs on a CPU (tests; the video is noise)")
    run.add_argument("--num_gpus_dit", type=int, default=1, help="liveavatar: spread the 4 denoising steps of each block over N devices, one process each, started by this command (CPU processes without GPUs); 2: two steps each, 4: one each; the frames are the same whatever N")
    run.add_argument("--vae_gpu", action="store_true", help="liveavatar with --num_gpus_dit: decode the VAE on a device of its own (one more process)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted render of the same OUTPUT from its last finished clip (same options required); without a saved state it starts from the beginning")

    audio = p.add_argument_group("audio preparation")
    audio.add_argument("--trim-silence", dest="trim_silence", action="store_true", help="cut leading and trailing silence from the audio before planning")
    audio.add_argument("--normalize-loudness", dest="normalize_loudness", nargs="?", type=float, const=-16.0, default=None, metavar="LUFS", help="normalise loudness to this EBU R128 integrated level (default -16 LUFS when given without a value)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _say(text: str) -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from live_avatar.core.offline.job import (
        GenerateFailed,
        GenerateInterrupted,
        GenerateJob,
        GenerateRefused,
        GenerateRequest,
    )

    # MediaPipe/TFLite log banners on stderr would bury the plan and the progress bar.
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    request = GenerateRequest(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GenerateRequest)})
    job = GenerateJob(request, say=_say, warn=_warn, show_progress=not args.quiet, during_render=_sigterm_interrupts)
    try:
        result = job.run()
    except GenerateRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except GenerateInterrupted as exc:
        _report_unfinished(exc.unfinished, "interrupted")
        return EXIT_INTERRUPTED
    except GenerateFailed as exc:
        import traceback

        cause = exc.__cause__
        traceback.print_exception(cause)
        _report_unfinished(exc.unfinished, f"failed ({type(cause).__name__}: {cause})")
        return EXIT_FAILED
    _say(
        f"done: {result.output}  {result.video_seconds:.2f} s video ({result.frames} frames, audio "
        f"{result.audio_seconds:.2f} s)  wall {result.wall_s:.1f} s  real-time factor {result.real_time_factor:.2f} "
        f"(wall/video; <1 is faster than real time)  cpu {result.cpu_s:.1f} s  peak RSS {result.peak_rss_mb:.0f} MB"
    )
    return 0


@contextlib.contextmanager
def _sigterm_interrupts():
    """While rendering, SIGTERM stops like Ctrl-C: finished clips and the resume state are kept."""
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _report_unfinished(unfinished, what: str) -> None:
    if unfinished.clips_done is not None:
        how = (
            "run the same command with --resume to continue"
            if unfinished.resumable
            else "this engine cannot resume; delete it and the .state file to render again"
        )
        print(f"{what} after {unfinished.clips_done} finished clip(s): {unfinished.partial} plays what is done; {how}", file=sys.stderr)
    else:
        print(f"{what} before the first clip was finished; nothing was kept", file=sys.stderr)
