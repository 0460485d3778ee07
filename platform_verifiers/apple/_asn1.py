"""ASN.1 schemas for App Attest certificate extensions (kept apart from the verification logic).

Apple, "Validating apps that connect to your server", step 4: the credential certificate's
extension 1.2.840.113635.100.8.2 "is a DER-encoded ASN.1 sequence. Decode the sequence and
extract the single octet string that it contains."
https://developer.apple.com/documentation/devicecheck/validating-apps-that-connect-to-your-server

On the wire the sequence holds one context-specific ``[1]`` EXPLICIT OCTET STRING::

    AppAttestNonce ::= SEQUENCE { nonce [1] EXPLICIT OCTET STRING }
"""

from __future__ import annotations

from pyasn1.codec.der import decoder as der_decoder
from pyasn1.type import namedtype, tag, univ

from ..errors import ASN1_DECODE_ERRORS

APP_ATTEST_NONCE_OID = "1.2.840.113635.100.8.2"


class AppAttestNonce(univ.Sequence):  # type: ignore[misc]  # pyasn1 ships no types
    """``SEQUENCE { nonce [1] EXPLICIT OCTET STRING }``."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType(
            "nonce",
            univ.OctetString().subtype(
                explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, 1)
            ),
        )
    )


def decode_app_attest_nonce(extension_value: bytes) -> bytes:
    """Decode the extension's DER value and return the nonce octets.

    Raises ``ValueError`` when the value is not exactly one well-formed ``AppAttestNonce``
    (trailing bytes included): decoding, not slicing, is what makes a look-alike value fail.
    """
    fast = _canonical_nonce(extension_value)
    if fast is not None:
        return fast
    try:
        decoded, rest = der_decoder.decode(extension_value, asn1Spec=AppAttestNonce())
    except ASN1_DECODE_ERRORS as exc:
        raise ValueError("nonce extension is not a valid AppAttestNonce") from exc
    if rest:
        raise ValueError("nonce extension has trailing bytes")
    return bytes(decoded["nonce"])


def _canonical_nonce(value: bytes) -> bytes | None:
    """The nonce when ``value`` is exactly the canonical DER Apple sends, else None.

    ``30 L1 A1 L2 04 L3 <nonce>`` with short-form lengths that add up exactly: the only
    encoding real devices produce. Anything else goes to the pyasn1 schema above, which
    stays the decoder of record (pyasn1 took most of a cached verification's non-crypto
    time, see bench/bench_all.py).
    """
    if len(value) < 6 or value[0] != 0x30 or value[2] != 0xA1 or value[4] != 0x04:
        return None
    n = value[5]
    if n >= 0x80 or value[3] != n + 2 or value[1] != n + 4 or len(value) != n + 6:
        return None
    return bytes(value[6:])
