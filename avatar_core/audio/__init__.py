"""Audio at the session's edges: ingest/resampling, the 16 kHz timeline, voice activity."""

from avatar_core.audio.ingest import AudioIngest, OutputAudioResampler
from avatar_core.audio.timeline import AudioTimeline, block_window
from avatar_core.audio.vad import VadConfig, VadFrame, VoiceActivityDetector, detect_speech

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
