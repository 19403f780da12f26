"""zerogate: a security and policy control plane for zero-trust AI deployments."""

import warnings

# cryptography 51 deprecates DSA, and py-spiffe (spiffe.bundle.jwt_bundle) reads
# dsa.DSAPublicKey when it is imported: a warning on every command that is not ours to act on
# (zerogate never accepts DSA keys). Set here, so it is in place before any subsystem imports
# py-spiffe.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"spiffe\.")
