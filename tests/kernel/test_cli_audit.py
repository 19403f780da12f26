"""`zerogate audit append|tail|verify` as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zerogate.cli import app


@pytest.fixture
def env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ZEROGATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ZEROGATE_DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_append_tail_verify(env: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        app, ["audit", "append", "--kind", "operator.breakglass", "--payload", '{"ticket":"CHG-1"}']
    )
    assert r.exit_code == 0, r.output
    assert "appended seq 1" in r.output
    r = runner.invoke(
        app, ["audit", "append", "--kind", "operator.change", "--payload", "-"], input='{"n": 2}'
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["audit", "tail", "-n", "5", "--output", "json"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.output.splitlines()]
    assert [(x["seq"], x["kind"], x["payload"]) for x in lines] == [
        (1, "operator.breakglass", {"ticket": "CHG-1"}),
        (2, "operator.change", {"n": 2}),
    ]
    r = runner.invoke(app, ["audit", "tail", "--kind", "operator.change"])
    assert r.exit_code == 0
    assert "operator.change" in r.output and "breakglass" not in r.output
    r = runner.invoke(app, ["audit", "verify"])
    assert r.exit_code == 0, r.output
    assert "intact: 2 records" in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "x.y", "--payload", "{not json"], "not valid JSON"),
        (["--kind", "x.y", "--payload", "[1, 2]"], "must be a JSON object"),
        (["--kind", "Bad Kind", "--payload", "{}"], "audit kind"),
    ],
)
def test_append_bad_input_exit_2_nothing_stored(env: Path, args: list[str], message: str) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["audit", "append", *args])
    assert r.exit_code == 2
    assert message in r.output
    r = runner.invoke(app, ["audit", "tail", "--output", "json"])
    assert r.output.strip() == ""


def test_unreachable_database_exit_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROGATE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ZEROGATE_DATABASE_URL", "postgresql+psycopg://x@127.0.0.1:1/none")
    r = CliRunner().invoke(app, ["audit", "tail"])
    assert r.exit_code == 3
    assert "database unreachable" in r.output
