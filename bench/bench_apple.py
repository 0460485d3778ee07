"""Benchmark App Attest attestation verification on the real samples in ../shared/vectors.

Prints, in one run:
1. ``verify_attestation`` per second in-process, without and with the verified-intermediate
   cache (``VerifiedLinkCache``);
2. the P-384 chain signature checks alone (leaf→intermediate and intermediate→root, both
   ECDSA P-384): the crypto bound for an uncached verification, and the leaf link alone, the
   bound for a cached one;
3. pyattest (PyPI, the peer) verifying the same samples. pyattest reads the wall clock
   (pyhanko-certvalidator's default ``moment``), so its chain step is re-implemented here
   with ``moment=<sample time>``; everything else is pyattest's code. pyattest always sets
   clientDataHash = SHA-256(challenge), so Apple's documentation samples (raw challenge as
   clientDataHash) cannot pass it.

Usage: ``python bench/bench_apple.py [--seconds 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from platform_verifiers.apple import (
    VerifiedLinkCache,
    apple_app_attest_roots,
    verify_attestation,
)

VECTORS = Path(__file__).resolve().parents[1].parent / "shared" / "vectors"


@dataclass(frozen=True)
class Sample:
    name: str
    attestation_object: bytes
    key_id: bytes
    client_data_hash: bytes
    challenge: bytes
    raw_challenge_is_hash: bool
    app_id: str
    environment: str
    now: datetime


def load_samples() -> list[Sample]:
    manifest = json.loads((VECTORS / "MANIFEST.json").read_text())
    samples = []
    for entry in manifest["files"]:
        if entry["kind"] != "apple_appattest_attestation" or entry["expected"]["verdict"] != "PASS":
            continue
        e = entry["expected"]
        samples.append(
            Sample(
                name=Path(entry["path"]).stem,
                attestation_object=base64.b64decode((VECTORS / entry["path"]).read_text()),
                key_id=base64.b64decode(e["key_id_b64"]),
                client_data_hash=bytes.fromhex(e["client_data_hash_hex"]),
                challenge=base64.b64decode(e["challenge_b64"]),
                raw_challenge_is_hash=e["client_data_hash_rule"].startswith("raw"),
                app_id=e["app_id"],
                environment=e["environment"],
                now=datetime.fromisoformat(e["now"]),
            )
        )
    return samples


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Call ``fn`` (which does ``n`` operations and returns n) for ``seconds``; ops per second."""
    fn()  # warm-up
    done = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        done += fn()
    return done / elapsed


def ours(samples: list[Sample], cache: VerifiedLinkCache | None) -> Callable[[], int]:
    anchors = apple_app_attest_roots()

    def run() -> int:
        for s in samples:
            verify_attestation(
                attestation_object=s.attestation_object,
                key_id=s.key_id,
                client_data_hash=s.client_data_hash,
                app_ids=[s.app_id],
                environment=s.environment,  # type: ignore[arg-type]
                anchors=anchors,
                now=s.now,
                verified_cache=cache,
            )
        return len(samples)

    return run


def chain_signatures(samples: list[Sample], *, leaf_only: bool) -> Callable[[], int]:
    import cbor2

    root = apple_app_attest_roots()[0].certificate
    pairs: list[tuple[x509.Certificate, x509.Certificate]] = []
    for s in samples:
        x5c = cbor2.loads(s.attestation_object)["attStmt"]["x5c"]
        leaf, intermediate = (x509.load_der_x509_certificate(d) for d in x5c[:2])
        pairs.append((leaf, intermediate))
        if not leaf_only:
            pairs.append((intermediate, root))

    def run() -> int:
        for child, issuer in pairs:
            child.verify_directly_issued_by(issuer)
        return len(pairs)

    return run


def pyattest_runner(samples: list[Sample]) -> tuple[Callable[[], int] | None, dict[str, str]]:
    """A runner over the samples pyattest accepts, and why it refuses the others."""
    try:
        from pyattest.attestation import Attestation
        from pyattest.configs.apple import AppleConfig
        from pyattest.verifiers.apple_attestation import AppleAttestationVerifier
        from pyattest.verifiers.utils import _load_certificate
        from pyhanko_certvalidator import CertificateValidator, ValidationContext
    except ImportError as exc:
        return None, {"*": f"pyattest not importable: {exc}"}

    class AtTimeConfig(AppleConfig):  # type: ignore[misc]
        def __init__(self, moment: datetime, **kw: Any) -> None:
            super().__init__(**kw)
            self.moment = moment

    class AtTimeVerifier(AppleAttestationVerifier):  # type: ignore[misc]
        async def verify_certificate_chain(self, chain: list[bytes]) -> Any:
            # pyattest's own step with only ``moment`` added (it validates at the wall clock)
            config = self.attestation.config
            context = ValidationContext(extra_trust_roots=[config.root_ca], moment=config.moment)
            validator = CertificateValidator(
                _load_certificate(chain[0]),
                [_load_certificate(c) for c in chain[1:]],
                validation_context=context,
            )
            return await validator.async_validate_usage({"digital_signature"})  # type: ignore[no-untyped-call]

    AtTimeConfig.attestation_verifier_class = AtTimeVerifier

    def make(s: Sample) -> Any:
        config = AtTimeConfig(
            moment=s.now,
            key_id=s.key_id,
            app_id=s.app_id,
            production=s.environment == "production",
        )
        return Attestation(s.attestation_object, s.challenge, config)

    accepted: list[Sample] = []
    refused: dict[str, str] = {}
    loop = asyncio.new_event_loop()
    for s in samples:
        try:
            loop.run_until_complete(make(s).verify())
            accepted.append(s)
        except Exception as exc:  # noqa: BLE001  # report whatever the peer raises
            refused[s.name] = type(exc).__name__
    if not accepted:
        return None, refused

    async def batch() -> int:
        for s in accepted:
            await make(s).verify()
        return len(accepted)

    return (lambda: loop.run_until_complete(batch())), refused


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark App Attest verification")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    seconds = parser.parse_args().seconds
    samples = load_samples()
    print(f"{len(samples)} real App Attest attestations from {VECTORS}")

    no_cache = rate(ours(samples, None), seconds)
    cached = rate(ours(samples, VerifiedLinkCache()), seconds)
    both = rate(chain_signatures(samples, leaf_only=False), seconds)
    leaf = rate(chain_signatures(samples, leaf_only=True), seconds)
    bound_uncached = both / 2  # two P-384 verifications per attestation
    bound_cached = leaf  # one P-384 verification per attestation
    print(f"ours, no cache         : {no_cache:9.0f} attestations/s")
    print(f"ours, verified cache   : {cached:9.0f} attestations/s")
    print(f"P-384 chain signatures : {both:9.0f} signature checks/s")
    print(f"  bound, uncached (2/att): {bound_uncached:7.0f} attestations/s")
    print(f"  bound, cached   (1/att): {bound_cached:7.0f} attestations/s")

    runner, refused = pyattest_runner(samples)
    peer = rate(runner, seconds) if runner else 0.0
    accepted = len(samples) - len(refused)
    print(
        f"pyattest (peer)        : {peer:9.0f} attestations/s on {accepted}/{len(samples)} samples"
    )
    for name, why in refused.items():
        print(f"  pyattest refused {name}: {why}")

    print("ratios:")
    print(f"  cache speed-up                   : {cached / no_cache:5.2f}x")
    print(f"  ours / crypto bound (no cache)   : {no_cache / bound_uncached:5.2f}")
    print(f"  ours / crypto bound (cached)     : {cached / bound_cached:5.2f}")
    if peer:
        print(f"  ours (no cache) / pyattest       : {no_cache / peer:5.2f}x")
        print(f"  ours (cached) / pyattest         : {cached / peer:5.2f}x")


if __name__ == "__main__":
    main()
