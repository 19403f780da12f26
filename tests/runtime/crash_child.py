"""Child process of the SIGKILL test: serves POST /v1/runtime/falco with real uvicorn.

Usage: python crash_child.py DATABASE_URL AUDIT_KEY PORT_FILE
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).parent))

from runtime_app import build_app

from runtime.events import EventStore
from runtime.ingest import EventIngestor
from zerogate.audit import AuditLog
from zerogate.store import Database


def main() -> None:
    url, key, port_file = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    db = Database.open(url)
    audit = AuditLog.open(db, signing_key=key)
    ingestor = EventIngestor(EventStore(db), audit)
    ingestor.recover()
    ingestor.start()
    sock = socket.socket()
    # uvicorn leaves a socket it is handed as it is: without TCP_NODELAY every reply waits
    # for the peer's delayed ACK (~40 ms per request)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port_file.write_text(str(sock.getsockname()[1]))
    config = uvicorn.Config(build_app(ingestor), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
