"""Errors of the identity subsystem, each naming the rule it enforces.

Hierarchy (``code`` in brackets; transports map codes to status once)::

    ZerogateError
    +-- IdentityError                 [identity_error]
        +-- InvalidSpiffeIdError      [invalid_spiffe_id]  a ValueError too (spiffeid.py)
        +-- KeyManagerError           [key_error]
        |   +-- KeyNotFoundError      [key_not_found]
        +-- CaError                   [ca_error]           no usable CA, bad upstream PEM
        +-- BundleError               [invalid_bundle]     bundle JSON/PEM breaks the spec
        +-- X509SvidError             [invalid_x509_svid]
        |   +-- InvalidLeafError      leaf breaks X509-SVID 2/4 (URI SAN, CA flag, usage)
        |   +-- InvalidCaCertError    signing certificate breaks X509-SVID section 4.1/4.3
        |   +-- ChainVerificationError   no path to the trust domain's bundle
        |   +-- NoBundleError         no bundle for the SVID's trust domain
        +-- JwtSvidError              [invalid_jwt_svid]
        |   +-- JwtMalformedError, JwtAlgorithmError, JwtTypeError, JwtMissingKidError,
        |   +-- JwtUnknownKidError, JwtSignatureError, JwtMissingClaimError,
        |   +-- JwtSubjectError, JwtAudienceError, JwtExpiredError, JwtNotYetValidError,
        |   +-- JwtNoBundleError
        +-- EntryError                [invalid_entry]
        |   +-- EntryNotFoundError    [entry_not_found]
        |   +-- EntryConflictError    [entry_conflict]     revision mismatch or duplicate
        +-- DeniedError               [identity_denied]    on the deny list
"""

from __future__ import annotations

from zerogate.errors import ZerogateError


class IdentityError(ZerogateError):
    code = "identity_error"


class KeyManagerError(IdentityError):
    code = "key_error"


class KeyNotFoundError(KeyManagerError):
    code = "key_not_found"


class CaError(IdentityError):
    code = "ca_error"


class BundleError(IdentityError):
    code = "invalid_bundle"


class X509SvidError(IdentityError):
    code = "invalid_x509_svid"


class InvalidLeafError(X509SvidError):
    pass


class InvalidCaCertError(X509SvidError):
    pass


class ChainVerificationError(X509SvidError):
    pass


class NoBundleError(X509SvidError):
    pass


class JwtSvidError(IdentityError):
    code = "invalid_jwt_svid"


class JwtMalformedError(JwtSvidError):
    pass


class JwtAlgorithmError(JwtSvidError):
    pass


class JwtTypeError(JwtSvidError):
    pass


class JwtMissingKidError(JwtSvidError):
    pass


class JwtUnknownKidError(JwtSvidError):
    pass


class JwtSignatureError(JwtSvidError):
    pass


class JwtMissingClaimError(JwtSvidError):
    def __init__(self, claim: str) -> None:
        super().__init__(f"JWT-SVID is missing the required claim {claim!r} (JWT-SVID 3)")
        self.claim = claim


class JwtSubjectError(JwtSvidError):
    pass


class JwtAudienceError(JwtSvidError):
    pass


class JwtExpiredError(JwtSvidError):
    pass


class JwtNotYetValidError(JwtSvidError):
    pass


class JwtNoBundleError(JwtSvidError):
    pass


class EntryError(IdentityError):
    code = "invalid_entry"


class EntryNotFoundError(EntryError):
    code = "entry_not_found"


class EntryConflictError(EntryError):
    code = "entry_conflict"


class DeniedError(IdentityError):
    code = "identity_denied"
