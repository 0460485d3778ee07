"""KeyDescription parsing edge cases and the pinned trust anchors."""

from __future__ import annotations

import hashlib
import json

import pytest
from cryptography.hazmat.primitives import serialization

from platform_verifiers.android import (
    SecurityLevel,
    aosp_software_roots,
    google_hardware_roots,
    parse_key_description,
)
from platform_verifiers.android import anchors as anchors_module
from platform_verifiers.errors import VerificationError

from .conftest import VECTORS
from .synth import default_key_description, encode_authorization_list, encode_key_description


@pytest.mark.parametrize("version", [1, 2, 3, 4, 100, 200, 300, 400, 500])
def test_parse_every_attestation_version_parses(version: int) -> None:
    raw = encode_key_description(
        attestation_version=version,
        software=encode_authorization_list({705: 150000}),
        hardware=encode_authorization_list({1: (2,), 704: (b"k" * 32, True, 0, None)}),
    )
    kd = parse_key_description(raw)
    assert kd.attestation_version == version
    assert kd.hardware_enforced.root_of_trust is not None
    assert kd.hardware_enforced.root_of_trust.verified_boot_hash is None


def test_parse_unknown_tags_tolerated_and_reported() -> None:
    unknown = {9999: bytes.fromhex("bfce0f03020101"), 11: bytes.fromhex("ab03020101")}
    kd = parse_key_description(default_key_description(unknown_hardware=unknown))
    assert kd.unknown_tags == (11, 9999)
    assert kd.hardware_enforced.unknown_tags == (11, 9999)


def test_parse_every_known_tag_round_trips() -> None:
    from pyasn1.type import univ

    from platform_verifiers.android.schema import AUTHORIZATION_TAGS

    values: dict[int, object] = {}
    for number, (_, inner) in AUTHORIZATION_TAGS.items():
        if isinstance(inner, univ.SetOf):
            values[number] = (1, 2)
        elif isinstance(inner, univ.Integer):
            values[number] = number
        elif isinstance(inner, univ.OctetString):
            values[number] = b"x"
        elif isinstance(inner, univ.Null):
            values[number] = None
        else:
            values[number] = (b"k", False, 1, b"h")
    from .synth import encode_attestation_application_id

    values[709] = encode_attestation_application_id([("a.b", 3), ("c.d", 4)], [b"\x01" * 32])
    kd = parse_key_description(encode_key_description(hardware=encode_authorization_list(values)))
    hw = kd.hardware_enforced
    assert hw.unknown_tags == ()
    assert hw.key_size == 3 and hw.module_hash == b"x" and hw.identity_credential_key is True
    assert hw.attestation_application_id is not None
    assert hw.attestation_application_id.package_names == ("a.b", "c.d")
    assert hw.root_of_trust is not None and hw.root_of_trust.verified_boot_hash == b"h"


def test_parse_truncated_fails_key_description_malformed() -> None:
    raw = default_key_description()
    for cut in (1, len(raw) // 2, len(raw) - 1):
        with pytest.raises(VerificationError) as caught:
            parse_key_description(raw[:cut])
        assert caught.value.code == "key_description_malformed"


def test_parse_garbage_fails_key_description_malformed() -> None:
    for garbage in (
        b"",
        b"\x00",
        b"\xff" * 40,
        b"\x30\x03\x02\x01\x01",
        default_key_description() + b"\x00",
    ):
        with pytest.raises(VerificationError) as caught:
            parse_key_description(garbage)
        assert caught.value.code == "key_description_malformed"


def test_parse_duplicate_tag_fails_key_description_malformed() -> None:
    element = encode_authorization_list({702: 0})[0]
    raw = encode_key_description(hardware=[element, element])
    with pytest.raises(VerificationError) as caught:
        parse_key_description(raw)
    assert caught.value.code == "key_description_malformed"


def test_parse_unknown_security_level_fails_key_description_malformed() -> None:
    raw = bytearray(encode_key_description())
    # attestationSecurityLevel is the first ENUMERATED (0a 01 xx) in the sequence.
    index = raw.index(b"\x0a\x01\x01")
    raw[index + 2] = 7
    with pytest.raises(VerificationError) as caught:
        parse_key_description(bytes(raw))
    assert caught.value.code == "key_description_malformed"


def test_parse_garbage_application_id_fails_key_description_malformed() -> None:
    raw = encode_key_description(software=encode_authorization_list({709: b"\x30\x05garb"}))
    with pytest.raises(VerificationError) as caught:
        parse_key_description(raw)
    assert caught.value.code == "key_description_malformed"


def test_parse_levels_ordered_software_tee_strongbox() -> None:
    assert SecurityLevel.SOFTWARE < SecurityLevel.TRUSTED_ENVIRONMENT < SecurityLevel.STRONG_BOX


def test_anchors_google_roots_pinned_to_manifest_provenance() -> None:
    roots = google_hardware_roots()
    assert [a.name for a in roots] == [
        "google_hw_rsa4096_2022",
        "google_hw_rsa4096_2021",
        "google_hw_rsa4096_2019",
        "google_hw_rsa4096_2016",
        "google_hw_ec_p384_2025",
    ]
    assert all(a.source.startswith("https://developer.android.com/") for a in roots)
    rsa_spki = {a.spki_sha256 for a in roots if "rsa" in a.name}
    assert rsa_spki == {"feb2ea7551ee316ed4bb443c8293b884dbfdea40b603ee3e4f4a897e4580fbae"}
    assert anchors_module.GOOGLE_HARDWARE_ROOTS == roots
    manifest = VECTORS / "MANIFEST.json"
    if manifest.exists():
        files = json.loads(manifest.read_text())["files"]
        pinned = {
            f["expected"]["cert_sha256"]
            for f in files
            if f["kind"] == "trust_anchor_google_hardware_attestation"
        }
        assert {a.sha256 for a in roots} == pinned


def test_anchors_aosp_software_roots_separate_from_google_roots() -> None:
    google = {a.sha256 for a in google_hardware_roots()}
    software = aosp_software_roots()
    assert len(software) == 2 and not google & {a.sha256 for a in software}


def test_anchors_certificates_hash_to_their_pins() -> None:
    for anchor in (*google_hardware_roots(), *aosp_software_roots()):
        der = anchor.certificate.public_bytes(serialization.Encoding.DER)
        assert hashlib.sha256(der).hexdigest() == anchor.sha256
