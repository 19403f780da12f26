# Native admission policy for GPU and model-serving workloads.
#
# Input:  an AdmissionReview admission.k8s.io/v1 (input.request = the AdmissionRequest)
# Output: deny contains msg (strings: any one denies), warn contains msg (strings);
#         decision = {"deny": deny, "warn": warn} (what the webhook evaluates)
# Data:   data.admission (rego/admission/data.json): allowed registries, GPU namespaces,
#         container runtime sockets, label/annotation names.
#
# Applies to Pods and to the pod templates of Deployments, StatefulSets, DaemonSets,
# ReplicaSets, Jobs and CronJobs, on CREATE and UPDATE. Every value read from the input is
# type-checked first, so malformed objects give the same answer on OPA and regorus.
package zerogate.admission

# The one document the webhook evaluates: every deny and warn message.
decision := {"deny": deny, "warn": warn}

conf := c if {
	c := data.admission
	is_object(c)
} else := {}

request := r if {
	r := object.get(input, "request", {})
	is_object(r)
} else := {}

object_under_review := o if {
	request.operation in {"CREATE", "UPDATE"}
	o := object.get(request, "object", {})
	is_object(o)
} else := {}

kind := k if {
	k := object.get(request, ["kind", "kind"], "")
	is_string(k)
} else := ""

template_kinds := {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

# the pod whose spec is judged: the Pod itself, or the workload's pod template
pod := object_under_review if {
	kind == "Pod"
} else := p if {
	kind in template_kinds
	p := object.get(object_under_review, ["spec", "template"], {})
} else := p if {
	kind == "CronJob"
	p := object.get(object_under_review, ["spec", "jobTemplate", "spec", "template"], {})
} else := {}

spec := s if {
	s := object.get(pod, "spec", {})
	is_object(s)
} else := {}

labels := l if {
	l := object.get(pod, ["metadata", "labels"], {})
	is_object(l)
} else := {}

annotations := a if {
	a := object.get(pod, ["metadata", "annotations"], {})
	is_object(a)
} else := {}

namespace := ns if {
	ns := object.get(request, "namespace", "")
	is_string(ns)
} else := ""

model_server if labels[object.get(conf, "model_server_label", "zerogate.io/model-server")] == "true"

list_field(obj, key) := v if {
	v := object.get(obj, key, [])
	is_array(v)
} else := []

containers contains c if {
	some field in ["containers", "initContainers", "ephemeralContainers"]
	some c in list_field(spec, field)
	is_object(c)
}

name(c) := n if {
	n := object.get(c, "name", "")
	is_string(n)
} else := "<unnamed>"

image(c) := i if {
	i := object.get(c, "image", "")
	is_string(i)
} else := ""

# --- images: pinned by digest, from an allowed registry ------------------------------------

# the registry of an image reference as the container runtime resolves it
registry(img) := r if {
	parts := split(img, "/")
	count(parts) > 1
	first := parts[0]
	looks_like_host(first)
	r := first
} else := "docker.io"

looks_like_host(s) if contains(s, ".")

looks_like_host(s) if contains(s, ":")

looks_like_host(s) if s == "localhost"

deny contains msg if {
	some c in containers
	not contains(image(c), "@sha256:")
	msg := sprintf("container '%s' image '%s' must be pinned by digest (@sha256:...)", [name(c), image(c)])
}

deny contains msg if {
	some c in containers
	reg := registry(image(c))
	allowed := {r | some r in object.get(conf, "allowed_registries", [])}
	not reg in allowed
	msg := sprintf("container '%s' image registry '%s' is not allowed", [name(c), reg])
}

# --- privileges and host access -------------------------------------------------------------

deny contains msg if {
	some c in containers
	object.get(c, ["securityContext", "privileged"], false) == true
	msg := sprintf("container '%s' must not be privileged", [name(c)])
}

deny contains msg if {
	some field in ["hostPID", "hostIPC", "hostNetwork"]
	object.get(spec, field, false) == true
	msg := sprintf("pod must not use the host namespace (%s)", [field])
}

host_paths contains p if {
	some v in list_field(spec, "volumes")
	is_object(v)
	p := object.get(v, ["hostPath", "path"], "")
	is_string(p)
	p != ""
}

forbidden_host_path(p) if {
	p == "/dev"
}

forbidden_host_path(p) if startswith(p, "/dev/")

forbidden_host_path(p) if {
	some sock in object.get(conf, "runtime_sockets", [])
	is_string(sock)
	startswith(p, sock)
}

forbidden_host_path(p) if p in {"/", "/var", "/var/run", "/run"}

deny contains msg if {
	some p in host_paths
	forbidden_host_path(p)
	msg := sprintf("hostPath volume '%s' exposes devices or the container runtime socket", [p])
}

# --- run as non-root --------------------------------------------------------------------------

pod_non_root if object.get(spec, ["securityContext", "runAsNonRoot"], false) == true

runs_as_root(c) if object.get(c, ["securityContext", "runAsUser"], -1) == 0

runs_as_root(c) if object.get(spec, ["securityContext", "runAsUser"], -1) == 0

non_root(c) if {
	object.get(c, ["securityContext", "runAsNonRoot"], false) == true
	not runs_as_root(c)
}

non_root(c) if {
	pod_non_root
	object.get(c, ["securityContext", "runAsNonRoot"], true) != false
	not runs_as_root(c)
}

deny contains msg if {
	some c in containers
	not non_root(c)
	msg := sprintf("container '%s' must run as non-root (runAsNonRoot: true, no runAsUser 0)", [name(c)])
}

# --- model servers -------------------------------------------------------------------------------

deny contains msg if {
	model_server
	some c in containers
	object.get(c, ["securityContext", "readOnlyRootFilesystem"], false) != true
	msg := sprintf("model server container '%s' must use a read-only root filesystem", [name(c)])
}

deny contains msg if {
	model_server
	annotations[object.get(conf, "inject_annotation", "zerogate.io/inject")] != "true"
	msg := "model server pods must opt into a zerogate identity (annotation zerogate.io/inject: \"true\")"
}

deny contains msg if {
	model_server
	not object.get(annotations, object.get(conf, "inject_annotation", "zerogate.io/inject"), false)
	msg := "model server pods must opt into a zerogate identity (annotation zerogate.io/inject: \"true\")"
}

# --- GPUs -------------------------------------------------------------------------------------------

gpu := object.get(conf, "gpu_resource", "nvidia.com/gpu")

wants_gpu(c) if object.get(c, ["resources", "requests", gpu], null) != null

wants_gpu(c) if object.get(c, ["resources", "limits", gpu], null) != null

deny contains msg if {
	some c in containers
	object.get(c, ["resources", "requests", gpu], null) != null
	object.get(c, ["resources", "limits", gpu], null) == null
	msg := sprintf("container '%s' requests %s without a limit", [name(c), gpu])
}

deny contains msg if {
	some c in containers
	wants_gpu(c)
	allowed := {n | some n in object.get(conf, "gpu_namespaces", [])}
	not namespace in allowed
	msg := sprintf("container '%s' uses %s outside the GPU namespaces (namespace '%s')", [name(c), gpu, namespace])
}

# --- warnings -----------------------------------------------------------------------------------------

warn contains msg if {
	some c in containers
	endswith(image(c), ":latest")
	msg := sprintf("container '%s' uses a ':latest' image", [name(c)])
}

warn contains msg if {
	some c in list_field(spec, "containers")
	is_object(c)
	object.get(c, ["resources", "limits"], null) == null
	msg := sprintf("container '%s' sets no resource limits", [name(c)])
}
