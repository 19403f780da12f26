"""`zerogate runtime tail|replay` and `zerogate quarantine list|add|release` (exit codes,
output), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runtime_corpus import corpus_files
from typer.testing import CliRunner

from runtime.cli import app, quarantine_app
from runtime.events import EventStore
from zerogate.store import Database

APP = "spiffe://zerogate.internal/ns/ml/sa/model"


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {"ZEROGATE_DATABASE_URL": database_url, "ZEROGATE_DATA_DIR": str(tmp_path)}


def _corpus_file(tmp_path: Path, extra: bytes = b"") -> Path:
    path = tmp_path / "events.txt"
    path.write_bytes(b"".join(p.read_bytes() for p in corpus_files()) + extra)
    return path


def test_replay_stores_corpus_and_reports(env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["replay", str(_corpus_file(tmp_path))], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["stored"] == len(corpus_files())
    bad = runner.invoke(app, ["replay", str(_corpus_file(tmp_path, b"{oops\n"))], env=env)
    assert bad.exit_code == 1
    assert "invalid: line" in bad.stderr
    missing = runner.invoke(app, ["replay", str(tmp_path / "nope.txt")], env=env)
    assert missing.exit_code == 3 and "cannot read" in missing.stderr


def test_quarantine_add_list_release(env: dict[str, str]) -> None:
    runner = CliRunner()
    added = runner.invoke(
        quarantine_app, ["add", APP, "--reason", "manual", "--ttl", "60", "-o", "json"], env=env
    )
    assert added.exit_code == 0, added.output
    assert json.loads(added.stdout)["spiffe_id"] == APP
    listed = runner.invoke(quarantine_app, ["list", "-o", "json"], env=env)
    assert [r["spiffe_id"] for r in json.loads(listed.stdout)] == [APP]
    pretty = runner.invoke(quarantine_app, ["list"], env=env)
    assert APP in pretty.stdout and "reason=manual" in pretty.stdout
    assert runner.invoke(quarantine_app, ["release", APP], env=env).exit_code == 0
    again = runner.invoke(quarantine_app, ["release", APP], env=env)
    assert again.exit_code == 1 and "is not quarantined" in again.stderr
    bad = runner.invoke(quarantine_app, ["add", "http://x", "--reason", "r"], env=env)
    assert bad.exit_code == 2 and "spiffe_id" in bad.stderr


def test_tail_follows_until_sigterm(env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "falco.txt"
    log.write_bytes(corpus_files()[0].read_bytes())
    code = "from runtime.cli import app; app()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "tail", str(log), "--poll", "0.05"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    db = Database.open(env["ZEROGATE_DATABASE_URL"])
    try:
        store = EventStore(db)
        deadline = time.monotonic() + 30
        while store.count() < 1:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        with log.open("ab") as f:
            f.write(corpus_files()[1].read_bytes())
        while store.count() < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        db.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out.decode().strip().splitlines()[-1])["stored"] == 2
