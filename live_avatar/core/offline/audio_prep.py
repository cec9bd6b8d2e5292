"""Audio preparation for ``avatar generate``: decode, trim silence, normalise loudness.

The user's file (any format PyAV decodes) is decoded once, streaming, into a 16 kHz mono float32
raw file in the render's work folder; rendering reads windows of it back with plain file reads, so
memory does not grow with the audio's length (a memmap would, through resident file pages).

Trimming and loudness are recorded as a time window + a gain, so that the output's audio track
can be made from the *original* file at its own rate and channels (``iter_output_audio``), in sync
with the 16 kHz copy the features are computed from.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from live_avatar.core.audio.ingest import AudioIngest

FEATURE_RATE = 16000
_CHUNK = FEATURE_RATE * 10  # samples per read/write pass (10 s): bounds memory of every pass
_TRIM_FRAME = 320  # 20 ms energy frames for silence trimming
_TRIM_THRESHOLD_DBFS = -45.0  # a 20 ms frame louder than this (RMS) counts as sound
_TRIM_MARGIN_S = 0.1  # keep a little air around the speech so the first phoneme is not clipped
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)


class AudioInputError(ValueError):
    """The audio file is missing, undecodable or empty; the message is user-facing."""


@dataclass(frozen=True)
class PreparedAudio:
    """The feature copy of the user's audio plus how it maps to the source file."""

    path: str  # raw float32 mono 16 kHz samples
    num_samples: int
    source: str
    source_seconds: float  # decoded length of the source
    trim_start_s: float  # source seconds cut before the kept window
    gain_db: float  # applied to the kept window (loudness normalisation); 0 if none
    source_sha1: str  # identifies the source content, for --resume

    @property
    def seconds(self) -> float:
        return self.num_samples / FEATURE_RATE

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) of the prepared timeline; zeros outside the audio (before 0, after the end)."""
        out = np.zeros(max(0, stop - start), np.float32)
        lo, hi = max(0, start), min(self.num_samples, stop)
        if hi > lo:
            with open(self.path, "rb") as f:
                f.seek(lo * 4)
                out[lo - start : hi - start] = np.fromfile(f, np.float32, hi - lo)
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def file_sha1(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _decode_16k(source: Path, raw_path: Path) -> int:
    """Decode ``source`` to 16 kHz mono float32 into ``raw_path``; returns the sample count."""
    import av

    if not source.is_file():
        raise AudioInputError(f"--audio {source}: no such file")
    total = 0
    try:
        with av.open(str(source)) as container, open(raw_path, "wb") as out:
            if not container.streams.audio:
                raise AudioInputError(f"--audio {source}: the file has no audio stream")
            # the live path's conversion (channels averaged, then resampled): same levels for the VAD
            ingest = AudioIngest(FEATURE_RATE)
            for frame in container.decode(audio=0):
                data = ingest.push_frame(frame)
                data.tofile(out)
                total += data.size
            data = ingest.flush()
            data.tofile(out)
            total += data.size
    except AudioInputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise AudioInputError(
            f"--audio {source}: cannot decode it as audio ({exc}); use a WAV, MP3, M4A, OGG or FLAC file"
        ) from None
    if total == 0:
        raise AudioInputError(f"--audio {source}: the file decodes to no samples")
    return total


def _iter_chunks(raw_path: Path, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
    with open(raw_path, "rb") as f:
        f.seek(start * 4)
        pos = start
        while pos < stop:
            n = min(_CHUNK, stop - pos)
            data = np.fromfile(f, np.float32, n)
            if data.size == 0:
                return
            yield pos, data
            pos += data.size


def find_sound_bounds(raw_path: Path, num_samples: int) -> tuple[int, int]:
    """[first, last) sample of sound (20 ms RMS frames above -45 dBFS), with a 0.1 s margin. (0, 0) if silent."""
    threshold = 10 ** (_TRIM_THRESHOLD_DBFS / 20)
    first = last = None
    for pos, data in _iter_chunks(raw_path, 0, num_samples):
        n = data.size // _TRIM_FRAME * _TRIM_FRAME
        if n == 0:
            continue
        rms = np.sqrt(np.mean(data[:n].reshape(-1, _TRIM_FRAME) ** 2, axis=1))
        loud = np.flatnonzero(rms > threshold)
        if loud.size:
            if first is None:
                first = pos + int(loud[0]) * _TRIM_FRAME
            last = pos + (int(loud[-1]) + 1) * _TRIM_FRAME
    if first is None:
        return 0, 0
    margin = int(_TRIM_MARGIN_S * FEATURE_RATE)
    return max(0, first - margin), min(num_samples, last + margin)


def measure_loudness(raw_path: Path, start: int, stop: int) -> float:
    """Integrated loudness (ITU-R BS.1770 / EBU R128, LUFS) of samples [start, stop) of a 16 kHz raw file.

    Streams the file in chunks so memory stays flat for hour-long audio: pyloudnorm's K-weighting
    filters run chunk by chunk with their state carried over, the mean square is kept per 100 ms
    hop, and the 400 ms / 75 %-overlap gating (absolute -70 LUFS, relative -10 LU) is done on those.
    Matches ``pyloudnorm.Meter.integrated_loudness`` (mono) to a few hundredths of a LU.
    """
    import pyloudnorm
    from scipy.signal import lfilter

    hop = int(0.1 * FEATURE_RATE)
    if stop - start < 4 * hop:
        raise AudioInputError("the audio is shorter than 0.4 s; its loudness cannot be measured")
    stages = list(pyloudnorm.Meter(FEATURE_RATE)._filters.values())  # K-weighting: shelf + high-pass
    states = [np.zeros(max(len(f.a), len(f.b)) - 1) for f in stages]
    hop_energy: list[float] = []
    carry = np.zeros(0)
    for _, data in _iter_chunks(raw_path, start, stop):
        x = data.astype(np.float64)
        for i, stage in enumerate(stages):
            x, states[i] = lfilter(stage.b, stage.a, x, zi=states[i])
            x = stage.passband_gain * x
        x = np.concatenate([carry, x])
        usable = x.size // hop * hop
        hop_energy.extend(np.mean(x[:usable].reshape(-1, hop) ** 2, axis=1))
        carry = x[usable:]
    energy = np.asarray(hop_energy)
    blocks = np.convolve(energy, np.ones(4) / 4, mode="valid")  # 400 ms blocks every 100 ms
    with np.errstate(divide="ignore"):
        block_lufs = -0.691 + 10 * np.log10(blocks)
    above_abs = blocks[block_lufs > -70.0]
    if above_abs.size == 0:
        return float("-inf")
    relative_gate = -0.691 + 10 * np.log10(above_abs.mean()) - 10.0
    gated = blocks[(block_lufs > -70.0) & (block_lufs > relative_gate)]
    return float(-0.691 + 10 * np.log10(gated.mean()))


def prepare_audio(
    source: Path,
    work_dir: Path,
    *,
    trim_silence: bool = False,
    target_lufs: float | None = None,
) -> PreparedAudio:
    """Decode ``source`` into ``work_dir/audio_16k.f32`` (trimmed, loudness-normalised); see module doc."""
    source = Path(source)
    work_dir.mkdir(parents=True, exist_ok=True)
    decoded = work_dir / "audio_16k.decoded.f32"
    final = work_dir / "audio_16k.f32"
    total = _decode_16k(source, decoded)

    start, stop = 0, total
    if trim_silence:
        start, stop = find_sound_bounds(decoded, total)
        if stop <= start:
            decoded.unlink(missing_ok=True)
            raise AudioInputError(f"--audio {source}: the file is silent; --trim-silence leaves nothing to render")

    gain_db = 0.0
    if target_lufs is not None:
        loudness = measure_loudness(decoded, start, stop)
        if not np.isfinite(loudness):
            raise AudioInputError(f"--audio {source}: the audio is silent; --normalize-loudness cannot scale it")
        gain_db = float(target_lufs - loudness)

    gain = np.float32(10 ** (gain_db / 20))
    with open(final, "wb") as out:
        for _, data in _iter_chunks(decoded, start, stop):
            if gain_db:
                data = np.clip(data * gain, -1.0, 1.0)
            data.astype(np.float32, copy=False).tofile(out)
    decoded.unlink(missing_ok=True)
    return PreparedAudio(
        path=str(final),
        num_samples=stop - start,
        source=str(source),
        source_seconds=total / FEATURE_RATE,
        trim_start_s=start / FEATURE_RATE,
        gain_db=gain_db,
        source_sha1=file_sha1(source),
    )


def output_audio_format(source: Path) -> tuple[int, str]:
    """(rate, layout) for the output's AAC track: the source's own, where AAC allows it."""
    import av

    with av.open(str(source)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate or 48000
        channels = stream.channels or 1
    if rate not in _AAC_RATES:
        rate = 48000
    return rate, ("mono" if channels == 1 else "stereo")


def iter_output_audio(
    prepared: PreparedAudio, *, rate: int, layout: str, max_seconds: float
) -> Iterator[np.ndarray]:
    """The user's audio for the output track: source decoded at ``rate``/``layout``, trimmed like the
    feature copy, gain applied, cut at ``max_seconds``. Yields float32 planar arrays [channels, n]."""
    import av

    skip = int(round(prepared.trim_start_s * rate))
    keep = int(round(min(prepared.seconds, max_seconds) * rate))
    gain = np.float32(10 ** (prepared.gain_db / 20))
    pos = 0  # samples of the source seen so far, at ``rate``
    emitted = 0
    with av.open(prepared.source) as container:
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)

        def pieces():
            for frame in container.decode(audio=0):
                yield from resampler.resample(frame)
            yield from resampler.resample(None)

        for piece in pieces():
            data = piece.to_ndarray().astype(np.float32, copy=False)
            n = data.shape[1]
            lo = max(0, skip - pos)
            pos += n
            if lo >= n:
                continue
            data = data[:, lo : lo + (keep - emitted)]
            if prepared.gain_db:
                data = np.clip(data * gain, -1.0, 1.0)
            if data.shape[1]:
                yield data
                emitted += data.shape[1]
            if emitted >= keep:
                return
