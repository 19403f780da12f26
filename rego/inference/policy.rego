# Authorization of model calls at the inference gate (DESIGN.md section 7).
#
# Input:  {subject: {spiffe_id, trust_domain, path}, request: {model, operation, stream,
#          max_tokens, input_tokens}, runtime: {quarantined, reasons}, usage: {...}, time}
# Output: data.zerogate.inference.decision =
#         {allow, reasons, limits: {rpm, tpm, max_tokens, daily_tokens}}
#
# Who may use which model is policy DATA (data.inference, from rego/inference/data.json):
# operators edit grants there, not this file. The gate enforces the returned limits itself
# (429 budget_exceeded); this policy only denies what no budget can fix.
#
# Engine portability: no function is called under `not` with an argument that may be
# undefined (regorus would answer true there, OPA undefined): values are bound first, with
# object.get defaults.
package zerogate.inference

# Policy data is read through rules with defaults, never with object.get(data, ...): a
# reference to the whole data document would make every rule depend on itself.
default grants := []

grants := data.inference.grants

default default_limits := {}

default_limits := data.inference.default_limits

default trust_domains := []

trust_domains := data.inference.trust_domains

# Input fields as strings ("" when absent or of another type): built-ins like startswith
# raise on a non-string in OPA, so nothing below sees an unchecked input value.
input_string(path) := s if {
	s := object.get(input, path, "")
	is_string(s)
} else := ""

subject_id := input_string(["subject", "spiffe_id"])

subject_path := input_string(["subject", "path"])

subject_td := input_string(["subject", "trust_domain"])

model := input_string(["request", "model"])

operation := input_string(["request", "operation"])

request_time := input_string(["time"])

# Arrays likewise ([] when absent or of another type): iterating a non-collection is
# undefined in OPA but an error in regorus.
input_array(path) := a if {
	a := object.get(input, path, [])
	is_array(a)
} else := []

runtime_reasons := [r | some r in input_array(["runtime", "reasons"]); is_string(r)]

# --- the decision -------------------------------------------------------------------------

decision := {
	"allow": allow,
	"reasons": reasons,
	"limits": limits,
}

default allow := false

allow if {
	subject_id != ""
	count(deny) == 0
}

reasons := sort([r | some r in deny])

# --- grants ---------------------------------------------------------------------------------

# A grant matches the subject by SPIFFE ID prefix (full ID) or by path prefix (any trust
# domain the gate accepted), on whole path segments: "/ns/ml" and "/ns/ml/" both match
# "/ns/ml" and "/ns/ml/sa/x", never "/ns/mlx". The weight is the prefix length: the most
# specific grant wins.
subject_keys := {"spiffe_id_prefix": subject_id, "path_prefix": subject_path}

subject_grants := [{"grant": g, "weight": count(prefix)} |
	some g in grants
	some key, value in subject_keys
	value != ""
	prefix := g[key]
	is_string(prefix)
	prefix != ""
	startswith(concat("", [value, "/"]), concat("", [trim_suffix(prefix, "/"), "/"]))
]

listed(list, value) if {
	some item in list
	item in {value, "*"}
}

rfc3339(t) if regex.match(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$`, t)

expired(grant) if {
	rfc3339(grant.not_after)
	rfc3339(request_time)
	time.parse_rfc3339_ns(request_time) > time.parse_rfc3339_ns(grant.not_after)
}

# The grants that also allow this model and operation, and have not expired.
usable := [m |
	some m in subject_grants
	listed(object.get(m.grant, "models", []), model)
	listed(object.get(m.grant, "operations", []), operation)
	not expired(m.grant)
]

# The most specific usable grant decides the limits (ties: the first in the data file).
best_weight := max([m.weight | some m in usable])

best := [m.grant | some m in usable; m.weight == best_weight][0]

zero_limits := {"rpm": 0, "tpm": 0, "max_tokens": 0, "daily_tokens": 0}

limits := object.union(object.union(zero_limits, default_limits), object.get(best, "limits", {})) if {
	count(usable) > 0
}

limits := zero_limits if count(usable) == 0

# --- deny reasons -----------------------------------------------------------------------------

deny contains "no authenticated SPIFFE ID" if subject_id == ""

deny contains msg if {
	input.runtime.quarantined == true
	msg := concat("", ["identity is quarantined", _suffix(runtime_reasons)])
}

_suffix(list) := "" if count(list) == 0

_suffix(list) := concat("", [": ", concat("; ", list)]) if count(list) > 0

deny contains msg if {
	count(trust_domains) > 0
	not subject_td in trust_domains
	msg := sprintf("trust domain '%s' may not call models", [subject_td])
}

deny contains msg if {
	subject_id != ""
	count(subject_grants) == 0
	msg := sprintf("%s has no model grant", [subject_id])
}

deny contains msg if {
	count(subject_grants) > 0
	count(usable) == 0
	msg := sprintf("%s may not use model '%s' for '%s'", [subject_id, model, operation])
}

deny contains msg if {
	count(usable) > 0
	requested := object.get(input, ["request", "max_tokens"], null)
	is_number(requested)
	requested > limits.max_tokens
	msg := sprintf("max_tokens %v exceeds the limit %v for model '%s'", [requested, limits.max_tokens, model])
}

deny contains msg if {
	count(usable) > 0
	object.get(input, ["request", "stream"], false) == true
	object.get(best, "stream", true) == false
	msg := sprintf("streaming is not allowed for model '%s'", [model])
}
