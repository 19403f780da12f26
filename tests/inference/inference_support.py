"""Helpers shared by the inference tests (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

import socket

EMBED_MODEL = "all-MiniLM-L6-v2"
CHAT_MODEL = "SmolLM2-135M-Instruct"


def free_port() -> int:
    """A loopback port that was free a moment ago (nothing listens on it afterwards)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
