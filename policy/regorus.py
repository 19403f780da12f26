"""Microsoft's regorus (Rust) through ``gordon-to-regorus`` (engine ``regorus``).

A regorus ``Engine`` may only be used, and dropped, on the thread that created it (pyo3
``unsendable``: touching or freeing it from another thread panics). So the engine keeps the
active revision as plain data (modules + data JSON) and each thread lazily builds its own
native engines from it, rebuilding when the revision changes. The native engines live in a
module-level ``threading.local`` (never freed from another thread: a thread's entries are
dropped by that thread, when it replaces them or exits), keyed by the owning
``RegorusEngine``; entries of collected owners are pruned by the thread that holds them. A
thread keeps two: one that is given an input on every call, and one never given an input,
so that "no input" stays undefined instead of inheriting the previous call's input.

Known differences from OPA (documented in docs/policy.md; shipped policies avoid them):

- ``not f(x, <undefined>)`` is TRUE in regorus, while in OPA the undefined argument makes
  the whole expression (and so the rule body) undefined. In an ``allow`` rule that fails
  open. Shipped policies never pass a possibly-undefined value to a function under ``not``:
  they bind it first (``x := input.a``) so the body is undefined on both engines.
- No ``io.jwt.*`` and ``crypto.x509.*`` built-ins.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from policy.engine import (
    Decision,
    canonical_json,
    compute_revision,
    encode_input,
    new_decision_id,
    normalize_path,
    rego_ref,
)
from policy.errors import (
    EngineLoadError,
    ErrorLocation,
    PolicyCompileError,
    PolicyEvalError,
    PolicyUnavailableError,
    clean_regorus_text,
    parse_regorus_errors,
)

try:
    import regorus as _regorus
except ImportError as exc:  # pragma: no cover - depends on the platform
    raise EngineLoadError(f"regorus cannot be imported: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Revision:
    revision: str
    modules: Mapping[str, str]
    data_json: str


class _ThreadEngines:
    __slots__ = ("bare", "not_rules", "revision", "with_input")

    def __init__(self, revision: _Revision, with_input: Any, bare: Any) -> None:
        self.revision = revision
        self.with_input = with_input
        self.bare = bare
        self.not_rules: set[str] = set()  # refs that eval_rule refused: always a query


# pyo3 turns a Rust panic into ``pyo3_runtime.PanicException``, a BaseException that is not
# an Exception (and not importable by name): engine calls catch BaseException and let only
# these through.
_NOT_ENGINE_FAILURES = (KeyboardInterrupt, SystemExit, GeneratorExit)

_PER_THREAD = threading.local()
_TOKENS = itertools.count()


def _thread_slots() -> dict[int, tuple[weakref.ref[RegorusEngine], _ThreadEngines]]:
    slots: dict[int, tuple[weakref.ref[RegorusEngine], _ThreadEngines]] | None = getattr(
        _PER_THREAD, "slots", None
    )
    if slots is None:
        slots = {}
        _PER_THREAD.slots = slots
    return slots


class RegorusEngine:
    """The fast embedded engine and the fallback when OPA's bindings cannot load."""

    name = "regorus"

    def __init__(self) -> None:
        self._state: _Revision | None = None
        self._token = next(_TOKENS)
        self._closed = False

    @property
    def revision(self) -> str | None:
        state = self._state
        return state.revision if state else None

    def load(self, modules: Mapping[str, str], data: Mapping[str, Any]) -> str:
        state = _Revision(
            compute_revision(modules, data), dict(modules), canonical_json(data).decode()
        )
        engine = _build(state)
        # Evaluating the whole data document surfaces what regorus checks lazily (unknown
        # functions, bad refs) before the revision goes live.
        errors: list[ErrorLocation] = []
        try:
            engine.eval_query_as_json("data")
        except BaseException as exc:  # RuntimeError, or a Rust panic: refuse the revision
            if isinstance(exc, _NOT_ENGINE_FAILURES):
                raise
            errors = _errors(exc, None)
        if errors:
            del engine  # freed here, on its own thread (see _build)
            raise PolicyCompileError(errors)
        self._state = state
        self._closed = False
        self._remember(_ThreadEngines(state, engine, _build(state)))
        return state.revision

    def _engines(self) -> _ThreadEngines:
        state = self._state
        if state is None or self._closed:
            raise PolicyUnavailableError("no policy revision is loaded")
        slot = _thread_slots().get(self._token)
        if slot is not None and slot[1].revision is state:
            return slot[1]
        engines = _ThreadEngines(state, _build(state), _build(state))
        self._remember(engines)
        return engines

    def _remember(self, engines: _ThreadEngines) -> None:
        slots = _thread_slots()
        for token in [t for t, (owner, _) in slots.items() if owner() is None]:
            del slots[token]  # owner collected: free its engines here, on their own thread
        slots[self._token] = (weakref.ref(self), engines)

    def evaluate(self, path: str, input: Any = None) -> Decision:
        segments = normalize_path(path)
        encoded = encode_input(input)
        engines = self._engines()
        query = rego_ref(segments)
        revision = engines.revision.revision
        failure: PolicyEvalError | None = None
        defined, value = False, None
        start = time.perf_counter_ns()
        try:
            engine = engines.bare if encoded is None else engines.with_input
            if encoded is not None:
                engine.set_input_json(encoded)
            defined, value = _eval(engine, engines, query)
        except BaseException as exc:  # RuntimeError, or a Rust panic: fail closed
            if isinstance(exc, _NOT_ENGINE_FAILURES):
                raise
            errors = parse_regorus_errors(str(exc))
            failure = PolicyEvalError(
                f"evaluating {query}: {clean_regorus_text(str(exc))}",
                location=errors[0] if errors else None,
            )
        eval_ns = time.perf_counter_ns() - start
        del engines, engine  # a raised traceback must not keep native engines alive (_build)
        if failure is not None:
            raise failure
        return Decision(
            result=value,
            revision=revision,
            decision_id=new_decision_id(),
            eval_ns=eval_ns,
            defined=defined,
            path="/".join(segments),
        )

    def prepare(self, paths: Iterable[str]) -> None:
        """Nothing to prepare: regorus evaluates a query without a preparation step."""

    def close(self) -> None:
        self._closed = True
        self._state = None
        _thread_slots().pop(self._token, None)


_NOT_A_RULE = "not a valid rule path"


def _eval(engine: Any, engines: _ThreadEngines, query: str) -> tuple[bool, Any]:
    """``eval_rule`` when ``query`` names a rule (4x cheaper than a query: no query parse),
    else ``eval_query_as_json``. ``eval_rule`` answers None for both undefined and null and
    returns Python sets; those answers are redone as a query, whose JSON is exact."""
    if query not in engines.not_rules:
        try:
            value = engine.eval_rule(query)
        except RuntimeError as exc:
            if _NOT_A_RULE not in str(exc):
                raise
            engines.not_rules.add(query)
        else:
            if value is not None and _plain_json(value):
                return True, value
    results = json.loads(engine.eval_query_as_json(query)).get("result") or []
    if results and results[0].get("expressions"):
        return True, results[0]["expressions"][0]["value"]
    return False, None


def _plain_json(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_plain_json(v) for v in value.values())
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    return not isinstance(value, (set, frozenset))


def _build(state: _Revision) -> Any:
    # A native engine must never outlive its thread's frames: an exception traceback would
    # keep this frame (and the engine) alive and free it later on another thread. So errors
    # are collected first and raised only after the engine is gone.
    engine = _regorus.Engine()
    errors: list[ErrorLocation] = []
    for module_id in sorted(state.modules):
        try:
            engine.add_policy(module_id, state.modules[module_id])
        except BaseException as exc:  # parse errors are RuntimeError; panics too
            if isinstance(exc, _NOT_ENGINE_FAILURES):
                raise
            errors.extend(_errors(exc, module_id))
    if errors:
        del engine
        raise PolicyCompileError(errors)
    if state.data_json not in ("{}", ""):
        engine.add_data_json(state.data_json)
    return engine


def _errors(exc: BaseException, module_id: str | None) -> list[ErrorLocation]:
    found = parse_regorus_errors(str(exc))
    if found:
        return found
    return [ErrorLocation(module_id or "<modules>", 1, 1, clean_regorus_text(str(exc)))]
