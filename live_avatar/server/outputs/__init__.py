"""Outputs of a live session besides the speaker's own peer connection: WHEP viewers, RTMP/SRT
pushes, recordings and a virtual camera. Each one is a consumer of the session's fan-out, so the
session generates its frames once however many outputs it has, and a slow or broken output only
loses its own slots."""
