"""Table definitions, one module per subsystem, all on one ``MetaData``.

Each subsystem owns ``zerogate/store/tables/<subsystem>.py`` and an Alembic branch in
``zerogate/store/migrations/versions/<subsystem>_NNNN_*.py`` (branch label = the subsystem
name, first revision ``depends_on = "kernel_0001"``), so subsystems add tables without
touching each other's migrations. ``alembic upgrade heads`` applies every branch.
"""

from __future__ import annotations

from zerogate.store.tables.admission import admission_object
from zerogate.store.tables.base import metadata
from zerogate.store.tables.identity import (
    identity_bundle_state,
    identity_ca_journal,
    identity_deny,
    identity_entry,
    identity_entry_selector,
)
from zerogate.store.tables.identity_attestation import identity_join_token
from zerogate.store.tables.kernel import audit_checkpoint, audit_log
from zerogate.store.tables.runtime import runtime_event, runtime_quarantine, runtime_state

__all__ = [
    "admission_object",
    "audit_checkpoint",
    "audit_log",
    "identity_bundle_state",
    "identity_ca_journal",
    "identity_deny",
    "identity_entry",
    "identity_entry_selector",
    "identity_join_token",
    "metadata",
    "runtime_event",
    "runtime_quarantine",
    "runtime_state",
]
