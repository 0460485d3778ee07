"""Parsing attestation objects and assertions into frozen dataclasses."""

from __future__ import annotations

import dataclasses
import hashlib

import cbor2
import pytest

from platform_verifiers.apple import (
    AuthenticatorData,
    CoseKey,
    parse_assertion,
    parse_attestation_object,
)
from platform_verifiers.errors import VerificationError

from .synth import SYNTH_NOW, SynthRoot, make_assertion, make_attestation, uncompressed_point

APP_ID = "ABCDE12345.com.example.wallet"
CDH = hashlib.sha256(b"client data").digest()


def test_parse_attestation_object_synthetic_yields_plain_frozen_values(
    synth_root: SynthRoot,
) -> None:
    trailing = cbor2.dumps({"apple_bundle_version_01": "1"})
    obj, key_id, device_key = make_attestation(
        root_key=synth_root.key,
        root_cert=synth_root.cert,
        client_data_hash=CDH,
        app_id=APP_ID,
        environment="development",
        now=SYNTH_NOW,
        auth_data_extensions=trailing,
    )
    parsed = parse_attestation_object(obj)
    auth = parsed.auth_data
    assert parsed.fmt == "apple-appattest"
    assert isinstance(parsed.x5c, tuple) and all(type(c) is bytes for c in parsed.x5c)
    assert auth.rp_id_hash == hashlib.sha256(APP_ID.encode()).digest()
    assert auth.aaguid == b"appattestdevelop"
    assert auth.credential_id == key_id
    assert auth.extensions == trailing
    cose = auth.credential_public_key
    assert isinstance(cose, CoseKey)
    assert (cose.kty, cose.alg, cose.crv) == (2, -7, 1)
    assert cose.uncompressed_point == uncompressed_point(device_key)
    with pytest.raises(dataclasses.FrozenInstanceError):
        auth.counter = 1  # type: ignore[misc]


def test_parse_assertion_unknown_keys_and_appended_data_tolerated() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    raw = cbor2.loads(
        make_assertion(key, client_data_hash=CDH, app_id=APP_ID, counter=9, extensions=b"\xa0")
    )
    raw["futureField"] = 1
    parsed = parse_assertion(cbor2.dumps(raw))
    assert isinstance(parsed.auth_data, AuthenticatorData)
    assert parsed.auth_data.counter == 9
    assert parsed.auth_data.credential_id is None
    assert parsed.auth_data.extensions == b"\xa0"


def test_parse_attestation_object_trailing_cbor_bytes_fails_attestation_malformed(
    synth_root: SynthRoot,
) -> None:
    obj, _, _ = make_attestation(
        root_key=synth_root.key,
        root_cert=synth_root.cert,
        client_data_hash=CDH,
        app_id=APP_ID,
        environment="production",
        now=SYNTH_NOW,
    )
    with pytest.raises(VerificationError) as info:
        parse_attestation_object(obj + cbor2.dumps(0))
    assert info.value.code == "attestation_malformed"


def test_parse_attestation_object_deeply_nested_cbor_fails_attestation_malformed() -> None:
    with pytest.raises(VerificationError) as info:
        parse_attestation_object(b"\x81" * 50_000 + b"\x00")
    assert info.value.code == "attestation_malformed"
