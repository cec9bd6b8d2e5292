"""Prometheus metrics of one server instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# a block's compute time as a share of its real-time budget (frames / fps): above 1.0 the session falls behind
BUDGET_SHARE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.1, 1.25, 1.5, 2.0)
PAUSE_BUCKETS = (0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.first_frame_latency = Histogram(
            "first_frame_latency_seconds",
            "First audio packet arrival to first video frame sent, per session",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.speech_to_lips_latency = Histogram(
            "speech_to_lips_latency_seconds",
            "Arrival of a speech onset to the send of the first frame generated from it",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frames_sent = Counter("frames_sent", "Generated video frames sent", registry=r)
        self.frames_repeated = Counter("frames_repeated", "Slots filled by repeating a late frame", registry=r)
        self.frames_dropped = Counter("frames_dropped", "Generated frames never sent (late or backlog)", registry=r)
        self.active_sessions = Gauge("active_sessions", "Live sessions", registry=r)
        self.sessions_refused = Counter("sessions_refused", "Sessions refused (capacity)", registry=r)
        self.block_compute = Histogram(
            "block_compute_seconds", "Wall time of the engine's generate() per block", buckets=LATENCY_BUCKETS, registry=r,
        )
        self.block_budget_share = Histogram(
            "block_compute_budget_share",
            "A block's compute time over its real-time budget (frames / fps); the margin is 1 - this, warned below 0.1",
            buckets=BUDGET_SHARE_BUCKETS,
            registry=r,
        )
        self.sessions_behind = Gauge("sessions_behind", "Live sessions with more than 1 % of recent slots late", registry=r)
        self.session_cpu_cores = Gauge("session_cpu_cores", "CPU cores one session costs (measured live, else estimated)", registry=r)
        self.process_pauses = Histogram(
            "process_pause_seconds", "Pauses of the server process over 50 ms: its event loop late (loop) or a "
            "garbage collection (gc); every live session's frames stall meanwhile",
            ["kind"], buckets=PAUSE_BUCKETS, registry=r,
        )
        self.sessions_admissible = Gauge("sessions_admissible", "More sessions that would fit now", registry=r)

    def observe_pause(self, kind: str, seconds: float) -> None:
        """A pause of the whole process (pause_watch.py): its event loop late, or a garbage collection."""
        self.process_pauses.labels("loop" if kind == "loop" else "gc").observe(seconds)

    def observe_block_compute(self, compute_s: float, budget_s: float) -> None:
        self.block_compute.observe(compute_s)
        self.block_budget_share.observe(compute_s / budget_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
