"""`zerogate serve`: starts with no config file, answers health, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from zerogate.cli import app

LISTENER = re.compile(r"event=listener\.started what=(\S+) address=(\S+)")


def _start(tmp_path: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
    env.update(
        {
            "ZEROGATE_DATA_DIR": str(tmp_path / "data"),
            "ZEROGATE_LISTEN": "127.0.0.1:0",
            "ZEROGATE_INFERENCE_LISTEN": "127.0.0.1:0",
            "ZEROGATE_INFERENCE__ENABLED": "false",
            **(extra_env or {}),
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "zerogate", "serve"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )


def _listeners(proc: subprocess.Popen[str], want: str, timeout: float = 120) -> dict[str, str]:
    assert proc.stderr is not None
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        match = LISTENER.search(line)
        if match:
            found[match.group(1)] = match.group(2)
            if want in found:
                return found
    raise AssertionError(f"listener {want} never started; saw {found}")


def test_serve_health_and_clean_shutdown(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    try:
        base = _listeners(proc, "control-plane")["control-plane"]
        assert base.startswith("https://127.0.0.1:")
        base = base.replace("127.0.0.1", "localhost")
        env = {"ZEROGATE_DATA_DIR": str(tmp_path / "data")}
        pem = CliRunner().invoke(app, ["bundle", "show", "--format", "pem"], env=env)
        assert pem.exit_code == 0, pem.output
        trust = ssl.create_default_context(cadata=pem.output)
        with httpx.Client(base_url=base, timeout=10, verify=trust) as client:
            assert client.get("/healthz").json() == {"status": "ok"}
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["parts"]["database"] is True
            metrics = client.get("/metrics")
            assert metrics.status_code == 200
            assert "text/plain" in metrics.headers["content-type"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    runner = CliRunner()
    env = {"ZEROGATE_DATA_DIR": str(tmp_path / "data")}
    result = runner.invoke(app, ["audit", "tail", "--output", "json"], env=env)
    assert result.exit_code == 0, result.output
    kinds = [line for line in result.output.splitlines() if line]
    assert any("control_plane.started" in k for k in kinds)
    assert any("control_plane.stopped" in k for k in kinds)
    verified = runner.invoke(app, ["audit", "verify"], env=env)
    assert verified.exit_code == 0, verified.output


def test_serve_refuses_bad_config_with_the_key(tmp_path: Path) -> None:
    proc = _start(tmp_path, {"ZEROGATE_AUDIT__CHECKPOINT_EVERY": "-1"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "audit.checkpoint_every" in err


def test_serve_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    try:
        proc = _start(tmp_path, {"ZEROGATE_LISTEN": f"127.0.0.1:{port}"})
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 3
        assert "Traceback" not in err
        assert f"error: cannot listen for control-plane on 127.0.0.1:{port}" in err
    finally:
        sock.close()
