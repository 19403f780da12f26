"""Batches parsed in worker processes (runtime.sources.parse_pool) give exactly what parsing
in-process gives: the same alerts, ids, stored text, errors and line numbers, split or not;
a dead worker costs speed, never a wrong or lost answer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_corpus import corpus_raw

from runtime.errors import InvalidAlertError, UnsupportedMediaError
from runtime.falco import FalcoAlert, parse_alert
from runtime.sources.http import Item, ParsedBody, parse_body
from runtime.sources.parse_pool import ParsePool, _ready, split_lines

NDJSON = "application/x-ndjson"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pool() -> Iterator[ParsePool]:
    pool = ParsePool(2, inline_bytes=0, chunk_bytes=1024)
    pool.start()
    yield pool
    pool.close()


def _alert_view(alert: FalcoAlert) -> dict[str, Any]:
    return {
        "event_id": alert.event_id,
        "stored": alert.stored_text(),
        "rule": alert.rule,
        "priority": alert.priority,
        "time": alert.time,
        "time_ns": alert.time_ns,
        "timestamp": alert.timestamp,
        "source": alert.source,
        "hostname": alert.hostname,
        "output": alert.output,
        "uuid": alert.uuid,
        "workload": (alert.k8s_ns, alert.k8s_pod, alert.k8s_pod_uid, alert.container_id),
        "raw": alert.raw,
        "tags": alert.tags,
        "output_fields": alert.output_fields,
        "extra": alert.extra,
    }


def _view(parsed: ParsedBody) -> tuple[str, list[Any]]:
    def item(i: Item) -> Any:
        if i.alert is not None:
            return (i.index, _alert_view(i.alert))
        assert i.error is not None
        return (i.index, i.error.field, i.error.reason)

    return parsed.kind, [item(i) for i in parsed.items]


def _mixed_ndjson() -> bytes:
    """Every corpus alert, a Falcosidekick alert (uuid), bad lines of several kinds and
    blank lines, over many pool pieces."""
    raws = corpus_raw()
    lines: list[str] = []
    for n, raw in enumerate(raws):
        lines.append(json.dumps(raw))
        if n % 5 == 0:
            lines += ["", "not json", json.dumps({**raw, "priority": "Severe"})]
        if n % 7 == 0:
            lines.append(json.dumps({k: v for k, v in raw.items() if k != "time"}))
    lines.append(json.dumps({**raws[0], "uuid": "4dd8a8b0-1f4e-4a5c-9d0b-6c1b9c1d2e3f"}))
    lines.append("  ")
    return "\n".join(lines).encode()


async def test_ndjson_split_across_workers_matches_in_process(pool: ParsePool) -> None:
    body = _mixed_ndjson()
    assert len(split_lines(body, 2)) == 2
    pooled = await pool.parse(body, NDJSON)
    assert _view(pooled) == _view(parse_body(body, NDJSON))
    assert sum(1 for i in pooled.items if i.error) >= 6
    assert pool.stats["pooled"] >= 1 and pool.stats["fallback"] == 0


async def test_json_array_and_single_alert_match_in_process(pool: ParsePool) -> None:
    raws = corpus_raw()
    array = json.dumps([*raws, {"rule": "no time", "priority": "Notice"}]).encode()
    assert _view(await pool.parse(array, "application/json")) == _view(
        parse_body(array, "application/json")
    )
    single = json.dumps(raws[0]).encode()
    pooled = await pool.parse(single, "application/json; charset=utf-8")
    assert _view(pooled) == _view(parse_body(single, "application/json"))
    assert pooled.kind == "single"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[]", "application/json"),
        (b'{"rule": "r", "priority": "Critical"}', "application/json"),
        (b"\n \n\n", NDJSON),
        (b'{"a": 1}', "text/plain"),
    ],
    ids=["not-json", "empty-array", "single-missing-time", "blank-ndjson", "text-plain"],
)
async def test_whole_body_errors_match_in_process(
    pool: ParsePool, body: bytes, content_type: str
) -> None:
    with pytest.raises((InvalidAlertError, UnsupportedMediaError)) as expected:
        parse_body(body, content_type)
    with pytest.raises(type(expected.value)) as got:
        await pool.parse(body, content_type)
    assert str(got.value) == str(expected.value)
    assert getattr(got.value, "field", None) == getattr(expected.value, "field", None)


def test_split_lines_numbers_each_piece_from_its_first_line() -> None:
    body = b"a\nbb\n\nccc\ndddd\ne"
    for pieces in range(1, 9):
        parts = split_lines(body, pieces)
        assert b"\n".join(p for p, _ in parts) == body
        for part, first in parts:
            assert body.split(b"\n")[first - 1 : first - 1 + part.count(b"\n") + 1] == (
                part.split(b"\n")
            )


def test_alert_rebuilt_from_parts_decodes_raw_only_when_read() -> None:
    raw = corpus_raw()[0]
    alert = parse_alert(raw)
    rebuilt = FalcoAlert.from_parts(alert.parts())
    assert rebuilt._raw is None
    assert _alert_view(rebuilt) == _alert_view(alert)


@pytest.mark.parametrize("retry_after_s", [0.0, 60.0])
async def test_a_killed_worker_falls_back_to_in_process_then_a_new_pool_is_tried(
    retry_after_s: float,
) -> None:
    pool = ParsePool(1, inline_bytes=0, retry_after_s=retry_after_s)
    pool.start()
    try:
        executor = pool._pool()
        pid = executor.submit(_ready).result(timeout=30)
        os.kill(pid, signal.SIGKILL)
        body = _mixed_ndjson()
        expected = _view(parse_body(body, NDJSON))
        assert _view(await pool.parse(body, NDJSON)) == expected
        assert pool.stats["fallback"] == 1
        assert _view(await pool.parse(body, NDJSON)) == expected
        if retry_after_s:  # within the retry delay: in-process, no new pool
            assert pool.stats == {"pooled": 0, "inline": 1, "fallback": 1}
        else:
            assert pool.stats == {"pooled": 1, "inline": 0, "fallback": 1}
    finally:
        pool.close()


async def test_without_workers_big_bodies_parse_in_process() -> None:
    pool = ParsePool(0, inline_bytes=0)
    body = _mixed_ndjson()
    assert _view(await pool.parse(body, NDJSON)) == _view(parse_body(body, NDJSON))
    assert pool.stats == {"pooled": 0, "inline": 1, "fallback": 0}


def test_workers_exit_when_the_serving_process_is_killed() -> None:
    """A SIGKILLed control plane cannot shut its pool down; its workers must not linger."""
    script = (
        "import os, signal\n"
        "from runtime.sources.parse_pool import ParsePool, _ready\n"
        "pool = ParsePool(1)\n"
        "pool.start()\n"
        "print(pool._pool().submit(_ready).result(timeout=30), flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    worker = int(done.stdout.split()[0])
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), f"parse worker {worker} outlived its killed parent"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
