"""Synthetic chains: one test per rejection code and per policy rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from platform_verifiers.android import (
    MAX_CHAIN_LENGTH,
    AndroidPolicy,
    SecurityLevel,
    VerifiedBootState,
    VerifiedLinkCache,
    google_hardware_roots,
    parse_status_list,
    verify_android_attestation,
)
from platform_verifiers.errors import PolicyViolation, VerificationError

from .synth import (
    DEFAULT_BOOT_KEY,
    DEFAULT_PACKAGE,
    DEFAULT_SIGNER,
    default_key_description,
    extend_below_leaf,
    factory_name,
    make_chain,
    make_root,
)

NOW = datetime.now(UTC)
STRICT = AndroidPolicy(
    package_names=frozenset({DEFAULT_PACKAGE}),
    signer_digests=frozenset({DEFAULT_SIGNER}),
    min_os_patch_level=202501,
)


def _verify(chain: list[bytes], anchors: Any, **overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "chain": chain,
        "challenge": b"challenge",
        "policy": STRICT,
        "anchors": anchors,
        "revocation": None,
        "now": NOW,
    }
    arguments.update(overrides)
    return verify_android_attestation(**arguments)


def _code(chain: list[bytes], anchors: Any, **overrides: Any) -> str:
    with pytest.raises(VerificationError) as caught:
        _verify(chain, anchors, **overrides)
    return caught.value.code


def _rule(chain: list[bytes], anchors: Any, **overrides: Any) -> PolicyViolation:
    with pytest.raises(PolicyViolation) as caught:
        _verify(chain, anchors, **overrides)
    return caught.value


def test_verify_good_synthetic_chain_passes() -> None:
    synth = make_chain()
    result = _verify(synth.chain, [synth.anchor])
    assert result.root_anchor == "synthetic_test_root"
    assert result.leaf_public_key() == synth.leaf_key.public_key()
    # "CN=Synthetic Intermediate 1" under the root: neither factory nor RKP by Google's rules
    assert result.provisioning.value == "unknown"


def test_verify_chain_stopping_below_root_passes() -> None:
    synth = make_chain(include_root=False)
    assert _verify(synth.chain, [synth.anchor]).root_anchor == "synthetic_test_root"


def test_verify_naive_now_raises_value_error() -> None:
    synth = make_chain()
    with pytest.raises(ValueError):
        _verify(synth.chain, [synth.anchor], now=datetime(2026, 1, 1))


def test_verify_no_anchors_raises_value_error() -> None:
    with pytest.raises(ValueError):
        _verify(make_chain().chain, [])


def test_verify_wrong_challenge_fails_challenge_mismatch() -> None:
    synth = make_chain(challenge=b"issued")
    assert _code(synth.chain, [synth.anchor], challenge=b"another") == "challenge_mismatch"


def test_verify_replayed_challenge_is_a_service_concern_same_result() -> None:
    # Replay is stopped by the service redeeming challenges once; the pure verifier
    # is deterministic, so the same evidence verifies twice.
    synth = make_chain()
    assert _verify(synth.chain, [synth.anchor]) == _verify(synth.chain, [synth.anchor])


def test_verify_untrusted_root_fails_chain_untrusted() -> None:
    synth = make_chain()
    assert _code(synth.chain, google_hardware_roots()) == "chain_untrusted"
    assert _code(synth.chain, [make_root("Other Root").anchor]) == "chain_untrusted"


def test_verify_broken_signature_fails_chain_signature_invalid() -> None:
    synth = make_chain(leaf_signed_by=ec.generate_private_key(ec.SECP256R1()))
    assert _code(synth.chain, [synth.anchor]) == "chain_signature_invalid"


def test_verify_non_ca_intermediate_fails_intermediate_not_ca() -> None:
    synth = make_chain(intermediates=2, intermediate_ca=[True, False])
    assert _code(synth.chain, [synth.anchor]) == "intermediate_not_ca"
    missing = make_chain(intermediates=2, intermediate_ca=[True, None])
    assert _code(missing.chain, [missing.anchor]) == "intermediate_not_ca"


def test_verify_path_length_exceeded_fails_path_length_exceeded() -> None:
    synth = make_chain(intermediates=3, intermediate_path_length=[None, None, 0])
    assert _code(synth.chain, [synth.anchor]) == "path_length_exceeded"


def test_verify_non_ca_leaf_issuer_passes_like_google() -> None:
    # Mirrors the real Sony Xperia 10 III factory chain (batch certificate with cA=FALSE).
    synth = make_chain(intermediates=2, intermediate_ca=[False, True], under_root_name=factory_name())
    assert _verify(synth.chain, [synth.anchor]).provisioning.value == "factory"


def test_verify_extension_below_leaf_fails_extension_below_leaf() -> None:
    synth = make_chain()
    forged = extend_below_leaf(synth)
    assert _code(forged, [synth.anchor]) == "extension_below_leaf"


def test_verify_over_long_chain_fails_chain_too_long() -> None:
    synth = make_chain(intermediates=MAX_CHAIN_LENGTH)
    assert len(synth.chain) == MAX_CHAIN_LENGTH + 2
    assert _code(synth.chain, [synth.anchor]) == "chain_too_long"


def test_verify_empty_chain_fails_chain_empty() -> None:
    assert _code([], [make_root().anchor]) == "chain_empty"


def test_verify_garbage_certificate_fails_certificate_malformed() -> None:
    synth = make_chain()
    assert _code([b"\x30\x03\x02\x01\x01", *synth.chain[1:]], [synth.anchor]) == (
        "certificate_malformed"
    )
    assert _code([synth.chain[0][:-10], *synth.chain[1:]], [synth.anchor]) == (
        "certificate_malformed"
    )


def test_verify_truncated_key_description_fails_key_description_malformed() -> None:
    truncated = default_key_description()[:-7]
    synth = make_chain(key_description=truncated)
    assert _code(synth.chain, [synth.anchor]) == "key_description_malformed"


def test_verify_garbage_extension_fails_key_description_malformed() -> None:
    synth = make_chain(key_description=b"\x04\x05hello")
    assert _code(synth.chain, [synth.anchor]) == "key_description_malformed"


def test_verify_leaf_without_extension_fails_key_description_missing() -> None:
    synth = make_chain()
    # Drop the leaf: the first certificate is then an (extension-free) intermediate.
    assert _code(synth.chain[1:], [synth.anchor]) == "key_description_missing"


def test_verify_lone_certificate_with_root_key_fails_chain_untrusted() -> None:
    """A self-made "leaf" carrying the root's public key must not be trusted by key."""
    synth = make_chain()
    assert _code([synth.root.der], [synth.anchor]) == "chain_untrusted"
    forged = make_chain(leaf_key=synth.root.key, root=synth.root).chain[0]
    assert _code([forged], [synth.anchor]) == "chain_untrusted"


def test_verify_revoked_serial_fails_certificate_revoked() -> None:
    synth = make_chain(leaf_serial=0xC0FFEE)
    snapshot = parse_status_list(b'{"entries": {"c0ffee": {"status": "REVOKED"}}}', NOW)
    with pytest.raises(VerificationError) as caught:
        _verify(synth.chain, [synth.anchor], revocation=snapshot)
    assert caught.value.code == "certificate_revoked"
    assert caught.value.detail == {"index": 0, "serial": "c0ffee", "status": "REVOKED"}


def test_verify_suspended_intermediate_fails_certificate_revoked() -> None:
    from cryptography import x509

    synth = make_chain()
    serial = format(x509.load_der_x509_certificate(synth.chain[2]).serial_number, "x")
    data = b'{"entries": {"%s": {"status": "SUSPENDED"}}}' % serial.encode()
    with pytest.raises(VerificationError) as caught:
        _verify(synth.chain, [synth.anchor], revocation=parse_status_list(data, NOW))
    assert caught.value.code == "certificate_revoked"
    assert caught.value.detail["status"] == "SUSPENDED"
    assert caught.value.detail["index"] == 2


def test_verify_unlisted_serials_pass_revocation() -> None:
    synth = make_chain()
    snapshot = parse_status_list(b'{"entries": {"abc": {"status": "REVOKED"}}}', NOW)
    _verify(synth.chain, [synth.anchor], revocation=snapshot, max_revocation_age=timedelta(days=1))


def test_verify_stale_list_fails_revocation_list_stale() -> None:
    synth = make_chain()
    snapshot = parse_status_list(b'{"entries": {}}', NOW - timedelta(hours=25))
    code = _code(
        synth.chain, [synth.anchor], revocation=snapshot, max_revocation_age=timedelta(hours=24)
    )
    assert code == "revocation_list_stale"


def test_verify_expired_rkp_intermediate_fails_certificate_expired() -> None:
    window = (NOW - timedelta(days=30), NOW - timedelta(days=1))
    synth = make_chain(rkp=True, intermediate_validity=window)
    assert _code(synth.chain, [synth.anchor]) == "certificate_expired"


def test_verify_future_rkp_intermediate_fails_certificate_not_yet_valid() -> None:
    window = (NOW + timedelta(days=1), NOW + timedelta(days=30))
    synth = make_chain(rkp=True, intermediate_validity=window)
    assert _code(synth.chain, [synth.anchor]) == "certificate_not_yet_valid"


def test_verify_expired_factory_intermediate_passes() -> None:
    window = (NOW - timedelta(days=30), NOW - timedelta(days=1))
    synth = make_chain(rkp=False, intermediate_validity=window, under_root_name=factory_name())
    assert _verify(synth.chain, [synth.anchor]).provisioning.value == "factory"


def test_verify_link_cache_skips_known_links_never_leaf() -> None:
    synth = make_chain(intermediates=2)
    cache = VerifiedLinkCache(max_entries=2)
    _verify(synth.chain, [synth.anchor], verified_cache=cache)
    assert len(cache) == 2
    # A leaf with a broken signature still fails with a warm cache.
    bad = make_chain(root=synth.root, leaf_signed_by=ec.generate_private_key(ec.SECP256R1()))
    assert _code(bad.chain, [synth.anchor], verified_cache=cache) == "chain_signature_invalid"


def test_policy_software_level_fails_security_level() -> None:
    synth = make_chain(security_level=SecurityLevel.SOFTWARE)
    violation = _rule(synth.chain, [synth.anchor])
    assert (violation.rule, violation.seen, violation.required) == (
        "security_level",
        "SOFTWARE",
        "TRUSTED_ENVIRONMENT",
    )


def test_policy_lower_of_two_levels_used_fails_strongbox_minimum() -> None:
    synth = make_chain(
        security_level=SecurityLevel.STRONG_BOX,
        keymint_security_level=SecurityLevel.TRUSTED_ENVIRONMENT,
    )
    policy = AndroidPolicy(min_security_level=SecurityLevel.STRONG_BOX)
    assert _rule(synth.chain, [synth.anchor], policy=policy).rule == "security_level"


def test_policy_unlocked_bootloader_fails_device_locked() -> None:
    synth = make_chain(device_locked=False)
    assert _rule(synth.chain, [synth.anchor]).rule == "device_locked"


def test_policy_unverified_boot_fails_verified_boot() -> None:
    synth = make_chain(verified_boot_state=VerifiedBootState.UNVERIFIED)
    assert _rule(synth.chain, [synth.anchor]).rule == "verified_boot"


def test_policy_self_signed_boot_with_allowed_key_passes() -> None:
    synth = make_chain(verified_boot_state=VerifiedBootState.SELF_SIGNED)
    assert _rule(synth.chain, [synth.anchor]).rule == "verified_boot"
    policy = AndroidPolicy(allowed_verified_boot_keys=frozenset({DEFAULT_BOOT_KEY}))
    _verify(synth.chain, [synth.anchor], policy=policy)


def test_policy_wrong_package_fails_package_name() -> None:
    synth = make_chain(package_name="com.evil.app")
    violation = _rule(synth.chain, [synth.anchor])
    assert violation.rule == "package_name"
    assert violation.seen == ["com.evil.app"]


def test_policy_wrong_signer_fails_signer_digest() -> None:
    synth = make_chain(signer_digest=b"\x01" * 32)
    assert _rule(synth.chain, [synth.anchor]).rule == "signer_digest"


def test_policy_old_patch_level_fails_os_patch_level() -> None:
    synth = make_chain(os_patch_level=202312)
    violation = _rule(synth.chain, [synth.anchor])
    assert (violation.rule, violation.seen, violation.required) == (
        "os_patch_level",
        202312,
        202501,
    )


def test_policy_imported_key_fails_key_origin() -> None:
    synth = make_chain(origin=2)
    assert _rule(synth.chain, [synth.anchor]).rule == "key_origin"


def test_policy_encrypt_only_key_fails_key_purpose() -> None:
    synth = make_chain(purposes=(0, 1))
    assert _rule(synth.chain, [synth.anchor]).rule == "key_purpose"


def test_policy_p384_leaf_fails_key_algorithm() -> None:
    synth = make_chain(leaf_key=ec.generate_private_key(ec.SECP384R1()))
    assert _rule(synth.chain, [synth.anchor]).rule == "key_algorithm"
