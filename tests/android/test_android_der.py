"""The tbsCertificate and SubjectPublicKeyInfo sliced from a certificate (platform_verifiers/der.py).

The verifiers use the slices where they used pyca's re-encodings: on every real certificate
(../shared/vectors, MANIFEST.json's chains and roots) both must be byte for byte what pyca
gives, or for keys pyca cannot load what the RFC 5280 schema reads.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from pyasn1.codec.ber import decoder as ber_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1_modules import rfc5280

from platform_verifiers.anchors import load_anchor
from platform_verifiers.android.certs import decode_certificate
from platform_verifiers.der import canonical_key, certificate_parts
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
    tbs, spki = certificate_parts(der)
    decoded = decode_certificate(der, index)
    assert (decoded.tbs, decoded.spki_der) == (tbs, spki)
    assert canonical_key(spki)  # every real key is in its one encoding
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:  # the tolerant reader decoded it (above): the RFC 5280 schema's reading
        assert spki == _schema_spki(der)
        return
    assert tbs == cert.tbs_certificate_bytes
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
    assert (anchor.tbs, anchor.spki_der) == certificate_parts(anchor.der)
    chain = make_chain(challenge=b"c", root=root)
    top = decode_certificate(chain.chain[-1], len(chain.chain) - 1)
    assert top.spki_der == anchor.spki_der  # the chain carries the root: the same key


@pytest.mark.parametrize(
    ("der", "why"),
    [
        (b"\x31\x03\x30\x01\x00", "not a certificate"),
        (b"\x30\x03\x31\x01\x00", "no tbsCertificate"),
        # a tbsCertificate with serialNumber, signature, issuer, validity, subject and no key
        (b"\x30\x0d\x30\x0b\x02\x01\x01\x30\x00\x30\x00\x30\x00\x30\x00", "no subjectPublicKeyInfo"),
        # the seventh element is there, but is not a SEQUENCE
        (b"\x30\x0f\x30\x0d\x02\x01\x01\x30\x00\x30\x00\x30\x00\x30\x00\x04\x00", "no subjectPublicKeyInfo"),
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
    tbs, spki = certificate_parts(leaf)
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
