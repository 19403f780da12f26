"""A real ``zerogate serve`` process for end-to-end tests, and its CLI beside it."""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

LISTENER = re.compile(r"event=listener\.started what=(\S+) address=(\S+)")


class Served:
    """``zerogate serve`` in a child process with its own data directory."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")}
        self.env.update(
            {
                "ZEROGATE_DATA_DIR": str(data_dir),
                "ZEROGATE_LISTEN": "127.0.0.1:0",
                "ZEROGATE_INFERENCE_LISTEN": "127.0.0.1:0",
                "ZEROGATE_IDENTITY__KEY_STORE": "disk",
                # loading the models takes tens of seconds: only the inference tests ask
                "ZEROGATE_INFERENCE__ENABLED": "false",
                **(extra_env or {}),
            }
        )
        self.urls: dict[str, str] = {}
        self.log_lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    @property
    def socket(self) -> Path:
        return self.data_dir / "workload.sock"

    def start(self, want: tuple[str, ...] = ("control-plane",), timeout: float = 240) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zerogate", "serve"],
            cwd=self.data_dir.parent,
            env=self.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(w in self.urls for w in want):
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError("zerogate serve exited:\n" + "".join(self.log_lines[-40:]))
            self.log_lines.append(line)
            match = LISTENER.search(line)
            if match:
                self.urls[match.group(1)] = match.group(2).replace("127.0.0.1", "localhost")
        if not all(w in self.urls for w in want):
            raise AssertionError(f"listeners {want} not up; saw {self.urls}")
        # keep draining stderr so the server never blocks on a full pipe
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log_lines.append(line)

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "zerogate", *args],
            cwd=self.data_dir.parent,
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"zerogate {' '.join(args)} failed: {result.stderr}")
        return result.stdout

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--output", "json"))

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.cli("bundle", "show", "--format", "pem"))

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
