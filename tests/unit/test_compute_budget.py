"""The real-time margin of a session's generator: the figure in the stats and one warning per drop."""

from __future__ import annotations

import logging

from live_avatar.core.stream.budget import ComputeBudget


def test_margin_and_one_warning_per_drop_below_ten_percent(caplog):
    budget = ComputeBudget(0.48, window=4)
    assert budget.stats()["compute_margin_pct"] is None
    with caplog.at_level(logging.INFO, logger="live_avatar.core.stream.budget"):
        for _ in range(4):
            budget.note(0.30)  # 37.5 % left
        assert abs(budget.stats()["compute_margin_pct"] - 37.5) < 1e-9 and not budget.low
        for _ in range(6):
            budget.note(0.46)  # 4 % left: one warning, not one per block
        assert budget.low and budget.stats()["compute_margin_low"] is True
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "margin 4%" in warnings[0].getMessage()
        for _ in range(4):
            budget.note(0.20)
        assert not budget.low
        for _ in range(4):
            budget.note(0.50)  # slower than real time: negative margin, warned again after the recovery
    assert budget.stats()["compute_margin_pct"] < 0
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_the_first_blocks_do_not_warn(caplog):
    budget = ComputeBudget(0.48, window=8)
    with caplog.at_level(logging.WARNING):
        for _ in range(7):
            budget.note(2.0)  # the first block of a session (prefill) is slow
    assert not budget.low and not caplog.records
