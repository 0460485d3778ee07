"""The Android attestation chain walk.

Rules follow Google's reference verifier (https://github.com/android/keyattestation)
and https://developer.android.com/privacy-and-security/security-key-attestation#verify:

* each certificate is signed by the next; the last one is a pinned root (matched by
  public key) or is signed by one, so a chain may stop below the root, but never continue
  past it (no certificate below the top carries a root's key) nor repeat a certificate;
* only the leaf carries the KeyDescription extension: a KeyDescription higher up means
  someone used an attested key as a CA to forge a "leaf" (the known forgery);
* certificates above the leaf are CAs. One exception, seen on a real Sony Xperia 10 III
  factory chain (ka_sony_xperia10iii_sdk33_TEE_EC.pem): the OEM attestation-key
  certificate that directly issues the leaf says cA=FALSE. Google accepts that chain.
  We accept a non-CA certificate only in that position (index 1); it cannot be an
  attested key because it carries no KeyDescription, which is what the forgery needs.
  That exception holds only on a factory chain (every RKP attestation key certificate
  is a CA) and also covers the keyUsage keyCertSign bit, which that certificate lacks.
  Every other issuer below the anchor needs cA=TRUE, and keyCertSign when it has a
  keyUsage extension; pathLenConstraint is honoured;
* leaf validity dates come from the device clock and are never checked. Factory
  intermediates outlive their dates in the field (Google ignores expiry for them); RKP
  intermediates are short-lived by design and must be valid at ``now``, and so must
  those of a chain we cannot classify (fail closed).

Classification (factory, RKP, unknown) follows Google's ``provisioningMethod``; see
``platform_verifiers.android.provisioning``. Extension checks (duplicates, unknown
critical extensions, unreadable encodings) are in ``platform_verifiers.android.extensions``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import UnsupportedAlgorithm

from platform_verifiers.anchors import TrustAnchor
from platform_verifiers.android.certs import ChainCertificate, decode_certificate, signature_valid
from platform_verifiers.android.extensions import check_extensions
from platform_verifiers.android.provisioning import (
    Provisioning,
    ProvisioningRule,
    classify,
)
from platform_verifiers.errors import VerificationError
from platform_verifiers.linkcache import VerifiedLinkCache

MAX_CHAIN_LENGTH = 10


@dataclass(frozen=True)
class VerifiedChain:
    certificates: tuple[ChainCertificate, ...]
    anchor: TrustAnchor
    provisioning: Provisioning
    provisioning_rule: ProvisioningRule


def _fail(code: str, message: str, **detail: object) -> VerificationError:
    return VerificationError(code, message, **detail)


def decode_chain(
    chain: Sequence[bytes],
    cache: VerifiedLinkCache | None = None,
    anchors: Sequence[TrustAnchor] = (),
) -> tuple[ChainCertificate, ...]:
    """Bound the length first (cheap), then decode every certificate.

    With a ``cache``, certificates above the leaf (the shared intermediates) are decoded
    once per exact DER; the leaf, new for every device, always is. A top certificate
    that is byte for byte one of ``anchors`` (chains usually carry the root) is decoded
    once per process.
    """
    if not chain:
        raise _fail("chain_empty", "the certificate chain is empty")
    if len(chain) > MAX_CHAIN_LENGTH:
        raise _fail(
            "chain_too_long",
            "the certificate chain is too long",
            length=len(chain),
            max_length=MAX_CHAIN_LENGTH,
        )
    ders = [bytes(der) for der in chain]
    top: ChainCertificate | None = None
    if len(ders) > 1 and any(ders[-1] == anchor.der for anchor in anchors):
        top = _decoded_anchor(ders[-1])
        ders.pop()
    if cache is None:
        certs = tuple(decode_certificate(der, i) for i, der in enumerate(ders))
    else:
        certs = (decode_certificate(ders[0], 0),) + tuple(
            cache.decoded("android", der, functools.partial(_decode_at, i))
            for i, der in enumerate(ders[1:], start=1)
        )
    return certs if top is None else (*certs, top)


@functools.lru_cache(maxsize=64)
def _decoded_anchor(der: bytes) -> ChainCertificate:
    """A trust anchor's certificate, decoded (anchors are few and fixed per process)."""
    return decode_certificate(der, 0)


def _decode_at(index: int, der: bytes) -> ChainCertificate:
    return decode_certificate(der, index)


def check_structure(certs: Sequence[ChainCertificate]) -> None:
    """Only the leaf has a KeyDescription; path lengths hold (CA bits: ``check_issuers``).

    No certificate appears twice: a repeated root (or intermediate) would shift which
    certificate counts as the one "under the root" that decides the chain's class.
    """
    seen: set[bytes] = set()
    for index, cert in enumerate(certs):
        if cert.der in seen:
            raise _fail(
                "chain_certificate_repeated",
                "a certificate appears twice in the chain",
                index=index,
            )
        seen.add(cert.der)
    for index, cert in enumerate(certs[1:], start=1):
        if cert.key_descriptions:
            raise _fail(
                "extension_below_leaf",
                "a certificate above the leaf carries a key attestation extension",
                index=index,
            )
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
        issuer_key = issuer.public_key if isinstance(issuer, TrustAnchor) else issuer.public_key()
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


def _spki(anchor: TrustAnchor) -> bytes:
    return anchor.spki_der  # memoised on the (immutable) anchor


def find_anchor(
    certs: Sequence[ChainCertificate],
    anchors: Sequence[TrustAnchor],
    cache: VerifiedLinkCache | None,
) -> TrustAnchor:
    """The anchor that is (by public key) or signed the last certificate.

    A trusted root's key anywhere but at the top means certificates past the root (e.g.
    a re-issued root above it): refused, since they would decide the class (module doc).
    """
    last = certs[-1]
    roots = {_spki(a) for a in anchors}
    for index, cert in enumerate(certs[:-1]):
        if cert.spki_der in roots:
            raise _fail(
                "chain_continues_past_root",
                "the chain continues past a trusted root",
                index=index,
            )
    same_key = [a for a in anchors if _spki(a) == last.spki_der]
    if same_key and len(certs) == 1:
        # A lone "leaf" carrying a root's public key is a self-made certificate: the
        # attested leaf can never be the trust anchor itself.
        raise _fail("chain_untrusted", "the chain does not end at a trusted root", length=1)
    if same_key:
        # Prefer the anchor certificate the chain itself carries, for a precise name.
        exact = [a for a in same_key if a.tbs == last.tbs]
        return (exact or same_key)[0]
    for anchor in anchors:
        if _link_ok(last, anchor.der, anchor, cacheable=len(certs) > 1, cache=cache):
            return anchor
    raise _fail("chain_untrusted", "the chain does not end at a trusted root", length=len(certs))


def check_issuers(
    certs: Sequence[ChainCertificate], anchor_spki: bytes, provisioning: Provisioning
) -> None:
    """Every issuer is a CA allowed to sign certificates (the narrow exception: module doc)."""
    for index, cert in enumerate(certs[1:], start=1):
        if cert.spki_der == anchor_spki:
            continue  # the root is trusted by its key
        exempt = index == 1 and provisioning is Provisioning.FACTORY
        if exempt:
            continue
        if cert.is_ca is not True or not cert.may_sign_certificates:
            raise _fail(
                "intermediate_not_ca",
                "a certificate that issues another is not a CA allowed to sign certificates",
                index=index,
            )


def check_validity(
    certs: Sequence[ChainCertificate],
    anchor: TrustAnchor,
    provisioning: Provisioning,
    now: datetime,
) -> None:
    """Intermediates of RKP and unknown chains must be valid at ``now``; see module doc.

    Only factory chains skip the dates; the leaf's dates are never checked.
    """
    if provisioning is Provisioning.FACTORY:
        return
    anchor_spki = _spki(anchor)
    for index, cert in enumerate(certs[1:], start=1):
        if cert.spki_der == anchor_spki:
            continue  # the root is trusted by its key, whatever its certificate says
        if now > cert.not_after:
            raise _fail(
                "certificate_expired",
                "an intermediate of a chain that is not factory provisioned has expired",
                index=index,
                not_after=cert.not_after.isoformat(),
            )
        if now < cert.not_before:
            raise _fail(
                "certificate_not_yet_valid",
                "an intermediate of a chain that is not factory provisioned is not yet valid",
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
    certs = decode_chain(chain, cache, anchors)
    check_structure(certs)
    check_signatures(certs, cache)
    anchor = find_anchor(certs, anchors, cache)
    anchor_spki = _spki(anchor)
    check_extensions(certs, anchor_spki)
    classification = classify(certs, anchor, anchor_spki)
    check_issuers(certs, anchor_spki, classification.provisioning)
    check_validity(certs, anchor, classification.provisioning, now)
    return VerifiedChain(
        certificates=certs,
        anchor=anchor,
        provisioning=classification.provisioning,
        provisioning_rule=classification.rule,
    )
