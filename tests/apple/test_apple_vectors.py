"""Real App Attest evidence from ../shared/vectors, each checked at its own recorded time.

Every PASS sample must pass; every ``negative_checks`` variant (same bytes, one changed
verifier input) must fail with the code that names its reason.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from platform_verifiers.apple import (
    apple_app_attest_roots,
    verify_assertion,
    verify_attestation,
)
from platform_verifiers.apple.anchors import APPLE_APP_ATTESTATION_ROOT_CA_SHA256
from platform_verifiers.errors import VerificationError

from .vectors import MANIFEST, VECTORS_DIR, load_manifest_entries, negative_params, vector_params

ATTESTATION = "apple_appattest_attestation"
ASSERTION = "apple_appattest_assertion"


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _sample_bytes(entry: dict[str, Any]) -> bytes:
    return base64.b64decode((VECTORS_DIR / entry["path"]).read_text())


def _attestation_inputs(entry: dict[str, Any]) -> dict[str, Any]:
    expected = entry["expected"]
    return {
        "attestation_object": _sample_bytes(entry),
        "key_id": base64.b64decode(expected["key_id_b64"]),
        "client_data_hash": bytes.fromhex(expected["client_data_hash_hex"]),
        "app_ids": [expected["app_id"]],
        "environment": expected["environment"],
        "anchors": apple_app_attest_roots(),
        "now": _instant(expected["now"]),
    }


def _assertion_inputs(entry: dict[str, Any]) -> dict[str, Any]:
    expected = entry["expected"]
    public_key = serialization.load_pem_public_key(expected["public_key_pem"].encode())
    return {
        "assertion": _sample_bytes(entry),
        "public_key": public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "client_data_hash": bytes.fromhex(expected["client_data_hash_hex"]),
        "app_ids": [expected["app_id"]],
        "previous_counter": expected["previous_counter"],
    }


def _apply_attestation_change(inputs: dict[str, Any], change: str, expected: dict[str, Any]) -> str:
    """Apply a manifest ``change`` to the verifier inputs; return the code it must produce."""
    field, _, value = change.partition(" = ")
    if field == "now":
        inputs["now"] = _instant(value)
        return "certificate_expired"
    if field == "app_id":
        inputs["app_ids"] = [value]
        return "app_id_mismatch"
    if field == "expected environment":
        inputs["environment"] = value
        return "environment_mismatch"
    if field == "clientDataHash":
        challenge = base64.b64decode(expected["challenge_b64"])
        if value.startswith("raw challenge"):
            inputs["client_data_hash"] = challenge
        elif value.startswith("SHA-256(challenge)"):
            inputs["client_data_hash"] = hashlib.sha256(challenge).digest()
        else:
            pytest.fail(f"unknown clientDataHash change {change!r}")
        return "nonce_mismatch"
    pytest.fail(f"unknown negative check {change!r}: teach this test what it means")


def _apply_assertion_change(inputs: dict[str, Any], change: str, expected: dict[str, Any]) -> str:
    field, _, value = change.partition(" = ")
    if field == "previous_counter":
        inputs["previous_counter"] = int(value)
        return "counter_not_increasing"
    if field == "client_data":
        inputs["client_data_hash"] = hashlib.sha256(b"any other bytes").digest()
        return "assertion_signature_invalid"
    if field == "app_id":
        inputs["app_ids"] = [expected["app_id"] + ".another"]
        return "app_id_mismatch"
    pytest.fail(f"unknown negative check {change!r}: teach this test what it means")


@pytest.mark.parametrize("entry", vector_params(ATTESTATION))
def test_verify_attestation_real_sample_matches_manifest_verdict(entry: dict[str, Any]) -> None:
    expected = entry["expected"]
    inputs = _attestation_inputs(entry)
    if expected["verdict"] != "PASS":
        with pytest.raises(VerificationError):
            verify_attestation(**inputs)
        return
    result = verify_attestation(**inputs)
    assert result.key_id == inputs["key_id"]
    assert result.counter == expected["counter"] == 0
    assert result.environment == expected["environment"]
    assert result.auth_data.aaguid == bytes.fromhex(expected["aaguid_hex"])
    assert len(result.receipt) == expected["receipt_bytes"]
    pem = serialization.load_pem_public_key(expected["public_key_pem"].encode())
    assert result.public_key_der == pem.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(("entry", "check"), negative_params(ATTESTATION))
def test_verify_attestation_real_sample_negative_check_fails_with_code(
    entry: dict[str, Any], check: dict[str, Any]
) -> None:
    assert check["verdict"] == "FAIL"
    inputs = _attestation_inputs(entry)
    code = _apply_attestation_change(inputs, check["change"], entry["expected"])
    with pytest.raises(VerificationError) as info:
        verify_attestation(**inputs)
    assert info.value.code == code, check["why"]


@pytest.mark.parametrize("entry", vector_params(ASSERTION))
def test_verify_assertion_real_sample_matches_manifest_verdict(entry: dict[str, Any]) -> None:
    expected = entry["expected"]
    inputs = _assertion_inputs(entry)
    if expected["verdict"] != "PASS":
        with pytest.raises(VerificationError):
            verify_assertion(**inputs)
        return
    result = verify_assertion(**inputs)
    assert result.counter == expected["counter"]
    assert result.app_id == expected["app_id"]
    assert result.auth_data.rp_id_hash.hex() == expected["rpIdHash_hex"]


@pytest.mark.parametrize(("entry", "check"), negative_params(ASSERTION))
def test_verify_assertion_real_sample_negative_check_fails_with_code(
    entry: dict[str, Any], check: dict[str, Any]
) -> None:
    assert check["verdict"] == "FAIL"
    inputs = _assertion_inputs(entry)
    code = _apply_assertion_change(inputs, check["change"], entry["expected"])
    with pytest.raises(VerificationError) as info:
        verify_assertion(**inputs)
    assert info.value.code == code, check["why"]


def test_verify_attestation_ios27_sample_keeps_unannounced_extension_bytes() -> None:
    entries = [
        e for e in load_manifest_entries(ATTESTATION) if "2026" in e["path"] and "doc" in e["path"]
    ]
    if not entries:
        pytest.skip(f"Apple 2026 sample not found under {VECTORS_DIR}")
    result = verify_attestation(**_attestation_inputs(entries[0]))
    assert result.auth_data.flags & 0x80 == 0  # the ED flag does not announce them
    assert len(result.auth_data.raw) == 226
    assert len(result.auth_data.extensions) == 62


def test_apple_app_attest_roots_packaged_root_matches_pin_and_manifest() -> None:
    (anchor,) = apple_app_attest_roots()
    assert anchor.sha256 == APPLE_APP_ATTESTATION_ROOT_CA_SHA256
    assert anchor.source.startswith("https://www.apple.com/certificateauthority/")
    assert anchor.not_after.year == 2045
    assert anchor.certificate.subject.rfc4514_string() == (
        "ST=California,O=Apple Inc.,CN=Apple App Attestation Root CA"
    )
    roots = load_manifest_entries("trust_anchor_apple_app_attest")
    if not roots:
        pytest.skip(f"manifest not found at {MANIFEST}")
    assert roots[0]["expected"]["cert_sha256"] == anchor.sha256
