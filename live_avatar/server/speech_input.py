"""Speech pushed into a session by a TTS or an agent, and where its playback stands.

One ``SpeechInput`` per session whose audio comes over the WebSocket (``audio_source ==
"websocket"``). It turns s16le PCM (16, 24 or 48 kHz) into the session's 16 kHz timeline
(``AvatarSession.push_audio``; the session runs its ``StreamSession`` in buffered mode, so speech
pushed faster than real time is queued, bounded, and played at real time) and follows playback
from the playout's slots: slot k plays timeline samples [k*S, (k+1)*S).

Utterances: the audio pushed between a ``start``/``end_of_speech``/``interrupt`` and the next
``end_of_speech``. Each one's events, in order: ``speaking_started`` when its first sample is
played, ``playback_position`` every ``position_interval_s`` while it plays, ``speaking_finished``
when its last sample is played after ``end_of_speech`` (``interrupted: false``) or at an interrupt
(``interrupted: true``). ``position_s`` is the seconds of that utterance's pushed audio played so
far (padding the runtime inserted when the producer fell behind does not count).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from live_avatar.core.audio import AudioIngest
from live_avatar.core.stream.session import BufferFullError
from live_avatar.server.config import AudioSocketConfig
from live_avatar.server.media.playout import OutputSlot

log = logging.getLogger(__name__)

SAMPLE_RATES = (16000, 24000, 48000)
PCM_FORMAT = "s16le"


class SpeechInputError(ValueError):
    """Bad input from the producer; the message is user-facing (sent as an error event)."""


@dataclass
class _Utterance:
    segments: list[tuple[int, int]] = field(default_factory=list)  # (timeline start, samples)
    ended: bool = False  # end_of_speech was said: nothing more comes
    started: bool = False  # speaking_started was sent
    next_position_at: float = 0.0

    @property
    def first_sample(self) -> int:
        return self.segments[0][0]

    @property
    def end_sample(self) -> int:
        start, n = self.segments[-1]
        return start + n

    @property
    def samples(self) -> int:
        return sum(n for _, n in self.segments)

    def played(self, played_end: int) -> int:
        """Samples of this utterance played once the timeline is played up to ``played_end``."""
        return sum(min(max(played_end - start, 0), n) for start, n in self.segments)

    def add(self, start: int, n: int) -> None:
        if self.segments and sum(self.segments[-1]) == start:
            self.segments[-1] = (self.segments[-1][0], self.segments[-1][1] + n)
        else:
            self.segments.append((start, n))


class SpeechInput:
    def __init__(self, session: Any, config: AudioSocketConfig, *, expire_without_socket: bool) -> None:
        self.session = session  # server.session.AvatarSession
        self.config = config
        self._rate = session.stream.sample_rate  # 16 kHz timeline
        self._samples_per_frame = session.stream.samples_per_frame
        self._in_rate: int | None = None  # None until a valid start message
        self._ingest: AudioIngest | None = None
        self._utterances: deque[_Utterance] = deque()  # oldest (playing or next) first
        self._current: _Utterance | None = None  # the one receiving audio (not ended)
        self._played_end = 0  # timeline sample after the last one played
        self.listener: Callable[[dict], None] | None = None  # the connected socket's event sink
        self._hang_up: Callable[[], None] | None = None  # ends the connected socket (session over)
        self.pushed_s = 0.0
        self.refused_messages = 0
        self.utterances_finished = 0
        self.interrupts = 0
        self._expire = expire_without_socket
        self._expiry: asyncio.TimerHandle | None = None
        session.add_slot_listener(self._on_slot)
        session.add_interrupt_listener(self._on_interrupt)
        session.add_close_callback(self._on_close)
        session.stats_sections["speech_input"] = self.stats
        self._arm_expiry()

    # -- the socket -----------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self.listener is not None

    def attach(self, listener: Callable[[dict], None], hang_up: Callable[[], None] | None = None) -> None:
        self.listener, self._hang_up = listener, hang_up
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def detach(self) -> None:
        self.listener, self._hang_up = None, None
        self._in_rate, self._ingest = None, None  # a new socket starts with its own start message
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        """A session made by POST /sessions lives while a socket feeds it, and idle_timeout_s after."""
        if not self._expire or self.session.closed:
            return
        timeout = self.config.idle_timeout_s
        self._expiry = asyncio.get_running_loop().call_later(
            timeout, self.session.close_soon, f"no audio WebSocket for {timeout:g} s (audio_socket.idle_timeout_s)"
        )

    def _on_close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self.listener is not None:
            self.listener({"type": "error", "error": f"the session ended: {self.session.close_reason}"})
        if self._hang_up is not None:
            self._hang_up()

    def _emit(self, event: dict) -> None:
        if self.listener is not None:
            self.listener(event)

    # -- producer messages ----------------------------------------------------------------------
    def start(self, message: dict) -> None:
        rate = message.get("sample_rate")
        if isinstance(rate, bool) or rate not in SAMPLE_RATES:
            raise SpeechInputError(f"unsupported sample_rate {rate!r}: use one of {', '.join(map(str, SAMPLE_RATES))}")
        fmt = message.get("format", PCM_FORMAT)
        if fmt != PCM_FORMAT:
            raise SpeechInputError(f"unsupported format {fmt!r}: send {PCM_FORMAT!r} (16-bit little-endian mono PCM)")
        channels = message.get("channels", 1)
        if channels != 1 or isinstance(channels, bool):
            raise SpeechInputError(f"unsupported channels {channels!r}: send mono PCM (channels 1)")
        self._flush_resampler()
        self._in_rate, self._ingest = int(rate), AudioIngest(self._rate)

    def push_pcm(self, data: bytes) -> None:
        if self._ingest is None or self._in_rate is None:
            raise SpeechInputError('send {"type": "start", "sample_rate": 16000|24000|48000, "format": "s16le"} before audio')
        if len(data) % 2:
            self.refused_messages += 1
            raise SpeechInputError(f"a binary message of {len(data)} bytes is not whole s16le samples (2 bytes each); it was not queued")
        self._push(self._ingest.push_pcm(data, self._in_rate, 1, "s16"), len(data) // 2 / self._in_rate)

    def _push(self, samples, seconds: float) -> None:
        if not samples.size:
            return
        try:
            index = self.session.push_audio(samples)
        except BufferFullError as exc:
            self.refused_messages += 1
            raise SpeechInputError(f"speech buffer full: {exc}; this message ({seconds:.2f} s) was not queued") from None
        if index is None:
            return
        if self._current is None:
            self._current = _Utterance()
            self._utterances.append(self._current)
        self._current.add(index, samples.size)
        self.pushed_s += samples.size / self._rate

    def _flush_resampler(self) -> None:
        if self._ingest is not None:
            try:
                self._push(self._ingest.flush(), 0.0)
            except SpeechInputError:
                pass  # the filter's last millisecond does not fit: nothing worth an error event

    def end_of_speech(self) -> None:
        self._flush_resampler()
        if self._ingest is not None:
            self._ingest = AudioIngest(self._rate)
        if self._current is None:
            return  # nothing pushed since the last one: no utterance to end
        self._current.ended = True
        self._current = None
        self.session.end_of_speech()

    def interrupt(self) -> float:
        """Flush everything queued (the session's interrupt; events follow from _on_interrupt)."""
        return self.session.interrupt()

    # -- playback (event loop) ------------------------------------------------------------------
    def _on_slot(self, slot: OutputSlot) -> None:
        if slot.repeated:
            return
        self._played_end = max(self._played_end, (slot.frame_index + 1) * self._samples_per_frame)
        now = asyncio.get_running_loop().time()
        while self._utterances:
            utterance = self._utterances[0]
            played = utterance.played(self._played_end)
            if not utterance.started:
                if played <= 0:
                    return
                utterance.started = True
                utterance.next_position_at = now + self.config.position_interval_s
                self._emit({"type": "speaking_started", "position_s": self._seconds(played)})
            if utterance.ended and self._played_end >= utterance.end_sample:
                self._finish(utterance, interrupted=False)
                continue
            if now >= utterance.next_position_at:
                utterance.next_position_at = now + self.config.position_interval_s
                self._emit({"type": "playback_position", "position_s": self._seconds(played)})
            return

    def _finish(self, utterance: _Utterance, *, interrupted: bool) -> None:
        self._utterances.remove(utterance)
        self.utterances_finished += 1
        played = utterance.played(self._played_end)
        self._emit({"type": "speaking_finished", "position_s": self._seconds(played), "interrupted": interrupted})

    def _on_interrupt(self) -> None:
        """Whatever is queued is gone; the utterance that was playing (or next) ends interrupted."""
        self.interrupts += 1
        if self._utterances:
            self._finish(self._utterances[0], interrupted=True)
        self._utterances.clear()
        self._current = None
        if self._ingest is not None:
            self._ingest = AudioIngest(self._rate)  # the filter's pending samples belong to the flushed speech

    def _seconds(self, samples: int) -> float:
        return round(samples / self._rate, 4)

    def stats(self) -> dict[str, Any]:
        queued = sum(max(u.end_sample - max(u.first_sample, self._played_end), 0) for u in self._utterances if u.segments)
        return {
            "socket_connected": self.attached,
            "sample_rate": self._in_rate,
            "pushed_s": round(self.pushed_s, 3),
            "queued_s": round(queued / self._rate, 3),
            "max_buffered_s": self.config.max_buffered_s,
            "utterances_queued": len(self._utterances),
            "utterances_finished": self.utterances_finished,
            "interrupts": self.interrupts,
            "refused_messages": self.refused_messages,
        }


__all__ = ["PCM_FORMAT", "SAMPLE_RATES", "SpeechInput", "SpeechInputError"]
