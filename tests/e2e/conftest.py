"""One ``zerogate serve`` shared by the end-to-end tests of a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serve_support import Served

TD = "zerogate.internal"
ADMIN_ID = f"spiffe://{TD}/ops/admin"
WORKLOAD_ID = f"spiffe://{TD}/ml/trainer"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve")
    server = Served(root / "data")
    # entries before start: the admin (mTLS callers) and this test process's uid (Workload API)
    server.data_dir.mkdir(parents=True)
    server.cli(
        "entry", "create", "--spiffe-id", ADMIN_ID, "--selector", "unix:uid:65534", "--admin"
    )
    server.cli("entry", "create", "--spiffe-id", WORKLOAD_ID, "--selector", "unix:uid:0")
    server.start()
    yield server
    assert server.stop() == 0, "".join(server.log_lines[-30:])
