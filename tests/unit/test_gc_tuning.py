"""The collection after a peer closes runs only where the start-up heap is frozen (else it would walk
the whole heap of the process it runs in, a stall of every live session)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from live_avatar.server import gc_tuning


@pytest.fixture
def counted_collections(monkeypatch):
    calls = []
    monkeypatch.setattr(gc_tuning.gc, "collect", lambda *a: calls.append(a) or 0)
    monkeypatch.setattr(gc_tuning.gc, "freeze", lambda: None)  # the test process's heap stays as it is
    monkeypatch.setattr(gc_tuning, "_pending", None)
    return calls


async def test_no_forced_collection_in_a_process_that_froze_nothing(counted_collections, monkeypatch):
    monkeypatch.setattr(gc_tuning, "_startup_frozen", False)
    gc_tuning.collect_soon(0.01)
    await asyncio.sleep(0.05)
    assert counted_collections == []


async def test_one_collection_after_closes_once_frozen(counted_collections, monkeypatch):
    monkeypatch.setattr(gc_tuning, "_startup_frozen", False)
    await gc_tuning.freeze_startup_objects()
    assert gc_tuning._startup_frozen and len(counted_collections) == 1
    for _ in range(3):  # closes in quick succession share one collection
        gc_tuning.collect_soon(0.02)
    await asyncio.sleep(0.1)
    assert len(counted_collections) == 2
    assert gc.isenabled()
