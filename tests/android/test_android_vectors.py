"""Every real Android chain in ../shared/vectors gives the verdict MANIFEST.json expects."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from platform_verifiers.android import (
    AndroidPolicy,
    VerifiedLinkCache,
    google_hardware_roots,
    parse_key_description,
    parse_status_list,
    verify_android_attestation,
)
from platform_verifiers.android.certs import decode_certificate
from platform_verifiers.errors import PolicyViolation, VerificationError

from .conftest import CHAIN_ONLY_POLICY, instant, load_chain, manifest_entries

CHAINS = manifest_entries("android_key_attestation_chain", "android_key_attestation_leaf_only")
PASSING = [e for e in CHAINS if e["expected"]["verdict"] == "PASS"]
ANCHOR_PREFIX = {
    "GOOGLE_HW_RSA4096": "google_hw_rsa4096_",
    "GOOGLE_HW_EC_P384_2025": "google_hw_ec_p384_2025",
}


def _id(entry: dict[str, Any]) -> str:
    return str(entry["path"]).rsplit("/", 1)[-1].removesuffix(".pem")


def _verify(entry: dict[str, Any], **overrides: Any) -> Any:
    expected = entry["expected"]
    arguments: dict[str, Any] = {
        "chain": load_chain(entry["path"]),
        "challenge": bytes.fromhex(expected["challenge_hex"]),
        "policy": CHAIN_ONLY_POLICY,
        "anchors": google_hardware_roots(),
        "revocation": None,
        "now": instant(expected["now"]),
    }
    arguments.update(overrides)
    return verify_android_attestation(**arguments)


def _flip_last_byte(hex_text: str) -> bytes:
    raw = bytearray(bytes.fromhex(hex_text))
    raw[-1] ^= 0x01
    return bytes(raw)


@pytest.mark.parametrize("entry", CHAINS, ids=_id)
def test_vector_recorded_time_gives_manifest_verdict(entry: dict[str, Any]) -> None:
    expected = entry["expected"]
    if expected["verdict"] == "FAIL":
        with pytest.raises(VerificationError) as caught:
            _verify(entry)
        # Every failing vector fails on trust: AOSP software root, pre-production root,
        # or a lone leaf that reaches no root.
        assert caught.value.code == "chain_untrusted"
        return
    result = _verify(entry)
    kd = result.key_description
    assert result.root_anchor.startswith(ANCHOR_PREFIX[expected["root_anchor"]])
    assert result.provisioning.name == expected["provisioning"]
    assert kd.attestation_version == expected["attestation_version"]
    assert kd.attestation_security_level.name == expected["attestation_security_level"]
    assert kd.keymint_version == expected["keymint_version"]
    assert kd.keymint_security_level.name == expected["keymint_security_level"]
    assert kd.attestation_challenge.hex() == expected["challenge_hex"]
    app = kd.authorization("attestation_application_id")
    assert list(app.package_names) == expected["package_names"]
    rot = kd.hardware_enforced.root_of_trust
    assert rot.verified_boot_state.name == expected["verified_boot_state"]
    assert rot.device_locked is expected["device_locked"]
    assert kd.hardware_enforced.os_version == expected["os_version"]
    assert kd.hardware_enforced.os_patch_level == expected["os_patch_level"]
    assert len(result.chain_serials) == len(entry["details"]["certs"])
    assert list(result.chain_serials) == [c["serial_hex"] for c in entry["details"]["certs"]]


@pytest.mark.parametrize("entry", PASSING, ids=_id)
def test_vector_other_challenge_fails_with_challenge_mismatch(entry: dict[str, Any]) -> None:
    with pytest.raises(VerificationError) as caught:
        _verify(entry, challenge=_flip_last_byte(entry["expected"]["challenge_hex"]))
    assert caught.value.code == "challenge_mismatch"


@pytest.mark.parametrize("entry", PASSING, ids=_id)
def test_vector_negative_time_variant_gives_google_verdict(entry: dict[str, Any]) -> None:
    # RKP intermediates expire (FAIL); factory chains are judged by Google's rules (PASS),
    # which the manifest records as "FAIL under strict RFC 5280; PASS under Google rules".
    variants = [c for c in entry.get("negative_checks", []) if c["change"].startswith("now = ")]
    assert variants, "every passing vector has a time variant"
    for variant in variants:
        later = instant(variant["change"].removeprefix("now = "))
        if entry["expected"]["provisioning"] == "RKP":
            assert variant["verdict"] == "FAIL"
            with pytest.raises(VerificationError) as caught:
                _verify(entry, now=later)
            assert caught.value.code == "certificate_expired"
        else:
            assert "PASS under Google reference rules" in variant["verdict"]
            _verify(entry, now=later)


def test_vector_leaf_only_key_description_parses() -> None:
    (entry,) = manifest_entries("android_key_attestation_leaf_only")
    leaf = decode_certificate(load_chain(entry["path"])[0], 0)
    kd = parse_key_description(leaf.key_descriptions[0])
    assert kd.software_enforced.allow_while_on_body is True
    assert kd.attestation_challenge.hex() == entry["expected"]["challenge_hex"]


def test_vector_non_der_device_locked_parses_as_true() -> None:
    kd = _verify(_entry("ka_invalid_malformed_rot_device_locked")).key_description
    assert kd.hardware_enforced.root_of_trust.device_locked is True


def test_vector_mldsa_unknown_tag_reported_and_tolerated() -> None:
    result = _verify(_entry("ka_tokay_sdk37_TEE_MLDSA_FACTORY"))
    assert result.key_description.unknown_tags == (11,)
    assert type(result.leaf_public_key()).__name__.startswith("MLDSA")


def test_vector_version_500_usage_count_and_module_hash_parsed() -> None:
    kd = _verify(_entry("ka_tegu_sdk37_TEE_MAX_USAGE_COUNT")).key_description
    assert kd.software_enforced.usage_count_limit == 42
    assert kd.software_enforced.module_hash is not None
    assert kd.hardware_enforced.attestation_id_model == b"Pixel 9a"


def test_vector_sony_non_ca_batch_certificate_accepted() -> None:
    _verify(_entry("ka_sony_xperia10iii_sdk33_TEE_EC"))


def test_vector_software_root_passes_only_when_explicitly_trusted() -> None:
    from platform_verifiers.android import SecurityLevel, aosp_software_roots

    entry = _entry("warden_android_emulator_ec_software")
    anchors = (*google_hardware_roots(), *aosp_software_roots())
    with pytest.raises(PolicyViolation) as caught:
        _verify(entry, anchors=anchors)
    assert caught.value.rule == "security_level"
    relaxed = AndroidPolicy(
        min_security_level=SecurityLevel.SOFTWARE,
        require_verified_boot=False,
        require_device_locked=False,
        require_ec_p256=False,
    )
    result = _verify(entry, anchors=anchors, policy=relaxed)
    assert result.root_anchor == "aosp_software_ec"


def test_vector_default_policy_unlocked_tegu_fails_verified_boot() -> None:
    with pytest.raises(PolicyViolation) as caught:
        _verify(_entry("ka_tegu_sdk37_TEE_TRUSTED_CONF"), policy=AndroidPolicy())
    assert caught.value.rule == "verified_boot"
    assert caught.value.seen == "UNVERIFIED"


def test_vector_default_policy_rsa_key_fails_key_algorithm() -> None:
    policy = AndroidPolicy(require_verified_boot=False, require_device_locked=False)
    with pytest.raises(PolicyViolation) as caught:
        _verify(_entry("ka_akita_sdk34_TEE_RSA_NONE"), policy=policy)
    assert caught.value.rule == "key_algorithm"


def test_vector_default_policy_locked_pixel_passes() -> None:
    result = _verify(_entry("pywebauthn_pixel8a_android_key"), policy=AndroidPolicy())
    assert result.security_level.name == "TRUSTED_ENVIRONMENT"


def test_vector_revocation_probe_serial_suspended_rejected() -> None:
    from platform_verifiers.android.revocation import check_revocation

    from .conftest import require_vectors

    (entry,) = manifest_entries("android_revocation_probe")
    cert = decode_certificate(load_chain(entry["path"])[0], 0)
    now = instant(entry["expected"]["now"])
    data = (require_vectors() / "roots/google_attestation_status_sample_gka_test.json").read_bytes()
    snapshot = parse_status_list(data, now)
    with pytest.raises(VerificationError) as caught:
        check_revocation([cert.serial_hex], snapshot, now=now)
    assert caught.value.code == "certificate_revoked"
    assert caught.value.detail["status"] == "SUSPENDED"


def test_vector_chain_with_link_cache_same_result_and_cache_filled() -> None:
    cache = VerifiedLinkCache(max_entries=16)
    entry = _entry("ka_tegu_sdk36_SB_EC_2026_ROOT")
    first = _verify(entry, verified_cache=cache)
    assert len(cache) == 3  # three upper links; never the leaf link
    second = _verify(entry, verified_cache=cache)
    assert first == second


def test_vector_stale_revocation_list_rejected() -> None:
    entry = _entry("pywebauthn_pixel8a_android_key")
    now = instant(entry["expected"]["now"])
    snapshot = parse_status_list(b'{"entries": {}}', now - timedelta(days=3))
    with pytest.raises(VerificationError) as caught:
        _verify(entry, revocation=snapshot, max_revocation_age=timedelta(days=1))
    assert caught.value.code == "revocation_list_stale"


def _entry(name: str) -> dict[str, Any]:
    for entry in CHAINS:
        if _id(entry) == name:
            return entry
    pytest.skip(f"vector {name} not found")
