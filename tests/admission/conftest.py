"""Admission fixtures: the shipped native policy on the embedded OPA and the Gatekeeper
library templates (helpers live in admission_support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from admission_support import LIBRARY, REPO

from admission.gatekeeper import ConstraintTemplate, load_objects, parse_template
from policy.opa_embedded import OpaEmbeddedEngine
from policy.sources import load_directory


@pytest.fixture(scope="session")
def native_engine() -> Iterator[OpaEmbeddedEngine]:
    """The shipped rego/ policies (zerogate.admission among them) on the embedded OPA."""
    sources = load_directory(REPO / "rego")
    engine = OpaEmbeddedEngine()
    engine.load(dict(sources.modules), dict(sources.data))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def library_templates() -> list[ConstraintTemplate]:
    return [
        parse_template(o, source=s)
        for o, s in load_objects(sorted(LIBRARY.glob("*/template.yaml")))
    ]
