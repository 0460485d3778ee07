"""Certificates for the attester's signing keys: PKCS#10 requests and x5c chain checks.

A key may live in a PKCS#11 token, and pyca/cryptography signs CSRs only with its own key
objects, so the request is built here (RFC 2986 section 4) and signed through the
:class:`keys.signer.Signer` protocol: JWS-style raw ``r || s`` is converted to the DER
``Ecdsa-Sig-Value`` X.509 wants (RFC 5480 / RFC 3279 section 2.2.3) with
``encode_dss_signature``. The result is a normal CSR that cryptography (and any CA) parses.

``check_chain`` is the rule for an ``x5c`` chain (RFC 7515 section 4.1.6; HAIP 1.0: the
chain without the trust anchor): the leaf certifies this key, every certificate is signed by
the next, every issuer is a CA, and the last one is not self-signed. Every failure is a
:class:`CertificateError` with a stable code.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from itertools import pairwise

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keys.signer import Signer

# ecdsa-with-SHA256 (RFC 5758 section 3.2), parameters absent
_ECDSA_WITH_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
MAX_CHAIN_LENGTH = 8

CODES = (
    "certificate_chain_malformed",
    "certificate_key_mismatch",
    "certificate_chain_broken",
    "certificate_issuer_not_ca",
    "certificate_chain_includes_anchor",
    "certificate_expired",
    "certificate_not_yet_valid",
)


class CertificateError(Exception):
    """A certificate chain that cannot be used for a key; ``code`` is one of ``CODES``."""

    def __init__(self, code: str, message: str) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code = code


def build_csr(signer: Signer, subject: x509.Name) -> x509.CertificateSigningRequest:
    """A PKCS#10 request for ``signer``'s key, signed by that key (file or token)."""
    spki = signer.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # CertificationRequestInfo: version 0, subject, subjectPKInfo, attributes [0] (empty)
    info = _der(0x30, _der(0x02, b"\x00") + subject.public_bytes() + spki + _der(0xA0, b""))
    raw = signer.sign(info)
    size = len(raw) // 2
    der_signature = encode_dss_signature(
        int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big")
    )
    request = _der(0x30, info + _ECDSA_WITH_SHA256 + _der(0x03, b"\x00" + der_signature))
    return x509.load_der_x509_csr(request)


def load_pem_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """Parse a PEM chain (leaf first)."""
    try:
        certs = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise CertificateError("certificate_chain_malformed", f"not a PEM chain: {exc}") from None
    if not 1 <= len(certs) <= MAX_CHAIN_LENGTH:
        raise CertificateError(
            "certificate_chain_malformed", f"expected 1 to {MAX_CHAIN_LENGTH} certificates"
        )
    return certs


def check_chain(
    certs: Sequence[x509.Certificate],
    public_key: ec.EllipticCurvePublicKey,
    *,
    now: datetime | None,
) -> None:
    """Raise :class:`CertificateError` unless ``certs`` is a usable x5c chain for the key.

    ``now`` (timezone-aware) also checks every validity period; ``None`` skips dates.
    """
    if not certs:
        raise CertificateError("certificate_chain_malformed", "the chain is empty")
    leaf_spki = (
        certs[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    own_spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if leaf_spki != own_spki:
        raise CertificateError(
            "certificate_key_mismatch", "the first certificate does not certify this key"
        )
    for index, (cert, issuer) in enumerate(pairwise(certs)):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateError(
                "certificate_chain_broken",
                f"certificate {index} is not issued and signed by certificate {index + 1}",
            ) from None
        if not _is_ca(issuer):
            raise CertificateError(
                "certificate_issuer_not_ca", f"certificate {index + 1} is not a CA certificate"
            )
    if _self_signed(certs[-1]):
        raise CertificateError(
            "certificate_chain_includes_anchor",
            "the last certificate is self-signed: leave the trust anchor out of x5c",
        )
    if now is not None:
        for index, cert in enumerate(certs):
            if now < cert.not_valid_before_utc:
                raise CertificateError(
                    "certificate_not_yet_valid", f"certificate {index} is not valid yet"
                )
            if now >= cert.not_valid_after_utc:
                raise CertificateError("certificate_expired", f"certificate {index} has expired")


def chain_expiry(certs: Sequence[x509.Certificate]) -> datetime:
    """When the first certificate of the chain expires (the chain is unusable from then)."""
    return min(c.not_valid_after_utc for c in certs)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV (X.690 section 8.1.3: short or long definite length)."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content
