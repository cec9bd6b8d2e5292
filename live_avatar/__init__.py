"""Live Avatar Server: speech in over WebRTC, a talking portrait out.

``live_avatar.core`` generates (audio, engines, offline rendering) and knows nothing of HTTP or
WebRTC; ``live_avatar.server`` serves it; ``live_avatar.cli`` is the ``avatar`` command.
"""
