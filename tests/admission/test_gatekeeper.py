"""Gatekeeper compatibility: templates loaded unchanged, the evaluation contract
(input.review, input.parameters, data.lib, data.inventory, violation[{msg, details}]),
per-template compile errors, and enforcement actions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from admission_support import constraint

from admission.gatekeeper import (
    ConstraintTemplate,
    GatekeeperError,
    GatekeeperSet,
    inventory_from,
    parse_template,
)
from admission.verify import review_for
from policy.opa_embedded import OpaEmbeddedEngine


def template(
    name: str,
    rego: str,
    *,
    libs: list[str] | None = None,
    code: bool = False,
    version: str | None = None,
) -> ConstraintTemplate:
    target: dict[str, Any] = {"target": "admission.k8s.gatekeeper.sh"}
    if code:
        source: dict[str, Any] = {"rego": rego, "libs": libs or []}
        if version:
            source["version"] = version
        target["code"] = [
            {"engine": "K8sNativeValidation", "source": {}},
            {"engine": "Rego", "source": source},
        ]
    else:
        target["rego"] = rego
        if libs:
            target["libs"] = libs
    return parse_template(
        {
            "apiVersion": "templates.gatekeeper.sh/v1",
            "kind": "ConstraintTemplate",
            "metadata": {"name": name.lower()},
            "spec": {"crd": {"spec": {"names": {"kind": name}}}, "targets": [target]},
        }
    )


@pytest.fixture
def gk() -> Iterator[GatekeeperSet]:
    s = GatekeeperSet(OpaEmbeddedEngine())
    yield s
    s.close()


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p", "namespace": "ns1", "labels": {"a": "1"}},
    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
}

ECHO = """package echo

violation[{"msg": msg, "details": {"review_kind": k, "op": input.review.operation}}] {
  k := input.review.kind.kind
  msg := sprintf("param=%v name=%v", [input.parameters.x, input.review.object.metadata.name])
}
"""


def test_contract_review_parameters_details(gk: GatekeeperSet) -> None:
    gk.replace([template("K8sEcho", ECHO)], [constraint("K8sEcho", "e", parameters={"x": 7})])
    violations, decision = gk.review(review_for(POD))
    assert [(v.msg, v.details) for v in violations] == [
        ("param=7 name=p", {"review_kind": "Pod", "op": "CREATE"})
    ]
    assert violations[0].describe() == "[e] param=7 name=p"
    assert decision is not None and decision.revision == gk.revision


def test_each_template_gets_its_own_libs(gk: GatekeeperSet) -> None:
    lib_a = 'package lib.helpers\n\nname := "from-a"\n'
    lib_b = 'package lib.helpers\n\nname := "from-b"\n'
    use = (
        'package t{n}\n\nimport data.lib.helpers\n\nviolation[{{"msg": helpers.name}}] {{ true }}\n'
    )
    gk.replace(
        [
            template("K8sA", use.format(n="a"), libs=[lib_a]),
            template("K8sB", use.format(n="b"), libs=[lib_b]),
        ],
        [constraint("K8sA", "a"), constraint("K8sB", "b")],
    )
    violations, _ = gk.review(review_for(POD))
    assert sorted(v.msg for v in violations) == ["from-a", "from-b"]


def test_code_form_with_v1_source_is_used_as_is(gk: GatekeeperSet) -> None:
    v1 = 'package v1t\n\nviolation contains {"msg": "v1"} if input.review.object.kind == "Pod"\n'
    errors = gk.replace(
        [template("K8sV1", v1, code=True, version="v1")], [constraint("K8sV1", "v")]
    )
    assert errors == {}
    assert [v.msg for v in gk.review(review_for(POD))[0]] == ["v1"]


def test_v0_source_declared_v1_is_a_compile_error(gk: GatekeeperSet) -> None:
    errors = gk.replace([template("K8sBad", ECHO, code=True, version="v1")], [])
    assert "k8sbad" in errors


def test_compile_errors_are_per_template_with_location(gk: GatekeeperSet) -> None:
    broken = 'package broken\n\nviolation[{"msg": msg}] {\n  msg := undefined_function(1)\n}\n'
    errors = gk.replace(
        [template("K8sEcho", ECHO), template("K8sBroken", broken)],
        [constraint("K8sEcho", "e", parameters={"x": 1}), constraint("K8sBroken", "b")],
    )
    assert list(errors) == ["k8sbroken"]
    err = errors["k8sbroken"][0]
    assert err.file == "gatekeeper/k8sbroken/template.rego"
    assert err.row == 4
    assert "undefined_function" in err.message
    # the good template stays active; the broken one's constraint is an orphan
    assert [v.msg for v in gk.review(review_for(POD))[0]] == ["param=1 name=p"]
    assert gk.orphans == ["K8sBroken/b"]


def test_untokenizable_template_is_reported(gk: GatekeeperSet) -> None:
    errors = gk.replace(
        [template("K8sEcho", ECHO), template("K8sJunk", "package j\n\np { ? }\n")], []
    )
    assert list(errors) == ["k8sjunk"]
    assert (errors["k8sjunk"][0].row, errors["k8sjunk"][0].col) == (3, 5)


def test_inventory_is_data_inventory(
    gk: GatekeeperSet, library_templates: list[ConstraintTemplate]
) -> None:
    unique = [t for t in library_templates if t.name == "k8suniqueingresshost"]
    existing = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "old", "namespace": "other"},
        "spec": {"rules": [{"host": "a.example.com"}]},
    }
    new = {**existing, "metadata": {"name": "new", "namespace": "ns1"}}
    gk.replace(unique, [constraint("K8sUniqueIngressHost", "u")], inventory_from([existing]))
    assert gk.inventory["namespace"]["other"]["networking.k8s.io/v1"]["Ingress"]["old"] == existing
    msgs = [v.msg for v in gk.review(review_for(new))[0]]
    assert msgs == ["Ingress host conflicts with an existing Ingress <a.example.com>"]
    gk.replace(unique, [constraint("K8sUniqueIngressHost", "u")], inventory_from([]))
    assert gk.review(review_for(new))[0] == []


def test_constraint_match_is_applied(gk: GatekeeperSet) -> None:
    gk.replace(
        [template("K8sEcho", ECHO)],
        [constraint("K8sEcho", "only-dev", parameters={"x": 1}, match={"namespaces": ["dev"]})],
    )
    assert gk.review(review_for(POD)) == ([], None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"apiVersion": "v1", "kind": "ConstraintTemplate"}, "is not templates.gatekeeper.sh"),
        (
            {
                "apiVersion": "templates.gatekeeper.sh/v1",
                "kind": "ConstraintTemplate",
                "metadata": {"name": "x"},
                "spec": {"crd": {"spec": {"names": {"kind": "K8sY"}}}},
            },
            "must be the lower-cased kind",
        ),
        (
            {
                "apiVersion": "templates.gatekeeper.sh/v1",
                "kind": "ConstraintTemplate",
                "metadata": {"name": "k8sy"},
                "spec": {"crd": {"spec": {"names": {"kind": "K8sY"}}}, "targets": []},
            },
            "exactly one target",
        ),
    ],
)
def test_bad_template_objects(body: dict[str, Any], message: str) -> None:
    with pytest.raises(GatekeeperError, match=message):
        parse_template(body)


def test_bad_enforcement_action() -> None:
    with pytest.raises(GatekeeperError, match="enforcementAction 'block'"):
        constraint("K8sEcho", "e", action="block")


def test_all_library_templates_compile(
    library_templates: list[ConstraintTemplate], gk: GatekeeperSet
) -> None:
    assert len(library_templates) >= 10
    assert gk.replace(library_templates, []) == {}
