"""Fail-closed checks on the extensions of an attestation chain (issue 8, item 3).

RFC 5280 4.2: "A certificate-using system MUST reject the certificate if it encounters a
critical extension it does not recognize"; an extension appears at most once. We also
refuse an extension this verifier relies on whose encoding it cannot read, instead of
treating it as absent:

* ``extension_duplicate``: the same extension twice in one certificate (with two
  basicConstraints, which one holds? pyca refuses such certificates; our tolerant reader
  must too);
* ``extension_critical_unknown``: a critical extension other than basicConstraints,
  keyUsage and the KeyDescription (the only ones seen critical in ../shared/vectors);
* ``extension_malformed``: a keyUsage or ProvisioningInfo (a CBOR map, see
  https://source.android.com/docs/security/features/keystore/attestation#provisioninginfo-extension)
  that does not decode.

Certificates carrying the anchor's key are skipped: the root is trusted by its key,
whatever its certificate says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1_modules import rfc5280

from platform_verifiers.android.schema import KEY_DESCRIPTION_OID, PROVISIONING_INFO_OID
from platform_verifiers.cbor import decode_single_cbor_item
from platform_verifiers.der import RawExtension as ExtensionInfo
from platform_verifiers.errors import ASN1_DECODE_ERRORS, VerificationError

if TYPE_CHECKING:  # certs.py imports this module: its certificates keep what it finds
    from platform_verifiers.android.certs import ChainCertificate

BASIC_CONSTRAINTS_OID = "2.5.29.19"
KEY_USAGE_OID = "2.5.29.15"
RECOGNISED_CRITICAL = frozenset({BASIC_CONSTRAINTS_OID, KEY_USAGE_OID, KEY_DESCRIPTION_OID})
_KEY_CERT_SIGN = 5  # KeyUsage bit number (RFC 5280 4.2.1.3)
_MALFORMED = "a certificate extension cannot be decoded"


def check_extensions(certs: Sequence[ChainCertificate], anchor_spki: bytes) -> None:
    """Duplicates, unknown critical extensions and unreadable ProvisioningInfo are refused."""
    for index, cert in enumerate(certs):
        if index > 0 and cert.spki_der == anchor_spki:
            continue
        problem = cert.extension_problem  # computed once per decoded certificate
        if problem is not None:
            code, message, oid = problem
            raise VerificationError(code, message, index=index, oid=oid)


def extension_problem(extensions: Sequence[ExtensionInfo]) -> tuple[str, str, str] | None:
    """The first reason to refuse a certificate with ``extensions``, as (code, message,
    oid), or None. It depends on the extensions alone, so a certificate keeps it
    (``ChainCertificate.extension_problem``): with the decoded-intermediate cache, the
    same intermediates' extensions were read again on every verification (5-12 us)."""
    seen: set[str] = set()
    for ext in extensions:
        if ext.oid in seen:
            return "extension_duplicate", "a certificate carries the same extension twice", ext.oid
        seen.add(ext.oid)
        if ext.critical and ext.oid not in RECOGNISED_CRITICAL:
            return (
                "extension_critical_unknown",
                "a certificate carries a critical extension this verifier does not know",
                ext.oid,
            )
        if ext.oid == PROVISIONING_INFO_OID:
            try:
                info = decode_single_cbor_item(
                    ext.value, code="extension_malformed", what="the ProvisioningInfo extension"
                )
            except VerificationError as refused:
                return refused.code, refused.message, ext.oid
            if not isinstance(info, dict):
                return "extension_malformed", _MALFORMED, ext.oid
        elif ext.oid == KEY_USAGE_OID and key_usage_bits(ext.value) is None:
            return "extension_malformed", _MALFORMED, ext.oid
    return None


def key_usage_bits(value: bytes) -> frozenset[int] | None:
    """The KeyUsage bits that are set, or None when ``value`` does not decode.

    Plain DER (what every real certificate carries) is read directly: with pyasn1 this
    was a third of a cached Android verification (four keyUsage decodings per chain).
    Any other form goes to pyasn1, the schema of record; tests/android pins that both
    agree wherever the direct reading answers.
    """
    bits = key_usage_der(value)
    if bits is not None:
        return bits
    try:
        decoded, rest = ber_decoder.decode(value, asn1Spec=rfc5280.KeyUsage())
        # reading the bits can fail too: unused bits without content decode, then give a
        # negative length (ValueError) when enumerated
        bits = frozenset(i for i, bit in enumerate(decoded) if bit)
    except ASN1_DECODE_ERRORS:
        return None
    return None if rest else bits


def key_usage_der(value: bytes) -> frozenset[int] | None:
    """KeyUsage from a primitive DER BIT STRING (short length, zero padding bits), else None.

    Bit ``n`` of the named bits is bit ``7 - n % 8`` of content byte ``n // 8`` (X.690 8.6).
    """
    if len(value) < 3 or value[0] != 0x03 or value[1] != len(value) - 2 or value[1] > 0x7F:
        return None
    unused = value[2]
    if unused > 7 or (unused and (len(value) == 3 or value[-1] & ((1 << unused) - 1))):
        return None  # DER sets the unused bits to zero; let pyasn1 judge anything else
    return frozenset(
        i * 8 + j
        for i, byte in enumerate(value[3:])
        if byte
        for j in range(8)
        if byte & (0x80 >> j)
    )


def may_sign_certificates(extensions: Sequence[ExtensionInfo]) -> bool:
    """keyUsage absent (no restriction) or with keyCertSign; basicConstraints is separate.

    A keyUsage that does not decode allows nothing (``check_extensions``, which runs first,
    refuses it with ``extension_malformed``). Kept by the certificate like
    :func:`extension_problem` (``ChainCertificate.may_sign_certificates``).
    """
    for ext in extensions:
        if ext.oid == KEY_USAGE_OID:
            bits = key_usage_bits(ext.value)
            return bits is not None and _KEY_CERT_SIGN in bits
    return True
