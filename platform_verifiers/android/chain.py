"""The Android attestation chain walk.

Rules follow Google's reference verifier (https://github.com/android/keyattestation)
and https://developer.android.com/privacy-and-security/security-key-attestation#verify:

* each certificate is signed by the next; the last one is a pinned root (matched by
  public key) or is signed by one, so a chain may stop below the root;
* only the leaf carries the KeyDescription extension: a KeyDescription higher up means
  someone used an attested key as a CA to forge a "leaf" (the known forgery);
* certificates above the leaf are CAs. One exception, seen on a real Sony Xperia 10 III
  factory chain (ka_sony_xperia10iii_sdk33_TEE_EC.pem): the OEM attestation-key
  certificate that directly issues the leaf says cA=FALSE. Google accepts that chain.
  We accept a non-CA certificate only in that position (index 1); it cannot be an
  attested key because it carries no KeyDescription, which is what the forgery needs.
  From index 2 upward cA=TRUE is required, and pathLenConstraint is honoured;
* leaf validity dates come from the device clock and are never checked. Factory
  intermediates outlive their dates in the field (Google ignores expiry for them); RKP
  intermediates are short-lived by design and must be valid at ``now``.

RKP is recognised by signed facts only an RKP chain has: a certificate carrying the
ProvisioningInfo extension (1.3.6.1.4.1.11129.2.1.30), which RKP puts on every
attestation key certificate, or an anchor that only RKP chains use (the 2025 EC root).
An attacker cannot remove either from Google-signed certificates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from platform_verifiers.anchors import TrustAnchor
from platform_verifiers.android.certs import ChainCertificate, decode_certificate, signature_valid
from platform_verifiers.errors import VerificationError
from platform_verifiers.linkcache import VerifiedLinkCache

MAX_CHAIN_LENGTH = 10
# Anchors used only by remotely provisioned chains.
RKP_ONLY_ANCHORS = frozenset({"google_hw_ec_p384_2025"})


class Provisioning(Enum):
    FACTORY = "factory"
    RKP = "rkp"


@dataclass(frozen=True)
class VerifiedChain:
    certificates: tuple[ChainCertificate, ...]
    anchor: TrustAnchor
    provisioning: Provisioning


def _fail(code: str, message: str, **detail: object) -> VerificationError:
    return VerificationError(code, message, **detail)


def decode_chain(chain: Sequence[bytes]) -> tuple[ChainCertificate, ...]:
    """Bound the length first (cheap), then decode every certificate."""
    if not chain:
        raise _fail("chain_empty", "the certificate chain is empty")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise _fail(
            "chain_too_long",
            "the certificate chain is too long",
            length=len(chain),
            max_length=MAX_CHAIN_LENGTH,
        )
    return tuple(decode_certificate(bytes(der), i) for i, der in enumerate(chain))


def check_structure(certs: Sequence[ChainCertificate]) -> None:
    """Only the leaf has a KeyDescription; upper certificates are CAs (see module doc)."""
    for index, cert in enumerate(certs[1:], start=1):
        if cert.key_descriptions:
            raise _fail(
                "extension_below_leaf",
                "a certificate above the leaf carries a key attestation extension",
                index=index,
            )
        if index >= 2 and cert.is_ca is not True:
            raise _fail("intermediate_not_ca", "an intermediate is not a CA", index=index)
        # pathLenConstraint counts the intermediates below this CA (RFC 5280 4.2.1.9).
        if cert.path_length is not None and index - 1 > cert.path_length:
            raise _fail(
                "path_length_exceeded", "a CA's path length constraint is exceeded", index=index
            )


def _link_ok(
    child: ChainCertificate,
    issuer_der: bytes,
    issuer: ChainCertificate | TrustAnchor,
    *,
    cacheable: bool,
    cache: VerifiedLinkCache | None,
) -> bool:
    key = VerifiedLinkCache.key(child.der, issuer_der) if cache is not None and cacheable else None
    if key is not None and cache is not None and key in cache:
        return True
    try:
        issuer_key = (
            issuer.certificate.public_key()
            if isinstance(issuer, TrustAnchor)
            else issuer.public_key()
        )
    except (ValueError, UnsupportedAlgorithm):  # UnsupportedAlgorithm: found by tests/fuzz
        return False
    ok = signature_valid(child, issuer_key)
    if ok and key is not None and cache is not None:
        cache.add(key)
    return ok


def check_signatures(certs: Sequence[ChainCertificate], cache: VerifiedLinkCache | None) -> None:
    """Each certificate is signed by the next one."""
    for index in range(len(certs) - 1):
        if not _link_ok(
            certs[index], certs[index + 1].der, certs[index + 1], cacheable=index > 0, cache=cache
        ):
            raise _fail(
                "chain_signature_invalid", "a certificate signature does not verify", index=index
            )


@functools.lru_cache(maxsize=64)
def _spki(anchor: TrustAnchor) -> bytes:
    # A pure memo (anchors are immutable): re-serialising an RSA-4096 key per request
    # would be a measurable share of a verification.
    return anchor.certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def find_anchor(
    certs: Sequence[ChainCertificate],
    anchors: Sequence[TrustAnchor],
    cache: VerifiedLinkCache | None,
) -> TrustAnchor:
    """The anchor that is (by public key) or signed the last certificate."""
    last = certs[-1]
    same_key = [a for a in anchors if _spki(a) == last.spki_der]
    if same_key and len(certs) == 1:
        # A lone "leaf" carrying a root's public key is a self-made certificate: the
        # attested leaf can never be the trust anchor itself.
        raise _fail("chain_untrusted", "the chain does not end at a trusted root", length=1)
    if same_key:
        # Prefer the anchor certificate the chain itself carries, for a precise name.
        exact = [a for a in same_key if a.certificate.tbs_certificate_bytes == last.tbs]
        return (exact or same_key)[0]
    for anchor in anchors:
        der = anchor.certificate.public_bytes(serialization.Encoding.DER)
        if _link_ok(last, der, anchor, cacheable=len(certs) > 1, cache=cache):
            return anchor
    raise _fail("chain_untrusted", "the chain does not end at a trusted root", length=len(certs))


def provisioning_of(certs: Sequence[ChainCertificate], anchor: TrustAnchor) -> Provisioning:
    if anchor.name in RKP_ONLY_ANCHORS or any(c.has_provisioning_info for c in certs[1:]):
        return Provisioning.RKP
    return Provisioning.FACTORY


def check_validity(
    certs: Sequence[ChainCertificate],
    anchor: TrustAnchor,
    provisioning: Provisioning,
    now: datetime,
) -> None:
    """RKP intermediates must be valid at ``now``; factory ones and the leaf are not dated."""
    if provisioning is not Provisioning.RKP:
        return
    anchor_spki = _spki(anchor)
    for index, cert in enumerate(certs[1:], start=1):
        if cert.spki_der == anchor_spki:
            continue  # the root is trusted by its key, whatever its certificate says
        if now > cert.not_after:
            raise _fail(
                "certificate_expired",
                "an RKP intermediate has expired",
                index=index,
                not_after=cert.not_after.isoformat(),
            )
        if now < cert.not_before:
            raise _fail(
                "certificate_not_yet_valid",
                "an RKP intermediate is not yet valid",
                index=index,
                not_before=cert.not_before.isoformat(),
            )


def verify_chain(
    chain: Sequence[bytes],
    anchors: Sequence[TrustAnchor],
    now: datetime,
    cache: VerifiedLinkCache | None = None,
) -> VerifiedChain:
    """Decode and verify an attestation chain (leaf first) against ``anchors``."""
    if not anchors:
        raise ValueError("no trust anchors given: refusing to verify (fail closed)")
    certs = decode_chain(chain)
    check_structure(certs)
    check_signatures(certs, cache)
    anchor = find_anchor(certs, anchors, cache)
    provisioning = provisioning_of(certs, anchor)
    check_validity(certs, anchor, provisioning, now)
    return VerifiedChain(certificates=certs, anchor=anchor, provisioning=provisioning)
