"""Gatekeeper ``spec.match`` semantics, one row per rule of Gatekeeper's match documentation."""

from __future__ import annotations

from typing import Any

import pytest

from admission.match import glob_match, matches, selector_matches


def review(
    kind: str = "Pod",
    group: str = "",
    namespace: str = "prod",
    name: str = "web-1",
    labels: dict[str, str] | None = None,
    operation: str = "CREATE",
) -> dict[str, Any]:
    obj = {"metadata": {"name": name, "namespace": namespace, "labels": labels or {}}}
    r: dict[str, Any] = {
        "kind": {"group": group, "version": "v1", "kind": kind},
        "name": name,
        "operation": operation,
        "object": obj,
    }
    if namespace:
        r["namespace"] = namespace
    return r


NAMESPACES = {
    "prod": {"metadata": {"name": "prod", "labels": {"env": "prod"}}},
    "dev": {"metadata": {"name": "dev", "labels": {"env": "dev"}}},
}

ROWS: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("empty match selects everything", {}, review(), True),
    ("kind listed", {"kinds": [{"apiGroups": [""], "kinds": ["Pod"]}]}, review(), True),
    ("kind not listed", {"kinds": [{"apiGroups": [""], "kinds": ["Service"]}]}, review(), False),
    ("group must match", {"kinds": [{"apiGroups": ["apps"], "kinds": ["Pod"]}]}, review(), False),
    (
        "wildcard group",
        {"kinds": [{"apiGroups": ["*"], "kinds": ["Deployment"]}]},
        review("Deployment", "apps"),
        True,
    ),
    (
        "wildcard kind",
        {"kinds": [{"apiGroups": ["apps"], "kinds": ["*"]}]},
        review("Deployment", "apps"),
        True,
    ),
    (
        "any entry may match",
        {
            "kinds": [
                {"apiGroups": ["apps"], "kinds": ["Deployment"]},
                {"apiGroups": [""], "kinds": ["Pod"]},
            ]
        },
        review(),
        True,
    ),
    ("scope Namespaced", {"scope": "Namespaced"}, review(), True),
    ("scope Cluster excludes namespaced", {"scope": "Cluster"}, review(), False),
    (
        "scope Cluster selects cluster objects",
        {"scope": "Cluster"},
        review("ClusterRole", "rbac.authorization.k8s.io", ""),
        True,
    ),
    (
        "Namespace is cluster-scoped",
        {"scope": "Cluster"},
        review("Namespace", "", "", "prod"),
        True,
    ),
    ("namespaces exact", {"namespaces": ["prod"]}, review(), True),
    ("namespaces miss", {"namespaces": ["dev"]}, review(), False),
    ("namespaces prefix glob", {"namespaces": ["pro*"]}, review(), True),
    ("namespaces suffix glob", {"namespaces": ["*od"]}, review(), True),
    (
        "namespaces match a Namespace by its name",
        {"namespaces": ["prod"]},
        review("Namespace", "", "", "prod"),
        True,
    ),
    (
        "namespaces do not filter cluster objects",
        {"namespaces": ["dev"]},
        review("ClusterRole", "rbac.authorization.k8s.io", ""),
        True,
    ),
    (
        "excludedNamespaces",
        {"excludedNamespaces": ["kube-*"]},
        review(namespace="kube-system"),
        False,
    ),
    ("excludedNamespaces miss", {"excludedNamespaces": ["kube-*"]}, review(), True),
    ("name glob", {"name": "web-*"}, review(), True),
    ("name miss", {"name": "db-*"}, review(), False),
    (
        "labelSelector matchLabels",
        {"labelSelector": {"matchLabels": {"app": "web"}}},
        review(labels={"app": "web"}),
        True,
    ),
    (
        "labelSelector miss",
        {"labelSelector": {"matchLabels": {"app": "db"}}},
        review(labels={"app": "web"}),
        False,
    ),
    (
        "labelSelector In",
        {
            "labelSelector": {
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["gpu", "cpu"]}]
            }
        },
        review(labels={"tier": "gpu"}),
        True,
    ),
    (
        "labelSelector NotIn",
        {
            "labelSelector": {
                "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gpu"]}]
            }
        },
        review(labels={"tier": "gpu"}),
        False,
    ),
    (
        "labelSelector Exists",
        {"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}},
        review(labels={}),
        False,
    ),
    (
        "labelSelector DoesNotExist",
        {"labelSelector": {"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}},
        review(labels={}),
        True,
    ),
    (
        "namespaceSelector on the object's Namespace",
        {"namespaceSelector": {"matchLabels": {"env": "prod"}}},
        review(),
        True,
    ),
    (
        "namespaceSelector miss",
        {"namespaceSelector": {"matchLabels": {"env": "prod"}}},
        review(namespace="dev"),
        False,
    ),
    (
        "namespaceSelector unknown namespace",
        {"namespaceSelector": {"matchLabels": {"env": "prod"}}},
        review(namespace="ghost"),
        False,
    ),
    (
        "namespaceSelector on a Namespace itself",
        {"namespaceSelector": {"matchLabels": {"env": "x"}}},
        review("Namespace", "", "", "n", labels={"env": "x"}),
        True,
    ),
    (
        "all criteria must hold",
        {"kinds": [{"apiGroups": [""], "kinds": ["Pod"]}], "namespaces": ["dev"]},
        review(),
        False,
    ),
]


@pytest.mark.parametrize(("rule", "match", "rev", "want"), ROWS, ids=[r[0] for r in ROWS])
def test_match(rule: str, match: dict[str, Any], rev: dict[str, Any], want: bool) -> None:
    assert matches(match, rev, namespace_of=NAMESPACES.get) is want


def test_delete_matches_on_old_object() -> None:
    rev = review(labels={"app": "web"}, operation="DELETE")
    rev["oldObject"] = rev.pop("object")
    assert matches({"labelSelector": {"matchLabels": {"app": "web"}}}, rev)


@pytest.mark.parametrize(
    ("pattern", "value", "want"),
    [
        ("*", "x", True),
        ("a*", "abc", True),
        ("*c", "abc", True),
        ("*b*", "abc", True),
        ("a", "ab", False),
        ("b*", "abc", False),
    ],
)
def test_glob(pattern: str, value: str, want: bool) -> None:
    assert glob_match(pattern, value) is want


def test_unknown_selector_operator_never_matches() -> None:
    assert not selector_matches({"matchExpressions": [{"key": "a", "operator": "Gt"}]}, {"a": "1"})
