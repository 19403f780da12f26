"""zerogate's policy subsystem: Rego engines (real OPA embedded, regorus, remote OPA), the
policy store with safe hot reload, the decision cache and decision log, the OPA-compatible
REST API and bundle server, and ``zerogate policy test|eval|check|bundle``.

Other subsystems use ``policy.service.open_policy(...)`` and ``PolicyService.decide(...)``;
see docs/policy.md. Imports only the kernel (DESIGN.md section 2).
"""
