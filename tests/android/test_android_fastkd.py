"""The fast KeyDescription reader agrees with pyasn1 (the schema of record), or steps aside."""

from __future__ import annotations

import random

import pytest

from platform_verifiers.android.certs import decode_certificate
from platform_verifiers.android.fastkd import (
    NotRecognised,
    decode_key_description,
    read_key_description,
)
from platform_verifiers.android.parse import (
    KeyDescription,
    SecurityLevel,
    VerifiedBootState,
    parse_key_description,
)
from platform_verifiers.errors import VerificationError
from tests.android.conftest import load_chain, manifest_entries
from tests.android.synth import default_key_description

ANDROID = [e["path"] for e in manifest_entries("android_key_attestation_chain")] or [
    "android/none.pem"
]


def _real_key_descriptions() -> list[bytes]:
    out: list[bytes] = []
    for path in ANDROID:
        for index, der in enumerate(load_chain(path)):
            try:
                out.extend(decode_certificate(der, index).key_descriptions)
            except VerificationError:
                continue
    return out


def _pyasn1(raw: bytes) -> KeyDescription | str:
    try:
        return parse_key_description(raw)
    except VerificationError as exc:
        return exc.code


SYNTHETIC = {
    "default": default_key_description(),
    "strongbox_unlocked": default_key_description(
        security_level=SecurityLevel.STRONG_BOX, device_locked=False
    ),
    "unverified_boot": default_key_description(verified_boot_state=VerifiedBootState.UNVERIFIED),
    "negative_origin": default_key_description(origin=-5),
    "big_integer": default_key_description(os_patch_level=2**70),
    # an INTEGER with a long-form length inside a tag: not the inline one-octet-length read
    "huge_integer": default_key_description(os_patch_level=2**1030),
    "unknown_tag": default_key_description(unknown_hardware={900: bytes.fromhex("bf870403020101")}),
    "version_500": default_key_description(attestation_version=500),
    "no_curve": default_key_description(ec_curve=None),
}


def test_fastkd_authorization_list_plain_defaults_no_post_init() -> None:
    # what lets the fast path build AuthorizationList without its generated __init__
    import dataclasses

    from platform_verifiers.android.parse import AuthorizationList

    fields = dataclasses.fields(AuthorizationList)
    assert all(f.default is not dataclasses.MISSING for f in fields)
    assert not hasattr(AuthorizationList, "__post_init__")


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_fastkd_synthetic_vector_equals_pyasn1(name: str) -> None:
    raw = SYNTHETIC[name]
    assert read_key_description(raw) == parse_key_description(raw)


def test_fastkd_every_real_vector_takes_fast_path_and_equals_pyasn1() -> None:
    kds = _real_key_descriptions()
    if not kds:
        pytest.skip("real vectors not found")
    for raw in kds:
        assert read_key_description(raw) == parse_key_description(raw)


def test_fastkd_mutated_vectors_never_disagree_with_pyasn1() -> None:
    # random byte edits: the fast path either steps aside or returns what pyasn1 returns
    kds = _real_key_descriptions() or list(SYNTHETIC.values())
    rnd = random.Random(12)
    recognised = 0
    for _ in range(3000):
        raw = bytearray(rnd.choice(kds))
        for _ in range(rnd.randint(1, 3)):
            raw[rnd.randrange(len(raw))] = rnd.randrange(256)
        try:
            fast = read_key_description(bytes(raw))
        except NotRecognised:
            continue
        recognised += 1
        assert fast == _pyasn1(bytes(raw))
    assert recognised > 100  # the test would be vacuous if every mutation stepped aside


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x30",
        b"\x30\x80\x00\x00",  # indefinite length (BER only)
        b"\x30\x81\x05" + b"\x02\x01\x01" * 1,  # non-minimal length
        default_key_description()[:-1],  # truncated
        default_key_description() + b"\x00",  # trailing byte
    ],
)
def test_fastkd_non_canonical_or_garbage_not_recognised(raw: bytes) -> None:
    with pytest.raises(NotRecognised):
        read_key_description(raw)


def test_fastkd_boolean_one_reads_true_like_ber() -> None:
    # real devices encode deviceLocked TRUE as 0x01; BER (and pyasn1) read it as TRUE
    raw = default_key_description(device_locked=True)
    patched = raw.replace(b"\x01\x01\xff", b"\x01\x01\x01", 1)
    assert patched != raw
    fast = read_key_description(patched)
    assert fast == parse_key_description(patched)
    rot = fast.hardware_enforced.root_of_trust
    assert rot is not None and rot.device_locked is True


def test_fastkd_fallback_truncated_raises_key_description_malformed() -> None:
    with pytest.raises(VerificationError) as info:
        decode_key_description(default_key_description()[:-3])
    assert info.value.code == "key_description_malformed"


def test_fastkd_fallback_duplicate_tag_raises_key_description_malformed() -> None:
    # a second [706] osPatchLevel: the fast path steps aside and pyasn1's path rejects it
    element = bytes.fromhex("bf8542050203024e20")
    raw = _with_hardware_element(default_key_description(), element)
    with pytest.raises(NotRecognised):
        read_key_description(raw)
    with pytest.raises(VerificationError) as info:
        decode_key_description(raw)
    assert info.value.code == "key_description_malformed"


def _with_hardware_element(raw: bytes, extra: bytes) -> bytes:
    """``raw`` with the DER elements of ``extra`` appended to its hardwareEnforced list."""
    from pyasn1.codec.der import decoder, encoder
    from pyasn1.type import univ

    from platform_verifiers.android import schema

    kd, _ = decoder.decode(raw, asn1Spec=schema.KeyDescriptionForParsing())
    pos = 0
    while pos < len(extra):
        element, rest = decoder.decode(extra[pos:], asn1Spec=univ.Any())
        kd["hardwareEnforced"].append(univ.Any(bytes(element)))
        pos = len(extra) - len(rest)
    return bytes(encoder.encode(kd))


def test_fastkd_a_three_octet_tag_number_takes_the_general_reader() -> None:
    # [20000] (base 128: 81 9c 20), beyond the two octets read inline: an unknown tag
    raw = _with_hardware_element(default_key_description(), bytes.fromhex("bf819c2003020105"))
    fast = read_key_description(raw)
    assert fast.hardware_enforced.unknown_tags == (20000,)
    assert fast == parse_key_description(raw)


@pytest.mark.parametrize(
    "element",
    [
        "bf0503020105",  # [5] in the long form, which DER keeps for numbers of 31 and more
        "bf80864203020105",  # a tag number with a leading zero septet (0x80)
    ],
)
def test_fastkd_a_tag_number_not_in_its_minimal_form_is_not_recognised(element: str) -> None:
    raw = _with_hardware_element(default_key_description(), bytes.fromhex(element))
    with pytest.raises(NotRecognised):
        read_key_description(raw)
