package zerogate.admission_test

import data.zerogate.admission

digest := "@sha256:0f3a5ce6bd4b0b7e4a4d1d0c5b1e4a0e2b3c4d5e6f708192a3b4c5d6e7f80910"

good_container := {
	"name": "server",
	"image": concat("", ["ghcr.io/acme/llm-server", digest]),
	"securityContext": {"runAsNonRoot": true, "readOnlyRootFilesystem": true},
	"resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
}

base := {
	"apiVersion": "admission.k8s.io/v1",
	"kind": "AdmissionReview",
	"request": {
		"uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
		"kind": {"group": "", "version": "v1", "kind": "Pod"},
		"operation": "CREATE",
		"namespace": "ml",
		"object": {
			"apiVersion": "v1",
			"kind": "Pod",
			"metadata": {"name": "llm", "namespace": "ml"},
			"spec": {"containers": [good_container]},
		},
	},
}

with_container(c) := json.patch(base, [{"op": "replace", "path": "/request/object/spec/containers/0", "value": c}])

with_spec(field, value) := json.patch(base, [{"op": "add", "path": concat("/", ["/request/object/spec", field]), "value": value}])

test_compliant_pod_is_admitted if {
	count(admission.deny) == 0 with input as base
	count(admission.warn) == 0 with input as base
}

test_unpinned_image_is_denied if {
	admission.deny == {"container 'server' image 'ghcr.io/acme/llm-server:v1' must be pinned by digest (@sha256:...)"} with input as with_container(object.union(good_container, {"image": "ghcr.io/acme/llm-server:v1"}))
}

test_unknown_registry_is_denied if {
	admission.deny == {"container 'server' image registry 'evil.example' is not allowed"} with input as with_container(object.union(good_container, {"image": concat("", ["evil.example/llm", digest])}))
}

test_docker_hub_short_name_is_docker_io if {
	admission.deny == {"container 'server' image registry 'docker.io' is not allowed"} with input as with_container(object.union(good_container, {"image": concat("", ["nginx", digest])}))
}

test_privileged_container_is_denied if {
	c := object.union(good_container, {"securityContext": {"runAsNonRoot": true, "readOnlyRootFilesystem": true, "privileged": true}})
	admission.deny == {"container 'server' must not be privileged"} with input as with_container(c)
}

test_host_namespaces_are_denied if {
	admission.deny == {"pod must not use the host namespace (hostPID)"} with input as with_spec("hostPID", true)
	admission.deny == {"pod must not use the host namespace (hostNetwork)"} with input as with_spec("hostNetwork", true)
}

test_host_path_to_dev_and_runtime_socket_is_denied if {
	vols := [{"name": "d", "hostPath": {"path": "/dev/nvidia0"}}, {"name": "s", "hostPath": {"path": "/run/containerd/containerd.sock"}}, {"name": "ok", "hostPath": {"path": "/opt/models"}}]
	admission.deny == {
		"hostPath volume '/dev/nvidia0' exposes devices or the container runtime socket",
		"hostPath volume '/run/containerd/containerd.sock' exposes devices or the container runtime socket",
	} with input as with_spec("volumes", vols)
}

test_root_is_denied if {
	c := object.union(good_container, {"securityContext": {"runAsNonRoot": true, "runAsUser": 0, "readOnlyRootFilesystem": true}})
	admission.deny == {"container 'server' must run as non-root (runAsNonRoot: true, no runAsUser 0)"} with input as with_container(c)
	c2 := object.remove(good_container, ["securityContext"])
	"container 'server' must run as non-root (runAsNonRoot: true, no runAsUser 0)" in admission.deny with input as with_container(c2)
}

test_pod_level_non_root_is_enough if {
	c := object.union(good_container, {"securityContext": {"readOnlyRootFilesystem": true}})
	doc := json.patch(with_container(c), [{"op": "add", "path": "/request/object/spec/securityContext", "value": {"runAsNonRoot": true}}])
	count(admission.deny) == 0 with input as doc
}

model_server_pod(annotations, c) := json.patch(with_container(c), [{"op": "add", "path": "/request/object/metadata/labels", "value": {"zerogate.io/model-server": "true"}}, {"op": "add", "path": "/request/object/metadata/annotations", "value": annotations}])

test_model_server_needs_identity_and_read_only_root if {
	c := object.union(object.remove(good_container, ["securityContext"]), {"securityContext": {"runAsNonRoot": true}})
	admission.deny == {
		"model server container 'server' must use a read-only root filesystem",
		"model server pods must opt into a zerogate identity (annotation zerogate.io/inject: \"true\")",
	} with input as model_server_pod({}, c)
}

test_model_server_with_identity_is_admitted if {
	count(admission.deny) == 0 with input as model_server_pod({"zerogate.io/inject": "true"}, good_container)
}

test_model_server_inject_false_is_denied if {
	"model server pods must opt into a zerogate identity (annotation zerogate.io/inject: \"true\")" in admission.deny with input as model_server_pod({"zerogate.io/inject": "false"}, good_container)
}

test_gpu_request_needs_limit_and_allowed_namespace if {
	c := object.union(good_container, {"resources": {"requests": {"nvidia.com/gpu": 1}, "limits": {"cpu": "1"}}})
	admission.deny == {"container 'server' requests nvidia.com/gpu without a limit"} with input as with_container(c)
	c2 := object.union(good_container, {"resources": {"limits": {"nvidia.com/gpu": 1}}})
	count(admission.deny) == 0 with input as with_container(c2)
	other := json.patch(with_container(c2), [{"op": "replace", "path": "/request/namespace", "value": "default"}])
	admission.deny == {"container 'server' uses nvidia.com/gpu outside the GPU namespaces (namespace 'default')"} with input as other
}

test_deployment_pod_template_is_judged if {
	deploy := json.patch(base, [
		{"op": "replace", "path": "/request/kind/kind", "value": "Deployment"},
		{"op": "replace", "path": "/request/object", "value": {"spec": {"template": {"spec": {"hostIPC": true, "containers": [good_container]}}}}},
	])
	admission.deny == {"pod must not use the host namespace (hostIPC)"} with input as deploy
}

test_delete_is_not_judged if {
	del := json.patch(base, [{"op": "replace", "path": "/request/operation", "value": "DELETE"}, {"op": "add", "path": "/request/object/spec/hostPID", "value": true}])
	count(admission.deny) == 0 with input as del
}

test_warnings if {
	c := object.union(object.remove(good_container, ["resources"]), {"image": "ghcr.io/acme/x:latest"})
	admission.warn == {"container 'server' uses a ':latest' image", "container 'server' sets no resource limits"} with input as with_container(c)
}

test_malformed_input_is_quiet if {
	count(admission.deny) == 0 with input as {"request": "x"}
	count(admission.deny) == 0 with input as {}
}
