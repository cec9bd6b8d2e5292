"""Capacity admission (server/capacity.py): sessions are admitted by the measured cost of a whole
session and refused while any live session falls behind; the start-up cost covers encoding too."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from live_avatar.server.capacity import (
    CapacityConfig,
    CapacityMonitor,
    measure_session_cost,
)
from live_avatar.server.media.playout import PlayoutCounters
from live_avatar.server.metrics import ServerMetrics


@dataclass
class FakePlayout:
    counters: PlayoutCounters = field(default_factory=PlayoutCounters)


@dataclass
class FakeSession:
    id: str
    created_at: float
    playout: FakePlayout = field(default_factory=FakePlayout)

    def run(self, slots: int, late: int = 0) -> None:
        c = self.playout.counters
        c.slots += slots
        c.frames_repeated += late


class World:
    """A clock, the process's CPU time and the machine's busy/total CPU seconds, all made up."""

    def __init__(self, cores: int = 2) -> None:
        self.t = 100.0
        self.cpu = 0.0
        self.busy, self.total = 0.0, 0.0
        self.cores = cores
        self.sessions: list[FakeSession] = []

    def advance(self, seconds: float, process_cores: float, other_cores: float = 0.0) -> None:
        self.t += seconds
        self.cpu += process_cores * seconds
        self.busy += (process_cores + other_cores) * seconds
        self.total += self.cores * seconds

    def monitor(self, startup: float = 0.3, **config) -> CapacityMonitor:
        return CapacityMonitor(CapacityConfig(**config), lambda: list(self.sessions), cores=self.cores,
                               startup_cost={"total": startup}, metrics=ServerMetrics(),
                               process_cpu=lambda: self.cpu, machine_busy=lambda: (self.busy, self.total),
                               clock=lambda: self.t)


def run_for(world: World, monitor: CapacityMonitor, seconds: int, per_session: float, other: float = 0.0,
            late_every: int = 0) -> None:
    for i in range(seconds):
        world.advance(1.0, per_session * len(world.sessions), other)
        for s in world.sessions:
            s.run(25, late=1 if late_every and i % late_every == 0 else 0)
        monitor.sample()


def test_admits_by_the_measured_cost_of_a_session():
    world = World(cores=2)
    monitor = world.monitor(startup=0.3)
    run_for(world, monitor, 3, 0.0)
    assert monitor.check() is None and monitor.admissible() == 2  # 1.7 cores of budget / (0.3 + 100 % networking etc.)
    world.sessions = [FakeSession("a", world.t), FakeSession("b", world.t)]
    run_for(world, monitor, 10, per_session=0.5)  # they really cost 0.5 cores each
    assert monitor.live_cost == pytest.approx(0.5, rel=0.05)
    assert monitor.busy_cores() == pytest.approx(1.0, rel=0.05)
    assert monitor.admissible() == 1 and monitor.check() is None  # 1.7 - 1.0 = 0.7: room for one
    world.sessions.append(FakeSession("c", world.t))
    run_for(world, monitor, 10, per_session=0.5)
    reason = monitor.check()
    assert reason is not None and "capacity" in reason and "CPU cores" in reason


def test_a_young_session_counts_at_its_estimate_before_it_shows_its_cost():
    world = World(cores=2)
    monitor = world.monitor(startup=0.3)  # 0.6 cores with the networking share
    run_for(world, monitor, 3, 0.0)
    assert monitor.admissible() == 2
    assert monitor.admissible(opening=1) == 1  # one being opened right now takes its share


def test_other_programs_on_the_same_cores_count():
    world = World(cores=2)
    monitor = world.monitor(startup=0.3)
    run_for(world, monitor, 6, 0.0, other=1.5)  # another job keeps 1.5 cores busy
    assert monitor.admissible() == 0
    assert monitor.check() is None  # but with no session live, the first is always admitted
    world.sessions = [FakeSession("a", world.t - 10)]
    run_for(world, monitor, 6, 0.1, other=1.5)
    assert monitor.check() is not None


def test_a_session_falling_behind_stops_admission_and_is_reported():
    world = World(cores=8)
    monitor = world.monitor(startup=0.1)
    world.sessions = [FakeSession("a", world.t - 10), FakeSession("b", world.t - 10)]
    run_for(world, monitor, 6, per_session=0.2)
    assert monitor.check() is None
    run_for(world, monitor, 6, per_session=0.2, late_every=2)  # 'a' and 'b' repeat ~2 % of their frames
    assert monitor.session_behind("a") and monitor.session_stats("a")["late_frames_recent"] >= 2
    assert "falling behind" in monitor.check()
    assert b"sessions_behind 2.0" in monitor.metrics.render()
    run_for(world, monitor, 7, per_session=0.2)  # on time again: admitted again
    assert monitor.check() is None


def test_disabled_admits_everything():
    world = World(cores=1)
    monitor = world.monitor(startup=5.0, enabled=False)
    run_for(world, monitor, 3, 0.0, other=1.0)
    assert monitor.check() is None


def test_startup_cost_includes_render_and_both_encoders():
    class Engine:
        size, fps = (256, 256), 25

        def measure_cost(self):
            return 0.2

    cost = measure_session_cost(Engine(), frames=10)
    assert cost["render"] == 0.2 and cost["video_encode"] > 0.005 and cost["audio"] > 0.0005
    assert cost["total"] == pytest.approx(cost["render"] + cost["video_encode"] + cost["audio"])
