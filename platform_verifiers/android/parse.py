"""Parse the Key Attestation extension into frozen dataclasses.

Spec: https://source.android.com/docs/security/features/keystore/attestation#schema
Decoding is BER (pyasn1's BER decoder), as Google's reference verifier
(https://github.com/android/keyattestation) effectively does: real devices emit
non-DER encodings, e.g. a RootOfTrust.deviceLocked BOOLEAN whose content is 0x01
instead of 0xFF; BER reads any non-zero octet as TRUE, and so do we. No pyasn1 object
leaves this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from pyasn1.codec.ber import decoder
from pyasn1.type import univ

from platform_verifiers.android import schema
from platform_verifiers.errors import ASN1_DECODE_ERRORS, VerificationError


class SecurityLevel(IntEnum):
    """Where the key lives; ordered so that ``min()`` gives the weaker of two levels."""

    SOFTWARE = 0
    TRUSTED_ENVIRONMENT = 1
    STRONG_BOX = 2


class VerifiedBootState(IntEnum):
    VERIFIED = 0
    SELF_SIGNED = 1
    UNVERIFIED = 2
    FAILED = 3


@dataclass(frozen=True)
class RootOfTrust:
    verified_boot_key: bytes
    device_locked: bool
    verified_boot_state: VerifiedBootState
    verified_boot_hash: bytes | None = None


@dataclass(frozen=True)
class PackageInfo:
    name: str
    version: int


@dataclass(frozen=True)
class AttestationApplicationId:
    packages: tuple[PackageInfo, ...]
    signature_digests: tuple[bytes, ...]

    @property
    def package_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.packages)


@dataclass(frozen=True)
class AuthorizationList:
    """One AuthorizationList; absent tags are ``None`` (or ``False`` for NULL flags)."""

    purpose: tuple[int, ...] | None = None
    algorithm: int | None = None
    key_size: int | None = None
    block_mode: tuple[int, ...] | None = None
    digest: tuple[int, ...] | None = None
    padding: tuple[int, ...] | None = None
    caller_nonce: bool = False
    min_mac_length: int | None = None
    ec_curve: int | None = None
    rsa_public_exponent: int | None = None
    mgf_digest: tuple[int, ...] | None = None
    rollback_resistance: bool = False
    early_boot_only: bool = False
    active_date_time: int | None = None
    origination_expire_date_time: int | None = None
    usage_expire_date_time: int | None = None
    usage_count_limit: int | None = None
    no_auth_required: bool = False
    user_auth_type: int | None = None
    auth_timeout: int | None = None
    allow_while_on_body: bool = False
    trusted_user_presence_required: bool = False
    trusted_confirmation_required: bool = False
    unlocked_device_required: bool = False
    all_applications: bool = False
    application_id: bytes | None = None
    creation_date_time: int | None = None
    origin: int | None = None
    rollback_resistant: bool = False
    root_of_trust: RootOfTrust | None = None
    os_version: int | None = None
    os_patch_level: int | None = None
    attestation_application_id: AttestationApplicationId | None = None
    attestation_id_brand: bytes | None = None
    attestation_id_device: bytes | None = None
    attestation_id_product: bytes | None = None
    attestation_id_serial: bytes | None = None
    attestation_id_imei: bytes | None = None
    attestation_id_meid: bytes | None = None
    attestation_id_manufacturer: bytes | None = None
    attestation_id_model: bytes | None = None
    vendor_patch_level: int | None = None
    boot_patch_level: int | None = None
    device_unique_attestation: bool = False
    identity_credential_key: bool = False
    attestation_id_second_imei: bytes | None = None
    module_hash: bytes | None = None
    # Tags this parser does not know (new KeyMint versions add some); their values are
    # not interpreted, only reported.
    unknown_tags: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class KeyDescription:
    attestation_version: int
    attestation_security_level: SecurityLevel
    keymint_version: int
    keymint_security_level: SecurityLevel
    attestation_challenge: bytes
    unique_id: bytes
    software_enforced: AuthorizationList
    hardware_enforced: AuthorizationList

    @property
    def unknown_tags(self) -> tuple[int, ...]:
        return tuple(
            sorted(set(self.software_enforced.unknown_tags + self.hardware_enforced.unknown_tags))
        )

    def authorization(self, name: str) -> Any:
        """The value of ``name`` from the hardware-enforced list, else the software one.

        Which list a tag lands in depends on the KeyMint version and the device, e.g.
        attestationApplicationId is always software-enforced and creationDateTime moves.
        """
        hardware = getattr(self.hardware_enforced, name)
        if hardware is not None and hardware is not False:
            return hardware
        return getattr(self.software_enforced, name)


def _malformed(why: str) -> VerificationError:
    return VerificationError(
        "key_description_malformed", "the key attestation extension cannot be decoded", why=why
    )


def _decode(raw: bytes, spec: univ.Asn1Type) -> Any:
    try:
        value, rest = decoder.decode(raw, asn1Spec=spec)
    except ASN1_DECODE_ERRORS as exc:
        raise _malformed(type(exc).__name__) from exc
    if rest:
        raise _malformed("trailing data")
    return value


def _context_tag_number(element: bytes) -> int:
    """Tag number of a BER element's identifier octets (X.690 8.1.2), context class only."""
    if not element or element[0] >> 6 != 2:
        raise _malformed("authorization list entry is not context-tagged")
    number = element[0] & 0x1F
    if number != 0x1F:
        return number
    number = 0
    for octet in element[1:6]:
        number = (number << 7) | (octet & 0x7F)
        if not octet & 0x80:
            return number
    raise _malformed("authorization list tag number too long")


_FIELD_NAMES: dict[str, str] = {
    asn1_name: "".join("_" + c.lower() if c.isupper() else c for c in asn1_name)
    for asn1_name, _ in schema.AUTHORIZATION_TAGS.values()
}


def _enum(enum: type[IntEnum], value: Any, what: str) -> Any:
    try:
        return enum(int(value))
    except ValueError as exc:
        raise _malformed(f"unknown {what}") from exc


def _convert(asn1_name: str, value: Any) -> Any:
    if isinstance(value, univ.Null):
        return True
    if isinstance(value, univ.SetOf):
        return tuple(int(v) for v in value)
    if isinstance(value, univ.Integer):
        return int(value)
    if asn1_name == "rootOfTrust":
        boot_hash = value["verifiedBootHash"]
        return RootOfTrust(
            verified_boot_key=bytes(value["verifiedBootKey"]),
            device_locked=bool(value["deviceLocked"]),
            verified_boot_state=_enum(VerifiedBootState, value["verifiedBootState"], "boot state"),
            verified_boot_hash=bytes(boot_hash) if boot_hash.isValue else None,
        )
    if asn1_name == "attestationApplicationId":
        return parse_attestation_application_id(bytes(value))
    return bytes(value)


def parse_authorization_list(elements: Any) -> AuthorizationList:
    """Decode the raw elements of one AuthorizationList, tolerating unknown tags."""
    values: dict[str, Any] = {}
    unknown: list[int] = []
    for element in elements:
        raw = bytes(element)
        number = _context_tag_number(raw)
        known = schema.AUTHORIZATION_TAGS.get(number)
        if known is None:
            unknown.append(number)
            continue
        asn1_name, inner = known
        name = _FIELD_NAMES[asn1_name]
        if name in values:
            # Two values for one tag: which one the device meant is unknowable.
            raise _malformed(f"duplicate tag {number}")
        values[name] = _convert(asn1_name, _decode(raw, schema.explicit(number, inner)))
    return AuthorizationList(**values, unknown_tags=tuple(unknown))


def parse_attestation_application_id(raw: bytes) -> AttestationApplicationId:
    """Decode the DER carried inside the attestationApplicationId OCTET STRING."""
    value = _decode(raw, schema.AttestationApplicationId())
    return AttestationApplicationId(
        packages=tuple(
            PackageInfo(
                name=bytes(p["packageName"]).decode("utf-8", "replace"), version=int(p["version"])
            )
            for p in value["packageInfos"]
        ),
        signature_digests=tuple(bytes(d) for d in value["signatureDigests"]),
    )


def parse_key_description(extension_value: bytes) -> KeyDescription:
    """Decode the extension value (the DER inside extnValue) into a ``KeyDescription``.

    Raises ``VerificationError("key_description_malformed")`` on truncated or garbage
    input. Works for attestation versions 1 to 4, 100 to 400 and newer ones (500).
    """
    value = _decode(extension_value, schema.KeyDescriptionForParsing())
    return KeyDescription(
        attestation_version=int(value["attestationVersion"]),
        attestation_security_level=_enum(
            SecurityLevel, value["attestationSecurityLevel"], "security level"
        ),
        keymint_version=int(value["keyMintVersion"]),
        keymint_security_level=_enum(
            SecurityLevel, value["keyMintSecurityLevel"], "security level"
        ),
        attestation_challenge=bytes(value["attestationChallenge"]),
        unique_id=bytes(value["uniqueId"]),
        software_enforced=parse_authorization_list(value["softwareEnforced"]),
        hardware_enforced=parse_authorization_list(value["hardwareEnforced"]),
    )


def authorization_list_fields() -> tuple[str, ...]:
    """Names of the dataclass fields of ``AuthorizationList`` (for presenters)."""
    return tuple(f.name for f in dataclasses.fields(AuthorizationList))
