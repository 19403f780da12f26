# Issuance check for SVIDs (the identity issue's hook data.zerogate.identity.allow).
#
# Input:  {spiffe_id, trust_domain, kind: "x509" | "jwt", ttl_s, parent_id, selectors: [..],
#          audience: [..] (jwt), admin: bool (entry created with --admin)}
# Output: allow (bool), reasons (sorted list of strings), and decision = {allow, reasons}.
# Settings in data.identity (rego/identity/data.json): max TTL per kind and path prefixes
# reserved for zerogate's own identities.
package zerogate.identity

# Input fields as strings ("" when absent or of another type): built-ins like startswith
# raise on a non-string in OPA.
input_string(key) := s if {
	s := object.get(input, key, "")
	is_string(s)
} else := ""

spiffe_id := input_string("spiffe_id")

trust_domain := input_string("trust_domain")

kind := input_string("kind")

audience := a if {
	a := object.get(input, "audience", [])
	is_array(a)
} else := []

default allow := false

allow if {
	spiffe_id != ""
	count(deny) == 0
}

reasons := sort([r | some r in deny])

decision := {"allow": allow, "reasons": reasons}

default reserved_prefixes := []

reserved_prefixes := data.identity.reserved_path_prefixes

id_prefix := concat("", ["spiffe://", trust_domain, "/"])

id_path := substring(spiffe_id, count(id_prefix) - 1, -1) if startswith(spiffe_id, id_prefix)

deny contains "spiffe_id is missing" if spiffe_id == ""

deny contains msg if {
	spiffe_id != ""
	not startswith(spiffe_id, id_prefix)
	msg := sprintf("%s is not in trust domain %s", [spiffe_id, trust_domain])
}

deny contains msg if {
	not kind in {"x509", "jwt"}
	msg := sprintf("unknown SVID kind '%s'", [kind])
}

deny contains msg if {
	max_ttl := data.identity.max_ttl_s[kind]
	ttl := object.get(input, "ttl_s", 0)
	ttl > max_ttl
	msg := sprintf("ttl %v s exceeds the %s maximum of %v s", [ttl, kind, max_ttl])
}

deny contains msg if {
	some reserved in reserved_prefixes
	startswith(id_path, reserved)
	object.get(input, "admin", false) != true
	msg := sprintf("path %s is reserved for zerogate's own identities", [id_path])
}

deny contains "a JWT-SVID needs at least one audience" if {
	kind == "jwt"
	count(audience) == 0
}
