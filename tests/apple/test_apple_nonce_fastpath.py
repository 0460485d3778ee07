"""The canonical-DER nonce fast path agrees with the pyasn1 schema, which stays of record."""

from __future__ import annotations

import random

import pytest
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.error import PyAsn1Error

from platform_verifiers.apple._asn1 import (
    AppAttestNonce,
    _canonical_nonce,
    decode_app_attest_nonce,
)

CANONICAL = bytes.fromhex("3024a1220420") + bytes(range(32))


def _pyasn1(value: bytes) -> bytes | None:
    try:
        decoded, rest = der_decoder.decode(value, asn1Spec=AppAttestNonce())
    except PyAsn1Error:
        return None
    return None if rest else bytes(decoded["nonce"])


def test_nonce_fast_path_canonical_equals_pyasn1() -> None:
    assert _canonical_nonce(CANONICAL) == _pyasn1(CANONICAL) == bytes(range(32))


def test_nonce_fast_path_mutations_never_disagree_with_pyasn1() -> None:
    rnd = random.Random(12)
    for _ in range(3000):
        value = bytearray(CANONICAL[: rnd.randint(0, len(CANONICAL))] + b"\x00" * rnd.randint(0, 2))
        if value:
            value[rnd.randrange(len(value))] = rnd.randrange(256)
        fast = _canonical_nonce(bytes(value))
        if fast is not None:
            assert fast == _pyasn1(bytes(value))


@pytest.mark.parametrize(
    "value",
    [
        CANONICAL + b"\x00",
        CANONICAL[:-1],
        bytes.fromhex("3081") + CANONICAL[1:],  # long-form length: pyasn1 decides
        bytes.fromhex("3024a2220420") + bytes(32),  # wrong context tag
    ],
)
def test_nonce_fast_path_non_canonical_steps_aside(value: bytes) -> None:
    assert _canonical_nonce(value) is None


def test_nonce_decode_trailing_bytes_rejected_by_schema() -> None:
    with pytest.raises(ValueError):
        decode_app_attest_nonce(CANONICAL + b"\x00")
