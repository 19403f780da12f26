"""Real OPA (Go, v1.20) in-process through ``opa-golib-python-bindings`` (engine ``opa``).

Each ``load`` builds a fresh native OPA instance for the new revision, compiles it, and only
then swaps it in; an evaluation holds the instance it started with, so it answers from
exactly one revision. The bindings keep one prepared query per query string per instance
(invalidated by any configuration change, which never happens after load), so a path's
query is prepared once per revision and reused by every later call. Rego v1 only.

The bindings serialise evaluations per instance; ``pool_size`` instances per revision let
that many evaluations run in parallel (the native call releases the GIL).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policy.engine import (
    Decision,
    compute_revision,
    new_decision_id,
    normalize_path,
    split_identifier_prefix,
    walk,
)
from policy.errors import (
    EngineLoadError,
    PolicyCompileError,
    PolicyEvalError,
    PolicyInputError,
    PolicyUnavailableError,
    parse_opa_errors,
)

try:
    from opa_bindings import OpaEngine, OpaError, OpaUndefinedError
except (ImportError, OSError) as exc:  # pragma: no cover - depends on the platform
    raise EngineLoadError(f"OPA bindings cannot be imported: {exc}") from exc


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Revision:
    revision: str
    instances: tuple[OpaEngine, ...]
    sources: Mapping[str, str]
    counter: itertools.count[int]

    def pick(self) -> OpaEngine:
        return self.instances[next(self.counter) % len(self.instances)]


def _prepare(engine: OpaEngine, documents: Iterable[str]) -> None:
    for document in documents:
        # undefined, or a rule that needs input: the query is prepared all the same
        with contextlib.suppress(OpaError):
            engine.eval_document(document, None)


class OpaEmbeddedEngine:
    """The default engine: OPA's own evaluator, no network, no subprocess."""

    name = "opa"

    def __init__(self, *, pool_size: int = 1) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be >= 1")
        self._pool_size = pool_size
        self._state: _Revision | None = None
        self._load_lock = threading.Lock()
        self._hot: set[str] = set()  # documents prepared on every instance of each revision
        try:
            probe = OpaEngine()
        except OSError as exc:  # the shared library does not load on this platform
            raise EngineLoadError(f"OPA bindings cannot load libopabridge: {exc}") from exc
        probe.close()

    @property
    def revision(self) -> str | None:
        state = self._state
        return state.revision if state else None

    def load(self, modules: Mapping[str, str], data: Mapping[str, Any]) -> str:
        revision = compute_revision(modules, data)
        sources = dict(modules)
        with self._load_lock:
            instances = tuple(self._build(sources, data) for _ in range(self._pool_size))
            # before the swap: no decision meets a cold query
            self._prepare_all(instances, self._hot, revision)
            self._state = _Revision(revision, instances, sources, itertools.count())
        return revision

    def _prepare_all(
        self, instances: tuple[OpaEngine, ...], documents: set[str], revision: str
    ) -> None:
        if not documents:
            return
        started = time.perf_counter()
        for instance in instances:
            _prepare(instance, documents)
        live = self._state.revision if self._state is not None else None
        log.info(
            "event=policy.prepared revision=%s live=%s documents=%s instances=%d ms=%.1f",
            revision,
            live,
            ",".join(sorted(documents)),
            len(instances),
            (time.perf_counter() - started) * 1000,
        )

    def prepare(self, paths: Iterable[str]) -> None:
        """OPA prepares a query on its first evaluation per instance, and each revision has
        new instances: the first decision on a path after a start or a reload took ~50 ms
        against ~1-2 ms for the next (the runtime responder's first quarantine, the first
        Falco POST's submit check). The hot documents are evaluated once with no input on
        every instance: now, and in ``load`` before the new revision is swapped in."""
        documents = {".".join(split_identifier_prefix(normalize_path(p))[0]) for p in paths}
        with self._load_lock:
            self._hot |= documents
            state = self._state
            if state is not None:
                self._prepare_all(state.instances, documents, state.revision)

    def _build(self, modules: Mapping[str, str], data: Mapping[str, Any]) -> OpaEngine:
        engine = OpaEngine()
        engine.print_handler = lambda message, location: None
        errors = []
        for module_id in sorted(modules):
            try:
                engine.add_policy(module_id, modules[module_id])
            except OpaError as exc:
                errors.extend(_compile_errors(exc, modules, module_id))
        if errors:
            engine.close()
            raise PolicyCompileError(errors)
        try:
            if data:
                engine.add_data(dict(data))
            # Preparing any query activates the whole module set: type/compile errors surface
            # here, before the revision is swapped in.
            engine.eval_query("true")
        except OpaError as exc:
            engine.close()
            raise PolicyCompileError(_compile_errors(exc, modules, None)) from None
        return engine

    def evaluate(self, path: str, input: Any = None) -> Decision:
        state = self._state
        if state is None:
            raise PolicyUnavailableError("no policy revision is loaded")
        segments = normalize_path(path)
        head, rest = split_identifier_prefix(segments)
        engine = state.pick()
        start = time.perf_counter_ns()
        try:
            value = engine.eval_document(".".join(head), input)
            defined = True
        except OpaUndefinedError:
            value, defined = None, False
        except OpaError as exc:
            if exc.code == "invalid_argument":
                raise PolicyInputError(exc.message) from None
            if exc.code == "closed":
                raise PolicyUnavailableError("engine is closed") from None
            locations = parse_opa_errors(exc.message, dict(state.sources))
            raise PolicyEvalError(
                f"evaluating data.{'.'.join(segments)}: {exc.message}",
                location=locations[0] if locations else None,
            ) from None
        except (TypeError, ValueError) as exc:
            raise PolicyInputError(f"input is not JSON: {exc}") from None
        eval_ns = time.perf_counter_ns() - start
        if defined and rest:
            defined, value = walk(value, rest)
        return Decision(
            result=value if defined else None,
            revision=state.revision,
            decision_id=new_decision_id(),
            eval_ns=eval_ns,
            defined=defined,
            path="/".join(segments),
        )

    def close(self) -> None:
        with self._load_lock:
            state, self._state = self._state, None
        if state is not None:
            for instance in state.instances:
                instance.close()


def _compile_errors(exc: OpaError, modules: Mapping[str, str], module_id: str | None) -> list[Any]:
    found = parse_opa_errors(exc.message, dict(modules))
    if found:
        return found
    from policy.errors import ErrorLocation

    return [ErrorLocation(module_id or "<modules>", 1, 1, exc.message, exc.code)]
