"""The policy store: which modules and data are live, and how a new revision replaces them.

Sources, in order: the files of ``rego_dir`` (``*.rego`` without ``*_test.rego``, plus
``data.json``/``data.yaml`` placed at their directory's path), then modules and data written
through the OPA REST API (kept in memory, on top of the files, until deleted or restarted).
The revision is the content hash of what is served.

A reload (file change seen by the watcher, SIGHUP via ``reload()``, or the API) reads the
sources, and if their hash differs asks the engine to ``load`` them. The engine swaps
atomically or refuses: a module that fails to parse or compile raises
``PolicyCompileError`` (``file:line:col: message``), the previous revision stays active, and
the failure is logged, counted (``reload_failures``) and audited (``policy.reload_failed``).
Listeners (the decision cache, the bundle server) hear of every successful change.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from policy.engine import PolicyEngine, compute_revision, normalize_path
from policy.errors import (
    ErrorLocation,
    PolicyCompileError,
    PolicyInputError,
    PolicyNotFoundError,
)
from policy.sources import PolicySources, fingerprint, load_directory, merge_at
from zerogate.audit import AuditSink
from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.errors import AuditError

log = logging.getLogger(__name__)

RELOAD_FAILED_KIND = "policy.reload_failed"
RELOADED_KIND = "policy.reloaded"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One immutable revision: exactly what the engine was loaded with."""

    revision: str
    modules: Mapping[str, str]
    data: Mapping[str, Any]
    file_modules: frozenset[str]
    tests: Mapping[str, str] = field(default_factory=dict)
    data_files: Mapping[str, bytes] = field(default_factory=dict)
    loaded_at: datetime | None = None


Listener = Callable[[Snapshot], None]
FailureListener = Callable[[PolicyCompileError], None]


class PolicyStore:
    """Owns the engine's content. Thread-safe; writes are serialised, reads lock-free."""

    def __init__(
        self,
        engine: PolicyEngine,
        root: Path | None,
        *,
        audit: AuditSink | None = None,
        clock: Clock = SYSTEM_CLOCK,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.engine = engine
        self.root = root
        self._audit = audit
        self._clock = clock
        self._poll_interval = poll_interval_s
        self._write_lock = threading.RLock()
        self._api_modules: dict[str, str] = {}
        self._api_data: dict[tuple[str, ...], Any] = {}
        self._snapshot: Snapshot | None = None
        self._listeners: list[Listener] = []
        self._failure_listeners: list[FailureListener] = []
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._seen_fingerprint: tuple[tuple[str, int, int], ...] = ()
        self._file_data: Mapping[str, Any] = {}
        self.reload_failures = 0
        self.reloads = 0
        self.last_error: PolicyCompileError | None = None

    # --- reading ------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is None:
            raise PolicyNotFoundError("no policy revision is loaded yet")
        return snap

    @property
    def revision(self) -> str | None:
        snap = self._snapshot
        return snap.revision if snap else None

    def module(self, module_id: str) -> str:
        try:
            return self.snapshot.modules[module_id]
        except KeyError:
            raise PolicyNotFoundError(f"policy module {module_id!r} not found") from None

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def on_failure(self, listener: FailureListener) -> None:
        self._failure_listeners.append(listener)

    # --- writing ------------------------------------------------------------------------

    def reload(self, *, reason: str = "api") -> str:
        """Re-read the sources; return the active revision. Raises PolicyCompileError (and
        keeps the previous revision) when the new content is bad."""
        with self._write_lock:
            if self.root is not None:
                self._seen_fingerprint = fingerprint(self.root)
            try:
                sources = self._read_files()
            except PolicyCompileError as exc:
                self._failed(exc, reason)
                raise
            return self._apply(sources, self._api_modules, self._api_data, reason)

    def put_module(self, module_id: str, text: str) -> str:
        """Add or replace one module (OPA ``PUT /v1/policies/{id}``); all-or-nothing."""
        _check_module_id(module_id)
        with self._write_lock:
            api = {**self._api_modules, module_id: text}
            revision = self._apply(self._current_sources(), api, self._api_data, "api.put")
            self._api_modules = api
            return revision

    def delete_module(self, module_id: str) -> str:
        with self._write_lock:
            if module_id not in self._api_modules:
                snap = self._snapshot
                if snap is not None and module_id in snap.file_modules:
                    raise PolicyInputError(
                        f"policy module {module_id!r} comes from a file in the policy "
                        "directory; delete the file instead"
                    )
                raise PolicyNotFoundError(f"policy module {module_id!r} not found")
            api = {k: v for k, v in self._api_modules.items() if k != module_id}
            revision = self._apply(self._current_sources(), api, self._api_data, "api.delete")
            self._api_modules = api
            return revision

    def put_data(self, path: str, value: Any) -> str:
        """Replace the document at ``data.<path>`` (OPA ``PUT /v1/data/{path}``)."""
        key = normalize_path(path)
        if not key and not isinstance(value, dict):
            raise PolicyInputError("the root data document must be an object")
        with self._write_lock:
            writes = {k: v for k, v in self._api_data.items() if k[: len(key)] != key}
            writes[key] = copy.deepcopy(value)
            revision = self._apply(self._current_sources(), self._api_modules, writes, "api.data")
            self._api_data = writes
            return revision

    def delete_data(self, path: str) -> str:
        key = normalize_path(path)
        with self._write_lock:
            writes = {k: v for k, v in self._api_data.items() if k[: len(key)] != key}
            if len(writes) == len(self._api_data):
                raise PolicyNotFoundError(f"no data was written at {'/'.join(key) or '/'}")
            revision = self._apply(self._current_sources(), self._api_modules, writes, "api.data")
            self._api_data = writes
            return revision

    # --- internals ----------------------------------------------------------------------

    def _read_files(self) -> PolicySources:
        if self.root is None:
            return PolicySources({}, {}, {}, {})
        return load_directory(self.root)

    def _current_sources(self) -> PolicySources:
        snap = self._snapshot
        if snap is None:
            return self._read_files()
        files = {k: v for k, v in snap.modules.items() if k in snap.file_modules}
        return PolicySources(files, snap.tests, self._file_data, snap.data_files)

    def _apply(
        self,
        sources: PolicySources,
        api_modules: Mapping[str, str],
        api_data: Mapping[tuple[str, ...], Any],
        reason: str,
    ) -> str:
        modules = {**sources.modules, **api_modules}
        data = copy.deepcopy(dict(sources.data))
        for key, value in api_data.items():
            _set_at(data, key, value)
        revision = compute_revision(modules, data)
        current = self._snapshot
        if current is not None and current.revision == revision:
            return revision
        try:
            loaded = self.engine.load(modules, data)
        except PolicyCompileError as exc:
            self._failed(exc, reason)
            raise
        snap = Snapshot(
            revision=loaded,
            modules=modules,
            data=data,
            file_modules=frozenset(sources.modules) - frozenset(api_modules),
            tests=dict(sources.tests),
            data_files=dict(sources.data_files),
            loaded_at=self._clock.now(),
        )
        self._file_data = sources.data
        self._snapshot = snap
        self.reloads += 1
        self.last_error = None
        log.info(
            "event=policy.reloaded revision=%s previous=%s reason=%s modules=%d engine=%s",
            loaded,
            current.revision if current else None,
            reason,
            len(modules),
            self.engine.name,
        )
        self._audit_append(
            RELOADED_KIND,
            {
                "revision": loaded,
                "previous_revision": current.revision if current else None,
                "reason": reason,
                "modules": sorted(modules),
                "engine": self.engine.name,
            },
        )
        for listener in list(self._listeners):
            try:
                listener(snap)
            except Exception:
                log.exception("event=policy.listener_failed revision=%s", loaded)
        return loaded

    def _failed(self, exc: PolicyCompileError, reason: str) -> None:
        self.reload_failures += 1
        self.last_error = exc
        log.error(
            "event=policy.reload_failed reason=%s active_revision=%s errors=%r",
            reason,
            self.revision,
            [str(e) for e in exc.errors],
        )
        self._audit_append(
            RELOAD_FAILED_KIND,
            {
                "reason": reason,
                "active_revision": self.revision,
                "errors": [e.as_opa() for e in exc.errors],
            },
        )
        for listener in list(self._failure_listeners):
            try:
                listener(exc)
            except Exception:
                log.exception("event=policy.listener_failed")

    def _audit_append(self, kind: str, payload: Mapping[str, Any]) -> None:
        if self._audit is None:
            return
        try:
            self._audit.append(kind, payload)
        except AuditError:
            log.exception("event=policy.audit_failed kind=%s", kind)

    # --- watching -------------------------------------------------------------------------

    def start_watching(self) -> None:
        """Poll ``root`` (mtime, size per file; content hash decides) and reload on change."""
        if self.root is None or self._watcher is not None:
            return
        self._stop.clear()
        self._seen_fingerprint = fingerprint(self.root)
        self._watcher = threading.Thread(target=self._watch, name="policy-watch", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        self._stop.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join(timeout=5)

    def _watch(self) -> None:
        assert self.root is not None
        while not self._stop.wait(self._poll_interval):
            try:
                current = fingerprint(self.root)
            except OSError:
                log.exception("event=policy.watch_failed root=%s", self.root)
                continue
            if current == self._seen_fingerprint:
                continue
            try:
                self.reload(reason="file_change")
            except PolicyCompileError:
                # reload logged, counted and audited it; the old revision keeps serving
                continue
            except Exception:
                log.exception("event=policy.watch_reload_failed root=%s", self.root)


def _check_module_id(module_id: str) -> None:
    if not module_id or len(module_id) > 512 or any(ord(c) < 0x20 for c in module_id):
        raise PolicyInputError(f"policy id {module_id!r} is not allowed")


def _set_at(data: dict[str, Any], key: tuple[str, ...], value: Any) -> None:
    if not key:
        data.clear()
        data.update(copy.deepcopy(value))
        return
    try:
        merge_at(data, key[:-1], {}, origin="api")
    except PolicyCompileError as exc:
        raise PolicyCompileError(
            [ErrorLocation("api", 1, 1, e.message, e.code) for e in exc.errors]
        ) from None
    node = data
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = copy.deepcopy(value)
