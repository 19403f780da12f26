"""Identity benchmark: SVID issuance against the raw ECDSA P-256 sign rate, same run.

    .venv/bin/python bench/identity.py [--seconds 4] [--rounds 8]

Prints operations per second and the ratio to raw signing (issue 3 targets: X.509-SVID
issuance >= 30 % of the raw sign rate, JWT-SVID minting >= 50 %). Issuance includes building
the template, signing, and the spec validation the CA runs on every credential; the workload
key is supplied (as with a CSR), with a second figure for the CA minting the key too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path and its name would shadow
# the ``identity`` package: drop that entry before importing it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from identity.ca import CertificateAuthority, JwtSvidParams, X509SvidParams  # noqa: E402
from identity.keys import MemoryKeyManager  # noqa: E402
from identity.rotation import AuthorityManager  # noqa: E402
from identity.spiffeid import SpiffeId, TrustDomain  # noqa: E402
from zerogate.clock import SystemClock  # noqa: E402
from zerogate.store import Database  # noqa: E402


def rate(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(25):
            fn()
        n += 25
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def interleaved(
    cases: dict[str, Callable[[], object]], seconds: float, rounds: int
) -> dict[str, list[float]]:
    """Each case for ``seconds/rounds`` in turn, ``rounds`` times: on a shared machine the
    baseline and the candidates see the same load, and per-round ratios stay comparable."""
    for fn in cases.values():  # warm up
        for _ in range(20):
            fn()
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            out[name].append(rate(fn, seconds / rounds))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="time per case, all rounds")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = Database.open(f"sqlite:///{Path(tmp) / 'bench.db'}")
        clock = SystemClock()
        manager = AuthorityManager(
            trust_domain=TrustDomain("example.org"), db=db, keys=MemoryKeyManager(), clock=clock
        )
        manager.tick()
        ca = CertificateAuthority(manager, clock=clock)
        sid = SpiffeId.parse("spiffe://example.org/bench/workload")
        workload_key = ec.generate_private_key(ec.SECP256R1()).public_key()
        raw_key = ec.generate_private_key(ec.SECP256R1())
        payload = b"x" * 256

        cases: dict[str, Callable[[], object]] = {
            "raw": lambda: raw_key.sign(payload, ec.ECDSA(hashes.SHA256())),
            "x509": lambda: ca.issue_x509_svid(X509SvidParams(sid, public_key=workload_key)),
            "x509_keygen": lambda: ca.issue_x509_svid(X509SvidParams(sid)),
            "jwt": lambda: ca.issue_jwt_svid(JwtSvidParams(sid, ("aud",))),
        }
        rates = interleaved(cases, args.seconds, args.rounds)
        db.close()

    def ratio(name: str) -> float:
        return statistics.median(r / b for r, b in zip(rates[name], rates["raw"], strict=True))

    med = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{args.rounds} interleaved rounds, medians (ratio = median of per-round ratios)")
    print(f"raw ECDSA P-256 sign        {med['raw']:10.0f}/s   (baseline)")
    for name, label, target in [
        ("x509", "X.509-SVID issuance        ", "   (target >= 30%)"),
        ("x509_keygen", "X.509-SVID + key generation", ""),
        ("jwt", "JWT-SVID minting           ", "   (target >= 50%)"),
    ]:
        print(f"{label} {med[name]:10.0f}/s   ratio {ratio(name):6.1%}{target}")


if __name__ == "__main__":
    main()
