"""Gatekeeper's ``spec.match`` semantics: does a constraint apply to this request?

Follows Gatekeeper's ``pkg/mutation/match/match.go`` and its documentation ("The match
field"): every criterion present must hold (AND); absent criteria match everything.

- ``kinds``: a list of ``{apiGroups, kinds}``; one entry must match; ``"*"`` or an empty
  list inside an entry matches all.
- ``scope``: ``*`` (default), ``Cluster`` or ``Namespaced``.
- ``namespaces`` / ``excludedNamespaces``: names with a ``*`` prefix or suffix glob;
  a Namespace object is matched by its own name; other cluster-scoped objects are not
  filtered by them.
- ``labelSelector``: a metav1.LabelSelector on the object's labels (the old object's for
  DELETE; either one for UPDATE).
- ``namespaceSelector``: a LabelSelector on the labels of the object's Namespace (from the
  synced inventory, or the object itself when it is a Namespace). A namespaced object whose
  Namespace is unknown does not match (Gatekeeper answers an error there; we stay quiet and
  record nothing rather than guess).
- ``name``: the object's name, with a prefix or suffix glob.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["glob_match", "matches", "selector_matches"]

NamespaceLookup = Callable[[str], Mapping[str, Any] | None]


def glob_match(pattern: str, value: str) -> bool:
    """Gatekeeper's wildcard: ``*`` allowed as a prefix and/or suffix only."""
    if pattern == "*":
        return True
    if len(pattern) > 1 and pattern.startswith("*") and pattern.endswith("*"):
        return pattern[1:-1] in value
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return pattern == value


def _any_glob(patterns: Iterable[Any], value: str) -> bool:
    return any(isinstance(p, str) and glob_match(p, value) for p in patterns)


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """A metav1.LabelSelector (matchLabels AND matchExpressions); empty matches all."""
    for key, want in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != want:
            return False
    for expr in selector.get("matchExpressions") or []:
        key = expr.get("key", "")
        op = expr.get("operator", "")
        values = expr.get("values") or []
        if op == "In":
            if key not in labels or labels[key] not in values:
                return False
        elif op == "NotIn":
            if key in labels and labels[key] in values:
                return False
        elif op == "Exists":
            if key not in labels:
                return False
        elif op == "DoesNotExist":
            if key in labels:
                return False
        else:  # an unknown operator never matches (fail closed on the selector)
            return False
    return True


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        return {}
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return labels if isinstance(labels, Mapping) else {}


def matches(
    match: Mapping[str, Any] | None,
    review: Mapping[str, Any],
    *,
    namespace_of: NamespaceLookup | None = None,
) -> bool:
    """Whether ``match`` (a constraint's ``spec.match``) selects ``review`` (an
    AdmissionRequest as Gatekeeper builds ``input.review``)."""
    if not match:
        return True
    kind = review.get("kind") or {}
    group, kind_name = str(kind.get("group", "")), str(kind.get("kind", ""))
    obj = review.get("object") if review.get("operation") != "DELETE" else None
    obj = obj or review.get("oldObject")
    namespace = str(review.get("namespace") or "")
    if not namespace and isinstance(obj, Mapping):
        namespace = str((obj.get("metadata") or {}).get("namespace") or "")
    is_namespace = kind_name == "Namespace" and group == ""
    name = str(review.get("name") or (obj or {}).get("metadata", {}).get("name") or "")

    kinds = match.get("kinds")
    if kinds and not any(
        (not k.get("apiGroups") or "*" in k["apiGroups"] or group in k["apiGroups"])
        and (not k.get("kinds") or "*" in k["kinds"] or kind_name in k["kinds"])
        for k in kinds
    ):
        return False

    scope = match.get("scope", "*")
    namespaced = bool(namespace) and not is_namespace
    if (scope == "Cluster" and namespaced) or (scope == "Namespaced" and not namespaced):
        return False

    ns_for_filter = name if is_namespace else namespace
    filtered = namespaced or is_namespace
    if filtered and match.get("namespaces") and not _any_glob(match["namespaces"], ns_for_filter):
        return False
    excluded = match.get("excludedNamespaces")
    if filtered and excluded and _any_glob(excluded, ns_for_filter):
        return False

    if match.get("name") and not glob_match(str(match["name"]), name):
        return False

    selector = match.get("labelSelector")
    if selector is not None:
        candidates = [review.get("object"), review.get("oldObject")]
        if not any(
            selector_matches(selector, _labels(c)) for c in candidates if isinstance(c, Mapping)
        ):
            return False

    ns_selector = match.get("namespaceSelector")
    if ns_selector is not None:
        if is_namespace:
            ns_obj: Mapping[str, Any] | None = obj
        elif namespaced:
            ns_obj = namespace_of(namespace) if namespace_of else None
            if ns_obj is None:
                return False
        else:
            ns_obj = None  # cluster-scoped, not a Namespace: not filtered
        if ns_obj is not None and not selector_matches(ns_selector, _labels(ns_obj)):
            return False
    return True
