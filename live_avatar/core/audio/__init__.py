"""Audio at the session's edges: ingest/resampling, the 16 kHz timeline, voice activity."""

from live_avatar.core.audio.ingest import AudioIngest, OutputAudioResampler
from live_avatar.core.audio.timeline import AudioTimeline, block_window
from live_avatar.core.audio.vad import VadConfig, VadFrame, VoiceActivityDetector, detect_speech

__all__ = [
    "AudioIngest",
    "AudioTimeline",
    "OutputAudioResampler",
    "VadConfig",
    "VadFrame",
    "VoiceActivityDetector",
    "block_window",
    "detect_speech",
]
