"""A circuit breaker for upstream model servers (closed -> open -> half-open -> closed).

- closed: calls pass; ``failure_threshold`` consecutive failures open the circuit.
- open: calls are refused at once (``CircuitOpenError``) until ``reset_after`` has passed.
- half-open: one trial call at a time passes; success closes the circuit, failure opens it
  again for another ``reset_after``.

Time comes from an injected ``Clock`` so every transition is a plain table test. Which
outcomes count as failures is the caller's choice (``openai_upstream.py``: connection errors,
timeouts, 429 and 5xx after retries; a 4xx caused by the request itself is not the upstream's
fault and counts as a success).
"""

from __future__ import annotations

import enum
import logging
import threading
from datetime import datetime, timedelta

from inference.errors import CircuitOpenError
from zerogate.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        name: str,
        failure_threshold: int = 5,
        reset_after: timedelta = timedelta(seconds=30),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold}")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at: datetime | None = None
        self._trial_running = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            self._maybe_half_open()
            return self._state

    def _maybe_half_open(self) -> None:
        if (
            self._state is BreakerState.OPEN
            and self._opened_at is not None
            and self._clock.now() - self._opened_at >= self.reset_after
        ):
            self._state = BreakerState.HALF_OPEN
            self._trial_running = False
            log.info("event=breaker.half_open upstream=%s", self.name)

    def acquire(self) -> None:
        """Ask to make a call; raises ``CircuitOpenError`` when it must not be made."""
        with self._lock:
            self._maybe_half_open()
            if self._state is BreakerState.CLOSED:
                return
            if self._state is BreakerState.HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return
            assert self._opened_at is not None
            retry_in = self.reset_after - (self._clock.now() - self._opened_at)
            raise CircuitOpenError(
                f"upstream {self.name!r} is failing: circuit open"
                + (
                    f", next trial in {max(retry_in.total_seconds(), 0):.1f}s"
                    if self._state is BreakerState.OPEN
                    else ", a trial call is running"
                )
            )

    def record_success(self) -> None:
        with self._lock:
            if self._state is not BreakerState.CLOSED:
                log.info("event=breaker.closed upstream=%s", self.name)
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._opened_at = None
            self._trial_running = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
                if self._state is not BreakerState.OPEN:
                    log.warning(
                        "event=breaker.opened upstream=%s failures=%d", self.name, self._failures
                    )
                self._state = BreakerState.OPEN
                self._opened_at = self._clock.now()
                self._trial_running = False
