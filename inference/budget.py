"""Per-SPIFFE-ID request and token budgets from the policy's ``limits``.

``limits`` = ``{rpm, tpm, max_tokens, daily_tokens}`` (``max_tokens`` is the policy's own
concern). Per SPIFFE ID the gate keeps

- requests and tokens over the last 60 seconds: a sliding window of one-second buckets (at
  most 60 buckets per identity, whatever the rate);
- tokens of the current UTC day (a fixed window that resets at midnight UTC).

``reserve`` is the pre-check: it counts the request and reserves the estimated tokens
(prompt estimate + requested ``max_tokens``), refusing with ``BudgetExceededError`` (429,
``Retry-After`` = seconds until enough of the window has passed) when a limit would be
crossed; concurrent calls therefore cannot all slip under the same limit. ``Reservation.
settle(real_tokens)`` replaces the estimate by the real usage once the call is over.

A limit that is absent (or ``null``) is unlimited; ``0`` allows nothing. Time comes from the
injected ``Clock``.

Scale-out: the counters are in memory, so with N gate replicas behind a load balancer each
enforces the limits on its own share (a caller could reach up to N x the limit). A store- or
Redis-backed ``Budgets`` with the same two methods is the way to a global limit (future work).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from inference.refusals import BudgetExceededError
from zerogate.clock import Clock

WINDOW_S = 60


@dataclass(slots=True)
class _Usage:
    buckets: deque[list[int]] = field(default_factory=deque)  # [second, requests, tokens]
    requests: int = 0
    tokens: int = 0
    day: int = -1
    day_tokens: int = 0

    def expire(self, second: int, day: int) -> None:
        while self.buckets and self.buckets[0][0] <= second - WINDOW_S:
            _, r, t = self.buckets.popleft()
            self.requests -= r
            self.tokens -= t
        if day != self.day:
            self.day, self.day_tokens = day, 0

    def add(self, second: int, requests: int, tokens: int) -> None:
        if self.buckets and self.buckets[-1][0] == second:
            self.buckets[-1][1] += requests
            self.buckets[-1][2] += tokens
        else:
            self.buckets.append([second, requests, tokens])
        self.requests += requests
        self.tokens += tokens
        self.day_tokens += tokens

    def seconds_until(self, second: int, *, requests: int = 0, tokens: int = 0) -> int:
        """Seconds until at least ``requests``/``tokens`` have left the window."""
        freed_r = freed_t = 0
        for bucket_second, r, t in self.buckets:
            freed_r += r
            freed_t += t
            if freed_r >= requests and freed_t >= tokens:
                return max(1, bucket_second + WINDOW_S - second)
        return WINDOW_S


def _limit(limits: Mapping[str, Any], key: str) -> int | None:
    value = limits.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


class Reservation:
    """One call's share of its identity's budget; ``settle`` exactly once."""

    def __init__(self, budgets: Budgets, key: str, second: int, day: int, reserved: int) -> None:
        self._budgets = budgets
        self._key = key
        self._second = second
        self._day = day
        self.reserved = reserved
        self._settled = False

    def settle(self, real_tokens: int) -> None:
        if self._settled:
            return
        self._settled = True
        self._budgets._adjust(self, max(0, real_tokens) - self.reserved)


class Budgets:
    """In-memory budgets of every SPIFFE ID this gate has seen."""

    def __init__(self, clock: Clock, *, max_identities: int = 100_000) -> None:
        self._clock = clock
        self._max = max_identities
        self._lock = threading.Lock()
        self._usage: dict[str, _Usage] = {}

    def _now(self) -> tuple[int, int, datetime]:
        now = self._clock.now()
        second = math.floor(now.timestamp())
        return second, now.toordinal(), now

    def usage(self, spiffe_id: str) -> dict[str, int]:
        """The counters the policy input's ``usage`` carries."""
        second, day, _ = self._now()
        with self._lock:
            u = self._usage.get(spiffe_id)
            if u is None:
                return {"requests_last_minute": 0, "tokens_last_minute": 0, "tokens_today": 0}
            u.expire(second, day)
            return {
                "requests_last_minute": u.requests,
                "tokens_last_minute": u.tokens,
                "tokens_today": u.day_tokens,
            }

    def reserve(
        self, spiffe_id: str, limits: Mapping[str, Any], estimated_tokens: int
    ) -> Reservation:
        """Count one request and reserve ``estimated_tokens``, or raise BudgetExceededError."""
        second, day, now = self._now()
        rpm, tpm, daily = (_limit(limits, k) for k in ("rpm", "tpm", "daily_tokens"))
        estimated = max(0, estimated_tokens)
        with self._lock:
            u = self._usage.get(spiffe_id)
            if u is None:
                if len(self._usage) >= self._max:
                    self._evict(second, day)
                u = self._usage[spiffe_id] = _Usage()
            u.expire(second, day)
            if rpm is not None and u.requests + 1 > rpm:
                wait = u.seconds_until(second, requests=u.requests + 1 - rpm)
                raise BudgetExceededError(
                    f"{spiffe_id} made {u.requests} requests in the last minute; the limit is "
                    f"{rpm} per minute",
                    retry_after_s=wait if rpm > 0 else WINDOW_S,
                )
            if tpm is not None and u.tokens + estimated > tpm:
                wait = u.seconds_until(second, tokens=u.tokens + estimated - tpm)
                raise BudgetExceededError(
                    f"{spiffe_id} used {u.tokens} tokens in the last minute and this call may "
                    f"use {estimated}; the limit is {tpm} per minute",
                    retry_after_s=wait,
                )
            if daily is not None and u.day_tokens + estimated > daily:
                midnight = datetime.combine(
                    now.date() + timedelta(days=1), datetime.min.time(), tzinfo=now.tzinfo
                )
                raise BudgetExceededError(
                    f"{spiffe_id} used {u.day_tokens} tokens today and this call may use "
                    f"{estimated}; the daily limit is {daily}",
                    retry_after_s=math.ceil((midnight - now).total_seconds()),
                )
            u.add(second, 1, estimated)
        return Reservation(self, spiffe_id, second, day, estimated)

    def _adjust(self, reservation: Reservation, delta: int) -> None:
        if delta == 0:
            return
        second, day, _ = self._now()
        with self._lock:
            u = self._usage.get(reservation._key)
            if u is None:
                return
            u.expire(second, day)
            # the correction lands in the reservation's own bucket while it is in the window,
            # so a call's tokens leave the window together
            for bucket in u.buckets:
                if bucket[0] == reservation._second:
                    before = bucket[2]
                    bucket[2] = max(0, before + delta)
                    u.tokens += bucket[2] - before
                    break
            if reservation._day == day:
                u.day_tokens = max(0, u.day_tokens + delta)

    def _evict(self, second: int, day: int) -> None:
        for key in list(self._usage):
            u = self._usage[key]
            u.expire(second, day)
            if not u.buckets and u.day_tokens == 0:
                del self._usage[key]
        while len(self._usage) >= self._max:
            self._usage.pop(next(iter(self._usage)))
