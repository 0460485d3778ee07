"""The pure Play Integrity verdict check: every rejection path with its code."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from platform_verifiers.android.play_integrity import (
    PlayIntegrityPolicy,
    integrity_binding,
    verify_integrity_payload,
)
from platform_verifiers.errors import PolicyViolation, VerificationError

from .play_integrity_stand_in import verdict_payload
from .synth import DEFAULT_PACKAGE, DEFAULT_SIGNER

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BINDING = integrity_binding("challenge-text", "thumbprint-text")


def _check(payload: dict[str, Any], *, policy: PlayIntegrityPolicy | None = None, **kw: Any) -> Any:
    return verify_integrity_payload(
        payload,
        request_type=kw.pop("request_type", "standard"),
        expected_binding=kw.pop("expected_binding", BINDING),
        package_names=frozenset({DEFAULT_PACKAGE}),
        signer_digests=frozenset({DEFAULT_SIGNER}),
        policy=policy or PlayIntegrityPolicy(),
        now=kw.pop("now", NOW),
    )


def _payload(**kw: Any) -> dict[str, Any]:
    return verdict_payload(
        binding=BINDING, package=DEFAULT_PACKAGE, signer=DEFAULT_SIGNER, now=NOW, **kw
    )


def test_integrity_binding_is_base64url_sha256_of_challenge_and_thumbprint() -> None:
    import base64
    import hashlib

    expected = base64.urlsafe_b64encode(hashlib.sha256(b"c.t").digest()).rstrip(b"=").decode()
    assert integrity_binding("c", "t") == expected
    assert len(expected) == 43


@pytest.mark.parametrize("request_type", ["standard", "classic"])
def test_verdict_genuine_passes_with_facts(request_type: str) -> None:
    verdict = _check(_payload(request_type=request_type), request_type=request_type)
    assert verdict.request_type == request_type
    assert verdict.device_recognition_verdict == ("MEETS_BASIC_INTEGRITY", "MEETS_DEVICE_INTEGRITY")
    assert verdict.app_licensing_verdict == "LICENSED"
    assert verdict.device_activity_level == "LEVEL_1"


def test_verdict_classic_nonce_in_standard_mode_binding_mismatch() -> None:
    with pytest.raises(VerificationError) as info:
        _check(_payload(request_type="classic"), request_type="standard")
    assert info.value.code == "integrity_binding_mismatch"


def test_verdict_other_challenge_binding_mismatch() -> None:
    with pytest.raises(VerificationError) as info:
        _check(_payload(), expected_binding=integrity_binding("other", "thumbprint-text"))
    assert info.value.code == "integrity_binding_mismatch"


def test_verdict_request_package_foreign_package_mismatch() -> None:
    payload = _payload()
    payload["requestDetails"]["requestPackageName"] = "com.evil"
    with pytest.raises(VerificationError) as info:
        _check(payload)
    assert info.value.code == "integrity_package_mismatch"


def test_verdict_app_package_foreign_package_mismatch() -> None:
    payload = _payload()
    payload["appIntegrity"]["packageName"] = "com.evil"
    with pytest.raises(VerificationError) as info:
        _check(payload)
    assert info.value.code == "integrity_package_mismatch"


def test_verdict_foreign_signer_certificate_mismatch() -> None:
    payload = verdict_payload(
        binding=BINDING, package=DEFAULT_PACKAGE, signer=b"\x01" * 32, now=NOW
    )
    with pytest.raises(VerificationError) as info:
        _check(payload)
    assert info.value.code == "integrity_certificate_mismatch"


def test_verdict_old_timestamp_stale() -> None:
    with pytest.raises(VerificationError) as info:
        _check(_payload(), now=NOW + timedelta(minutes=6))
    assert info.value.code == "integrity_token_stale"


def test_verdict_future_timestamp_future() -> None:
    with pytest.raises(VerificationError) as info:
        _check(_payload(), now=NOW - timedelta(minutes=5))
    assert info.value.code == "integrity_token_future"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.pop("requestDetails"),
        lambda p: p.pop("appIntegrity"),
        lambda p: p.pop("deviceIntegrity"),
        lambda p: p["requestDetails"].pop("timestampMillis"),
        lambda p: p["appIntegrity"].pop("certificateSha256Digest"),
        lambda p: p["deviceIntegrity"].update(deviceRecognitionVerdict="MEETS_DEVICE_INTEGRITY"),
    ],
    ids=["no-request", "no-app", "no-device", "no-time", "no-digest", "labels-not-list"],
)
def test_verdict_missing_member_malformed(mutate: Any) -> None:
    payload = _payload()
    mutate(payload)
    with pytest.raises(VerificationError) as info:
        _check(payload)
    assert info.value.code == "integrity_payload_malformed"


def test_verdict_unrecognized_app_policy_violation() -> None:
    with pytest.raises(PolicyViolation) as info:
        _check(_payload(recognition="UNRECOGNIZED_VERSION"))
    assert info.value.rule == "pi_app_recognition"


def test_verdict_basic_only_device_policy_violation() -> None:
    with pytest.raises(PolicyViolation) as info:
        _check(_payload(labels=("MEETS_BASIC_INTEGRITY",)))
    assert info.value.rule == "pi_device_recognition"


def test_verdict_strong_required_device_only_policy_violation() -> None:
    policy = PlayIntegrityPolicy(required_device_labels=frozenset({"MEETS_STRONG_INTEGRITY"}))
    with pytest.raises(PolicyViolation) as info:
        _check(_payload(), policy=policy)
    assert info.value.rule == "pi_device_recognition"


def test_verdict_unlicensed_policy_violation() -> None:
    with pytest.raises(PolicyViolation) as info:
        _check(_payload(licensing="UNLICENSED"))
    assert info.value.rule == "pi_licensing"


def test_verdict_unlicensed_allowed_by_policy_passes() -> None:
    verdict = _check(
        _payload(licensing="UNLICENSED"), policy=PlayIntegrityPolicy(require_licensed=False)
    )
    assert verdict.app_licensing_verdict == "UNLICENSED"


def test_verdict_high_activity_policy_violation() -> None:
    policy = PlayIntegrityPolicy(max_device_activity_level="LEVEL_2")
    assert _check(_payload(activity="LEVEL_2"), policy=policy).device_activity_level == "LEVEL_2"
    with pytest.raises(PolicyViolation) as info:
        _check(_payload(activity="LEVEL_3"), policy=policy)
    assert info.value.rule == "pi_device_activity"


def test_verdict_activity_absent_when_checked_policy_violation() -> None:
    policy = PlayIntegrityPolicy(max_device_activity_level="LEVEL_4")
    with pytest.raises(PolicyViolation) as info:
        _check(_payload(activity=None), policy=policy)
    assert info.value.rule == "pi_device_activity"


def test_verdict_naive_now_value_error() -> None:
    with pytest.raises(ValueError):
        _check(_payload(), now=NOW.replace(tzinfo=None))


def test_verdict_payload_not_mutated() -> None:
    payload = _payload()
    before = copy.deepcopy(payload)
    _check(payload)
    assert payload == before


# -- review: the binding covers the key, unknown verdict values fail closed ------------------
def test_verdict_other_instance_key_binding_mismatch() -> None:
    with pytest.raises(VerificationError) as info:
        _check(_payload(), expected_binding=integrity_binding("challenge-text", "other-key"))
    assert info.value.code == "integrity_binding_mismatch"


RELAXED = PlayIntegrityPolicy(
    required_device_labels=frozenset(),
    require_play_recognized=False,
    require_licensed=False,
    max_device_activity_level="LEVEL_4",
    allow_unevaluated_activity=True,
)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (
            lambda p: p["appIntegrity"].update(appRecognitionVerdict="PLAY_MAYBE"),
            "appRecognitionVerdict",
        ),
        (
            lambda p: p["deviceIntegrity"]["deviceRecognitionVerdict"].append("MEETS_NEW_THING"),
            "deviceRecognitionVerdict",
        ),
        (
            lambda p: p["deviceIntegrity"]["recentDeviceActivity"].update(
                deviceActivityLevel="LEVEL_9"
            ),
            "deviceActivityLevel",
        ),
        (
            lambda p: p["deviceIntegrity"]["recentDeviceActivity"].update(
                deviceActivityLevel=["LEVEL_1"]
            ),
            "deviceActivityLevel",
        ),
        (
            lambda p: p["accountDetails"].update(appLicensingVerdict="LICENSED_ISH"),
            "appLicensingVerdict",
        ),
        (lambda p: p["accountDetails"].update(appLicensingVerdict={"a": 1}), "appLicensingVerdict"),
    ],
    ids=["recognition", "device-label", "activity", "activity-list", "licensing", "licensing-obj"],
)
def test_verdict_unknown_value_under_relaxed_policy_verdict_unknown(
    mutate: Any, field: str
) -> None:
    payload = _payload()
    mutate(payload)
    for policy in (PlayIntegrityPolicy(max_device_activity_level="LEVEL_4"), RELAXED):
        with pytest.raises(VerificationError) as info:
            _check(copy.deepcopy(payload), policy=policy)
        assert info.value.code == "integrity_verdict_unknown"
        assert info.value.detail["field"] == field


@pytest.mark.parametrize(
    "millis", [True, "1_700_000_000_000", " 1700000000000", "-5", 1.5e12, "1e12", "9" * 40]
)
def test_verdict_timestamp_not_an_int64_malformed(millis: Any) -> None:
    payload = _payload()
    payload["requestDetails"]["timestampMillis"] = millis
    with pytest.raises(VerificationError) as info:
        _check(payload)
    assert info.value.code == "integrity_payload_malformed"


def test_verdict_timestamp_as_json_number_accepted() -> None:
    payload = _payload()
    payload["requestDetails"]["timestampMillis"] = int(NOW.timestamp() * 1000)
    assert _check(payload).timestamp == NOW


# -- review: any JSON value in any verdict field verifies or raises VerificationError ---------
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
_PATHS = [
    ("requestDetails",),
    ("requestDetails", "requestHash"),
    ("requestDetails", "requestPackageName"),
    ("requestDetails", "timestampMillis"),
    ("appIntegrity",),
    ("appIntegrity", "appRecognitionVerdict"),
    ("appIntegrity", "packageName"),
    ("appIntegrity", "certificateSha256Digest"),
    ("deviceIntegrity",),
    ("deviceIntegrity", "deviceRecognitionVerdict"),
    ("deviceIntegrity", "recentDeviceActivity"),
    ("deviceIntegrity", "recentDeviceActivity", "deviceActivityLevel"),
    ("accountDetails",),
    ("accountDetails", "appLicensingVerdict"),
]


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(_PATHS), _JSON), min_size=1, max_size=4), st.booleans())
def test_verdict_any_field_value_verifies_or_raises_verification_error(
    edits: list[tuple[tuple[str, ...], Any]], relaxed: bool
) -> None:
    payload: Any = _payload()
    for path, value in edits:
        node = payload
        for name in path[:-1]:
            if not isinstance(node, dict) or not isinstance(node.get(name), dict):
                break
            node = node[name]
        else:
            if isinstance(node, dict):
                node[path[-1]] = value
    policy = RELAXED if relaxed else PlayIntegrityPolicy(max_device_activity_level="LEVEL_2")
    try:
        _check(payload, policy=policy)
    except VerificationError:
        pass
