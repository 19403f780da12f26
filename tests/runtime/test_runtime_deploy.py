"""The shipped Falco rules file is well-formed Falco rules YAML and the policy's custom revoke
rules exist in it (Falco itself cannot run here; `falco --validate` is documented)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "falco" / "zerogate_rules.yaml"
PRIORITIES = {"EMERGENCY", "ALERT", "CRITICAL", "ERROR", "WARNING", "NOTICE", "INFORMATIONAL",
              "INFO", "DEBUG"}  # fmt: skip


def _items() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    assert isinstance(data, list)
    return data


def test_rules_have_falco_shape() -> None:
    rules = [i for i in _items() if "rule" in i]
    assert rules
    for rule in rules:
        assert {"rule", "desc", "condition", "output", "priority"} <= set(rule), rule["rule"]
        assert rule["priority"].upper() in PRIORITIES
        for field in ("%k8s.ns.name", "%k8s.pod.name", "%k8s.pod.uid", "%container.full_id"):
            assert field in rule["output"], (rule["rule"], field)
    names = {i.get("list") for i in _items()} | {i.get("macro") for i in _items()}
    for rule in rules:  # every zerogate_* name a rule uses is defined in this file
        for word in rule["condition"].replace("(", " ").replace(")", " ").split():
            if word.startswith("zerogate_"):
                assert word in names, word


def test_custom_rules_are_revoke_rules_in_policy_data() -> None:
    data = json.loads((REPO / "rego" / "runtime" / "data.json").read_text())
    custom = {i["rule"] for i in _items() if "rule" in i}
    assert custom <= set(data["revoke_rules"])
    assert "Unexpected NVIDIA device access" in custom


def test_falco_config_snippet_uses_mtls_json_http_output() -> None:
    conf = yaml.safe_load((REPO / "deploy" / "falco" / "falco.yaml").read_text())
    assert conf["json_output"] is True
    http = conf["http_output"]
    assert http["enabled"] and http["mtls"] and http["url"].endswith("/v1/runtime/falco")
    assert {"client_cert", "client_key", "ca_cert"} <= set(http)
