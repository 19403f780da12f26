"""The decision cache: results per (revision, path, caller key), bounded LRU.

Callers pass the key (the input fields the policy reads, e.g. ``(spiffe_id, model, op)``);
the cache never derives it. Entries belong to one revision: ``clear`` runs on every revision
change, and a lookup with another revision misses. A policy opts out for one answer by
returning an object with ``"cache": false``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

CacheKey = tuple[str, str, Hashable]


class DecisionCache:
    """Thread-safe LRU of (defined, result) per (revision, path, key)."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self._max = max_entries
        self._entries: OrderedDict[CacheKey, tuple[bool, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._max > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, revision: str, path: str, key: Hashable) -> tuple[bool, Any] | None:
        full = (revision, path, key)
        with self._lock:
            entry = self._entries.get(full)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(full)
            self.hits += 1
            return entry

    def put(self, revision: str, path: str, key: Hashable, defined: bool, result: Any) -> bool:
        """Store an answer unless the policy opted out; True when stored."""
        if not self.enabled or (isinstance(result, dict) and result.get("cache") is False):
            return False
        with self._lock:
            self._entries[(revision, path, key)] = (defined, result)
            self._entries.move_to_end((revision, path, key))
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
