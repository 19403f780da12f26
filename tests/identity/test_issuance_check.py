"""The Workload API's issuance hook: entries the issuance policy refuses are not served, and
any error in the check refuses (fail closed). The real shipped rego/identity policy too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from identity.service import IdentityService, open_identity
from identity.workload_core import CoreIdentitySource
from policy.service import open_policy
from zerogate.config import Settings
from zerogate.store import Database
from zerogate.wiring import issuance_check

SELECTORS = frozenset({"unix:uid:1000"})


@pytest.fixture
def identity(tmp_path: Path) -> Iterator[tuple[IdentityService, Settings]]:
    db = Database.open(f"sqlite:///{tmp_path / 'z.db'}")
    settings = Settings(
        data_dir=tmp_path, trust_domain="example.org", identity={"key_store": "memory"}
    )
    service = open_identity(settings, db, None)
    for path in ("/ml/trainer", "/zerogate/impostor"):
        service.entries.create(
            {"spiffe_id": f"spiffe://example.org{path}", "selectors": sorted(SELECTORS)}
        )
    yield service, settings
    db.close()


def _served(source: CoreIdentitySource) -> list[str]:
    return sorted(e.spiffe_id for e in source.entries_for(SELECTORS))


def test_without_a_check_every_matching_entry_is_served(
    identity: tuple[IdentityService, Settings],
) -> None:
    service, _ = identity
    assert _served(CoreIdentitySource(service.ca, service.entries)) == [
        "spiffe://example.org/ml/trainer",
        "spiffe://example.org/zerogate/impostor",
    ]


def test_refused_entries_are_not_served_and_errors_refuse(
    identity: tuple[IdentityService, Settings],
) -> None:
    service, _ = identity
    seen: list[dict[str, Any]] = []

    def only_ml(facts: dict[str, Any]) -> tuple[bool, list[str]]:
        seen.append(facts)
        return facts["spiffe_id"].startswith("spiffe://example.org/ml/"), ["not ml"]

    source = CoreIdentitySource(service.ca, service.entries, issuance_check=only_ml)
    assert _served(source) == ["spiffe://example.org/ml/trainer"]
    assert {f["kind"] for f in seen} == {"x509"}
    assert seen[0]["selectors"] == ["unix:uid:1000"]

    def broken(facts: dict[str, Any]) -> tuple[bool, list[str]]:
        raise RuntimeError("policy engine down")

    assert _served(CoreIdentitySource(service.ca, service.entries, issuance_check=broken)) == []


def test_the_shipped_identity_policy_reserves_zerogates_own_paths(
    identity: tuple[IdentityService, Settings],
) -> None:
    service, settings = identity
    policy = open_policy(settings, None)
    try:
        source = CoreIdentitySource(
            service.ca, service.entries, issuance_check=issuance_check(policy)
        )
        assert _served(source) == ["spiffe://example.org/ml/trainer"]
    finally:
        policy.close()
