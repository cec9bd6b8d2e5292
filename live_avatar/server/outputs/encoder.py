"""H.264 + AAC encoding and muxing of playout slots (PyAV), for the RTMP/SRT push and recordings.

Everything here blocks (x264, network writes, disk): it runs in an output's worker thread, never on
the event loop. Timestamps come from the slot numbers, so video and audio stay locked together:
video frame k has pts k at 1/fps, its audio starts at sample k * samples_per_frame. Slots an
output missed are filled with the last frame and silence, keeping the stream constant-rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np

from live_avatar.server.media.playout import OutputSlot

MAX_FILLED_GAP = 250  # missing slots (10 s) filled with repeats; a longer gap shifts the timeline instead


@dataclass
class EncoderSettings:
    fps: int = 25
    keyframe_interval_s: float = 2.0
    video_bitrate: int = 2_000_000
    audio_bitrate: int = 128_000
    audio_rate: int = 48_000
    x264_preset: str = "veryfast"

    @property
    def gop(self) -> int:
        return max(1, round(self.fps * self.keyframe_interval_s))


@dataclass
class MuxTarget:
    url: str  # file path or network URL
    format: str  # flv (RTMP), mpegts (SRT), mp4 (recording)
    options: dict[str, str] = field(default_factory=dict)  # protocol options (rw_timeout, ...)
    container_options: dict[str, str] = field(default_factory=dict)  # muxer options (movflags, ...)


class SlotEncoder:
    """One open container: ``write(slot)`` encodes and muxes a slot, ``close()`` flushes."""

    def __init__(self, target: MuxTarget, settings: EncoderSettings, width: int, height: int, audio_samples_per_frame: int) -> None:
        self.settings = settings
        self._samples_per_frame = audio_samples_per_frame
        self._width, self._height = width - width % 2, height - height % 2  # 4:2:0 needs even sizes
        self._container: Any = av.open(target.url, "w", format=target.format, options=target.options,
                                       container_options=target.container_options)
        try:
            video = self._container.add_stream("libx264", rate=settings.fps)
            video.width, video.height, video.pix_fmt = self._width, self._height, "yuv420p"
            video.bit_rate = settings.video_bitrate
            video.codec_context.gop_size = settings.gop
            # one thread: 512x512 at 25 fps needs a fraction of a core, each output encodes on its
            # own, and x264's thread pool per output would oversubscribe a small machine (and hide
            # the output's CPU from its thread time)
            video.codec_context.thread_count = 1
            # zerolatency: no B-frames and no lookahead (a live push); a fixed GOP: a keyframe
            # every keyframe_interval_s exactly, as ingest servers ask
            video.codec_context.options = {
                "preset": settings.x264_preset,
                "tune": "zerolatency",
                "x264-params": f"keyint={settings.gop}:min-keyint={settings.gop}:scenecut=0",
            }
            audio = self._container.add_stream("aac", rate=settings.audio_rate, layout="mono")
            audio.bit_rate = settings.audio_bitrate
            self._video, self._audio = video, audio
        except BaseException:
            self._container.close()
            raise
        self.frames_written = 0  # video frames muxed, repeats included
        self.frames_filled = 0  # repeats written for slots this output missed
        self._first_slot: int | None = None
        self._next_index = 0
        self._last_frame: np.ndarray | None = None

    def write(self, slot: OutputSlot) -> None:
        if self._first_slot is None:
            self._first_slot = slot.slot
        index = slot.slot - self._first_slot
        if index < self._next_index:
            return  # already written (never happens with one subscription; cheap to guard)
        gap = index - self._next_index
        if gap > MAX_FILLED_GAP:
            self._first_slot += gap  # a long outage: continue the timeline instead of filling it
            gap = 0
        for _ in range(gap):
            self._encode(self._last_frame if self._last_frame is not None else slot.frame, None)
            self.frames_filled += 1
        self._encode(slot.frame, slot.audio)

    def _encode(self, frame: np.ndarray, audio: np.ndarray | None) -> None:
        index = self._next_index
        picture = frame[: self._height, : self._width]
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
        video_frame.pts, video_frame.time_base = index, Fraction(1, self.settings.fps)
        for packet in self._video.encode(video_frame):
            self._container.mux(packet)
        pcm = np.zeros(self._samples_per_frame, np.int16) if audio is None else np.asarray(audio, np.int16)
        audio_frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout="mono")
        audio_frame.sample_rate = self.settings.audio_rate
        audio_frame.pts = index * self._samples_per_frame
        audio_frame.time_base = Fraction(1, self.settings.audio_rate)
        for packet in self._audio.encode(audio_frame):
            self._container.mux(packet)
        self._last_frame = frame
        self._next_index += 1
        self.frames_written += 1

    def close(self, flush: bool = True) -> None:
        """Flush the encoders (unless the connection is already broken) and close the container."""
        try:
            if flush:
                for stream in (self._video, self._audio):
                    for packet in stream.encode(None):
                        self._container.mux(packet)
        finally:
            self._container.close()
