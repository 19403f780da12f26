"""``zerogate token generate`` against the real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from identity.attestation import JoinTokenError, JoinTokens
from identity.token_cli import token_app
from zerogate.audit import tail
from zerogate.store import Database


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return {
        "ZEROGATE_DATA_DIR": str(tmp_path),
        "ZEROGATE_DATABASE_URL": database_url,
        "ZEROGATE_TRUST_DOMAIN": "example.org",
    }


def test_generate_prints_a_token_that_redeems_once(env: dict[str, str], database_url: str) -> None:
    result = CliRunner().invoke(
        token_app,
        ["generate", "--spiffe-id", "spiffe://example.org/node/a", "--ttl", "120", "-o", "json"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["spiffe_id"] == "spiffe://example.org/node/a"
    db = Database.open(database_url)
    try:
        tokens = JoinTokens(db)
        assert tokens.redeem(out["token"]).spiffe_id == "spiffe://example.org/node/a"
        with pytest.raises(JoinTokenError):
            tokens.redeem(out["token"])
        kinds = [r.kind for r in tail(db, 5)]
        assert "identity.join_token.created" in kinds
    finally:
        db.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--spiffe-id", "spiffe://other.org/node/a"], "trust domain"),
        (["--spiffe-id", "spiffe://example.org/node/"], "trailing slash"),
        (["--spiffe-id", "spiffe://example.org/node/a", "--ttl", "0"], "--ttl"),
    ],
    ids=["foreign-trust-domain", "bad-id", "zero-ttl"],
)
def test_generate_rejects_bad_input_with_exit_2(
    env: dict[str, str], args: list[str], message: str
) -> None:
    result = CliRunner().invoke(token_app, ["generate", *args], env=env)
    assert result.exit_code == 2, result.output
    assert message in result.output
