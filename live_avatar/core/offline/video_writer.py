"""Crash-safe incremental video output for ``avatar generate`` (PyAV).

While rendering, frames go into a *partial* file: an MPEG-TS made of one self-contained segment
per clip (H.264 without B-frames, keyframe at the clip start, plus the clip's speech as AAC).
Each segment is encoded in memory as its blocks arrive, then appended to the file and fsynced in
one write. MPEG-TS is a stream format, so the file plays at any moment, even after ``kill -9``
mid-append (players skip a torn tail; ``--resume`` truncates it to the last finished clip).

At the end, ``finalize`` remuxes the video packets (no re-encode) into one MP4 with the user's
audio freshly encoded as AAC from the original file (so the seams of the per-clip audio in the
partial file never reach the result), written to a temporary name and renamed into place.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from live_avatar.core.offline.audio_prep import FEATURE_RATE, PreparedAudio, iter_output_audio, output_audio_format


@dataclass(frozen=True)
class EncoderConfig:
    codec: str = "libx264"
    crf: int = 18
    preset: str = "veryfast"
    pix_fmt: str = "yuv420p"
    # No B-frames: one packet per frame with pts == dts, so segments concatenate with continuous
    # timestamps and the final remux can renumber packets by frame index.
    x264_params: str = "bframes=0"
    partial_audio_bitrate: int = 48_000  # the partial file's speech track (16 kHz mono)
    final_audio_bitrate: int = 160_000
    # Shifts every timestamp of the partial file so that AAC priming (negative start) is never
    # "fixed" by the muxer differently in the first segment than in the others.
    partial_ts_offset_s: float = 0.2


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PartialVideo:
    """The partial file: appended one clip segment at a time (``begin_clip`` / ``add_*`` / ``end_clip``)."""

    def __init__(self, path: Path, *, width: int, height: int, fps: int, config: EncoderConfig | None = None):
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.config = config or EncoderConfig()
        self._segment = None  # (buffer, container, video stream, audio stream) of the clip in progress
        self._frames_in_segment = 0

    def open(self, resume_bytes: int | None = None) -> None:
        """Start a new file, or keep the first ``resume_bytes`` of an existing one (drops a torn tail)."""
        if resume_bytes is None:
            self.path.write_bytes(b"")
        else:
            with open(self.path, "r+b") as f:
                f.truncate(resume_bytes)
                os.fsync(f.fileno())

    def begin_clip(self, first_frame: int, num_frames: int) -> None:
        import av

        cfg = self.config
        buffer = io.BytesIO()
        container = av.open(
            buffer, "w", format="mpegts", container_options={"output_ts_offset": str(cfg.partial_ts_offset_s)}
        )
        video = container.add_stream(
            cfg.codec, rate=self.fps, options={"crf": str(cfg.crf), "preset": cfg.preset, "x264-params": cfg.x264_params}
        )
        video.width, video.height, video.pix_fmt = self.width, self.height, cfg.pix_fmt
        video.time_base = Fraction(1, self.fps)
        video.codec_context.gop_size = max(1, num_frames)
        audio = container.add_stream("aac", rate=FEATURE_RATE, layout="mono")
        audio.bit_rate = cfg.partial_audio_bitrate
        self._segment = (buffer, container, video, audio)
        self._next_frame = first_frame
        self._next_sample = first_frame * (FEATURE_RATE // self.fps)

    def add_frames(self, frames: np.ndarray, speech_audio: np.ndarray | None = None) -> None:
        """Encode a block now: uint8 [N, H, W, 3] RGB, plus its 16 kHz speech (N * 640 samples)."""
        import av

        _, container, video, audio = self._segment
        if frames.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"frames are {frames.shape[1:]}, expected ({self.height}, {self.width}, 3)")
        for frame in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = self._next_frame
            vf.time_base = Fraction(1, self.fps)
            container.mux(video.encode(vf))
            self._next_frame += 1
        if speech_audio is not None and speech_audio.size:
            af = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(speech_audio, dtype=np.float32).reshape(1, -1), format="flt", layout="mono"
            )
            af.sample_rate = FEATURE_RATE
            af.pts = self._next_sample
            af.time_base = Fraction(1, FEATURE_RATE)
            container.mux(audio.encode(af))
            self._next_sample += speech_audio.size

    def end_clip(self) -> int:
        """Finish the segment, append it to the file, fsync; returns the file's size (the resume point)."""
        buffer, container, video, audio = self._segment
        container.mux(video.encode(None))
        container.mux(audio.encode(None))
        container.close()
        self._segment = None
        with open(self.path, "ab") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())
            return f.tell()

    def abort_clip(self) -> None:
        """Drop the clip in progress (interrupted): the file keeps only finished clips."""
        if self._segment is not None:
            try:
                self._segment[1].close()
            except Exception:  # noqa: BLE001 - a half-written in-memory segment is discarded anyway
                pass
            self._segment = None


def iter_video_packets(partial: Path, max_frames: int) -> Iterator:
    """Video packets of the partial file, one per frame, at most ``max_frames``."""
    import av

    count = 0
    with av.open(str(partial)) as src:
        stream = src.streams.video[0]
        for packet in src.demux(stream):
            if packet.dts is None or packet.size == 0:
                continue
            yield stream, packet
            count += 1
            if count >= max_frames:
                return


def count_partial_frames(partial: Path) -> int:
    if not partial.is_file() or partial.stat().st_size == 0:
        return 0
    return sum(1 for _ in iter_video_packets(partial, 1 << 62))


def _audio_frames(prepared: PreparedAudio, rate: int, layout: str, max_seconds: float, frame_size: int):
    """The output audio cut into encoder-sized frames (the AAC encoder wants exactly frame_size)."""
    import av

    pending: list[np.ndarray] = []
    held = 0
    pts = 0

    def make(block: np.ndarray):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = pts
        frame.time_base = Fraction(1, rate)
        return frame

    for data in iter_output_audio(prepared, rate=rate, layout=layout, max_seconds=max_seconds):
        pending.append(data)
        held += data.shape[1]
        if held < frame_size:
            continue
        joined = np.concatenate(pending, axis=1)
        usable = joined.shape[1] // frame_size * frame_size
        for start in range(0, usable, frame_size):
            yield make(joined[:, start : start + frame_size])
            pts += frame_size
        pending = [joined[:, usable:]]
        held = joined.shape[1] - usable
    if held:
        yield make(np.concatenate(pending, axis=1))


def finalize(
    partial: Path,
    output: Path,
    *,
    frames: int,
    fps: int,
    prepared: PreparedAudio,
    config: EncoderConfig | None = None,
) -> dict:
    """Remux ``frames`` video frames of the partial file + the user's audio (AAC) into ``output``.

    Returns {"frames", "video_seconds", "audio_seconds"}. Written to ``output.tmp`` then renamed, so a
    crash here never leaves a half MP4 under the final name.
    """
    import av

    cfg = config or EncoderConfig()
    output = Path(output)
    tmp = output.with_name(output.name + ".tmp.mp4")
    video_seconds = frames / fps
    rate, layout = output_audio_format(Path(prepared.source))
    written = 0
    audio_samples = 0
    with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as dst:
        packets = iter_video_packets(partial, frames)
        first = next(packets, None)
        if first is None:
            raise RuntimeError(f"{partial} has no video frames")
        vin = first[0]
        vout = dst.add_stream_from_template(vin)
        vout.time_base = Fraction(1, fps)
        aout = dst.add_stream("aac", rate=rate, layout=layout)
        aout.bit_rate = cfg.final_audio_bitrate
        audio_frames = _audio_frames(prepared, rate, layout, video_seconds, aout.codec_context.frame_size or 1024)
        audio_time = 0.0
        audio_done = False

        def mux_audio_until(t: float) -> None:
            # Interleave by time so the muxer never buffers a long run of one stream.
            nonlocal audio_time, audio_done, audio_samples
            while not audio_done and audio_time <= t:
                frame = next(audio_frames, None)
                if frame is None:
                    dst.mux(aout.encode(None))
                    audio_done = True
                    return
                dst.mux(aout.encode(frame))
                audio_samples += frame.samples
                audio_time = audio_samples / rate

        def remux(packet) -> None:
            nonlocal written
            # Renumber by frame index: the partial's timestamps carry a per-file offset.
            packet.pts = packet.dts = written
            packet.time_base = Fraction(1, fps)
            packet.duration = 1
            packet.stream = vout
            dst.mux(packet)
            written += 1

        remux(first[1])
        for _, packet in packets:
            mux_audio_until(written / fps)
            remux(packet)
        mux_audio_until(float("inf"))
    if written != frames:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{partial} holds {written} frames, {frames} expected")
    os.replace(tmp, output)
    _fsync_dir(output.parent)
    return {"frames": written, "video_seconds": written / fps, "audio_seconds": audio_samples / rate}


def save_last_frame(video: Path, png: Path) -> None:
    """Decode the last frame of ``video`` and write it as a PNG (to start a follow-on segment)."""
    import av

    last = None
    with av.open(str(video)) as src:
        stream = src.streams.video[0]
        if stream.duration:
            # Jump near the end: decoding starts at the keyframe before (one clip at most).
            src.seek(max(0, stream.duration - int(2 / stream.time_base)), stream=stream, backward=True)
        for frame in src.decode(stream):
            last = frame
    if last is None:
        raise RuntimeError(f"{video} has no frames")
    last.to_image().save(str(png))
