"""Registration entries and the deny list on SQLite and PostgreSQL, with real audit records."""

from __future__ import annotations

from datetime import timedelta

import pytest

from identity.denylist import DenyList
from identity.entries import EntryEvent, EntryRepository, EntrySpec, Selector
from identity.errors import EntryConflictError, EntryError, EntryNotFoundError, IdentityError
from identity.spiffeid import SpiffeId, TrustDomain
from zerogate.audit import AuditLog, tail
from zerogate.clock import ManualClock
from zerogate.store import Database

TD = TrustDomain("example.org")


def _repo(db: Database, audit: AuditLog | None = None) -> EntryRepository:
    return EntryRepository(db, clock=ManualClock(), audit=audit, trust_domain=TD)


def _spec(path: str, *selectors: str, **kw: object) -> dict[str, object]:
    return {"spiffe_id": f"spiffe://example.org{path}", "selectors": list(selectors), **kw}


def test_crud_with_audit_records(database: Database, audit_log: AuditLog) -> None:
    repo = _repo(database, audit_log)
    events: list[EntryEvent] = []
    repo.on_change(events.append)
    created = repo.create(
        _spec("/api", "unix:uid:1000", "unix:gid:10", dns_names=["api.local"], admin=True),
        actor="cli",
    )
    assert created.revision == 1 and created.admin
    assert [str(s) for s in created.selectors] == ["unix:gid:10", "unix:uid:1000"]
    assert repo.get(created.id) == created
    updated = repo.update(created.id, {"hint": "blue", "x509_svid_ttl": 600}, actor="cli")
    assert updated.revision == 2 and updated.hint == "blue" and updated.x509_svid_ttl == 600
    assert updated.selectors == created.selectors
    assert [e.id for e in repo.list()] == [created.id]
    deleted = repo.delete(created.id, actor="cli")
    assert deleted.id == created.id
    with pytest.raises(EntryNotFoundError):
        repo.get(created.id)
    assert [e.action for e in events] == ["created", "updated", "deleted"]
    records = tail(database, 10, kind=None)
    kinds = [r.kind for r in records]
    assert kinds == ["identity.entry.created", "identity.entry.updated", "identity.entry.deleted"]
    assert records[0].payload["spiffe_id"] == "spiffe://example.org/api"
    assert records[0].payload["selectors"] == ["unix:gid:10", "unix:uid:1000"]
    assert records[0].payload["actor"] == "cli"
    assert records[1].payload["revision"] == 2


def test_match_is_a_subset_test(database: Database) -> None:
    repo = _repo(database)
    a = repo.create(_spec("/a", "unix:uid:1000"))
    b = repo.create(_spec("/b", "unix:uid:1000", "unix:gid:10"))
    c = repo.create(_spec("/c", "unix:uid:2000"))
    repo.create(_spec("/d", "unix:uid:1000", "k8s:ns:prod"))
    got = repo.match(["unix:uid:1000", "unix:gid:10", "unix:user:alice"])
    assert [e.id for e in got] == [a.id, b.id]
    assert [e.id for e in repo.match(["unix:uid:2000"])] == [c.id]
    assert repo.match([]) == []
    assert repo.match(["unix:uid:3"]) == []
    repo.update(a.id, {"disabled": True})
    assert [e.id for e in repo.match(["unix:uid:1000", "unix:gid:10"])] == [b.id]
    assert [e.id for e in repo.list(selector="unix:uid:1000")] == [a.id, b.id, repo.list()[3].id]
    assert [e.id for e in repo.list(spiffe_id="spiffe://example.org/c")] == [c.id]


def test_optimistic_revision_and_duplicates(database: Database) -> None:
    repo = _repo(database)
    entry = repo.create(_spec("/a", "unix:uid:1"))
    repo.update(entry.id, {"hint": "x"}, expected_revision=1)
    with pytest.raises(EntryConflictError, match="revision 2, not 1"):
        repo.update(entry.id, {"hint": "y"}, expected_revision=1)
    with pytest.raises(EntryConflictError, match="already maps"):
        repo.create(_spec("/a", "unix:uid:1"))
    other = repo.create(_spec("/a", "unix:uid:2"))
    with pytest.raises(EntryConflictError):
        repo.update(other.id, {"selectors": ["unix:uid:1"]})
    assert repo.get(other.id).selectors == (Selector("unix", "uid:2"),)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_spec("/a"), "at least one selector"),
        (_spec("/a", "nocolon"), "TYPE:VALUE"),
        (_spec("/a", "UNIX:uid:1"), "type must be lowercase"),
        (_spec("/a", "unix:"), "TYPE:VALUE"),
        ({"selectors": ["unix:uid:1"]}, "needs spiffe_id"),
        ({"spiffe_id": "spiffe://other.org/a", "selectors": ["unix:uid:1"]}, "not in trust domain"),
        ({"spiffe_id": "spiffe://example.org", "selectors": ["unix:uid:1"]}, "needs a path"),
        ({"spiffe_id": "spiffe://example.org/a/", "selectors": ["unix:uid:1"]}, "trailing slash"),
        (_spec("/a", "unix:uid:1", x509_svid_ttl=0), "x509_svid_ttl must be whole seconds"),
        (_spec("/a", "unix:uid:1", jwt_svid_ttl="5m"), "jwt_svid_ttl must be whole seconds"),
        (_spec("/a", "unix:uid:1", dns_names=["Bad_Name"]), "RFC 1123"),
        (_spec("/a", "unix:uid:1", admin="yes"), "admin must be true or false"),
        (_spec("/a", "unix:uid:1", colour="red"), "unknown entry field"),
        (_spec("/a", "unix:uid:1", parent_id="nope"), "parent_id"),
    ],
)
def test_bad_input_is_refused_and_nothing_stored(
    database: Database, data: dict[str, object], message: str
) -> None:
    repo = _repo(database)
    with pytest.raises(EntryError, match=message):
        repo.create(data)
    assert repo.list() == []


def test_spec_objects_and_parent(database: Database) -> None:
    repo = _repo(database)
    spec = EntrySpec(
        spiffe_id=SpiffeId.parse("spiffe://example.org/w"),
        selectors=(Selector.parse("unix:uid:5"),),
        parent_id=SpiffeId.parse("spiffe://example.org/node"),
    )
    entry = repo.create(spec)
    assert entry.parent_id == SpiffeId.parse("spiffe://example.org/node")
    assert repo.update(entry.id, {"parent_id": None}).parent_id is None
    with pytest.raises(EntryNotFoundError):
        repo.update("missing", {"hint": "x"})
    with pytest.raises(EntryNotFoundError):
        repo.delete("missing")


def test_deny_list(database: Database, audit_log: AuditLog) -> None:
    clock = ManualClock()
    deny = DenyList(database, clock=clock, audit=audit_log, refresh_s=0)
    sid = "spiffe://example.org/bad"
    assert not deny.is_denied(spiffe_id=sid)
    deny.add("spiffe_id", sid, reason="compromised", actor="cli")
    deny.add("x509_serial", "00AbC1")
    deny.add("jti_hash", "a" * 64, expires_at=clock.now() + timedelta(minutes=5))
    assert deny.is_denied(spiffe_id=SpiffeId.parse(sid))
    assert deny.is_denied(x509_serial=0xABC1) and deny.is_denied(x509_serial="abc1")
    assert deny.is_denied(jti_hash="A" * 64)
    assert not deny.is_denied(spiffe_id="spiffe://example.org/good", x509_serial=1)
    clock.advance(timedelta(minutes=5))
    assert not deny.is_denied(jti_hash="a" * 64)  # expired entries stop applying
    assert {r.kind for r in deny.list()} == {"spiffe_id", "x509_serial", "jti_hash"}
    # another replica's view (a second DenyList on the same store) sees it too
    assert DenyList(database, clock=clock).is_denied(spiffe_id=sid)
    assert deny.remove("spiffe_id", sid) is True
    assert not deny.is_denied(spiffe_id=sid)
    assert deny.remove("spiffe_id", sid) is False
    with pytest.raises(IdentityError):
        deny.add("spiffe_id", "SPIFFE://x/y")
    with pytest.raises(IdentityError, match="64 hex"):
        deny.add("jti_hash", "abc")
    assert [r.kind for r in tail(database, 10)][:1] == ["identity.deny.added"]


def test_list_shares_parsed_values_between_rows_but_never_across_kinds(
    database: Database,
) -> None:
    """A read parses each repeated parent ID and selector once for all rows (the runtime
    correlator reads every entry); the same text as a parent ID and as a selector stays a
    SpiffeId and a Selector."""
    repo = _repo(database)
    node = "spiffe://example.org/node"
    for name in ("a", "b", "c"):
        repo.create(
            EntrySpec(
                spiffe_id=SpiffeId.parse(f"spiffe://example.org/{name}"),
                selectors=(Selector.parse(node), Selector.parse(f"k8s:pod-name:{name}")),
                parent_id=SpiffeId.parse(node),
            )
        )
    entries = repo.list()
    assert [str(e.spiffe_id) for e in entries] == [f"spiffe://example.org/{n}" for n in "abc"]
    for entry in entries:
        assert isinstance(entry.parent_id, SpiffeId) and str(entry.parent_id) == node
        assert Selector("spiffe", "//example.org/node") in entry.selectors
        assert {str(s) for s in entry.selectors} == {
            node,
            f"k8s:pod-name:{entry.spiffe_id.path[1:]}",
        }
    assert entries[0].parent_id is entries[2].parent_id  # parsed once for the read
