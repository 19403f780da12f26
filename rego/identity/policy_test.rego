package zerogate.identity_test

import data.zerogate.identity

x509 := {
	"spiffe_id": "spiffe://zerogate.internal/ns/default/sa/app",
	"trust_domain": "zerogate.internal",
	"kind": "x509",
	"ttl_s": 3600,
	"parent_id": "spiffe://zerogate.internal/agent/node1",
	"selectors": ["unix:uid:1000"],
}

test_workload_svid_is_allowed if {
	identity.allow with input as x509
	identity.reasons == [] with input as x509
}

test_other_trust_domain_is_refused if {
	inp := object.union(x509, {"spiffe_id": "spiffe://evil.example/ns/default/sa/app"})
	not identity.allow with input as inp
	identity.reasons == ["spiffe://evil.example/ns/default/sa/app is not in trust domain zerogate.internal"] with input as inp
}

test_ttl_over_maximum_is_refused if {
	inp := object.union(x509, {"ttl_s": 200000})
	not identity.allow with input as inp
	identity.reasons == ["ttl 200000 s exceeds the x509 maximum of 86400 s"] with input as inp
}

test_reserved_path_needs_admin if {
	inp := object.union(x509, {"spiffe_id": "spiffe://zerogate.internal/zerogate/server"})
	not identity.allow with input as inp
	identity.allow with input as object.union(inp, {"admin": true})
}

test_jwt_needs_audience if {
	inp := object.union(x509, {"kind": "jwt", "ttl_s": 300})
	not identity.allow with input as inp
	identity.allow with input as object.union(inp, {"audience": ["spiffe://zerogate.internal/inference"]})
}

test_unknown_kind_is_refused if {
	inp := object.union(x509, {"kind": "pgp"})
	identity.decision.allow == false with input as inp
	"unknown SVID kind 'pgp'" in identity.decision.reasons with input as inp
}

test_empty_input_is_refused if {
	not identity.allow with input as {}
}
