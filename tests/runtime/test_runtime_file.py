"""Falco file_output: follow across rename rotation, copytruncate and restart; replay once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runtime_corpus import corpus_files, corpus_raw

from runtime.ingest import EventIngestor
from runtime.sources.file import FileTailer, replay
from runtime.state import StateStore


def _line(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw).encode() + b"\n"


def _variant(n: int) -> dict[str, Any]:
    raw = corpus_raw()[0]
    raw["output_fields"] = raw["output_fields"] | {"evt.num": n}
    return raw


def _drain(tailer: FileTailer) -> None:
    for _ in range(100):
        if not tailer.step():
            return


def test_tail_corpus_then_restart_resumes_at_offset(
    tmp_path: Path, ingestor: EventIngestor
) -> None:
    log = tmp_path / "events.txt"
    log.write_bytes(b"".join(p.read_bytes() for p in corpus_files()))  # files end in \n
    state = StateStore(ingestor.store.db)
    first = FileTailer(log, ingestor, state)
    _drain(first)
    assert first.stats.stored == len(corpus_files())
    with log.open("ab") as f:
        f.write(_line(_variant(1)) + _line(_variant(2)))
    restarted = FileTailer(log, ingestor, state)  # a new process would build a new one
    _drain(restarted)
    assert (restarted.stats.stored, restarted.stats.duplicate) == (2, 0)
    assert ingestor.store.count() == len(corpus_files()) + 2


def test_rename_rotation_drains_old_file_then_follows_new(
    tmp_path: Path, ingestor: EventIngestor
) -> None:
    log = tmp_path / "events.txt"
    log.write_bytes(_line(_variant(1)))
    tailer = FileTailer(log, ingestor, StateStore(ingestor.store.db))
    _drain(tailer)
    log.rename(tmp_path / "events.txt.1")  # logrotate
    with (tmp_path / "events.txt.1").open("ab") as f:
        f.write(_line(_variant(2)))  # written just before Falco reopened
    log.write_bytes(_line(_variant(3)) + _line(_variant(4)))
    _drain(tailer)
    assert tailer.stats.rotations == 1
    assert tailer.stats.stored == 4 and ingestor.store.count() == 4


def test_copytruncate_starts_again_at_zero(tmp_path: Path, ingestor: EventIngestor) -> None:
    log = tmp_path / "events.txt"
    log.write_bytes(_line(_variant(1)) + _line(_variant(2)))
    tailer = FileTailer(log, ingestor, StateStore(ingestor.store.db))
    _drain(tailer)
    with log.open("r+b") as f:
        f.truncate(0)
    with log.open("ab") as f:
        f.write(_line(_variant(3)))
    _drain(tailer)
    assert tailer.stats.rotations == 1 and tailer.stats.stored == 3


def test_partial_and_invalid_lines(tmp_path: Path, ingestor: EventIngestor) -> None:
    log = tmp_path / "events.txt"
    whole = _line(_variant(1))
    log.write_bytes(b"garbage\n" + whole[:40])
    tailer = FileTailer(log, ingestor, StateStore(ingestor.store.db))
    _drain(tailer)
    assert tailer.stats.invalid == 1 and tailer.stats.stored == 0
    with log.open("ab") as f:
        f.write(whole[40:])
    _drain(tailer)
    assert tailer.stats.stored == 1
    assert "line 1" in tailer.stats.errors[0]


def test_restart_after_rotation_while_stopped_reads_new_file(
    tmp_path: Path, ingestor: EventIngestor
) -> None:
    log = tmp_path / "events.txt"
    log.write_bytes(_line(_variant(1)))
    state = StateStore(ingestor.store.db)
    _drain(FileTailer(log, ingestor, state))
    os.replace(log, tmp_path / "old.txt")
    log.write_bytes(_line(_variant(2)))
    again = FileTailer(log, ingestor, state)
    _drain(again)
    assert again.stats.stored == 1 and ingestor.store.count() == 2


def test_replay_feeds_once_and_dedups_second_replay(
    tmp_path: Path, ingestor: EventIngestor
) -> None:
    log = tmp_path / "events.txt"
    log.write_bytes(b"".join(p.read_bytes() for p in corpus_files()) + b"{}\n")
    stats = replay(log, ingestor)
    assert (stats.stored, stats.invalid) == (len(corpus_files()), 1)
    again = replay(log, ingestor)
    assert (again.stored, again.duplicate) == (0, len(corpus_files()))


async def test_tailer_runs_as_a_source(tmp_path: Path, ingestor: EventIngestor) -> None:
    import asyncio

    log = tmp_path / "events.txt"
    tailer = FileTailer(log, ingestor, StateStore(ingestor.store.db), poll_interval_s=0.02)
    await tailer.start()  # the file does not exist yet: it waits for it
    assert tailer.ready()
    log.write_bytes(_line(_variant(1)))
    for _ in range(500):
        if tailer.stats.stored:
            break
        await asyncio.sleep(0.01)
    await tailer.stop()
    assert not tailer.ready() and tailer.stats.stored == 1
