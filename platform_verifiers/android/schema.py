"""ASN.1 schema of the Android Key Attestation extension (OID 1.3.6.1.4.1.11129.2.1.17).

Spec: https://source.android.com/docs/security/features/keystore/attestation#schema
(KeyDescription, AuthorizationList, RootOfTrust, AttestationApplicationId). Only types
live here; decoding logic is in ``parse.py``.

``AUTHORIZATION_TAGS`` is the single table of AuthorizationList entries: the typed
``AuthorizationList`` (used to encode, e.g. by the synthetic test chains) is built from
it, and the parser decodes each element with the table's type for its tag.
"""

from __future__ import annotations

from pyasn1.type import namedtype, namedval, tag, univ

KEY_DESCRIPTION_OID = "1.3.6.1.4.1.11129.2.1.17"
# Remote key provisioning "ProvisioningInfo" extension, present on RKP-issued
# attestation key certificates (https://source.android.com/docs/core/ota/modular-system/remote-key-provisioning).
PROVISIONING_INFO_OID = "1.3.6.1.4.1.11129.2.1.30"


class SecurityLevel(univ.Enumerated):  # type: ignore[misc]
    namedValues = namedval.NamedValues(("Software", 0), ("TrustedEnvironment", 1), ("StrongBox", 2))


class VerifiedBootState(univ.Enumerated):  # type: ignore[misc]
    namedValues = namedval.NamedValues(
        ("Verified", 0), ("SelfSigned", 1), ("Unverified", 2), ("Failed", 3)
    )


class RootOfTrust(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("verifiedBootKey", univ.OctetString()),
        namedtype.NamedType("deviceLocked", univ.Boolean()),
        namedtype.NamedType("verifiedBootState", VerifiedBootState()),
        # Attestation version 3 and later.
        namedtype.OptionalNamedType("verifiedBootHash", univ.OctetString()),
    )


class AttestationPackageInfo(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("packageName", univ.OctetString()),
        namedtype.NamedType("version", univ.Integer()),
    )


class AttestationApplicationId(univ.Sequence):  # type: ignore[misc]
    """Carried DER-encoded inside the OCTET STRING of tag 709."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("packageInfos", univ.SetOf(componentType=AttestationPackageInfo())),
        namedtype.NamedType("signatureDigests", univ.SetOf(componentType=univ.OctetString())),
    )


def _int_set() -> univ.SetOf:
    return univ.SetOf(componentType=univ.Integer())


# tag number -> (ASN.1 field name, inner type). Every tag defined by KeyMint 4 / Keystore
# attestation v400 and later; tags not listed here are tolerated and reported.
AUTHORIZATION_TAGS: dict[int, tuple[str, univ.Asn1Type]] = {
    1: ("purpose", _int_set()),
    2: ("algorithm", univ.Integer()),
    3: ("keySize", univ.Integer()),
    4: ("blockMode", _int_set()),
    5: ("digest", _int_set()),
    6: ("padding", _int_set()),
    7: ("callerNonce", univ.Null()),
    8: ("minMacLength", univ.Integer()),
    10: ("ecCurve", univ.Integer()),
    200: ("rsaPublicExponent", univ.Integer()),
    203: ("mgfDigest", _int_set()),
    303: ("rollbackResistance", univ.Null()),
    305: ("earlyBootOnly", univ.Null()),
    400: ("activeDateTime", univ.Integer()),
    401: ("originationExpireDateTime", univ.Integer()),
    402: ("usageExpireDateTime", univ.Integer()),
    405: ("usageCountLimit", univ.Integer()),
    503: ("noAuthRequired", univ.Null()),
    504: ("userAuthType", univ.Integer()),
    505: ("authTimeout", univ.Integer()),
    506: ("allowWhileOnBody", univ.Null()),
    507: ("trustedUserPresenceRequired", univ.Null()),
    508: ("trustedConfirmationRequired", univ.Null()),
    509: ("unlockedDeviceRequired", univ.Null()),
    600: ("allApplications", univ.Null()),
    601: ("applicationId", univ.OctetString()),
    701: ("creationDateTime", univ.Integer()),
    702: ("origin", univ.Integer()),
    703: ("rollbackResistant", univ.Null()),
    704: ("rootOfTrust", RootOfTrust()),
    705: ("osVersion", univ.Integer()),
    706: ("osPatchLevel", univ.Integer()),
    709: ("attestationApplicationId", univ.OctetString()),
    710: ("attestationIdBrand", univ.OctetString()),
    711: ("attestationIdDevice", univ.OctetString()),
    712: ("attestationIdProduct", univ.OctetString()),
    713: ("attestationIdSerial", univ.OctetString()),
    714: ("attestationIdImei", univ.OctetString()),
    715: ("attestationIdMeid", univ.OctetString()),
    716: ("attestationIdManufacturer", univ.OctetString()),
    717: ("attestationIdModel", univ.OctetString()),
    718: ("vendorPatchLevel", univ.Integer()),
    719: ("bootPatchLevel", univ.Integer()),
    720: ("deviceUniqueAttestation", univ.Null()),
    721: ("identityCredentialKey", univ.Null()),
    723: ("attestationIdSecondImei", univ.OctetString()),
    724: ("moduleHash", univ.OctetString()),
}


def explicit(number: int, inner: univ.Asn1Type) -> univ.Asn1Type:
    """``[number] EXPLICIT inner``, the form of every AuthorizationList entry."""
    return inner.subtype(explicitTag=tag.Tag(tag.tagClassContext, tag.tagFormatConstructed, number))


class AuthorizationList(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        *(
            namedtype.OptionalNamedType(name, explicit(number, inner))
            for number, (name, inner) in sorted(AUTHORIZATION_TAGS.items())
        )
    )


class KeyDescription(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("attestationVersion", univ.Integer()),
        namedtype.NamedType("attestationSecurityLevel", SecurityLevel()),
        # keymasterVersion before attestation version 100, keyMintVersion after.
        namedtype.NamedType("keyMintVersion", univ.Integer()),
        namedtype.NamedType("keyMintSecurityLevel", SecurityLevel()),
        namedtype.NamedType("attestationChallenge", univ.OctetString()),
        namedtype.NamedType("uniqueId", univ.OctetString()),
        namedtype.NamedType("softwareEnforced", AuthorizationList()),
        namedtype.NamedType("hardwareEnforced", AuthorizationList()),
    )


class RawAuthorizationList(univ.SequenceOf):  # type: ignore[misc]
    """An AuthorizationList read element by element, so that unknown tags survive."""

    componentType = univ.Any()


class KeyDescriptionForParsing(univ.Sequence):  # type: ignore[misc]
    """``KeyDescription`` whose authorization lists are kept as raw elements."""

    componentType = namedtype.NamedTypes(
        namedtype.NamedType("attestationVersion", univ.Integer()),
        namedtype.NamedType("attestationSecurityLevel", SecurityLevel()),
        namedtype.NamedType("keyMintVersion", univ.Integer()),
        namedtype.NamedType("keyMintSecurityLevel", SecurityLevel()),
        namedtype.NamedType("attestationChallenge", univ.OctetString()),
        namedtype.NamedType("uniqueId", univ.OctetString()),
        namedtype.NamedType("softwareEnforced", RawAuthorizationList()),
        namedtype.NamedType("hardwareEnforced", RawAuthorizationList()),
    )
