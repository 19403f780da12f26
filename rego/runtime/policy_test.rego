package zerogate.runtime_test

import data.zerogate.runtime

app := {"spiffe_id": "spiffe://zerogate.internal/ns/ml/sa/model", "entry_id": "e1", "match": "pod", "selectors": ["k8s:ns:ml", "k8s:pod-name:model-0"]}

ns_only := {"spiffe_id": "spiffe://zerogate.internal/ns/ml/sa/other", "entry_id": "e2", "match": "namespace", "selectors": ["k8s:ns:ml", "k8s:sa:other"]}

event(rule, severity, priority) := {"rule": rule, "severity": severity, "priority": priority}

test_notice_without_history_does_nothing if {
	runtime.actions == [] with input as {"event": event("Some notice", 2, "Notice"), "identities": [app]}
}

test_critical_with_identity_quarantines_one_hour_and_alerts if {
	acts := runtime.actions with input as {"event": event("Custom critical", 5, "Critical"), "identities": [app]}
	acts == [
		{"type": "quarantine", "spiffe_id": app.spiffe_id, "ttl_s": 3600, "reason": "Custom critical", "rule": "Custom critical"},
		{"type": "alert", "reason": "Custom critical", "rule": "Custom critical", "priority": "Critical"},
	]
}

test_critical_without_identity_only_alerts if {
	acts := runtime.actions with input as {"event": event("Custom critical", 5, "Critical"), "identities": []}
	[a.type | some a in acts] == ["alert"]
}

test_namespace_match_is_not_acted_on if {
	acts := runtime.actions with input as {"event": event("Custom critical", 7, "Emergency"), "identities": [ns_only]}
	[a.type | some a in acts] == ["alert"]
}

test_revoke_rule_revokes_quarantines_and_alerts_even_at_notice if {
	acts := runtime.actions with input as {"event": event("Terminal shell in container", 2, "Notice"), "identities": [app]}
	[a.type | some a in acts] == ["quarantine", "revoke", "alert"]
	acts[1].entry_id == "e1"
}

test_nvidia_rule_revokes if {
	acts := runtime.actions with input as {"event": event("Unexpected NVIDIA device access", 5, "Critical"), "identities": [app]}
	"revoke" in {a.type | some a in acts}
}

test_repeated_warnings_quarantine if {
	recent := [event("w", 3, "Warning") | some _ in numbers.range(1, 4)]
	acts := runtime.actions with input as {"event": event("Write below etc", 3, "Warning"), "identities": [app], "recent": recent}
	acts[0].type == "quarantine"
	acts[0].reason == "repeated: Write below etc"
}

test_few_warnings_do_nothing if {
	recent := [event("w", 3, "Warning")]
	runtime.actions == [] with input as {"event": event("Write below etc", 3, "Warning"), "identities": [app], "recent": recent}
}

test_ttl_comes_from_data if {
	acts := runtime.actions with input as {"event": event("x", 6, "Alert"), "identities": [app]}
		with data.runtime.quarantine_ttl_s as 60
	acts[0].ttl_s == 60
}

test_kubernetes_actions_only_when_configured if {
	inp := {"event": event("x", 6, "Alert"), "identities": [app], "workload": {"k8s_ns": "ml", "k8s_pod": "model-0"}}
	acts := runtime.actions with input as inp with data.runtime.kubernetes as {"on_quarantine": ["label", "evict"]}
	{a.type | some a in acts} == {"quarantine", "alert", "label", "evict"}
	plain := runtime.actions with input as inp
	{a.type | some a in plain} == {"quarantine", "alert"}
}

test_falco_may_submit if {
	runtime.submit.allow with input as {"subject": {"spiffe_id": "spiffe://zerogate.internal/falco", "trust_domain": "zerogate.internal"}}
}

test_others_may_not_submit if {
	not runtime.submit.allow with input as {"subject": {"spiffe_id": "spiffe://zerogate.internal/app", "trust_domain": "zerogate.internal"}}
	not runtime.submit.allow with input as {"subject": {"spiffe_id": "spiffe://evil.org/falco", "trust_domain": "zerogate.internal"}}
}
