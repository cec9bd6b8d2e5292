"""Streaming audio conversion at the session's edges (libswresample through PyAV).

* ``AudioIngest``: anything a producer sends (aiortc's decoded opus frames, usually 48 kHz s16,
  mono or stereo; raw PCM bytes from a WebSocket/TTS) -> float32 mono at the feature rate.
* ``OutputAudioResampler``: the chunks' 16 kHz float32 speech -> 48 kHz int16 mono for the
  outgoing WebRTC audio track.

Both keep the resampler's filter state across calls, so consecutive packets join without clicks.
libswresample's filter delay is ~1 ms and it emits output for every input packet (soxr buffers
tens of ms), which matters for speech-to-lips latency. Channels are averaged before resampling.
Packet timestamps are ignored: the runtime timestamps samples by arrival, and aiortc's pts can
jump or repeat.
"""

from __future__ import annotations

import av
import numpy as np

SUPPORTED_PCM_FORMATS = {"s16": "<i2", "f32": "<f4"}
MIN_RATE, MAX_RATE = 8000, 192000
MAX_CHANNELS = 8


class _StreamingResampler:
    """One libswresample stream (mono in, mono out) to a fixed output format; rebuilt when the input
    rate changes (a renegotiated track), flushing the old one first so no samples are lost."""

    def __init__(self, out_format: str, out_rate: int):
        self.out_format = out_format
        self.out_rate = out_rate
        self._resampler: av.AudioResampler | None = None
        self._input_key: tuple | None = None

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        parts: list[np.ndarray] = []
        if key != self._input_key:
            parts += self.flush()
            self._resampler = av.AudioResampler(format=self.out_format, layout="mono", rate=self.out_rate)
            self._input_key = key
        for out in self._resampler.resample(frame):
            parts.append(out.to_ndarray().reshape(-1))
        return parts

    @property
    def idle(self) -> bool:
        """No stream open (nothing buffered inside the filter)."""
        return self._resampler is None

    def flush(self) -> list[np.ndarray]:
        if self._resampler is None:
            return []
        parts = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(None)]
        self._resampler = None
        self._input_key = None
        return parts


class AudioIngest:
    """Any producer's audio -> float32 mono at ``rate`` (16 kHz), stateful across packets."""

    def __init__(self, rate: int = 16000):
        _check_rate(rate)
        self.rate = rate
        self._resampler = _StreamingResampler("flt", rate)

    def push_frame(self, frame: av.AudioFrame) -> np.ndarray:
        """One decoded frame (any sample format, layout or rate PyAV knows) -> float32 mono."""
        if not isinstance(frame, av.AudioFrame):
            raise TypeError(f"push_frame expects an av.AudioFrame, got {type(frame).__name__}")
        if frame.samples == 0:
            return np.zeros(0, np.float32)
        _check_rate(frame.sample_rate)
        return self._push_mono(_frame_to_mono(frame), frame.sample_rate)

    def push_pcm(
        self,
        data: bytes | bytearray | memoryview | np.ndarray,
        rate: int,
        channels: int = 1,
        sample_format: str = "s16",
    ) -> np.ndarray:
        """Raw interleaved little-endian PCM (``s16`` or ``f32``) -> float32 mono at ``self.rate``."""
        if sample_format not in SUPPORTED_PCM_FORMATS:
            raise ValueError(f"unsupported sample_format {sample_format!r}; use one of {sorted(SUPPORTED_PCM_FORMATS)}")
        _check_rate(rate)
        if not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be an integer from 1 to {MAX_CHANNELS}, got {channels!r}")
        dtype = SUPPORTED_PCM_FORMATS[sample_format]
        if isinstance(data, np.ndarray):
            expected = np.dtype(dtype)
            if data.dtype.kind != expected.kind or data.dtype.itemsize != expected.itemsize:
                raise ValueError(f"{sample_format} PCM must be {expected} samples, got {data.dtype}")
            interleaved = np.ascontiguousarray(data, dtype=dtype).reshape(-1)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            frame_bytes = np.dtype(dtype).itemsize * channels
            if len(data) % frame_bytes:
                raise ValueError(
                    f"{len(data)} bytes is not a whole number of {sample_format} frames of {channels} channel(s) "
                    f"({frame_bytes} bytes each)"
                )
            interleaved = np.frombuffer(data, dtype=dtype)
        else:
            raise TypeError(f"push_pcm expects bytes or a numpy array, got {type(data).__name__}")
        if interleaved.size % channels:
            raise ValueError(f"{interleaved.size} samples do not split into {channels} channels")
        if interleaved.size == 0:
            return np.zeros(0, np.float32)
        if sample_format == "f32" and not np.all(np.isfinite(interleaved)):
            raise ValueError("f32 PCM contains NaN or infinite samples")
        mono = _to_float(interleaved).reshape(-1, channels).mean(axis=1, dtype=np.float32)
        return self._push_mono(mono, rate)

    def _push_mono(self, mono: np.ndarray, rate: int) -> np.ndarray:
        if rate == self.rate and self._resampler.idle:
            return mono.astype(np.float32, copy=False)  # nothing to convert, nothing buffered
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono, np.float32)[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        return _concat(self._resampler.push(frame))

    def flush(self) -> np.ndarray:
        """End of stream: the samples still inside the resampler's filter."""
        return _concat(self._resampler.flush())


class OutputAudioResampler:
    """The chunks' float32 speech at ``in_rate`` -> int16 mono at ``out_rate``, stateful."""

    def __init__(self, in_rate: int = 16000, out_rate: int = 48000):
        _check_rate(in_rate)
        _check_rate(out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._resampler = _StreamingResampler("s16", out_rate)

    def push(self, samples: np.ndarray) -> np.ndarray:
        x = np.asarray(samples)
        if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"expected 1-D float mono samples, got {x.dtype} {x.shape}")
        if x.size == 0:
            return np.zeros(0, np.int16)
        # Clip before conversion: swresample wraps, not saturates, out-of-range floats.
        x = np.clip(np.nan_to_num(x.astype(np.float32), nan=0.0), -1.0, 1.0)
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.in_rate
        return _concat(self._resampler.push(frame), np.int16)

    def flush(self) -> np.ndarray:
        return _concat(self._resampler.flush(), np.int16)


def _frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Average the channels ourselves: swresample's downmix is a -3 dB sum, which would make
    a stereo peer 3 dB louder than a mono one for the VAD and the lip-sync features."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if frame.format.is_planar:
        per_channel = data.reshape(channels, -1)
    else:
        per_channel = data.reshape(-1, channels).T
    return _to_float(per_channel).mean(axis=0, dtype=np.float32)


def _to_float(pcm: np.ndarray) -> np.ndarray:
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / 32768.0
    if pcm.dtype == np.int32:
        return (pcm.astype(np.float64) / 2147483648.0).astype(np.float32)
    if pcm.dtype == np.uint8:
        return (pcm.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(pcm.dtype, np.floating):
        return pcm.astype(np.float32, copy=False)
    raise ValueError(f"unsupported PCM sample type {pcm.dtype}")


def _check_rate(rate: int) -> None:
    if not isinstance(rate, (int, np.integer)) or not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"unsupported sample rate {rate!r}; expected an integer from {MIN_RATE} to {MAX_RATE} Hz")


def _concat(parts: list[np.ndarray], dtype=np.float32) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype)
    return np.concatenate(parts).astype(dtype, copy=False)
