"""The identity CLI (entry, ca, svid, bundle) as a user runs it, on a real SQLite store."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer
from cryptography import x509
from typer.testing import CliRunner

from identity.bundle import Bundle, validate_jwt_svid, validate_x509_svid
from identity.cli import bundle_app, ca_app, entry_app, svid_app
from identity.spiffeid import SpiffeId, TrustDomain

app = typer.Typer()
app.add_typer(entry_app, name="entry")
app.add_typer(ca_app, name="ca")
app.add_typer(svid_app, name="svid")
app.add_typer(bundle_app, name="bundle")
TD = TrustDomain("example.org")


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {
        "ZEROGATE_DATA_DIR": str(tmp_path / "data"),
        "ZEROGATE_TRUST_DOMAIN": "example.org",
        "ZEROGATE_CONFIG": str(tmp_path / "none.yaml"),
    }
    (tmp_path / "none.yaml").write_text("{}\n")
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env, input=input)
        assert result.exit_code == code, (result.output, result.exception)
        return result.output

    return invoke


def test_entry_lifecycle(run) -> None:  # type: ignore[no-untyped-def]
    out = run(
        "entry", "create", "--spiffe-id", "spiffe://example.org/api",
        "--selector", "unix:uid:1000", "--selector", "unix:gid:10",
        "--dns", "api.local", "--x509-ttl", "600", "--admin", "--output", "json",
    )  # fmt: skip
    entry = json.loads(out)
    assert entry["selectors"] == ["unix:gid:10", "unix:uid:1000"]
    assert entry["admin"] is True and entry["x509_svid_ttl"] == 600 and entry["revision"] == 1
    pretty = run("entry", "show", entry["id"])
    assert f"Entry ID         : {entry['id']}" in pretty
    assert "Selector         : unix:uid:1000" in pretty
    assert "JWT-SVID TTL     : default" in pretty
    listed = json.loads(run("entry", "list", "--output", "json"))
    assert [e["id"] for e in listed] == [entry["id"]]
    assert "Found 1 entry" in run("entry", "list")
    updated = json.loads(
        run("entry", "update", entry["id"], "--hint", "blue", "--disable", "-o", "json")
    )
    assert updated["hint"] == "blue" and updated["disabled"] and updated["revision"] == 2
    err = run("entry", "update", entry["id"], "--hint", "x", "--revision", "1", code=1)
    assert "revision 2, not 1" in err
    assert "Deleted entry" in run("entry", "delete", entry["id"])
    assert "no entry with id" in run("entry", "show", entry["id"], code=1)
    assert "Found 0 entries" in run("entry", "list")


def test_entry_from_stdin(run) -> None:  # type: ignore[no-untyped-def]
    data = {"spiffe_id": "spiffe://example.org/x", "selectors": ["k8s:ns:prod"], "hint": "h"}
    out = json.loads(run("entry", "create", "--data", "-", "-o", "json", input=json.dumps(data)))
    assert out["hint"] == "h" and out["selectors"] == ["k8s:ns:prod"]
    assert "not JSON" in run("entry", "create", "--data", "-", input="{", code=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--spiffe-id", "spiffe://example.org/a"], "at least one selector"),
        (["--spiffe-id", "spiffe://Example.org/a", "-s", "unix:uid:1"], "trust domain characters"),
        (["--spiffe-id", "spiffe://other.org/a", "-s", "unix:uid:1"], "not in trust domain"),
        (["--spiffe-id", "spiffe://example.org/a", "-s", "bad"], "TYPE:VALUE"),
        (["-s", "unix:uid:1"], "--spiffe-id is required"),
    ],
)
def test_entry_create_bad_input_exits_2(run, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    assert message in run("entry", "create", *args, code=2)
    assert "Found 0 entries" in run("entry", "list")


def test_svid_mint_and_bundle(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out_dir = tmp_path / "svid"
    run(
        "svid", "mint", "x509", "--spiffe-id", "spiffe://example.org/w",
        "--dns", "w.local", "--ttl", "120", "--out", str(out_dir),
    )  # fmt: skip
    assert stat.S_IMODE((out_dir / "svid.key").stat().st_mode) == 0o600
    chain = x509.load_pem_x509_certificates((out_dir / "svid.pem").read_bytes())
    bundle = Bundle.from_pem(TD, (out_dir / "bundle.pem").read_bytes())
    now = datetime.now(UTC)
    assert validate_x509_svid(chain, bundle, now) == SpiffeId.parse("spiffe://example.org/w")
    assert (chain[0].not_valid_after_utc - now).total_seconds() <= 121

    token = run(
        "svid", "mint", "jwt", "--spiffe-id", "spiffe://example.org/w", "--audience", "aud"
    ).strip()
    spiffe = Bundle.from_json(TD, run("bundle", "show", "--format", "spiffe"))
    assert validate_jwt_svid(token, "aud", spiffe, now).spiffe_id.path == "/w"
    assert run("bundle", "show").startswith("-----BEGIN CERTIFICATE-----")

    before = json.loads(run("ca", "show", "-o", "json"))
    assert "rotated" in run("ca", "rotate", "--taint")
    after = json.loads(run("ca", "show", "-o", "json"))
    active_before = {r["key_id"] for r in before if r["status"] == "active"}
    assert active_before and all(
        r["status"] == "old" and r["tainted"] for r in after if r["key_id"] in active_before
    )
    # the SVID minted before the rotation still validates against the new bundle
    new_bundle = Bundle.from_json(TD, run("bundle", "show", "--format", "spiffe"))
    assert validate_x509_svid(chain, new_bundle, now).path == "/w"


def test_bad_svid_input(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert "no CA yet" in run("bundle", "show", code=1)
    err = run(
        "svid", "mint", "jwt", "--spiffe-id", "spiffe://example.org/w/", "--audience", "a", code=2
    )
    assert "trailing slash" in err
    err = run(
        "svid",
        "mint",
        "x509",
        "--spiffe-id",
        "spiffe://other.org/w",
        "--out",
        str(tmp_path),
        code=2,
    )
    assert "not in trust domain" in err
