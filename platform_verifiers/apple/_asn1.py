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
    try:
        decoded, rest = der_decoder.decode(extension_value, asn1Spec=AppAttestNonce())
    except ASN1_DECODE_ERRORS as exc:
        raise ValueError("nonce extension is not a valid AppAttestNonce") from exc
    if rest:
        raise ValueError("nonce extension has trailing bytes")
    return bytes(decoded["nonce"])
