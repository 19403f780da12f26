"""Reading a policy directory: ``**/*.rego`` modules and ``data.json``/``data.yaml`` files.

As in an OPA bundle, a data file's content lands at the path of its directory: the
``rego/inference/data.json`` object becomes ``data.inference``. Module ids are the paths
relative to the root with ``/`` separators (``inference/policy.rego``). ``*_test.rego`` files
are kept apart: ``policy test`` runs them, serving never loads them.

Bad data files are refused like bad modules: ``PolicyCompileError`` with ``file:line:col``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from policy.errors import ErrorLocation, PolicyCompileError

DATA_FILES = ("data.json", "data.yaml", "data.yml")
_SKIP_DIRS = {".git", "__pycache__", ".manifest"}


@dataclass(frozen=True, slots=True)
class PolicySources:
    """What a directory holds: serving modules, test modules, and the merged data."""

    modules: Mapping[str, str]
    tests: Mapping[str, str]
    data: Mapping[str, Any]
    data_files: Mapping[str, bytes]


def is_test_module(module_id: str) -> bool:
    return module_id.endswith("_test.rego")


def policy_files(root: Path) -> list[Path]:
    """Every .rego and data file under ``root``, sorted, hidden directories skipped."""
    if root.is_file():
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.endswith(".rego") or name in DATA_FILES:
                found.append(Path(dirpath) / name)
    return found


def fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detector for the watcher: (path, mtime_ns, size) of every policy file."""
    out = []
    for path in policy_files(root):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


def load_directory(root: Path) -> PolicySources:
    """Read ``root`` (a directory or a single .rego file)."""
    if not root.exists():
        raise PolicyCompileError(
            [ErrorLocation(str(root), 1, 1, "policy path does not exist", "rego_load_error")]
        )
    base = root if root.is_dir() else root.parent
    modules: dict[str, str] = {}
    tests: dict[str, str] = {}
    data: dict[str, Any] = {}
    raw_data: dict[str, bytes] = {}
    errors: list[ErrorLocation] = []
    for path in policy_files(root):
        rel = path.relative_to(base).as_posix()
        raw = path.read_bytes()
        if path.name in DATA_FILES:
            raw_data[rel] = raw
            try:
                value = parse_data_file(rel, raw)
                prefix = tuple(Path(rel).parent.parts)
                merge_at(data, prefix, value, origin=rel)
            except PolicyCompileError as exc:
                errors.extend(exc.errors)
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(ErrorLocation(rel, 1, exc.start + 1, "not UTF-8", "rego_parse_error"))
            continue
        (tests if is_test_module(rel) else modules)[rel] = text
    if errors:
        raise PolicyCompileError(errors)
    return PolicySources(modules, tests, data, raw_data)


def parse_data_file(name: str, raw: bytes) -> dict[str, Any]:
    if name.endswith(".json"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PolicyCompileError(
                [ErrorLocation(name, exc.lineno, exc.colno, exc.msg, "data_parse_error")]
            ) from None
    else:
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            row, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            problem = getattr(exc, "problem", None) or str(exc)
            raise PolicyCompileError(
                [ErrorLocation(name, row, col, str(problem), "data_parse_error")]
            ) from None
        if value is None:
            value = {}
    if not isinstance(value, dict):
        raise PolicyCompileError(
            [ErrorLocation(name, 1, 1, "data file must hold an object", "data_parse_error")]
        )
    return value


def merge_at(
    target: dict[str, Any], prefix: Iterable[str], value: Any, *, origin: str = "data"
) -> None:
    """Deep-merge ``value`` at ``prefix`` into ``target``; a non-object clash is an error."""
    node = target
    keys = list(prefix)
    for key in keys[:-1] if not isinstance(value, dict) else keys:
        existing = node.setdefault(key, {})
        if not isinstance(existing, dict):
            message = f"data path {key!r} is not an object"
            raise PolicyCompileError([ErrorLocation(origin, 1, 1, message, "data_conflict")])
        node = existing
    if not isinstance(value, dict):
        if not keys:
            raise PolicyCompileError(
                [ErrorLocation(origin, 1, 1, "root data must be an object", "data_conflict")]
            )
        node[keys[-1]] = value
        return
    _deep_merge(node, value, origin, keys)


def _deep_merge(node: dict[str, Any], value: Mapping[str, Any], origin: str, at: list[str]) -> None:
    for key, item in value.items():
        if key in node and isinstance(node[key], dict) and isinstance(item, dict):
            _deep_merge(node[key], item, origin, [*at, key])
        elif key in node and node[key] != item:
            where = "/".join([*at, key])
            raise PolicyCompileError(
                [ErrorLocation(origin, 1, 1, f"data conflict at {where}", "data_conflict")]
            )
        else:
            node[key] = item
