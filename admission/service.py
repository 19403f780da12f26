"""``AdmissionService``: what ``zerogate serve`` wires: the Gatekeeper set (directory +
applied objects + inventory), the ``Admitter`` over it and the native policy, and the router.

    service = AdmissionService(settings.admission, native=policy.decide, audit=audit,
                               db=db, meter=telemetry.meter("zerogate.admission"))
    await service.start()                       # compiles templates; bad ones are reported
    app.include_router(service.router())        # on the control plane's TLS listener

With ``native_source`` (the policy store, when the policy engine is the embedded OPA) the
native policy's active revision is compiled into the Gatekeeper engine as well and follows
every policy reload, so each review is one engine call (``GatekeeperSet.review_all``). Between
a policy reload and admission's recompile (about a second with the library set) reviews are
answered by the previous native revision; the audit record names the revision used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter
from opentelemetry.metrics import Meter

from admission.admit import Admitter, NativeDecide
from admission.gatekeeper import GatekeeperSet, NativePolicy, serving_engine
from admission.mutate import DEFAULT_SOCKET
from admission.objects import ObjectStore, load_active
from admission.webhook import router
from policy.engine import PolicyEngine
from policy.errors import ErrorLocation
from policy.store import PolicyStore, Snapshot
from zerogate.audit import AuditSink
from zerogate.config import AdmissionSettings
from zerogate.store import Database

log = logging.getLogger(__name__)

__all__ = ["AdmissionService"]


class AdmissionService:
    def __init__(
        self,
        settings: AdmissionSettings,
        *,
        native: NativeDecide | None,
        audit: AuditSink | None,
        db: Database | None = None,
        meter: Meter | None = None,
        socket_path: str = DEFAULT_SOCKET,
        engine_factory: Callable[[], PolicyEngine] = serving_engine,
        native_source: PolicyStore | None = None,
    ) -> None:
        self.settings = settings
        self.native_source = native_source
        self.store = ObjectStore(db) if db is not None else None
        self.gatekeeper = GatekeeperSet(engine_factory())
        self.admitter = Admitter(
            native=native,
            gatekeeper=self.gatekeeper,
            audit=audit,
            validate_timeout_s=settings.validate_timeout_s,
            mutate_timeout_s=settings.mutate_timeout_s,
            failure_mode=settings.failure_mode,
            socket_path=socket_path,
            meter=meter,
        )
        self._started = False

    def reload(self) -> dict[str, list[ErrorLocation]]:
        """Recompile from the directory and the store; returns the errors per template
        (and under ``""`` the objects that did not parse)."""
        templates, constraints, inventory, object_errors = load_active(
            self.settings.gatekeeper_dir, self.store
        )
        errors = self.gatekeeper.replace(templates, constraints, inventory)
        if object_errors:
            errors = {**errors, "": object_errors}
        log.info(
            "event=admission.reload templates=%d constraints=%d errors=%d revision=%s native=%s",
            len(templates),
            len(constraints),
            len(errors),
            self.gatekeeper.revision,
            self.gatekeeper.native_revision,  # the native revision compiled in, or None
        )
        return errors

    async def start(self) -> None:
        if self.native_source is not None:
            if self.native_source.revision is not None:
                self._follow(self.native_source.snapshot, compile=False)
            self.native_source.on_change(self._follow)
        self.reload()
        self._started = True

    def _follow(self, snapshot: Snapshot, *, compile: bool = True) -> None:
        """A new native revision (policy store listener): compile it beside the templates."""
        self.gatekeeper.set_native(
            NativePolicy(snapshot.revision, snapshot.modules, snapshot.data), compile=compile
        )
        log.info(
            "event=admission.native_followed revision=%s merged=%s",
            snapshot.revision,
            self.gatekeeper.native_revision == snapshot.revision if compile else "pending",
        )

    async def stop(self) -> None:
        self._started = False
        self.gatekeeper.close()

    def ready(self) -> bool:
        return self._started and self.gatekeeper.revision is not None

    def router(self) -> APIRouter:
        return router(self.admitter)
