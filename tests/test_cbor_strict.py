"""Strict CBOR for evidence (platform_verifiers/cbor.py): one reading of the bytes only.

A map with a key twice and indefinite lengths are refused wherever evidence is CBOR: the
App Attest attestation object and assertion, the COSE key in authenticator data and
Android's ProvisioningInfo extension. Key order and non-minimal lengths change no value
and are read as before.
"""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from platform_verifiers.android.extensions import extension_problem
from platform_verifiers.android.schema import PROVISIONING_INFO_OID
from platform_verifiers.apple import parse_assertion, parse_attestation_object
from platform_verifiers.apple.parse import parse_authenticator_data
from platform_verifiers.cbor import decode_first_cbor_item, decode_single_cbor_item
from platform_verifiers.der import RawExtension
from platform_verifiers.errors import VerificationError

from .apple.synth import (
    SYNTH_NOW,
    build_auth_data,
    make_assertion,
    make_attestation,
    make_test_root,
)

APP_ID = "ABCDE12345.com.example.wallet"
CDH = hashlib.sha256(b"client data").digest()


def _decode(data: bytes) -> object:
    return decode_single_cbor_item(data, code="x_malformed", what="the item")


def _refused(data: bytes) -> str:
    with pytest.raises(VerificationError) as info:
        _decode(data)
    assert info.value.code == "x_malformed"
    return info.value.message


def _item(key: object, value: object) -> bytes:
    return cbor2.dumps(key) + cbor2.dumps(value)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xa2" + _item("a", 1) + _item("a", 2), "key twice"),
        # the same key, its length written two ways: the same value, so the same key
        (b"\xa2" + b"\x61a" + cbor2.dumps(1) + b"\x78\x01a" + cbor2.dumps(2), "key twice"),
        (b"\xa2" + _item(1, "x") + b"\x18\x01" + cbor2.dumps("y"), "key twice"),
        (b"\xa2" + _item(-1, "x") + b"\x38\x00" + cbor2.dumps("y"), "key twice"),
        (b"\xa2" + _item(b"k", 1) + _item(b"k", 2), "key twice"),
        (b"\x81\xa2" + _item("a", 1) + _item("a", 1), "key twice"),  # in an array
        (b"\xbf" + _item("a", 1) + b"\xff", "indefinite length"),
        (b"\x9f\x01\xff", "indefinite length"),
        (b"\x5f\x41a\x41b\xff", "indefinite length"),
        (b"\x7f\x61a\x61b\xff", "indefinite length"),
        (b"\xa1\x81\x01\x02", "not an integer or a string"),  # an array as a key
        (b"\xa1\xc1\x01\x02", "not an integer or a string"),  # a tagged key
    ],
)
def test_strict_cbor_refuses_two_readings(data: bytes, why: str) -> None:
    assert why in _refused(data)


def test_strict_cbor_keeps_keys_of_other_types_apart_and_reads_every_legal_form() -> None:
    # 1, -1, "1", b"1" are four keys; keys in any order; non-minimal lengths; tags on values
    data = b"\xa5" + _item(1, 0) + _item(-1, 0) + _item("1", 0) + _item(b"1", 0)
    data += b"\x78\x03key" + b"\xd8\x18\x59\x00\x01\x00"  # "key": 24(h'00'), lengths widened
    assert _decode(data) == {1: 0, -1: 0, "1": 0, b"1": 0, "key": cbor2.CBORTag(24, b"\x00")}
    assert _decode(cbor2.dumps({"z": [1, {"y": 2}], "a": []})) == {"z": [1, {"y": 2}], "a": []}
    assert decode_first_cbor_item(b"\xa0\x01\x02", code="c", what="w") == ({}, 1)


def test_strict_cbor_refuses_a_break_or_reserved_head_cbor2_reads_as_an_item() -> None:
    for data in (b"\xff", b"\x1c", b"\xfc"):
        with pytest.raises(VerificationError):
            _decode(data)


@pytest.fixture(scope="module")
def attestation() -> bytes:
    root = make_test_root()
    obj, _, _ = make_attestation(
        root_key=root.key, root_cert=root.cert, client_data_hash=CDH,
        app_id=APP_ID, environment="production", now=SYNTH_NOW,
    )
    assert obj[0] == 0xA3  # {fmt, attStmt, authData}
    return obj


def test_attestation_object_with_a_key_twice_fails_attestation_malformed(
    attestation: bytes,
) -> None:
    parse_attestation_object(attestation)
    fields = cbor2.loads(attestation)
    receipt, x5c = fields["attStmt"]["receipt"], fields["attStmt"]["x5c"]
    statement = b"\xa3" + _item("receipt", b"other") + _item("x5c", x5c) + _item("receipt", receipt)
    for changed in (
        b"\xa4" + _item("fmt", "packed") + attestation[1:],  # a first-wins reader: "packed"
        b"\xa4" + _item("authData", b"\x00" * 37) + attestation[1:],
        b"\xa3" + _item("fmt", fields["fmt"]) + cbor2.dumps("attStmt") + statement
        + _item("authData", fields["authData"]),
        b"\xbf" + attestation[1:] + b"\xff",
    ):
        with pytest.raises(VerificationError) as info:
            parse_attestation_object(changed)
        assert info.value.code == "attestation_malformed"


def test_assertion_with_a_key_twice_fails_assertion_malformed() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assertion = make_assertion(key, client_data_hash=CDH, app_id=APP_ID, counter=3)
    assert assertion[0] == 0xA2
    parse_assertion(assertion)
    for first in (_item("authenticatorData", b"\x01" * 37), _item("signature", b"\x30\x00")):
        with pytest.raises(VerificationError) as info:
            parse_assertion(b"\xa3" + first + assertion[1:])
        assert info.value.code == "assertion_malformed"


def test_cose_key_with_a_label_twice_fails_attestation_malformed() -> None:
    point = bytes(65)
    cose = b"\xa6" + _item(1, 2) + _item(3, -7) + _item(-1, 1) + _item(-2, point[1:33])
    cose += _item(-3, point[33:]) + _item(-2, b"\x01" * 32)  # x twice: the last would win
    data = build_auth_data(app_id=APP_ID, counter=0, aaguid=b"appattest" + bytes(7),
                           credential_id=b"id", cose_key=cose)
    with pytest.raises(VerificationError) as info:
        parse_authenticator_data(data, with_credential=True, code="attestation_malformed")
    assert info.value.code == "attestation_malformed"
    assert "credential public key" in info.value.message


def test_provisioning_info_with_a_key_twice_fails_extension_malformed() -> None:
    def problem(value: bytes) -> tuple[str, str, str] | None:
        return extension_problem([RawExtension(PROVISIONING_INFO_OID, False, value)])

    assert problem(bytes.fromhex("a1010a")) is None  # {1: 10}, as RKP certificates carry
    for value in (bytes.fromhex("a2010a010b"), bytes.fromhex("bf010aff")):
        found = problem(value)
        assert found is not None and found[0] == "extension_malformed"
