"""Policy test fixtures: every engine, and a real uvicorn serving zerogate's OPA REST API on
loopback (the OPA-compatible server that ``opa-server`` and ``opa-python-client`` talk to)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from policy_helpers import make_app, make_service, serve

from policy.engine import PolicyEngine
from policy.opa_embedded import OpaEmbeddedEngine
from policy.opa_remote import OpaRemoteEngine
from policy.regorus import RegorusEngine
from policy.service import PolicyService

REPO = Path(__file__).resolve().parents[2]
REGO_DIR = REPO / "rego"
CASES_DIR = Path(__file__).parent / "cases"

EMBEDDED: dict[str, Callable[[], PolicyEngine]] = {
    "opa": OpaEmbeddedEngine,
    "regorus": RegorusEngine,
}


@pytest.fixture(params=sorted(EMBEDDED))
def embedded_engine(request: pytest.FixtureRequest) -> Iterator[PolicyEngine]:
    engine: PolicyEngine = EMBEDDED[request.param]()
    try:
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="module")
def opa_rest_server() -> Iterator[tuple[str, PolicyService]]:
    """zerogate's OPA REST API with an empty policy set, shared by a module's tests."""
    service = make_service(None)
    with serve(make_app(service)) as url:
        yield url, service
    service.close()


@pytest.fixture(params=[*sorted(EMBEDDED), "opa-server"])
def any_engine(
    request: pytest.FixtureRequest,
) -> Iterator[PolicyEngine]:
    """Every engine the contract covers; opa-server talks to a real uvicorn on loopback."""
    engine: PolicyEngine
    if request.param == "opa-server":
        service = make_service(None)  # a fresh server per test: no state leaks between them
        with serve(make_app(service)) as url:
            engine = OpaRemoteEngine([url], timeout_s=5.0)
            try:
                yield engine
            finally:
                engine.close()
                service.close()
        return
    engine = EMBEDDED[request.param]()
    try:
        yield engine
    finally:
        engine.close()
