"""Kubernetes admission: the AdmissionReview webhook, native Rego, Gatekeeper compatibility.

Entry points: ``admission.service.AdmissionService`` (what ``zerogate serve`` wires),
``admission.webhook.router``, ``admission.cli.app`` (``zerogate admission ...``).
"""
