"""Android Key Attestation verifier throughput, in process.

Prints, for a real RSA-root chain and a real EC-root chain (each at its recorded
time): full verifications per second without and with a warm VerifiedLinkCache, and
the time of the chain's signature checks alone (the crypto bound), with the ratios.

    python bench/bench_android.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from platform_verifiers.android import (
    AndroidPolicy,
    VerifiedLinkCache,
    google_hardware_roots,
    verify_android_attestation,
)
from platform_verifiers.android.certs import decode_certificate, signature_valid
from platform_verifiers.android.pem import pem_certificates

VECTORS = ROOT.parent / "shared" / "vectors" / "android"
CASES = {
    # Factory chain (Nokia X10): ECDSA leaf and batch links, RSA-4096 link to the root.
    "RSA root (warden_roboto_nokia_x10)": (
        "warden_roboto_nokia_x10_keymaster4.pem",
        "2023-04-14T13:12:43Z",
    ),
    # RKP chain, all ECDSA, to the EC P-384 "Key Attestation CA1" root.
    "EC root (ka_tegu_sdk36_SB_EC_2026_ROOT)": (
        "ka_tegu_sdk36_SB_EC_2026_ROOT.pem",
        "2026-02-25T00:37:22Z",
    ),
}
POLICY = AndroidPolicy(require_verified_boot=False, require_device_locked=False)


def rate(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(operations per second, microseconds per operation) over about ``seconds``."""
    for _ in range(20):
        fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            fn()
        n += 50
    return n / elapsed, elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0)
    seconds = parser.parse_args().seconds
    anchors = google_hardware_roots()
    print(f"{'case':44} {'measure':36} {'ops/s':>9} {'us/op':>9} {'x bound':>8}")
    for label, (file, at) in CASES.items():
        chain = pem_certificates((VECTORS / file).read_bytes())
        now = datetime.fromisoformat(at)
        certs = [decode_certificate(der, i) for i, der in enumerate(chain)]
        issuer_keys = [c.public_key() for c in certs[1:]]

        def signatures_only(certs=certs, keys=issuer_keys) -> None:  # type: ignore[no-untyped-def]
            for child, key in zip(certs, keys, strict=False):
                if not signature_valid(child, key):
                    raise AssertionError("bad signature")

        def verify(cache: VerifiedLinkCache | None = None, chain=chain, now=now) -> object:  # type: ignore[no-untyped-def]
            return verify_android_attestation(
                chain=chain,
                challenge=None,
                policy=POLICY,
                anchors=anchors,
                revocation=None,
                now=now,
                verified_cache=cache,
            )

        cache = VerifiedLinkCache()
        bound_ops, bound_us = rate(signatures_only, seconds)
        leaf_only_ops, leaf_us = rate(
            lambda c=certs, k=issuer_keys: signature_valid(c[0], k[0]), seconds
        )
        rows = [
            (f"signatures only ({len(certs) - 1} links, crypto bound)", bound_ops, bound_us),
            ("leaf link signature only (cached bound)", leaf_only_ops, leaf_us),
            ("full verify, no cache", *rate(verify, seconds)),
            ("full verify, warm VerifiedLinkCache", *rate(lambda c=cache: verify(c), seconds)),
        ]
        for name, ops, us in rows:
            print(f"{label:44} {name:36} {ops:9.0f} {us:9.1f} {us / bound_us:8.2f}")


if __name__ == "__main__":
    main()
