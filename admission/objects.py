"""Applied Gatekeeper objects in the store (``zerogate admission apply|sync``), and the
assembly of everything active: ``admission.gatekeeper_dir`` + applied objects + inventory.

Applied objects survive restarts. A key applied again replaces the stored object, as
``kubectl apply`` does; the directory and the store are merged with the store winning.
Nothing is stored unless every object in the file parses (one bad object, nothing written).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from admission.gatekeeper import (
    CONSTRAINT_GROUP,
    TEMPLATE_API,
    Constraint,
    ConstraintTemplate,
    GatekeeperError,
    inventory_from,
    load_objects,
    parse_constraint,
    parse_template,
)
from policy.errors import ErrorLocation
from zerogate.clock import SYSTEM_CLOCK, Clock
from zerogate.store import Database
from zerogate.store.tables.admission import admission_object

__all__ = ["Applied", "ObjectStore", "classify", "load_active"]


def classify(obj: Mapping[str, Any]) -> str:
    api = str(obj.get("apiVersion", ""))
    if api.startswith(TEMPLATE_API + "/") and obj.get("kind") == "ConstraintTemplate":
        return "template"
    if api.startswith(CONSTRAINT_GROUP + "/"):
        return "constraint"
    return "other"


def _inventory_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return "/".join(
        [
            str(obj.get("apiVersion", "")),
            str(obj.get("kind", "")),
            str(meta.get("namespace") or ""),
            str(meta.get("name", "")),
        ]
    )


@dataclass(slots=True)
class Applied:
    templates: list[ConstraintTemplate] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    inventory: list[Mapping[str, Any]] = field(default_factory=list)


class ObjectStore:
    """Repository over ``admission_object``."""

    def __init__(self, db: Database, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = db
        self._clock = clock

    def apply(self, objects: Iterable[tuple[Mapping[str, Any], str]]) -> list[str]:
        """Store templates and constraints; returns ``section/key`` of each. Raises
        GatekeeperError (nothing stored) when any object is invalid."""
        rows: list[tuple[str, str, Mapping[str, Any], str]] = []
        errors: list[ErrorLocation] = []
        for obj, source in objects:
            section = classify(obj)
            try:
                if section == "template":
                    rows.append((section, parse_template(obj, source=source).name, obj, source))
                elif section == "constraint":
                    rows.append((section, parse_constraint(obj, source=source).key, obj, source))
                else:
                    what = f"{obj.get('apiVersion')}/{obj.get('kind')}"
                    message = f"not a ConstraintTemplate or constraint: {what}"
                    raise GatekeeperError([ErrorLocation(source, 1, 1, message)])
            except GatekeeperError as exc:
                errors.extend(exc.errors)
        if errors:
            raise GatekeeperError(errors)
        return self._put(rows)

    def sync(
        self, objects: Iterable[tuple[Mapping[str, Any], str]], *, replace: bool = False
    ) -> list[str]:
        """Store inventory objects (``data.inventory``); ``replace`` drops the old set."""
        rows: list[tuple[str, str, Mapping[str, Any], str]] = []
        for obj, source in objects:
            inventory_from([obj])  # validates apiVersion/kind/name
            rows.append(("inventory", _inventory_key(obj), obj, source))
        if replace:
            with self._db.begin() as conn:
                conn.execute(
                    delete(admission_object).where(admission_object.c.section == "inventory")
                )
        return self._put(rows)

    def _put(self, rows: list[tuple[str, str, Mapping[str, Any], str]]) -> list[str]:
        now = self._clock.now()
        with self._db.begin() as conn:
            for section, key, body, source in rows:
                conn.execute(
                    delete(admission_object).where(
                        (admission_object.c.section == section) & (admission_object.c.key == key)
                    )
                )
                conn.execute(
                    admission_object.insert().values(
                        section=section, key=key, body=dict(body), source=source, updated_at=now
                    )
                )
        return [f"{s}/{k}" for s, k, _, _ in rows]

    def delete(self, section: str, key: str) -> bool:
        with self._db.begin() as conn:
            result = conn.execute(
                delete(admission_object).where(
                    (admission_object.c.section == section) & (admission_object.c.key == key)
                )
            )
        return bool(result.rowcount)

    def load(self) -> Applied:
        out = Applied()
        with self._db.begin() as conn:
            rows = conn.execute(
                select(
                    admission_object.c.section, admission_object.c.body, admission_object.c.source
                ).order_by(admission_object.c.id)
            ).all()
        for section, body, source in rows:
            if section == "template":
                out.templates.append(parse_template(body, source=f"db:{source}"))
            elif section == "constraint":
                out.constraints.append(parse_constraint(body, source=f"db:{source}"))
            elif section == "inventory":
                out.inventory.append(body)
        return out


def load_active(
    directory: Path | None, store: ObjectStore | None
) -> tuple[list[ConstraintTemplate], list[Constraint], dict[str, Any], list[ErrorLocation]]:
    """Templates, constraints and inventory from the directory and the store (the store's
    object wins on the same key). Bad objects are reported, the rest returned."""
    templates: dict[str, ConstraintTemplate] = {}
    constraints: dict[str, Constraint] = {}
    errors: list[ErrorLocation] = []
    if directory is not None and directory.exists():
        try:
            objects = load_objects([directory])
        except GatekeeperError as exc:
            errors.extend(exc.errors)
            objects = []
        for obj, source in objects:
            try:
                section = classify(obj)
                if section == "template":
                    t = parse_template(obj, source=source)
                    templates[t.name] = t
                elif section == "constraint":
                    c = parse_constraint(obj, source=source)
                    constraints[c.key] = c
            except GatekeeperError as exc:
                errors.extend(exc.errors)
    inventory: list[Mapping[str, Any]] = []
    if store is not None:
        applied = store.load()
        templates.update({t.name: t for t in applied.templates})
        constraints.update({c.key: c for c in applied.constraints})
        inventory = applied.inventory
    return list(templates.values()), list(constraints.values()), inventory_from(inventory), errors
