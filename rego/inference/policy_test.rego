package zerogate.inference_test

import data.zerogate.inference

base := {
	"subject": {
		"spiffe_id": "spiffe://zerogate.internal/ns/default/sa/app",
		"trust_domain": "zerogate.internal",
		"path": "/ns/default/sa/app",
	},
	"request": {
		"model": "SmolLM2-135M-Instruct",
		"operation": "chat",
		"stream": false,
		"max_tokens": 128,
		"input_tokens": 40,
	},
	"runtime": {"quarantined": false, "reasons": []},
	"usage": {"requests_last_minute": 0, "tokens_last_minute": 0, "tokens_today": 0},
	"time": "2026-06-01T12:00:00Z",
}

with_subject(path) := object.union(base, {"subject": {
	"spiffe_id": concat("", ["spiffe://zerogate.internal", path]),
	"trust_domain": "zerogate.internal",
	"path": path,
}})

with_request(patch) := object.union(base, {"request": object.union(base.request, patch)})

test_default_namespace_is_allowed_with_default_limits if {
	d := inference.decision with input as base
	d.allow == true
	d.reasons == []
	d.limits == {"rpm": 60, "tpm": 20000, "max_tokens": 512, "daily_tokens": 200000}
}

test_ml_team_gets_its_own_limits if {
	d := inference.decision with input as with_subject("/ns/ml/sa/trainer")
	d.allow == true
	d.limits.rpm == 600
	d.limits.max_tokens == 2048
}

test_apps_may_embed if {
	inp := object.union(with_subject("/ns/apps/sa/search"), {"request": {
		"model": "all-MiniLM-L6-v2",
		"operation": "embeddings",
		"stream": false,
		"max_tokens": null,
		"input_tokens": 12,
	}})
	d := inference.decision with input as inp
	d.allow == true
	d.limits.rpm == 300
}

test_apps_may_not_chat if {
	d := inference.decision with input as with_subject("/ns/apps/sa/search")
	d.allow == false
	d.reasons == ["spiffe://zerogate.internal/ns/apps/sa/search may not use model 'SmolLM2-135M-Instruct' for 'chat'"]
	d.limits.rpm == 0
}

test_unknown_identity_has_no_grant if {
	d := inference.decision with input as with_subject("/ns/other/sa/x")
	d.allow == false
	d.reasons == ["spiffe://zerogate.internal/ns/other/sa/x has no model grant"]
}

test_prefix_matches_whole_segments_only if {
	d := inference.decision with input as with_subject("/ns/defaultx/sa/app")
	d.allow == false
}

test_quarantined_identity_is_denied_with_runtime_reasons if {
	inp := object.union(base, {"runtime": {"quarantined": true, "reasons": ["Terminal shell in container"]}})
	d := inference.decision with input as inp
	d.allow == false
	d.reasons == ["identity is quarantined: Terminal shell in container"]
}

test_quarantined_without_reasons if {
	inp := object.union(base, {"runtime": {"quarantined": true, "reasons": []}})
	d := inference.decision with input as inp
	d.reasons == ["identity is quarantined"]
}

test_max_tokens_over_the_limit_is_denied if {
	d := inference.decision with input as with_request({"max_tokens": 4096})
	d.allow == false
	d.reasons == ["max_tokens 4096 exceeds the limit 512 for model 'SmolLM2-135M-Instruct'"]
}

test_missing_max_tokens_is_fine if {
	d := inference.decision with input as with_request({"max_tokens": null})
	d.allow == true
}

test_missing_subject_is_denied if {
	d := inference.decision with input as object.remove(base, ["subject"])
	d.allow == false
	"no authenticated SPIFFE ID" in d.reasons
}

test_empty_input_is_denied if {
	d := inference.decision with input as {}
	d.allow == false
	count(d.reasons) > 0
}

test_trust_domain_list_restricts_callers if {
	d := inference.decision with input as base with data.inference.trust_domains as ["other.example"]
	d.allow == false
	"trust domain 'zerogate.internal' may not call models" in d.reasons
}

test_streaming_can_be_refused_per_grant if {
	grants := [{"path_prefix": "/ns/default/", "models": ["*"], "operations": ["chat"], "stream": false}]
	d := inference.decision with input as with_request({"stream": true}) with data.inference.grants as grants
	d.allow == false
	d.reasons == ["streaming is not allowed for model 'SmolLM2-135M-Instruct'"]
}

test_expired_grant_no_longer_applies if {
	grants := [{"path_prefix": "/ns/default/", "models": ["*"], "operations": ["chat"], "not_after": "2026-01-01T00:00:00Z"}]
	d := inference.decision with input as base with data.inference.grants as grants
	d.allow == false
}

test_most_specific_grant_wins if {
	grants := [
		{"path_prefix": "/ns/default/", "models": ["*"], "operations": ["chat"], "limits": {"rpm": 1}},
		{"spiffe_id_prefix": "spiffe://zerogate.internal/ns/default/sa/app", "models": ["*"], "operations": ["chat"], "limits": {"rpm": 7}},
	]
	d := inference.decision with input as base with data.inference.grants as grants
	d.allow == true
	d.limits.rpm == 7
}
