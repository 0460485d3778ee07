"""The tbsCertificate and subjectPublicKeyInfo of a certificate, as its DER encodes them.

pyca/cryptography hands out both only by encoding them again: ``tbs_certificate_bytes``
re-serialises the parsed structure (6-10 us a certificate) and a key's
``public_bytes(DER, SubjectPublicKeyInfo)`` re-encodes it from the loaded key (4-6 us, and
30-35 us for a P-384 or RSA-4096 key: a fifth of an uncached Android verification beyond
its signature checks went there). The signature covers the tbsCertificate exactly as sent
(RFC 5280, 4.1.1.3), and a key is compared by its SubjectPublicKeyInfo as its certificate
encodes it, so the verifiers slice both out of the certificate instead.

Only for certificates that pyca has already read: its DER parser has then checked that
every length is definite and minimal and that the elements walked here are where RFC 5280
puts them, so the walk reads headers without re-validating them; it still checks each
tag it relies on and raises ``ValueError`` if one is not there.
"""

from __future__ import annotations

_SEQUENCE = 0x30
_VERSION = 0xA0  # [0] EXPLICIT Version, absent for v1
# serialNumber, signature, issuer, validity, subject: between the version and the key
_BEFORE_KEY = 5


def _element(der: bytes, pos: int) -> tuple[int, int]:
    """(start of contents, end) of the element whose header is at ``pos``."""
    length = der[pos + 1]
    start = pos + 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[start : start + size], "big")
        start += size
    return start, start + length


def certificate_parts(der: bytes) -> tuple[bytes, bytes]:
    """(tbsCertificate, subjectPublicKeyInfo) of ``der``, each a slice of it."""
    if der[0] != _SEQUENCE:
        raise ValueError("not a certificate")
    tbs_at, _ = _element(der, 0)
    if der[tbs_at] != _SEQUENCE:
        raise ValueError("no tbsCertificate")
    pos, tbs_end = _element(der, tbs_at)
    if der[pos] == _VERSION:
        pos = _element(der, pos)[1]
    for _ in range(_BEFORE_KEY):
        pos = _element(der, pos)[1]
    if pos >= tbs_end or der[pos] != _SEQUENCE:
        raise ValueError("no subjectPublicKeyInfo")
    return der[tbs_at:tbs_end], der[pos : _element(der, pos)[1]]
