"""The tbsCertificate, SubjectPublicKeyInfo and extensions sliced from a certificate
(platform_verifiers/der.py).

The verifiers use the slices where they used pyca's re-encodings: on every real certificate
(../shared/vectors, MANIFEST.json's chains and roots) each must be byte for byte what pyca
gives (the extensions: pyca's list, each value as pyca encodes it again), or where pyca
cannot read a part what the RFC 5280 schema reads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1_modules import rfc5280

from platform_verifiers.anchors import load_anchor
from platform_verifiers.android.certs import (
    _decode_with_pyasn1,
    basic_constraints_der,
    decode_certificate,
)
from platform_verifiers.android.extensions import key_usage_bits
from platform_verifiers.der import canonical_key, certificate_parts, dotted
from tests.android.conftest import load_chain, manifest_entries
from tests.android.synth import make_chain, make_root

KINDS = (
    "android_key_attestation_chain",
    "android_key_attestation_leaf_only",
    "trust_anchor_google_hardware_attestation",
    "aosp_software_attestation_root",
)


def _certificates() -> list[Any]:
    params = []
    for entry in manifest_entries(*KINDS):
        if entry["path"].endswith(".pem"):
            params.extend(
                pytest.param(entry["path"], n, id=f"{entry['path']}#{n}")
                for n in range(len(load_chain(entry["path"])))
            )
    return params or [pytest.param(None, 0, marks=pytest.mark.skip("no vectors"))]


def _schema_spki(der: bytes) -> bytes:
    cert, _ = ber_decoder.decode(der, asn1Spec=rfc5280.Certificate())
    spki: bytes = der_encoder.encode(cert["tbsCertificate"]["subjectPublicKeyInfo"])
    return spki


@pytest.mark.parametrize(("path", "index"), _certificates())
def test_slices_are_what_pyca_encodes(path: str, index: int) -> None:
    der = load_chain(path)[index]
    decoded = decode_certificate(der, index)
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:  # the tolerant reader decoded it (above): the RFC 5280 schema's reading
        assert decoded.spki_der == _schema_spki(der)
        return
    tbs, spki, extensions = certificate_parts(der)
    assert (decoded.tbs, decoded.spki_der, decoded.extensions) == (tbs, spki, extensions)
    assert canonical_key(spki)  # every real key is in its one encoding
    assert tbs == cert.tbs_certificate_bytes
    # the extension list: the schema's reading of it always, pyca's where pyca reads it
    assert extensions == _decode_with_pyasn1(der).extensions
    try:
        parsed = cert.extensions
    except ValueError:  # e.g. the unparsable CRL Distribution Points (MANIFEST.json)
        parsed = None
    if parsed is not None:
        assert [(e.oid, e.critical) for e in extensions] == [
            (p.oid.dotted_string, p.critical) for p in parsed
        ]
        for raw, ext in zip(extensions, parsed, strict=True):
            if isinstance(ext.value, x509.KeyUsage):
                # pyca encodes the bits again in DER, dropping trailing zero bytes some
                # leaves carry (the one reading that differs): the bits are the same
                bits = key_usage_bits(raw.value)
                assert bits is not None and bits == key_usage_bits(ext.value.public_bytes())
            elif not isinstance(ext.value, x509.UnrecognizedExtension):
                assert raw.value == ext.value.public_bytes()
            if isinstance(ext.value, x509.BasicConstraints):
                assert basic_constraints_der(raw.value) == (ext.value.ca, ext.value.path_length)
                assert (decoded.is_ca, decoded.path_length) == (ext.value.ca, ext.value.path_length)
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):  # e.g. ML-DSA: the schema's reading instead
        assert spki == _schema_spki(der)
    else:
        assert spki == key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def test_anchor_compares_by_the_key_its_certificate_encodes() -> None:
    root = make_root()
    pem = root.certificate.public_bytes(serialization.Encoding.PEM)
    anchor = load_anchor("synthetic", pem, source="test")
    assert (anchor.tbs, anchor.spki_der) == certificate_parts(anchor.der)[:2]
    chain = make_chain(challenge=b"c", root=root)
    top = decode_certificate(chain.chain[-1], len(chain.chain) - 1)
    assert top.spki_der == anchor.spki_der  # the chain carries the root: the same key


def _wrapped(tbs_body: bytes) -> bytes:
    tbs = bytes([0x30, len(tbs_body)]) + tbs_body
    return bytes([0x30, len(tbs)]) + tbs


# serialNumber, signature, issuer, validity, subject, an empty key: what comes after is walked
_TBS_FIELDS = b"\x02\x01\x01\x30\x00\x30\x00\x30\x00\x30\x00\x30\x00"


class _Tbs(bytes):
    def __add__(self, tail: bytes) -> bytes:  # type: ignore[override]
        return _wrapped(_TBS_FIELDS + tail)


_TBS_HEAD = _Tbs()


@pytest.mark.parametrize(
    ("der", "why"),
    [
        (b"\x31\x03\x30\x01\x00", "not a certificate"),
        (b"\x30\x03\x31\x01\x00", "no tbsCertificate"),
        # a tbsCertificate with serialNumber, signature, issuer, validity, subject and no key
        (b"\x30\x0d\x30\x0b\x02\x01\x01\x30\x00\x30\x00\x30\x00\x30\x00", "no subjectPublicKeyInfo"),
        # the seventh element is there, but is not a SEQUENCE
        (b"\x30\x0f\x30\x0d\x02\x01\x01\x30\x00\x30\x00\x30\x00\x30\x00\x04\x00", "no subjectPublicKeyInfo"),
        # after the key: something that is neither a unique identifier nor [3] extensions
        (_TBS_HEAD + b"\x04\x00", "an unexpected element after the key"),
        (_TBS_HEAD + b"\xa3\x02\x04\x00", "no Extensions"),
        (_TBS_HEAD + b"\xa3\x04\x30\x02\x04\x00", "no Extension"),
        (_TBS_HEAD + b"\xa3\x06\x30\x04\x30\x02\x04\x00", "no extnID"),
        (_TBS_HEAD + b"\xa3\x09\x30\x07\x30\x05\x06\x01\x2a\x02\x00", "no extnValue"),
        (_TBS_HEAD + b"\xa3\x0b\x30\x09\x30\x07\x06\x01\x2a\x04\x00\x05\x00", "an unexpected element in an Extension"),
        # strict on its own, not only because pyca refused these before (its loading does)
        (_TBS_HEAD + b"\xa3\x0c\x30\x0a\x30\x08\x06\x01\x2a\x01\x01\x01\x04\x00", "a critical flag not in DER"),
        (_TBS_HEAD + b"\xa3\x0c\x30\x0a\x30\x08\x06\x01\x2a\x01\x01\x00\x04\x00", "a critical flag not in DER"),
        (_TBS_HEAD + b"\xa3\x0b\x30\x09\x30\x07\x06\x01\x2a\x01\x00\x04\x00", "a critical flag not in DER"),
        (_TBS_HEAD + b"\xa3\x0a\x30\x07\x30\x05\x06\x01\x2a\x04\x00\x00", "an unexpected element after the Extensions"),
        (_TBS_HEAD + b"\x82\x01\x00\x81\x01\x00", "an unexpected element after the key"),
        (_TBS_HEAD + b"\x81\x01\x00\x81\x01\x00", "an unexpected element after the key"),
        (_TBS_HEAD + b"\xa3\x02\x30\x00\xa3\x02\x30\x00", "an unexpected element after the key"),
        (_TBS_HEAD + b"\xa3\x09\x30\x07\x30\x05\x06\x03\x80\x2a\x03\x04\x00", "minimal form"),
    ],
)
def test_elements_out_of_place_are_refused(der: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        certificate_parts(der)


def test_long_form_lengths_and_the_version_are_walked() -> None:
    chain = make_chain(challenge=b"c" * 32)
    leaf = chain.chain[0]
    assert leaf[1] & 0x80  # a long-form length: over 127 bytes
    cert = x509.load_der_x509_certificate(leaf)
    assert cert.version is x509.Version.v3  # so the [0] version is there and skipped
    tbs, spki, _ = certificate_parts(leaf)
    assert tbs == cert.tbs_certificate_bytes
    assert spki == cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


def _children(der: bytes) -> list[bytes]:
    """The encodings of the elements inside the constructed element ``der``."""
    from platform_verifiers.der import _element

    body, end = _element(der, 0)
    out = []
    while body < end:
        _, stop = _element(der, body)
        out.append(der[body:stop])
        body = stop
    return out


def _with_key(cert_der: bytes, spki: bytes) -> bytes:
    """``cert_der`` with its SubjectPublicKeyInfo replaced (the signature no longer fits:
    decoding, which refuses the key, comes first)."""
    tbs, algorithm, signature = _children(cert_der)
    fields = _children(tbs)
    at = 6 if fields[0][0] == 0xA0 else 5
    fields[at] = spki
    return _der(0x30, _der(0x30, b"".join(fields)) + algorithm + signature)


EC_OID, P256 = bytes.fromhex("06072a8648ce3d0201"), bytes.fromhex("06082a8648ce3d030107")


def _ec_spki(point: bytes, parameters: bytes = P256) -> bytes:
    return _der(0x30, _der(0x30, EC_OID + parameters) + _der(0x03, b"\x00" + point))


def test_keys_in_another_encoding_are_not_canonical() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from platform_verifiers.der import canonical_key

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    canonical = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    compressed = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    assert canonical_key(canonical)
    assert canonical == _ec_spki(key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
    assert not canonical_key(_ec_spki(compressed))
    assert not canonical_key(_ec_spki(compressed, parameters=b"\x05\x00"))  # no named curve
    rsa_spki = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert canonical_key(rsa_spki)
    algorithm, bits = _children(rsa_spki)
    without_null = _der(0x30, _der(0x30, _children(algorithm)[0]) + bits)
    assert not canonical_key(without_null)


def test_a_chain_certificate_with_a_compressed_key_is_malformed() -> None:
    """pyca loads a compressed point; the verifier compares keys by their bytes, so it
    refuses the certificate rather than let the same key pass for another."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from platform_verifiers.errors import VerificationError

    leaf = make_chain(challenge=b"c").chain[0]
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )
    altered = _with_key(leaf, _ec_spki(point))
    x509.load_der_x509_certificate(altered).public_key()  # pyca takes it
    with pytest.raises(VerificationError) as refused:
        decode_certificate(altered, 0)
    assert refused.value.code == "certificate_malformed"
    assert refused.value.detail["why"] == "key_not_canonical"


def test_extensions_are_read_with_their_flags_and_unique_ids_skipped() -> None:
    extension = b"\x30\x0a\x06\x03\x55\x1d\x13\x01\x01\xff\x04\x00"  # critical, empty value
    plain = b"\x30\x08\x06\x03\x55\x1d\x0f\x04\x01\x07"
    extensions = b"\x30" + bytes([len(extension + plain)]) + extension + plain
    der = _TBS_HEAD + b"\x81\x01\x00\x82\x01\x00\xa3" + bytes([len(extensions)]) + extensions
    _, _, read = certificate_parts(der)
    assert [tuple(e) for e in read] == [("2.5.29.19", True, b""), ("2.5.29.15", False, b"\x07")]


@pytest.mark.parametrize(
    ("contents", "text"),
    [
        ("2a864886f70d010101", "1.2.840.113549.1.1.1"),
        ("2b06010401d679020111", "1.3.6.1.4.1.11129.2.1.17"),
        ("551d13", "2.5.29.19"),
        ("00", "0.0"),
        ("8837", "2.999"),  # a first subidentifier over 80: joint-iso-itu-t
    ],
)
def test_object_identifiers_in_dotted_form(contents: str, text: str) -> None:
    assert dotted(bytes.fromhex(contents)) == text
    assert x509.ObjectIdentifier(text).dotted_string == text


@pytest.mark.parametrize(("contents", "why"), [("", "truncated"), ("2a86", "truncated"), ("551d8013", "minimal"), ("80551d13", "minimal")])
def test_an_object_identifier_not_in_der_is_refused(contents: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        dotted(bytes.fromhex(contents))


def test_the_object_identifier_memo_stays_bounded_and_keeps_learning() -> None:
    from platform_verifiers import der

    for n in range(128, 128 + der._DOTTED_MAX * 2 + 5):
        dotted(bytes([0x2A, 0x80 | (n >> 7), n & 0x7F]))  # 1.2.<n>, a new OID each (n >= 128)
    assert 0 < len(der._DOTTED) <= der._DOTTED_MAX
    assert dotted(bytes.fromhex("551d13")) == "2.5.29.19"
    assert bytes.fromhex("551d13") in der._DOTTED  # learnt again after it was emptied


def test_a_v1_certificate_with_extensions_is_malformed() -> None:
    """Only v3 carries extensions: the pyasn1 reader refused a v1 one, and pyca's path now
    does too (pyca loads it, and the extension walk would have read them)."""
    from platform_verifiers.errors import VerificationError

    leaf = make_chain(challenge=b"c").chain[0]
    tbs, algorithm, signature = _children(leaf)
    fields = _children(tbs)
    assert fields[0][0] == 0xA0  # the [0] version: without it the certificate is v1
    v1 = _der(0x30, _der(0x30, b"".join(fields[1:])) + algorithm + signature)
    assert x509.load_der_x509_certificate(v1).version is x509.Version.v1
    with pytest.raises(VerificationError) as refused:
        decode_certificate(v1, 0)
    assert refused.value.code == "certificate_malformed"


@pytest.mark.parametrize(
    ("value", "read"),
    [
        ("3000", (False, None)),
        ("30030101ff", (True, None)),
        ("30060101ff020100", (True, 0)),
        ("30060101ff02017f", (True, 127)),
        ("30070101ff02020080", (True, 128)),
        ("3003020105", (False, 5)),
        # not plain DER: pyasn1 (the schema of record) reads these
        ("3003010100", None),  # FALSE encoded, which DER leaves out
        ("30030101 01", None),  # TRUE not as 0xFF
        ("30060101ff0201ff", None),  # a negative path length
        ("30070101ff02020001", None),  # not minimal
        ("30050101ff0400", None),  # something else after cA
        ("30030101ff00", None),  # data after the SEQUENCE
        ("3181 00", None),
        ("3004 0101ff", None),  # a length that does not fit
    ],
)
def test_basic_constraints_in_plain_der_agree_with_the_schema(value: str, read: Any) -> None:
    from platform_verifiers.android.certs import _basic_constraints

    raw = bytes.fromhex(value.replace(" ", ""))
    assert basic_constraints_der(raw) == read
    if read is not None:
        bc, rest = ber_decoder.decode(raw, asn1Spec=rfc5280.BasicConstraints())
        assert not rest
        path = int(bc["pathLenConstraint"]) if bc["pathLenConstraint"].isValue else None
        assert (bool(bc["cA"]), path) == read
        assert _basic_constraints(raw) == read


def _with_basic_constraints(value: bytes) -> bytes:
    """A self-signed certificate whose critical BasicConstraints holds ``value`` as is."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtensionOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bc")])
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(7)
        .not_valid_before(datetime(2020, 1, 1)).not_valid_after(datetime(2030, 1, 1))
        .add_extension(x509.UnrecognizedExtension(ExtensionOID.BASIC_CONSTRAINTS, value), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def test_a_basic_constraints_in_ber_is_read_by_the_schema() -> None:
    """pyca loads the certificate (extension values are opaque to its loading); the
    BasicConstraints with an encoded FALSE is not plain DER, so pyasn1 reads it."""
    der = _with_basic_constraints(b"\x30\x06\x01\x01\x00\x02\x01\x03")
    decoded = decode_certificate(der, 0)
    assert (decoded.is_ca, decoded.path_length) == (False, 3)
    assert decoded.extensions == _decode_with_pyasn1(der).extensions


def test_a_basic_constraints_with_data_after_it_is_malformed() -> None:
    """Read by pyasn1 (not plain DER), which decodes the SEQUENCE and leaves the rest: the
    rest is refused, as keyUsage's is, instead of ignored."""
    from platform_verifiers.android.certs import _basic_constraints
    from platform_verifiers.errors import VerificationError

    with pytest.raises(ValueError, match="after the BasicConstraints"):
        _basic_constraints(bytes.fromhex("30030101ff0000"))
    der = _with_basic_constraints(bytes.fromhex("30030101ff0000"))
    with pytest.raises(VerificationError) as refused:
        decode_certificate(der, 0)
    assert refused.value.code == "certificate_malformed"
