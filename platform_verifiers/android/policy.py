"""Per-app policy for Android Key Attestation, and its checks.

Each check names its rule and raises ``PolicyViolation(rule, seen=..., required=...)``.
Spec background: https://developer.android.com/privacy-and-security/security-key-attestation
(Verified boot, patch levels, attestation application id).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from platform_verifiers.android.parse import (
    AttestationApplicationId,
    AuthorizationList,
    KeyDescription,
    RootOfTrust,
    SecurityLevel,
    VerifiedBootState,
)
from platform_verifiers.errors import PolicyViolation

# KeyMint values (hardware/interfaces/security/keymint/aidl/.../KeyPurpose.aidl etc.).
PURPOSE_SIGN = 2
ALGORITHM_EC = 3
EC_CURVE_P256 = 1
ORIGIN_GENERATED = 0


@dataclass(frozen=True)
class AndroidPolicy:
    """What an app accepts. Defaults are the secure ones; relax only by explicit choice.

    ``package_names`` / ``signer_digests`` set to ``None`` mean "not checked" (the CLI
    uses that); a service app registry always sets them. ``allowed_verified_boot_keys``
    admits a SELF_SIGNED boot state when the verified-boot key is listed (GrapheneOS and
    other alternative OSes on a locked bootloader).
    """

    min_security_level: SecurityLevel = SecurityLevel.TRUSTED_ENVIRONMENT
    package_names: frozenset[str] | None = None
    signer_digests: frozenset[bytes] | None = None
    require_verified_boot: bool = True
    require_device_locked: bool = True
    allowed_verified_boot_keys: frozenset[bytes] = frozenset()
    min_os_patch_level: int | None = None  # YYYYMM
    require_generated_origin: bool = True
    require_sign_purpose: bool = True
    require_ec_p256: bool = True


def effective_security_level(kd: KeyDescription) -> SecurityLevel:
    """The lower of the attestation and KeyMint levels: the chain is as weak as its weakest."""
    return min(kd.attestation_security_level, kd.keymint_security_level)


def check_security_level(kd: KeyDescription, policy: AndroidPolicy) -> None:
    level = effective_security_level(kd)
    if level < policy.min_security_level:
        raise PolicyViolation(
            "security_level", seen=level.name, required=policy.min_security_level.name
        )


def _application_id(kd: KeyDescription) -> AttestationApplicationId | None:
    value: AttestationApplicationId | None = kd.authorization("attestation_application_id")
    return value


def check_package(kd: KeyDescription, policy: AndroidPolicy) -> None:
    # Every package sharing the key's UID can use the key, so all of them must be allowed.
    if policy.package_names is None:
        return
    app = _application_id(kd)
    names = sorted(app.package_names) if app else []
    if not names or not set(names) <= policy.package_names:
        raise PolicyViolation("package_name", seen=names, required=sorted(policy.package_names))


def check_signer(kd: KeyDescription, policy: AndroidPolicy) -> None:
    if policy.signer_digests is None:
        return
    app = _application_id(kd)
    digests = sorted(d.hex() for d in app.signature_digests) if app else []
    allowed = {d.hex() for d in policy.signer_digests}
    if not digests or not set(digests) <= allowed:
        raise PolicyViolation("signer_digest", seen=digests, required=sorted(allowed))


def _root_of_trust(kd: KeyDescription) -> RootOfTrust | None:
    # Only the hardware-enforced RootOfTrust means anything: software can claim anything.
    return kd.hardware_enforced.root_of_trust


def check_verified_boot(kd: KeyDescription, policy: AndroidPolicy) -> None:
    if not policy.require_verified_boot:
        return
    rot = _root_of_trust(kd)
    if rot is None:
        raise PolicyViolation("verified_boot", seen=None, required="VERIFIED")
    if rot.verified_boot_state is VerifiedBootState.VERIFIED:
        return
    if (
        rot.verified_boot_state is VerifiedBootState.SELF_SIGNED
        and rot.verified_boot_key in policy.allowed_verified_boot_keys
    ):
        return
    raise PolicyViolation(
        "verified_boot",
        seen=rot.verified_boot_state.name,
        required="VERIFIED, or SELF_SIGNED with an allowed verified-boot key",
    )


def check_device_locked(kd: KeyDescription, policy: AndroidPolicy) -> None:
    if not policy.require_device_locked:
        return
    rot = _root_of_trust(kd)
    locked = rot.device_locked if rot else None
    if locked is not True:
        raise PolicyViolation("device_locked", seen=locked, required=True)


def check_os_patch_level(kd: KeyDescription, policy: AndroidPolicy) -> None:
    if policy.min_os_patch_level is None:
        return
    level = kd.hardware_enforced.os_patch_level
    if level is None or level < policy.min_os_patch_level:
        raise PolicyViolation("os_patch_level", seen=level, required=policy.min_os_patch_level)


def check_key_properties(
    kd: KeyDescription, leaf_key: PublicKeyTypes | None, policy: AndroidPolicy
) -> None:
    """Origin GENERATED, purpose SIGN, EC P-256, read from the hardware-enforced list."""
    hw = kd.hardware_enforced
    if policy.min_security_level is SecurityLevel.SOFTWARE:
        # Test-only relaxation: software attestations put everything in softwareEnforced.
        hw = _merged(kd)
    if policy.require_generated_origin and hw.origin != ORIGIN_GENERATED:
        raise PolicyViolation("key_origin", seen=hw.origin, required=ORIGIN_GENERATED)
    if policy.require_sign_purpose and PURPOSE_SIGN not in (hw.purpose or ()):
        raise PolicyViolation("key_purpose", seen=list(hw.purpose or ()), required=PURPOSE_SIGN)
    if policy.require_ec_p256:
        # Both the attested description and the certified key itself must say P-256.
        curve_ok = hw.ec_curve == EC_CURVE_P256 or (hw.ec_curve is None and hw.key_size == 256)
        key_ok = isinstance(leaf_key, ec.EllipticCurvePublicKey) and isinstance(
            leaf_key.curve, ec.SECP256R1
        )
        if hw.algorithm != ALGORITHM_EC or not curve_ok or not key_ok:
            raise PolicyViolation(
                "key_algorithm",
                seen={"algorithm": hw.algorithm, "ec_curve": hw.ec_curve, "key_size": hw.key_size},
                required="EC P-256",
            )


def _merged(kd: KeyDescription) -> AuthorizationList:
    return replace(
        kd.hardware_enforced,
        origin=kd.authorization("origin"),
        purpose=kd.authorization("purpose"),
        algorithm=kd.authorization("algorithm"),
        ec_curve=kd.authorization("ec_curve"),
        key_size=kd.authorization("key_size"),
    )


def check_policy(
    kd: KeyDescription, leaf_key: PublicKeyTypes | None, policy: AndroidPolicy
) -> None:
    """Apply every rule of ``policy``; the first violation raises.

    Which app the key is for (its package and signer) is checked first: with several apps
    configured, the service takes a violation of those two as "another app's policy" and
    tries the next app, and any other rule as this app's refusal. Checked after them, one
    app's security level refused a device of another app (found in review).
    """
    check_package(kd, policy)
    check_signer(kd, policy)
    check_security_level(kd, policy)
    check_verified_boot(kd, policy)
    check_device_locked(kd, policy)
    check_os_patch_level(kd, policy)
    check_key_properties(kd, leaf_key, policy)
