"""Correlation: a Falco alert -> its workload -> the SPIFFE IDs zerogate issues to it.

The alert's ``output_fields`` name the workload: ``k8s.ns.name``, ``k8s.pod.name``,
``k8s.pod.uid``, ``container.full_id`` (and, for a process on the host, ``user.uid``). These
become the same selectors attestation produces (identity/attestation.py): ``k8s:ns:``,
``k8s:pod-name:``, ``k8s:pod-uid:``, ``k8s:container-id:``, ``unix:uid:``. A registration
entry belongs to the workload when none of its selectors of those kinds contradicts the alert
and at least one agrees. How strongly:

- ``exact``: every selector of the entry is known from the alert and agrees;
- ``pod``: a pod-specific selector (pod name, pod uid, container id) agrees, others (e.g.
  ``k8s:sa:``, which Falco does not report) are unknown;
- ``namespace``: only ``k8s:ns:`` agrees, the rest is unknown: another workload of the same
  namespace may hold this ID. The shipped policy acts on ``exact`` and ``pod`` only and just
  reports ``namespace`` matches.

Falco sends ``null`` while container/Kubernetes metadata lags (issue 7): such an event
correlates to nothing; it is kept and counted (``Correlator.unmatched``), never dropped.
Entries are read once into a copy; this process's changes (``EntryRepository.on_change``)
are applied to it, so correlation does no query; other processes' changes are found through
the stored entries' version (see ``Correlator``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from identity.entries import Entry, EntryEvent, EntryRepository
from runtime.falco import FalcoAlert

Strength = Literal["exact", "pod", "namespace"]
_KINDS = ("k8s:ns", "k8s:pod-name", "k8s:pod-uid", "k8s:container-id", "unix:uid")
_POD_KINDS = {"k8s:pod-name", "k8s:pod-uid", "k8s:container-id"}

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MatchedIdentity:
    spiffe_id: str
    entry_id: str
    match: Strength
    selectors: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "spiffe_id": self.spiffe_id,
            "entry_id": self.entry_id,
            "match": self.match,
            "selectors": list(self.selectors),
        }


def workload_selectors(alert: FalcoAlert) -> dict[str, str]:
    """Selector kind -> value, for the kinds the alert reports."""
    out: dict[str, str] = {}
    if alert.k8s_ns:
        out["k8s:ns"] = alert.k8s_ns
    if alert.k8s_pod:
        out["k8s:pod-name"] = alert.k8s_pod
    if alert.k8s_pod_uid:
        out["k8s:pod-uid"] = alert.k8s_pod_uid
    full_id = alert.field_str("container.full_id")
    if full_id:
        out["k8s:container-id"] = full_id
    container = alert.container_id
    uid = alert.output_fields.get("user.uid")
    on_host = container in (None, "host")
    if on_host and isinstance(uid, int) and not isinstance(uid, bool) and uid >= 0:
        out["unix:uid"] = str(uid)
    return out


def _kind(selector: str) -> tuple[str, str]:
    for kind in _KINDS:
        if selector.startswith(kind + ":"):
            return kind, selector[len(kind) + 1 :]
    return "", selector


def match_entry(entry: Entry, known: dict[str, str]) -> Strength | None:
    agree: set[str] = set()
    unknown = False
    for sel in entry.selectors:
        kind, value = _kind(str(sel))
        if kind and kind in known:
            if known[kind] != value:
                return None  # contradicts the alert
            agree.add(kind)
        else:
            unknown = True
    if not agree:
        return None
    if not unknown:
        return "exact"
    if agree & _POD_KINDS:
        return "pod"
    if agree == {"k8s:ns"}:
        return "namespace"
    return "pod" if "unix:uid" in agree else "namespace"


def _matches(entries: list[Entry], known: dict[str, str]) -> list[MatchedIdentity]:
    found = []
    for entry in entries:
        strength = match_entry(entry, known)
        if strength is not None:
            found.append(
                MatchedIdentity(
                    str(entry.spiffe_id), entry.id, strength, tuple(str(s) for s in entry.selectors)
                )
            )
    return found


class Correlator:
    """Matches alerts to registration entries, from a cached copy of the enabled entries.

    The copy follows this process's entry changes as they happen (``on_change``). Changes
    made by another process (``zerogate entry create`` beside the server, another replica)
    are found through the stored entries' version (``EntryRepository.version``): checked at
    most every ``check_s`` seconds, and when an alert that names a workload matches nothing,
    at most every ``miss_check_s`` (most of a cluster's pods have no entry, so unmatched
    alerts are the common case and each check reads the entries table), so an entry created
    a moment before its workload's first alert is matched."""

    def __init__(
        self,
        entries: EntryRepository,
        *,
        check_s: float = 0.5,
        miss_check_s: float = 0.02,
        full_s: float = 60.0,
    ) -> None:
        self._entries = entries
        self._lock = threading.Lock()
        self._cache: list[Entry] | None = None
        self._version: object = None
        self._checked = 0.0  # time.monotonic() of the last version check
        self._check_s = check_s
        self._miss_check_s = miss_check_s
        self._reloading: threading.Thread | None = None
        self._loaded = 0.0  # time.monotonic() of the last full read
        self._stale = False  # the stored version moved since the copy was read
        self._full_s = full_s
        self.matched = 0
        self.unmatched = 0
        entries.on_change(self._on_change)

    def _on_change(self, event: EntryEvent) -> None:
        """Apply this process's change to the cached entries (no re-read on the enforcement
        path), and take the stored version it produced as the one the copy matches: else
        every revoke by the responder would make the next check read every entry again (a
        30-40 ms read of 400 entries, the p99 of event-to-enforcement). Another process's
        change committed in the instant between the two is caught by the full read every
        ``full_s``."""
        with self._lock:
            if self._cache is None:
                return
            kept = [e for e in self._cache if e.id != event.entry.id]
            if event.action != "deleted" and not event.entry.disabled:
                kept.append(event.entry)
            self._cache = kept
        try:
            version = self._entries.version()
        except Exception:  # the store is down: the next check reads again
            return
        with self._lock:
            self._version = version

    def reload(self) -> None:
        with self._lock:
            self._cache = None

    def load(self) -> int:
        """Read the entries now (the responder's warm-up), not on the first event; returns
        how many are enabled."""
        return len(self._all())

    def _all(self, *, miss: bool = False) -> list[Entry]:
        """The enabled entries. When the stored version moved (checked once ``check_s`` has
        passed, or ``miss_check_s`` after an alert matched nothing) they are read again: in
        the background on a periodic check, so that the alert at hand is not held up (a read
        of 400 entries took 30-40 ms, the whole p99 of event-to-enforcement), and at once on
        a miss, whose alert may name a workload whose entry was just created."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache
            stale = self._stale  # a check found the version moved; the new read is not in
            due = now - self._checked >= (self._miss_check_s if miss else self._check_s)
        if cached is None or (miss and stale):
            return self._reload()
        if not due:
            return cached
        version = self._entries.version()
        with self._lock:
            self._checked = now
            moved = version != self._version
            self._stale = self._stale or moved
        if not moved:
            if not miss and now - self._loaded >= self._full_s:
                self._reload_soon()  # the safety net: see _on_change
            return cached
        if miss:
            return self._reload()
        self._reload_soon()
        return cached

    def _reload(self) -> list[Entry]:
        version = self._entries.version()  # before the read: a change between is re-read
        entries = [e for e in self._entries.list() if not e.disabled]
        now = time.monotonic()
        with self._lock:
            self._cache, self._version, self._checked, self._loaded = entries, version, now, now
            self._stale = False
        return entries

    def _reload_soon(self) -> None:
        with self._lock:
            if self._reloading is not None:
                return
            self._reloading = threading.Thread(
                target=self._reload_in_background, name="runtime-correlate-reload", daemon=True
            )
        self._reloading.start()

    def _reload_in_background(self) -> None:
        try:
            self._reload()
        except Exception as exc:  # the store is down: the next check tries again
            log.warning("event=runtime.correlate.reload_failed error=%s", exc)
        finally:
            with self._lock:
                self._reloading = None

    def correlate(self, alert: FalcoAlert) -> list[MatchedIdentity]:
        known = workload_selectors(alert)
        found: list[MatchedIdentity] = []
        if known:
            entries = self._all()
            found = _matches(entries, known)
            if not found:  # an entry another process created a moment ago?
                fresh = self._all(miss=True)
                if fresh is not entries:
                    found = _matches(fresh, known)
        if found:
            self.matched += 1
        else:
            self.unmatched += 1
        return found
