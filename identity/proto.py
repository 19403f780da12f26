"""The one source of SPIFFE Workload API protobuf messages: py-spiffe's generated stubs.

py-spiffe (PyPI ``spiffe``) ships ``spiffe/_proto/workload_pb2.py`` generated from the SPIFFE
``workload.proto``. That file declares its messages without a protobuf package
(``X509SVIDRequest``, ``JWTSVID``, ...) in protobuf's process-wide default descriptor pool.
Generating our own ``workload_pb2`` from the same ``.proto`` registers the same full names a
second time, and protobuf then refuses to load the second module ("duplicate symbol") or,
with the pure-Python backend, yields two distinct classes for one wire type, so a message built
by one module is rejected by code expecting the other. The real client (py-spiffe's
``WorkloadApiClient``) runs in the same process as the server in tests and in tools, so
there can be only one set: py-spiffe's, pinned by ``spiffe==0.3.2``. Every zerogate module
imports the messages from here, never from ``spiffe._proto`` directly, so a later switch
(e.g. when py-spiffe moves them) is a one-file change.

The service's full name is ``SpiffeWorkloadAPI`` (no package), so RPC paths are
``/SpiffeWorkloadAPI/<Method>`` exactly as SPIRE and every client expect.
"""

from __future__ import annotations

from google.protobuf import struct_pb2
from spiffe._proto import workload_pb2, workload_pb2_grpc

SERVICE_NAME = "SpiffeWorkloadAPI"

# Workload Endpoint spec section 3: the static metadata every request must carry.
WORKLOAD_API_HEADER = "workload.spiffe.io"
WORKLOAD_API_HEADER_VALUE = "true"

X509SVIDRequest = workload_pb2.X509SVIDRequest
X509SVIDResponse = workload_pb2.X509SVIDResponse
X509SVID = workload_pb2.X509SVID
X509BundlesRequest = workload_pb2.X509BundlesRequest
X509BundlesResponse = workload_pb2.X509BundlesResponse
JWTSVIDRequest = workload_pb2.JWTSVIDRequest
JWTSVIDResponse = workload_pb2.JWTSVIDResponse
JWTSVID = workload_pb2.JWTSVID
JWTBundlesRequest = workload_pb2.JWTBundlesRequest
JWTBundlesResponse = workload_pb2.JWTBundlesResponse
ValidateJWTSVIDRequest = workload_pb2.ValidateJWTSVIDRequest
ValidateJWTSVIDResponse = workload_pb2.ValidateJWTSVIDResponse
Struct = struct_pb2.Struct


def method_path(name: str) -> str:
    """The gRPC path of a ``SpiffeWorkloadAPI`` method, e.g. ``/SpiffeWorkloadAPI/FetchJWTSVID``."""
    return f"/{SERVICE_NAME}/{name}"


__all__ = [
    "JWTSVID",
    "SERVICE_NAME",
    "WORKLOAD_API_HEADER",
    "WORKLOAD_API_HEADER_VALUE",
    "X509SVID",
    "JWTBundlesRequest",
    "JWTBundlesResponse",
    "JWTSVIDRequest",
    "JWTSVIDResponse",
    "Struct",
    "ValidateJWTSVIDRequest",
    "ValidateJWTSVIDResponse",
    "X509BundlesRequest",
    "X509BundlesResponse",
    "X509SVIDRequest",
    "X509SVIDResponse",
    "method_path",
    "workload_pb2",
    "workload_pb2_grpc",
]
