# Responses to Falco events (DESIGN.md section 6; issue 7 "Response").
#
# Input (built by runtime/actions.py):
#   event:      {event_id, rule, priority, severity (0 Debug .. 7 Emergency), source, hostname,
#                tags, time, output_fields}
#   workload:   {k8s_ns, k8s_pod, k8s_pod_uid, container_id}
#   identities: [{spiffe_id, entry_id, match: "exact"|"pod"|"namespace", selectors}]
#   recent:     [{event_id, rule, priority, severity, time}]  same workload, newest first,
#               this event excluded
# Output: data.zerogate.runtime.actions, a list of
#   {type: "quarantine", spiffe_id, ttl_s, reason, rule}
#   {type: "revoke", spiffe_id, entry_id, reason, rule}
#   {type: "alert", reason, rule, priority}
#   {type: "label" | "evict", namespace, pod, reason}   (only when data.runtime.kubernetes
#                                                         asks for them)
#
# Defaults (rego/runtime/data.json, edit there): Critical and above on a workload with an
# identity -> quarantine for quarantine_ttl_s + alert; a rule in revoke_rules -> revoke the
# entry + quarantine + alert; repeat.count events of repeat.min_severity or worse for one
# workload (this one included) -> quarantine. Namespace-level matches are reported in alerts
# but not acted on (another workload of the namespace may hold the ID).
#
# Engine portability: values are bound with defaults before use (no function under `not`
# with a possibly undefined argument), as in rego/inference.
package zerogate.runtime

default ttl_s := 3600

ttl_s := data.runtime.quarantine_ttl_s

default min_severity := 5

min_severity := data.runtime.min_quarantine_severity

default act_on := ["exact", "pod"]

act_on := data.runtime.act_on_matches

default revoke_rules := []

revoke_rules := data.runtime.revoke_rules

default repeat := {"min_severity": 3, "count": 5}

repeat := data.runtime.repeat

default kubernetes := {}

kubernetes := data.runtime.kubernetes

default severity := 0

severity := input.event.severity

default rule := ""

rule := input.event.rule

default priority := ""

priority := input.event.priority

identities := [id | some id in object.get(input, "identities", []); id.match in act_on]

critical if severity >= min_severity

revoke_rule if rule in revoke_rules

repeated if {
	severity >= repeat.min_severity
	earlier := [e | some e in object.get(input, "recent", []); e.severity >= repeat.min_severity]
	count(earlier) + 1 >= repeat.count
}

quarantine_reason := rule if critical

quarantine_reason := rule if revoke_rule

quarantine_reason := concat("", ["repeated: ", rule]) if {
	not critical
	not revoke_rule
	repeated
}

quarantines contains {
	"type": "quarantine",
	"spiffe_id": id.spiffe_id,
	"ttl_s": ttl_s,
	"reason": quarantine_reason,
	"rule": rule,
} if {
	some id in identities
	quarantine_reason
}

revokes contains {
	"type": "revoke",
	"spiffe_id": id.spiffe_id,
	"entry_id": id.entry_id,
	"reason": rule,
	"rule": rule,
} if {
	revoke_rule
	some id in identities
}

alerts contains {"type": "alert", "reason": rule, "rule": rule, "priority": priority} if critical

alerts contains {"type": "alert", "reason": rule, "rule": rule, "priority": priority} if {
	count(quarantines) > 0
}

pod_actions contains {
	"type": kind,
	"namespace": input.workload.k8s_ns,
	"pod": input.workload.k8s_pod,
	"reason": rule,
} if {
	count(quarantines) > 0
	some kind in object.get(kubernetes, "on_quarantine", [])
	kind in {"label", "evict"}
	is_string(input.workload.k8s_ns)
	is_string(input.workload.k8s_pod)
}

# quarantine before revoke before alert, so the gate refuses as early as possible
actions := array.concat(
	array.concat([a | some a in quarantines], [a | some a in revokes]),
	array.concat([a | some a in alerts], [a | some a in pod_actions]),
)

# Who may POST Falco alerts (runtime/api.py): SPIFFE IDs of our trust domain whose path is
# listed in data.runtime.submitters (default /falco, DESIGN.md section 7a).
default submitters := ["/falco"]

submitters := data.runtime.submitters

default submit_allowed := false

submit_allowed if {
	input.subject.trust_domain != ""
	some path in submitters
	input.subject.spiffe_id == concat("", ["spiffe://", input.subject.trust_domain, path])
}

submit := {"allow": submit_allowed}
