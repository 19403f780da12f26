"""Real OPA servers through ``opa-python-client`` (engine ``opa-server``).

``load`` checks the modules locally first (with the embedded engine that is available), so a
bad module never reaches a server and the previous revision stays active everywhere; it then
pushes data (``PUT /v1/data``: zerogate owns the server's whole data document) and modules
(``PUT /v1/policies/zerogate/<id>``) to every server, and deletes the modules under
``zerogate/`` that are no longer part of the revision. A server that cannot be reached is
marked stale and not queried until a later load reaches it; a load that reaches no server
fails. Pushes to one server are not atomic across modules; for atomic activation let OPA
pull zerogate's bundle (``/bundles/zerogate.tar.gz``) instead.

``evaluate`` queries ``POST /v1/data/{path}``. Budget: ``timeout_s`` is the whole budget of
one evaluation, across servers: each server is tried in order while time remains, each
request gets the remaining time as its timeout. Only connection failures and timeouts move
on to the next server (a query is read-only, so repeating it is safe); an answer with an
error status is final. Every failure raises ``PolicyUnavailableError`` or
``PolicyEvalError``: callers deny (fail closed). Client-side retries of the library are off
(``retries=0``) so they cannot exceed the budget.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
from opa_client import OpaClient
from opa_client.errors import DeletePolicyError, RegoParseError

from policy.engine import (
    Decision,
    PolicyEngine,
    compute_revision,
    encode_input,
    new_decision_id,
    normalize_path,
)
from policy.errors import (
    EngineLoadError,
    ErrorLocation,
    PolicyCompileError,
    PolicyEvalError,
    PolicyUnavailableError,
)

MODULE_PREFIX = "zerogate/"

log = logging.getLogger(__name__)


def _local_checker() -> PolicyEngine:
    try:
        from policy.opa_embedded import OpaEmbeddedEngine

        return OpaEmbeddedEngine()
    except (ImportError, OSError, EngineLoadError):
        from policy.regorus import RegorusEngine

        return RegorusEngine()


class _Server:
    def __init__(self, url: str, timeout_s: float, token: str | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise EngineLoadError(f"OPA server URL {url!r} must be http(s)://host:port")
        self.url = url
        self.client = OpaClient(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 8181),
            ssl=parts.scheme == "https",
            retries=0,
            timeout=timeout_s,
            token=token,
        )
        # requests' Session is not documented as thread-safe: one request at a time.
        self.lock = threading.Lock()


class OpaRemoteEngine:
    """Evaluate on remote OPA servers; fail closed on any doubt."""

    name = "opa-server"

    def __init__(
        self, urls: Sequence[str], *, timeout_s: float = 0.2, token: str | None = None
    ) -> None:
        if not urls:
            raise EngineLoadError("engine opa-server needs at least one URL in policy.opa_urls")
        if timeout_s <= 0:
            raise EngineLoadError("opa-server timeout must be positive")
        self._timeout = timeout_s
        self._servers = [_Server(u, timeout_s, token) for u in urls]
        self._revision: str | None = None
        self._fresh: list[_Server] = list(self._servers)  # servers holding the revision
        self._load_lock = threading.Lock()
        self._checker = _local_checker()
        self._closed = False

    @property
    def revision(self) -> str | None:
        return self._revision

    # --- load -----------------------------------------------------------------------------

    def load(self, modules: Mapping[str, str], data: Mapping[str, Any]) -> str:
        with self._load_lock:
            self._checker.load(modules, data)  # raises PolicyCompileError: nothing pushed
            revision = compute_revision(modules, data)
            fresh, failures = [], []
            for server in self._servers:
                try:
                    self._push(server, modules, data)
                    fresh.append(server)
                except PolicyUnavailableError as exc:
                    failures.append(str(exc))
                    log.warning(
                        "event=policy.remote_push_failed url=%s error=%r", server.url, str(exc)
                    )
            if not fresh:
                raise PolicyUnavailableError("; ".join(failures))
            self._fresh = fresh
            self._revision = revision
            self._closed = False
            return revision

    def _push(self, server: _Server, modules: Mapping[str, str], data: Mapping[str, Any]) -> None:
        client = server.client
        try:
            with server.lock:
                # zerogate owns the server's data document: it is replaced as a whole.
                client.update_or_create_data(dict(data), endpoint="")
                for module_id in sorted(modules):
                    client.update_policy_from_string(
                        modules[module_id], MODULE_PREFIX + module_id, rego_compat=False
                    )
                # Ours are the modules under MODULE_PREFIX: drop those not in this revision,
                # including ones pushed before a restart of zerogate.
                wanted = {MODULE_PREFIX + m for m in modules}
                for remote_id in client.get_policies_list():
                    if remote_id.startswith(MODULE_PREFIX) and remote_id not in wanted:
                        with contextlib.suppress(DeletePolicyError):  # gone already
                            client.delete_policy(remote_id)
        except RegoParseError as exc:
            raise PolicyCompileError(_remote_errors(exc)) from None
        except Exception as exc:  # requests errors, and opa_client's own class per status
            message = f"OPA server {server.url} refused the push: {exc}"
            raise PolicyUnavailableError(message) from exc

    # --- evaluate -------------------------------------------------------------------------

    def evaluate(self, path: str, input: Any = None) -> Decision:
        revision = self._revision
        if revision is None or self._closed:
            raise PolicyUnavailableError("no policy revision is loaded on the OPA servers")
        segments = normalize_path(path)
        encode_input(input)  # raises PolicyInputError before any network traffic
        deadline = time.monotonic() + self._timeout
        failures = []
        for server in self._fresh:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            start = time.perf_counter_ns()
            try:
                with server.lock:
                    server.client.timeout = remaining
                    body = server.client.query_rule(input, package_path="/".join(segments))
            except (requests.ConnectionError, requests.Timeout) as exc:
                failures.append(f"{server.url}: {type(exc).__name__}")
                continue
            except requests.HTTPError as exc:
                raise PolicyEvalError(f"OPA server {server.url}: {_message(exc)}") from None
            except ValueError as exc:  # not JSON
                raise PolicyEvalError(f"OPA server {server.url} sent no JSON: {exc}") from None
            eval_ns = time.perf_counter_ns() - start
            return _decision(server.url, body, revision, segments, eval_ns)
        raise PolicyUnavailableError(
            f"no OPA server answered within {self._timeout * 1000:.0f} ms: " + "; ".join(failures)
        )

    def prepare(self, paths: Iterable[str]) -> None:
        """Nothing to prepare here: each OPA server prepares its own queries."""

    def close(self) -> None:
        self._closed = True
        for server in self._servers:
            server.client.close_connection()
        self._checker.close()


def _message(exc: requests.HTTPError) -> str:
    response = exc.response
    if response is None:
        return str(exc)
    try:
        body = response.json()
    except ValueError:
        return f"status {response.status_code}"
    message = body.get("message") if isinstance(body, dict) else None
    return f"status {response.status_code}: {message}"


def _decision(
    url: str, body: Any, revision: str, segments: tuple[str, ...], eval_ns: int
) -> Decision:
    if not isinstance(body, dict):
        raise PolicyEvalError(f"OPA server {url} answered with a non-object")
    return Decision(
        result=body.get("result"),
        revision=revision,
        decision_id=str(body.get("decision_id") or new_decision_id()),
        eval_ns=eval_ns,
        defined="result" in body,
        path="/".join(segments),
    )


def _remote_errors(exc: RegoParseError) -> list[ErrorLocation]:
    found = []
    for err in exc.errors:
        loc = err.get("location") or {}
        file = str(loc.get("file", ""))
        found.append(
            ErrorLocation(
                file.removeprefix(MODULE_PREFIX) or "<remote>",
                int(loc.get("row", 1)),
                int(loc.get("col", 1)),
                str(err.get("message", "")),
                str(err.get("code", "rego_compile_error")),
            )
        )
    return found or [ErrorLocation("<remote>", 1, 1, str(exc.message))]
