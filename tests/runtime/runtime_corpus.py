"""Helpers to load the Falco alert corpus (tests/runtime/corpus/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.falco import FalcoAlert, parse_alert

CORPUS_DIR = Path(__file__).parent / "corpus"


def corpus_files() -> list[Path]:
    return sorted(CORPUS_DIR.glob("*.json"))


def corpus_raw() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in corpus_files()]


def corpus_alerts() -> list[FalcoAlert]:
    return [parse_alert(raw) for raw in corpus_raw()]


def docs_raw() -> dict[str, Any]:
    """Falco's documented example: Critical "Terminal shell in container" in pod default/kubecon."""
    data: dict[str, Any] = json.loads((CORPUS_DIR / "falco-docs-terminal-shell.json").read_text())
    return data
