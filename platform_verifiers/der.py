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

Comparing keys by their bytes is comparing keys only if each key has one encoding: pyca
also loads an EC point compressed and an RSA key whose AlgorithmIdentifier lacks its NULL,
both of which it used to re-encode into the one canonical form. :func:`canonical_key` tells
whether an SPKI is in that form; the Android verifier refuses a chain certificate whose key
is not (``certificate_malformed``, why ``key_not_canonical``): none of the real chains has
one, and a root's key in another encoding could otherwise pass for a different key.
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


_RSA = bytes.fromhex("06092a864886f70d010101")  # rsaEncryption
_EC = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
_NULL = b"\x05\x00"
_OID = 0x06
_UNCOMPRESSED = 0x04


def canonical_key(spki: bytes) -> bool:
    """Whether ``spki`` is in the one encoding pyca writes for its key: for RSA the NULL
    parameters, for EC a named curve and an uncompressed point. Other algorithms (Ed25519,
    ML-DSA) have one encoding and are canonical as they are."""
    body, _ = _element(spki, 0)
    algorithm_body, algorithm_end = _element(spki, body)
    oid_end = _element(spki, algorithm_body)[1]
    oid, parameters = spki[algorithm_body:oid_end], spki[oid_end:algorithm_end]
    if oid == _RSA:
        return parameters == _NULL
    if oid == _EC:
        key_body, key_end = _element(spki, algorithm_end)
        return (
            parameters[:1] == bytes([_OID])
            and key_end - key_body >= 2
            and spki[key_body] == 0  # no unused bits
            and spki[key_body + 1] == _UNCOMPRESSED
        )
    return True
