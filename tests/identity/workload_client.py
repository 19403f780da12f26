"""A workload process for the Workload API tests: py-spiffe's real ``WorkloadApiClient``
(and, for the negative cases, raw grpcio stubs from ``spiffe._proto``) against the socket
named by ``SPIFFE_ENDPOINT_SOCKET``. Prints one JSON object per line on stdout.

Usage: ``python workload_client.py MODE [ARGS...]``

- ``all AUDIENCE``: every Workload API call once; checks the chain against the bundle.
- ``watch``: X.509 watcher; one line per update, until stdin closes.
- ``raw METHOD [--no-header] [--audience A] [--token T]``: one raw gRPC call; prints the
  status code name.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import UTC, datetime

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store
from spiffe import WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc


def emit(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def verify_chain(chain: list[x509.Certificate], anchors: list[x509.Certificate]) -> str:
    """cryptography's X.509 path validation of an X.509-SVID (client-auth policy)."""
    verifier = PolicyBuilder().store(Store(anchors)).time(datetime.now(UTC)).build_client_verifier()
    verified = verifier.verify(chain[0], chain[1:])
    return verified.chain[-1].subject.rfc4514_string()


def der(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.DER).hex()


def mode_all(audience: str) -> None:
    with WorkloadApiClient(default_timeout=10) as client:
        svid = client.fetch_x509_svid()
        x509_bundles = client.fetch_x509_bundles()
        bundle = x509_bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        assert bundle is not None
        anchors = list(bundle.x509_authorities)
        root = verify_chain(list(svid.cert_chain), anchors)
        jwt_svid = client.fetch_jwt_svid(audience={audience})
        jwt_bundles = client.fetch_jwt_bundles()
        jwt_bundle = jwt_bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        assert jwt_bundle is not None
        validated = client.validate_jwt_svid(jwt_svid.token, audience)
        emit(
            {
                "x509_spiffe_id": str(svid.spiffe_id),
                "x509_serial": svid.leaf.serial_number,
                "x509_anchor_count": len(anchors),
                "verified_root": root,
                "jwt_spiffe_id": str(jwt_svid.spiffe_id),
                "jwt_audience": sorted(jwt_svid.audience),
                "jwt_token": jwt_svid.token,
                "jwt_bundle_kids": sorted(jwt_bundle.jwt_authorities.keys()),
                "validated_spiffe_id": str(validated.spiffe_id),
            }
        )


def mode_watch() -> None:
    client = WorkloadApiClient()
    done = threading.Event()

    def on_success(ctx: object) -> None:
        svid = ctx.default_svid  # type: ignore[attr-defined]
        bundle = ctx.x509_bundle_set.get_bundle_for_trust_domain(  # type: ignore[attr-defined]
            svid.spiffe_id.trust_domain
        )
        anchors = list(bundle.x509_authorities)
        try:
            root = verify_chain(list(svid.cert_chain), anchors)
        except Exception as exc:
            root = f"verify failed: {exc}"
        emit(
            {
                "event": "update",
                "spiffe_ids": [str(s.spiffe_id) for s in ctx.x509_svids],  # type: ignore[attr-defined]
                "serial": svid.leaf.serial_number,
                "issuer": svid.leaf.issuer.rfc4514_string(),
                "anchors": len(anchors),
                "verified_root": root,
            }
        )

    def on_error(exc: Exception) -> None:
        emit({"event": "error", "error": str(exc)})

    handler = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
    emit({"event": "started"})
    sys.stdin.read()  # until the test closes stdin
    handler.cancel()
    client.close()
    done.set()


def mode_raw(method: str, args: list[str]) -> None:
    path = os.environ["SPIFFE_ENDPOINT_SOCKET"].removeprefix("unix://")
    metadata = [] if "--no-header" in args else [("workload.spiffe.io", "true")]
    opts = dict(zip(args[::2], args[1::2], strict=False))
    channel = grpc.insecure_channel(f"unix:{path}")
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    try:
        if method == "FetchX509SVID":
            resp = next(stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=metadata))
            result: dict[str, object] = {"svids": [s.spiffe_id for s in resp.svids]}
        elif method == "FetchX509Bundles":
            resp_b = next(
                stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=metadata)
            )
            result = {"bundles": sorted(resp_b.bundles)}
        elif method == "FetchJWTBundles":
            resp_j = next(stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=metadata))
            result = {"bundles": {k: json.loads(v) for k, v in resp_j.bundles.items()}}
        elif method == "FetchJWTSVID":
            aud = [opts["--audience"]] if opts.get("--audience") else []
            resp_s = stub.FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=aud, spiffe_id=opts.get("--spiffe-id", "")),
                metadata=metadata,
                timeout=10,
            )
            result = {"svids": [[s.spiffe_id, s.svid] for s in resp_s.svids]}
        elif method == "ValidateJWTSVID":
            resp_v = stub.ValidateJWTSVID(
                workload_pb2.ValidateJWTSVIDRequest(
                    audience=opts.get("--audience", ""), svid=opts.get("--token", "")
                ),
                metadata=metadata,
                timeout=10,
            )
            from google.protobuf.json_format import MessageToDict

            result = {"spiffe_id": resp_v.spiffe_id, "claims": MessageToDict(resp_v.claims)}
        else:
            raise SystemExit(f"unknown method {method}")
        emit({"code": "OK", **result})
    except grpc.RpcError as exc:
        emit({"code": exc.code().name, "details": exc.details()})
    finally:
        channel.close()


def mode_stream() -> None:
    path = os.environ["SPIFFE_ENDPOINT_SOCKET"].removeprefix("unix://")
    channel = grpc.insecure_channel(f"unix:{path}")
    stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)
    try:
        for resp in stub.FetchX509SVID(
            workload_pb2.X509SVIDRequest(), metadata=[("workload.spiffe.io", "true")]
        ):
            emit({"svids": [s.spiffe_id for s in resp.svids]})
        emit({"code": "OK"})
    except grpc.RpcError as exc:
        emit({"code": exc.code().name, "details": exc.details()})
    finally:
        channel.close()


def main() -> None:
    mode = sys.argv[1]
    if mode == "all":
        mode_all(sys.argv[2])
    elif mode == "watch":
        mode_watch()
    elif mode == "stream":
        mode_stream()
    elif mode == "raw":
        mode_raw(sys.argv[2], sys.argv[3:])
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
