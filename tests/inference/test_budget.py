"""Budgets as a table over a ManualClock: sliding minute windows, the UTC day, reservations
replaced by real usage, Retry-After, and what absent / zero limits mean."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from inference.budget import Budgets
from inference.refusals import BudgetExceededError
from zerogate.clock import ManualClock

ID = "spiffe://example.org/ns/default/sa/app"
START = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def _budgets() -> tuple[Budgets, ManualClock]:
    clock = ManualClock(START)
    return Budgets(clock), clock


def test_rpm_slides_per_second() -> None:
    budgets, clock = _budgets()
    limits = {"rpm": 2}
    budgets.reserve(ID, limits, 0)
    clock.advance(timedelta(seconds=30))
    budgets.reserve(ID, limits, 0)
    with pytest.raises(BudgetExceededError, match="limit is 2 per minute") as info:
        budgets.reserve(ID, limits, 0)
    assert info.value.retry_after_s == 30  # the first request leaves the window then
    assert info.value.headers["retry-after"] == "30"
    clock.advance(timedelta(seconds=30))
    budgets.reserve(ID, limits, 0)  # the first one has left the window


def test_tpm_counts_reservations_then_real_usage() -> None:
    budgets, _ = _budgets()
    limits = {"tpm": 100}
    first = budgets.reserve(ID, limits, 80)
    with pytest.raises(BudgetExceededError, match="may use 30"):
        budgets.reserve(ID, limits, 30)
    first.settle(20)  # the call used far less than estimated
    assert budgets.usage(ID)["tokens_last_minute"] == 20
    budgets.reserve(ID, limits, 30).settle(30)
    assert budgets.usage(ID) == {
        "requests_last_minute": 3 - 1,  # the refused one was not counted
        "tokens_last_minute": 50,
        "tokens_today": 50,
    }


def test_daily_tokens_reset_at_utc_midnight() -> None:
    budgets, clock = _budgets()
    limits = {"daily_tokens": 100}
    budgets.reserve(ID, limits, 0).settle(100)
    clock.advance(timedelta(hours=2))  # out of the minute window, same day
    with pytest.raises(BudgetExceededError, match="daily limit is 100") as info:
        budgets.reserve(ID, limits, 1)
    assert info.value.retry_after_s == 10 * 3600  # 14:00 -> midnight
    clock.set(datetime(2026, 6, 2, 0, 0, 1, tzinfo=UTC))
    budgets.reserve(ID, limits, 1)


def test_settle_is_once_and_identities_are_separate() -> None:
    budgets, _ = _budgets()
    reservation = budgets.reserve(ID, {"tpm": 10}, 5)
    reservation.settle(1)
    reservation.settle(9)  # ignored
    assert budgets.usage(ID)["tokens_last_minute"] == 1
    assert budgets.usage("spiffe://example.org/other")["requests_last_minute"] == 0


@pytest.mark.parametrize(
    ("limits", "allowed"),
    [({}, True), ({"rpm": None, "tpm": None}, True), ({"rpm": 0}, False), ({"tpm": 0}, True)],
    ids=["absent", "null", "zero-rpm", "zero-tpm-no-tokens"],
)
def test_absent_is_unlimited_and_zero_allows_nothing(
    limits: dict[str, int | None], allowed: bool
) -> None:
    budgets, _ = _budgets()
    if allowed:
        budgets.reserve(ID, limits, 0)
    else:
        with pytest.raises(BudgetExceededError):
            budgets.reserve(ID, limits, 0)


def test_idle_identities_are_evicted_when_full() -> None:
    clock = ManualClock(START)
    budgets = Budgets(clock, max_identities=2)
    budgets.reserve("spiffe://t/a", {}, 0)
    budgets.reserve("spiffe://t/b", {}, 0)
    clock.advance(timedelta(days=1))
    budgets.reserve("spiffe://t/c", {}, 0)  # a and b are idle: dropped
    assert len(budgets._usage) == 1
