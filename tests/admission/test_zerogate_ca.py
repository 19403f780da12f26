"""The webhook served with a certificate from zerogate's own CA (identity/), and a client that
trusts exactly the ``caBundle`` that ``zerogate admission manifests`` prints for it, as a
kube-apiserver would."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

from admission_support import PAYLOADS, serve_webhook
from cryptography import x509

from admission.admit import Admitter
from admission.manifests import webhook_configurations
from identity.ca import CertificateAuthority
from identity.keys import KeyType, MemoryKeyManager
from identity.rotation import AuthorityManager
from identity.spiffeid import SpiffeId, TrustDomain
from policy.opa_embedded import OpaEmbeddedEngine
from zerogate.clock import SYSTEM_CLOCK
from zerogate.store import Database


async def test_serving_certificate_from_zerogate_ca(
    database: Database, native_engine: OpaEmbeddedEngine
) -> None:
    td = TrustDomain("zerogate.internal")
    manager = AuthorityManager(
        trust_domain=td,
        db=database,
        keys=MemoryKeyManager(),
        clock=SYSTEM_CLOCK,
        ca_ttl=timedelta(hours=24),
        key_type=KeyType.EC_P256,
    )
    manager.tick()
    ca = CertificateAuthority(manager, clock=SYSTEM_CLOCK)
    svid = ca.issue_server_svid(
        SpiffeId.parse("spiffe://zerogate.internal/zerogate/server"),
        dns_names=["zerogate.zerogate.svc", "localhost"],
    )
    leaf = svid.leaf
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "zerogate.zerogate.svc" in san.get_values_for_type(x509.DNSName)
    bundle_pem = ca.bundle().to_pem().encode()
    manifest = webhook_configurations(ca_bundle_pem=bundle_pem)
    ca_bundle = base64.b64decode(manifest[0]["webhooks"][0]["clientConfig"]["caBundle"])
    assert ca_bundle == bundle_pem

    admitter = Admitter(native=native_engine.evaluate, gatekeeper=None, audit=None)
    serving = (svid.chain_pem(), svid.key_pem(), ca_bundle)
    async with serve_webhook(admitter, serving=serving) as http:
        review = json.loads((PAYLOADS / "pod-denied.json").read_text())
        resp = (await http.post("/admission/validate", json=review)).json()["response"]
    assert resp["uid"] == review["request"]["uid"]
    assert resp["allowed"] is False
