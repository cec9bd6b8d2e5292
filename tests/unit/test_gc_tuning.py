"""The collection after a peer closes runs only where the start-up heap is frozen (else it would walk
the whole heap of the process it runs in, a stall of every live session)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from live_avatar.server import gc_tuning


class FakeGc:
    """Stands in for the gc module: counts collections, freezes nothing of the test process's heap."""

    def __init__(self) -> None:
        self.collections = 0
        self.frozen = 0

    def collect(self, *args) -> int:
        self.collections += 1
        return 0

    def freeze(self) -> None:
        self.frozen = 1000

    def get_freeze_count(self) -> int:
        return self.frozen


@pytest.fixture
def fake_gc(monkeypatch):
    fake = FakeGc()
    monkeypatch.setattr(gc_tuning, "gc", fake)
    monkeypatch.setattr(gc_tuning, "_pending", None)
    return fake


async def test_no_forced_collection_in_a_process_that_froze_nothing(fake_gc):
    gc_tuning.collect_soon(0.01)
    await asyncio.sleep(0.05)
    assert fake_gc.collections == 0


async def test_one_collection_after_closes_once_frozen(fake_gc):
    await gc_tuning.freeze_startup_objects()
    assert fake_gc.get_freeze_count() > 0 and fake_gc.collections == 1
    for _ in range(3):  # closes in quick succession share one collection
        gc_tuning.collect_soon(0.02)
    await asyncio.sleep(0.1)
    assert fake_gc.collections == 2
    assert gc.isenabled()
