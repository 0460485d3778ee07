"""Synthetic App Attest evidence: one test per rejection code, plus the happy paths."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from platform_verifiers.apple import (
    ASSERTION_ERROR_CODES,
    ATTESTATION_ERROR_CODES,
    MAX_ATTESTATION_BYTES,
    verify_assertion,
    verify_attestation,
)
from platform_verifiers.errors import VerificationError

from .synth import (
    SYNTH_NOW,
    SynthRoot,
    encode_nonce_extension,
    make_assertion,
    make_attestation,
    uncompressed_point,
)

APP_ID = "ABCDE12345.com.example.wallet"
CDH = hashlib.sha256(b'{"challenge":"abc","jwk":{}}').digest()
NOW = SYNTH_NOW


def _attest(root: SynthRoot, **overrides: Any) -> tuple[bytes, bytes, ec.EllipticCurvePrivateKey]:
    kwargs: dict[str, Any] = {
        "root_key": root.key,
        "root_cert": root.cert,
        "client_data_hash": CDH,
        "app_id": APP_ID,
        "environment": "production",
        "now": NOW,
    }
    kwargs.update(overrides)
    return make_attestation(**kwargs)


def _verify(root: SynthRoot, obj: bytes, key_id: bytes, **overrides: Any) -> Any:
    kwargs: dict[str, Any] = {
        "attestation_object": obj,
        "key_id": key_id,
        "client_data_hash": CDH,
        "app_ids": [APP_ID],
        "environment": "production",
        "anchors": [root.anchor],
        "now": NOW,
    }
    kwargs.update(overrides)
    return verify_attestation(**kwargs)


def _code(root: SynthRoot, obj: bytes, key_id: bytes, **overrides: Any) -> str:
    with pytest.raises(VerificationError) as info:
        _verify(root, obj, key_id, **overrides)
    assert info.value.code in ATTESTATION_ERROR_CODES
    return info.value.code


# --- attestation: accepted ---------------------------------------------------------------


def test_verify_attestation_genuine_production_passes(synth_root: SynthRoot) -> None:
    obj, key_id, device_key = _attest(synth_root)
    result = _verify(synth_root, obj, key_id)
    assert result.key_id == key_id
    assert result.public_key == uncompressed_point(device_key)
    assert result.counter == 0
    assert result.app_id == APP_ID
    assert result.environment == "production"
    assert result.receipt == b"synthetic receipt"


def test_verify_attestation_genuine_development_passes(synth_root: SynthRoot) -> None:
    obj, key_id, _ = _attest(synth_root, environment="development")
    assert _verify(synth_root, obj, key_id, environment="development").environment == "development"


def test_verify_attestation_second_app_id_in_list_passes(synth_root: SynthRoot) -> None:
    obj, key_id, _ = _attest(synth_root)
    result = _verify(synth_root, obj, key_id, app_ids=["OTHER12345.com.example.x", APP_ID])
    assert result.app_id == APP_ID


def test_verify_attestation_unannounced_trailing_auth_data_passes(synth_root: SynthRoot) -> None:
    trailing = cbor2.dumps({"apple_bundle_version_01": "1"})
    obj, key_id, _ = _attest(synth_root, auth_data_extensions=trailing)
    assert _verify(synth_root, obj, key_id).auth_data.extensions == trailing


def test_verify_attestation_root_included_in_x5c_passes(synth_root: SynthRoot) -> None:
    obj, key_id, _ = _attest(synth_root, include_root=True)
    assert _verify(synth_root, obj, key_id).key_id == key_id


# --- attestation: one rejection code each -------------------------------------------------


def test_verify_attestation_wrong_client_data_hash_fails_nonce_mismatch(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root)
    assert _code(synth_root, obj, key_id, client_data_hash=b"\x00" * 32) == "nonce_mismatch"


def test_verify_attestation_wrong_nonce_in_certificate_fails_nonce_mismatch(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root, nonce=b"\x01" * 32)
    assert _code(synth_root, obj, key_id) == "nonce_mismatch"


def test_verify_attestation_missing_extension_fails_nonce_extension_missing(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root, include_nonce_extension=False)
    assert _code(synth_root, obj, key_id) == "nonce_extension_missing"


def test_verify_attestation_bare_octet_string_extension_fails_nonce_extension_malformed(
    synth_root: SynthRoot,
) -> None:
    # A verifier that slices the last 32 bytes would accept this; decoding rejects it.
    fake = b"\x04\x20" + b"\x00" * 32
    obj, key_id, _ = _attest(synth_root, nonce_extension_value=fake)
    assert _code(synth_root, obj, key_id) == "nonce_extension_malformed"


def test_verify_attestation_extension_with_trailing_bytes_fails_nonce_extension_malformed(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(
        synth_root, nonce_extension_value=encode_nonce_extension(b"\x00" * 32) + b"\x00"
    )
    assert _code(synth_root, obj, key_id) == "nonce_extension_malformed"


def test_verify_attestation_wrong_key_id_fails_key_id_mismatch(synth_root: SynthRoot) -> None:
    obj, _, _ = _attest(synth_root)
    assert _code(synth_root, obj, hashlib.sha256(b"other").digest()) == "key_id_mismatch"


def test_verify_attestation_wrong_credential_id_fails_credential_id_mismatch(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root, credential_id=b"\x07" * 32)
    assert _code(synth_root, obj, key_id) == "credential_id_mismatch"


def test_verify_attestation_wrong_app_id_fails_app_id_mismatch(synth_root: SynthRoot) -> None:
    obj, key_id, _ = _attest(synth_root)
    assert _code(synth_root, obj, key_id, app_ids=[APP_ID + ".other"]) == "app_id_mismatch"


def test_verify_attestation_counter_not_zero_fails_counter_not_zero(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root, counter=1)
    assert _code(synth_root, obj, key_id) == "counter_not_zero"


def test_verify_attestation_development_key_for_production_app_fails_environment_mismatch(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root, environment="development")
    assert _code(synth_root, obj, key_id) == "environment_mismatch"


def test_verify_attestation_production_key_for_development_app_fails_environment_mismatch(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root)
    assert _code(synth_root, obj, key_id, environment="development") == "environment_mismatch"


def test_verify_attestation_expired_leaf_fails_certificate_expired(synth_root: SynthRoot) -> None:
    obj, key_id, _ = _attest(synth_root, leaf_not_after=NOW - timedelta(seconds=1))
    assert _code(synth_root, obj, key_id) == "certificate_expired"


def test_verify_attestation_after_leaf_lifetime_fails_certificate_expired(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root)
    later = NOW + timedelta(days=3)
    assert _code(synth_root, obj, key_id, now=later) == "certificate_expired"


def test_verify_attestation_future_leaf_fails_certificate_not_yet_valid(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root, leaf_not_before=NOW + timedelta(hours=1))
    assert _code(synth_root, obj, key_id) == "certificate_not_yet_valid"


def test_verify_attestation_untrusted_root_fails_chain_untrusted(
    synth_root: SynthRoot, other_root: SynthRoot
) -> None:
    obj, key_id, _ = _attest(other_root)
    assert _code(synth_root, obj, key_id) == "chain_untrusted"


def test_verify_attestation_look_alike_root_name_fails_chain_untrusted(
    synth_root: SynthRoot,
) -> None:
    from .synth import make_test_root

    impostor = make_test_root("Test App Attestation Root CA")  # same name, different key
    obj, key_id, _ = _attest(impostor)
    assert _code(synth_root, obj, key_id) == "chain_untrusted"


def test_verify_attestation_real_apple_root_rejects_test_chain_chain_untrusted(
    synth_root: SynthRoot,
) -> None:
    from platform_verifiers.apple import apple_app_attest_roots

    obj, key_id, _ = _attest(synth_root)
    assert _code(synth_root, obj, key_id, anchors=apple_app_attest_roots()) == "chain_untrusted"


def test_verify_attestation_intermediate_not_ca_fails_chain_untrusted(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root, intermediate_is_ca=False)
    assert _code(synth_root, obj, key_id) == "chain_untrusted"


def test_verify_attestation_intermediate_without_key_cert_sign_fails_chain_untrusted(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root, intermediate_key_cert_sign=False)
    assert _code(synth_root, obj, key_id) == "chain_untrusted"


def test_verify_attestation_leaf_signed_by_stranger_fails_chain_signature_invalid(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root, break_leaf_signature=True)
    assert _code(synth_root, obj, key_id) == "chain_signature_invalid"


def test_verify_attestation_malformed_cbor_fails_attestation_malformed(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root)
    assert _code(synth_root, obj[:-10], key_id) == "attestation_malformed"
    assert _code(synth_root, b"\xff\x00garbage", key_id) == "attestation_malformed"
    assert _code(synth_root, obj + b"\x00", key_id) == "attestation_malformed"
    assert _code(synth_root, cbor2.dumps([1, 2]), key_id) == "attestation_malformed"


_MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], object]]] = [
    ("no-attStmt", lambda d: d.pop("attStmt")),
    ("no-receipt", lambda d: d["attStmt"].pop("receipt")),
    ("empty-x5c", lambda d: d["attStmt"].__setitem__("x5c", [])),
    ("bad-cert", lambda d: d["attStmt"].__setitem__("x5c", [b"not a certificate", b"x"])),
    ("short-authData", lambda d: d.__setitem__("authData", d["authData"][:40])),
    ("text-authData", lambda d: d.__setitem__("authData", "text")),
    ("no-fmt", lambda d: d.pop("fmt")),
]


@pytest.mark.parametrize("mutate", [pytest.param(m, id=name) for name, m in _MUTATIONS])
def test_verify_attestation_missing_or_bad_field_fails_attestation_malformed(
    synth_root: SynthRoot, mutate: Callable[[dict[str, Any]], object]
) -> None:
    obj, key_id, _ = _attest(synth_root)
    item = cbor2.loads(obj)
    mutate(item)
    assert _code(synth_root, cbor2.dumps(item), key_id) == "attestation_malformed"


def test_verify_attestation_oversized_input_fails_attestation_too_large(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root, receipt=b"\x00" * MAX_ATTESTATION_BYTES)
    assert _code(synth_root, obj, key_id) == "attestation_too_large"


def test_verify_attestation_wrong_fmt_fails_attestation_format_unsupported(
    synth_root: SynthRoot,
) -> None:
    obj, key_id, _ = _attest(synth_root, fmt="packed")
    assert _code(synth_root, obj, key_id) == "attestation_format_unsupported"


# --- attestation: caller mistakes are not evidence failures -------------------------------


def test_verify_attestation_naive_now_raises_value_error(synth_root: SynthRoot) -> None:
    obj, key_id, _ = _attest(synth_root)
    with pytest.raises(ValueError, match="timezone"):
        _verify(synth_root, obj, key_id, now=datetime(2026, 6, 1, 12))


def test_verify_attestation_no_anchors_raises_value_error(synth_root: SynthRoot) -> None:
    obj, key_id, _ = _attest(synth_root)
    with pytest.raises(ValueError, match="trust anchors"):
        _verify(synth_root, obj, key_id, anchors=[])


def test_verify_attestation_app_ids_as_string_raises_value_error(synth_root: SynthRoot) -> None:
    obj, key_id, _ = _attest(synth_root)
    with pytest.raises(ValueError, match="app_ids"):
        _verify(synth_root, obj, key_id, app_ids=APP_ID)


# --- assertion ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def device(synth_root: SynthRoot) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    obj, key_id, device_key = _attest(synth_root)
    return device_key, _verify(synth_root, obj, key_id).public_key


def _assert_code(public_key: bytes, assertion: bytes, **overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "assertion": assertion,
        "public_key": public_key,
        "client_data_hash": CDH,
        "app_ids": [APP_ID],
        "previous_counter": 0,
    }
    kwargs.update(overrides)
    with pytest.raises(VerificationError) as info:
        verify_assertion(**kwargs)
    assert info.value.code in ASSERTION_ERROR_CODES
    return info.value.code


def test_verify_assertion_genuine_passes_with_point_and_spki(
    device: tuple[ec.EllipticCurvePrivateKey, bytes],
) -> None:
    device_key, point = device
    assertion = make_assertion(device_key, client_data_hash=CDH, app_id=APP_ID, counter=5)
    spki = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    from cryptography.hazmat.primitives import serialization

    spki_der = spki.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for key in (point, spki_der):
        result = verify_assertion(
            assertion=assertion,
            public_key=key,
            client_data_hash=CDH,
            app_ids=[APP_ID],
            previous_counter=4,
        )
        assert result.counter == 5
        assert result.app_id == APP_ID


def test_verify_assertion_appended_extension_data_passes(
    device: tuple[ec.EllipticCurvePrivateKey, bytes],
) -> None:
    device_key, point = device
    extra = cbor2.dumps({"apple_validation_category_01": b"\x01\x00\x00\x00"})
    assertion = make_assertion(
        device_key, client_data_hash=CDH, app_id=APP_ID, counter=2, extensions=extra
    )
    result = verify_assertion(
        assertion=assertion,
        public_key=point,
        client_data_hash=CDH,
        app_ids=[APP_ID],
        previous_counter=1,
    )
    assert result.auth_data.extensions == extra


def test_verify_assertion_replayed_counter_fails_counter_not_increasing(
    device: tuple[ec.EllipticCurvePrivateKey, bytes],
) -> None:
    device_key, point = device
    assertion = make_assertion(device_key, client_data_hash=CDH, app_id=APP_ID, counter=3)
    assert _assert_code(point, assertion, previous_counter=3) == "counter_not_increasing"


def test_verify_assertion_lower_counter_fails_counter_not_increasing(
    device: tuple[ec.EllipticCurvePrivateKey, bytes],
) -> None:
    device_key, point = device
    assertion = make_assertion(device_key, client_data_hash=CDH, app_id=APP_ID, counter=2)
    assert _assert_code(point, assertion, previous_counter=7) == "counter_not_increasing"


def test_verify_assertion_wrong_key_fails_assertion_signature_invalid(
    device: tuple[ec.EllipticCurvePrivateKey, bytes],
) -> None:
    _, point = device
    stranger = ec.generate_private_key(ec.SECP256R1())
    assertion = make_assertion(stranger, client_data_hash=CDH, app_id=APP_ID, counter=1)
    assert _assert_code(point, assertion) == "assertion_signature_invalid"


def test_verify_assertion_other_client_data_fails_assertion_signature_invalid(
    device: tuple[ec.EllipticCurvePrivateKey, bytes],
) -> None:
    device_key, point = device
    assertion = make_assertion(device_key, client_data_hash=CDH, app_id=APP_ID, counter=1)
    other = hashlib.sha256(b"other").digest()
    assert _assert_code(point, assertion, client_data_hash=other) == "assertion_signature_invalid"


def test_verify_assertion_wrong_app_id_fails_app_id_mismatch(
    device: tuple[ec.EllipticCurvePrivateKey, bytes],
) -> None:
    device_key, point = device
    assertion = make_assertion(
        device_key, client_data_hash=CDH, app_id="ZZZZZ99999.com.evil.app", counter=1
    )
    assert _assert_code(point, assertion) == "app_id_mismatch"


def test_verify_assertion_malformed_cbor_fails_assertion_malformed(
    device: tuple[ec.EllipticCurvePrivateKey, bytes],
) -> None:
    device_key, point = device
    good = make_assertion(device_key, client_data_hash=CDH, app_id=APP_ID, counter=1)
    assert _assert_code(point, good[:-3]) == "assertion_malformed"
    assert _assert_code(point, cbor2.dumps({"signature": b"x"})) == "assertion_malformed"
    short = cbor2.dumps({"signature": b"x", "authenticatorData": b"\x00" * 36})
    assert _assert_code(point, short) == "assertion_malformed"
    assert _assert_code(point, b"\x00" * 20_000) == "assertion_malformed"


def test_verify_assertion_bad_public_key_raises_value_error() -> None:
    with pytest.raises(ValueError, match="public_key"):
        verify_assertion(
            assertion=b"",
            public_key=b"\x04" + b"\x00" * 64,
            client_data_hash=CDH,
            app_ids=[APP_ID],
            previous_counter=0,
        )
