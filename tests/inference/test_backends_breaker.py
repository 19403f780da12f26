"""Circuit breaker transitions as a table over an injected clock (inference/backends/breaker.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from inference.backends.breaker import BreakerState, CircuitBreaker
from inference.errors import CircuitOpenError
from zerogate.clock import ManualClock


def _breaker(clock: ManualClock, threshold: int = 3) -> CircuitBreaker:
    return CircuitBreaker(
        name="up", failure_threshold=threshold, reset_after=timedelta(seconds=10), clock=clock
    )


def test_closed_until_threshold_consecutive_failures() -> None:
    clock = ManualClock()
    breaker = _breaker(clock)
    for _ in range(2):
        breaker.acquire()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.acquire()
    breaker.record_success()  # a success resets the count
    for _ in range(2):
        breaker.acquire()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.acquire()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_open_refuses_until_reset_then_allows_one_trial() -> None:
    clock = ManualClock()
    breaker = _breaker(clock, threshold=1)
    breaker.acquire()
    breaker.record_failure()
    with pytest.raises(CircuitOpenError, match=r"next trial in 10\.0s"):
        breaker.acquire()
    clock.advance(timedelta(seconds=9.9))
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    clock.advance(timedelta(seconds=0.1))
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.acquire()  # the trial
    with pytest.raises(CircuitOpenError, match="trial call is running"):
        breaker.acquire()


def test_trial_success_closes() -> None:
    clock = ManualClock()
    breaker = _breaker(clock, threshold=1)
    breaker.acquire()
    breaker.record_failure()
    clock.advance(timedelta(seconds=10))
    breaker.acquire()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.acquire()
    breaker.acquire()


def test_trial_failure_reopens_for_a_full_period() -> None:
    clock = ManualClock()
    breaker = _breaker(clock, threshold=5)
    for _ in range(5):
        breaker.acquire()
        breaker.record_failure()
    clock.advance(timedelta(seconds=10))
    breaker.acquire()
    breaker.record_failure()  # one failure in half-open is enough
    assert breaker.state is BreakerState.OPEN
    clock.advance(timedelta(seconds=5))
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    clock.advance(timedelta(seconds=5))
    breaker.acquire()


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(name="x", failure_threshold=0)
