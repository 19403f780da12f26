"""Falco ``file_output`` (one JSON alert per line): follow it, or replay it once.

Falco appends one line per alert (``json_output: true``) and, with ``keep_alive: false``,
opens, appends and closes the file per alert; logrotate either renames the file (a new inode
appears at the path) or copies and truncates it (Falco reopens on SIGUSR1; falco.org
docs/outputs/channels "File Output").

``FileTailer`` follows the path across both: on a new inode it first drains the old file to
its end, then opens the new one from 0; on truncation it starts again at 0. Its position
(device, inode, byte offset after the last complete line handed over) is stored in
``runtime_state`` under ``tail:<absolute path>`` only after the ingestor acknowledged those
lines, so a restarted tail resumes without losing or repeating acknowledged alerts. A line that
is not a valid alert is logged and counted (``stats["invalid"]``), never retried.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from runtime.errors import InvalidAlertError, SourceError
from runtime.falco import FalcoAlert, parse_alert_json
from runtime.ingest import EventIngestor
from runtime.state import StateStore

log = logging.getLogger(__name__)


@dataclass
class FileStats:
    lines: int = 0
    stored: int = 0
    duplicate: int = 0
    invalid: int = 0
    rotations: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "stored": self.stored,
            "duplicate": self.duplicate,
            "invalid": self.invalid,
            "rotations": self.rotations,
        }


def _parse_lines(lines: list[bytes], stats: FileStats, first_line: int) -> list[FalcoAlert]:
    alerts: list[FalcoAlert] = []
    for number, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        stats.lines += 1
        try:
            alerts.append(parse_alert_json(line))
        except InvalidAlertError as exc:
            stats.invalid += 1
            if len(stats.errors) < 100:
                stats.errors.append(f"line {number}: {exc}")
            log.warning("event=runtime.file.invalid line=%d error=%s", number, exc)
    return alerts


def _count(results: list[Any], stats: FileStats) -> None:
    for r in results:
        if r.status == "stored":
            stats.stored += 1
        else:
            stats.duplicate += 1


def replay(
    path: Path, ingestor: EventIngestor, *, batch_max: int = 1000, ingest: str = "replay"
) -> FileStats:
    """Feed every line of ``path`` once (no stored position)."""
    stats = FileStats()
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        line_no = 1
        while True:
            lines = handle.readlines(batch_max * 1024)
            if not lines:
                break
            alerts = _parse_lines(lines, stats, line_no)
            line_no += len(lines)
            _count(ingestor.ingest(alerts, ingest), stats)
    return stats


class FileTailer:
    """Follows one Falco output file; a ``runtime.sources.base.Source``."""

    def __init__(
        self,
        path: Path,
        ingestor: EventIngestor,
        state: StateStore,
        *,
        poll_interval_s: float = 0.2,
        batch_bytes: int = 1 << 20,
    ) -> None:
        self.path = path.absolute()
        self.name = f"file:{self.path}"
        self._ingestor = ingestor
        self._state = state
        self._poll = poll_interval_s
        self._batch_bytes = batch_bytes
        self._key = f"tail:{self.path}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: IO[bytes] | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._offset = 0
        self._line = 1
        self.stats = FileStats()

    # Source protocol ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 30)
            self._thread = None

    def ready(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Follow until ``request_stop`` (blocking; the CLI calls this directly)."""
        try:
            while not self._stop.is_set():
                if self._handle is None and not self._open():
                    self._stop.wait(self._poll)
                    continue
                if self.step():
                    continue
                self._stop.wait(self._poll)
        finally:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def request_stop(self) -> None:
        self._stop.set()

    def step(self) -> bool:
        """Handle what is available now; True when something was read."""
        if self._handle is None and not self._open():
            return False
        assert self._handle is not None
        if self._read_batch():
            return True
        # at EOF of the open file: rotated (new inode at the path) or truncated?
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed away, new one not created yet: keep draining the old
        if (st.st_dev, st.st_ino) != self._ident:
            self.stats.rotations += 1
            log.info("event=runtime.file.rotated path=%s", self.path)
            self._handle.close()
            self._handle = None
            return self._open(rotated=True)
        if st.st_size < self._offset:
            self.stats.rotations += 1
            log.info("event=runtime.file.truncated path=%s", self.path)
            self._seek(0)
            return True
        return False

    def _open(self, *, rotated: bool = False) -> bool:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise SourceError(f"cannot read {self.path}: {exc.strerror}") from None
        st = os.fstat(handle.fileno())
        self._handle, self._ident = handle, (st.st_dev, st.st_ino)
        saved = None if rotated else self._state.get(self._key)
        offset = 0
        if isinstance(saved, dict) and (saved.get("dev"), saved.get("inode")) == self._ident:
            offset = int(saved.get("offset", 0))
            if offset > st.st_size:  # truncated while we were down
                offset = 0
        elif saved is not None:
            log.info("event=runtime.file.new_inode path=%s (rotated while stopped)", self.path)
        self._seek(offset)
        return True

    def _seek(self, offset: int) -> None:
        assert self._handle is not None
        self._handle.seek(offset)
        self._offset = offset
        self._save()

    def _read_batch(self) -> bool:
        assert self._handle is not None
        self._handle.seek(self._offset)
        data = self._handle.read(self._batch_bytes)
        if not data:
            return False
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= self._batch_bytes:  # one line longer than a whole batch
                raise SourceError(f"{self.path}: line at byte {self._offset} is too long")
            return False  # an incomplete last line: wait for the rest
        chunk = data[: end + 1]
        lines = chunk.split(b"\n")[:-1]
        alerts = _parse_lines(lines, self.stats, self._line)
        _count(self._ingestor.ingest(alerts, "file"), self.stats)  # acknowledged: now move on
        self._line += len(lines)
        self._offset += len(chunk)
        self._save()
        return True

    def _save(self) -> None:
        if self._ident is None:
            return
        dev, inode = self._ident
        self._state.put(self._key, {"dev": dev, "inode": inode, "offset": self._offset})
