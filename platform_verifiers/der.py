"""The tbsCertificate and subjectPublicKeyInfo of a certificate, as its DER encodes them.

pyca/cryptography hands out both only by encoding them again: ``tbs_certificate_bytes``
re-serialises the parsed structure (6-10 us a certificate) and a key's
``public_bytes(DER, SubjectPublicKeyInfo)`` re-encodes it from the loaded key (4-6 us, and
30-35 us for a P-384 or RSA-4096 key: a fifth of an uncached Android verification beyond
its signature checks went there). The signature covers the tbsCertificate exactly as sent
(RFC 5280, 4.1.1.3), and a key is compared by its SubjectPublicKeyInfo as its certificate
encodes it, so the verifiers slice both out of the certificate instead. The extensions likewise: pyca
hands each one out only as a parsed object (``cert.extensions``, 10-20 us a certificate) that
``public_bytes()`` encodes again (another 15-30 us); the Android verifier reads only a few of
them and checks the rest by their OID and critical flag (android/extensions.py), so the list
is sliced out too, each value as its certificate encodes it.

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

from typing import NamedTuple

_SEQUENCE = 0x30
_OID = 0x06
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


class RawExtension(NamedTuple):
    """One extension as its certificate encodes it."""

    oid: str  # dotted
    critical: bool
    value: bytes  # the contents of extnValue


class CertificateParts(NamedTuple):
    tbs: bytes
    spki: bytes
    extensions: tuple[RawExtension, ...]  # in encoding order, duplicates kept


# after the key: issuerUniqueID [1] and subjectUniqueID [2] (IMPLICIT BIT STRING, v2 and
# v3 only, both long deprecated) and extensions [3] EXPLICIT (v3)
_UNIQUE_IDS = (0x81, 0x82)
_EXTENSIONS = 0xA3
_BOOLEAN, _OCTET_STRING = 0x01, 0x04
DER_TRUE = b"\x01\x01\xff"  # a BOOLEAN TRUE in DER (0xFF); a DEFAULT FALSE is never encoded


def certificate_parts(der: bytes) -> CertificateParts:
    """tbsCertificate, subjectPublicKeyInfo and extensions of ``der``, slices of it."""
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
    spki_end = _element(der, pos)[1]
    spki = der[pos:spki_end]
    extensions: tuple[RawExtension, ...] = ()
    pos = spki_end
    expected = (*_UNIQUE_IDS, _EXTENSIONS)  # each at most once, in this order
    while pos < tbs_end:
        start, end = _element(der, pos)
        if der[pos] not in expected:
            raise ValueError("an unexpected element after the key")
        expected = expected[expected.index(der[pos]) + 1 :]
        if der[pos] == _EXTENSIONS:
            extensions = _extensions(der, start, end)
        pos = end
    return CertificateParts(der[tbs_at:tbs_end], spki, extensions)


def _extensions(der: bytes, pos: int, outer_end: int) -> tuple[RawExtension, ...]:
    """The Extensions SEQUENCE at ``pos``, filling its ``[3]`` up to ``outer_end``: each
    SEQUENCE {extnID, critical DEFAULT FALSE, extnValue}. pyca's parser has checked each (an
    encoded FALSE, a BOOLEAN other than 0xFF, a missing extnValue all refuse the
    certificate); what is interpreted here is checked again all the same, so that the walk
    is strict DER on its own: anything else raises ``ValueError`` (the tolerant reader then
    decides)."""
    if der[pos] != _SEQUENCE:
        raise ValueError("no Extensions")
    pos, end = _element(der, pos)
    if end != outer_end:
        raise ValueError("an unexpected element after the Extensions")
    out = []
    while pos < end:
        if der[pos] != _SEQUENCE:
            raise ValueError("no Extension")
        body, extension_end = _element(der, pos)
        if der[body] != _OID:
            raise ValueError("no extnID")
        oid_start, at = _element(der, body)
        oid = dotted(der[oid_start:at])
        critical = False
        if der[at] == _BOOLEAN:
            if der[at : at + 3] != DER_TRUE:
                raise ValueError("a critical flag not in DER")  # FALSE encoded, or not 0xFF
            critical, at = True, at + 3
        if der[at] != _OCTET_STRING:
            raise ValueError("no extnValue")
        value_start, value_end = _element(der, at)
        if value_end != extension_end:
            raise ValueError("an unexpected element in an Extension")
        out.append(RawExtension(oid, critical, der[value_start:value_end]))
        pos = extension_end
    return tuple(out)


# OID contents -> dotted form; real certificates carry a few dozen OIDs. Bounded by
# emptying it when full: certificates are read before their signatures are checked, so
# anyone may send new OIDs, and a memo that stopped learning once full would stay theirs
_DOTTED: dict[bytes, str] = {}
_DOTTED_MAX = 1024


def dotted(contents: bytes) -> str:
    """The dotted form of an OBJECT IDENTIFIER's contents (X.690 8.19); ``ValueError`` for
    one truncated or with an arc not in its minimal form (a leading 0x80 octet)."""
    known = _DOTTED.get(contents)
    if known is not None:
        return known
    arcs: list[int] = []
    value = 0
    start = True
    for byte in contents:
        if start and byte == 0x80:
            raise ValueError("an OBJECT IDENTIFIER arc not in its minimal form")
        value = (value << 7) | (byte & 0x7F)
        start = not byte & 0x80
        if start:
            arcs.append(value)
            value = 0
    if not arcs or not start:
        raise ValueError("a truncated OBJECT IDENTIFIER")
    first = min(arcs[0] // 40, 2)
    text = ".".join(map(str, (first, arcs[0] - 40 * first, *arcs[1:])))
    if len(_DOTTED) >= _DOTTED_MAX:
        _DOTTED.clear()
    _DOTTED[contents] = text
    return text


_RSA = bytes.fromhex("06092a864886f70d010101")  # rsaEncryption
_EC = bytes.fromhex("06072a8648ce3d0201")  # id-ecPublicKey
_NULL = b"\x05\x00"
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
