"""Audio features and avatar generation; knows nothing about WebRTC or HTTP."""
