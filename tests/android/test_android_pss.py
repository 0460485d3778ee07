"""RSASSA-PSS links: no real attestation chain uses them (every vector is ECDSA or RSA
PKCS#1 v1.5), so they are synthetic: a link signed with PSS verifies; parameters the
verifier does not check are refused as ``chain_signature_invalid``, never raised as
anything else (the signatureAlgorithm outside the signed part is anyone's to change)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from platform_verifiers.anchors import load_anchor
from platform_verifiers.android.certs import decode_certificate, signature_valid
from platform_verifiers.android.chain import verify_chain
from platform_verifiers.der import _element
from platform_verifiers.errors import VerificationError

NOW = datetime(2026, 11, 1, tzinfo=UTC)
SHA256 = bytes.fromhex("300d06096086480165030402010500")
SHA1 = bytes.fromhex("300906052b0e03021a0500")
MGF1 = bytes.fromhex("06092a864886f70d010108")
PSS = bytes.fromhex("06092a864886f70d01010a")


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    return bytes([tag]) + (bytes([0x81, n]) if n < 0x100 else b"\x82" + n.to_bytes(2, "big")) + body


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _chain(*, pss: bool = True) -> tuple[list[bytes], x509.Certificate]:
    """A CA signed with PSS (SHA-256, MGF1 over SHA-256, salt 32; else PKCS#1 v1.5) by an
    RSA root, the anchor, which the chain carries (so that link is one of the chain's own)."""
    root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root = (
        x509.CertificateBuilder().subject_name(_name("root")).issuer_name(_name("root"))
        .public_key(root_key.public_key()).serial_number(1)
        .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    ca = (
        x509.CertificateBuilder().subject_name(_name("ca")).issuer_name(_name("root"))
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key()).serial_number(2)
        .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(
            root_key,
            hashes.SHA256(),
            rsa_padding=(
                padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
                if pss
                else padding.PKCS1v15()
            ),
        )
    )
    return [ca.public_bytes(Encoding.DER), root.public_bytes(Encoding.DER)], root


def _with_algorithm(der: bytes, algorithm: bytes) -> bytes:
    """``der`` with its outer signatureAlgorithm (not signed) replaced."""
    body, _ = _element(der, 0)
    _, tbs_end = _element(der, body)
    _, alg_end = _element(der, tbs_end)
    inner = der[body:tbs_end] + algorithm + der[alg_end:]
    return b"\x30\x82" + len(inner).to_bytes(2, "big") + inner


def _pss(*fields: bytes) -> bytes:
    return _tlv(0x30, PSS + _tlv(0x30, b"".join(fields)))


def _mgf(algorithm: bytes) -> bytes:
    return _tlv(0xA1, _tlv(0x30, algorithm))


HASH, SALT_32 = _tlv(0xA0, SHA256), _tlv(0xA2, b"\x02\x01\x20")


def _anchor(root: x509.Certificate) -> object:
    return load_anchor("pss-root", root.public_bytes(Encoding.PEM), source="test")


def test_a_pss_signed_link_verifies() -> None:
    chain, root = _chain()
    cert = decode_certificate(chain[0], 0)
    algorithm = cert.signature_algorithm
    assert algorithm is not None
    assert (algorithm.scheme, algorithm.pss_salt_length) == ("rsa-pss", 32)
    assert signature_valid(cert, root.public_key())
    assert verify_chain(chain, [_anchor(root)], NOW).anchor.name == "pss-root"


@pytest.mark.parametrize(
    "algorithm",
    [
        # MGF1 over a hash nobody knows (pyca raised UnsupportedAlgorithm: found by review)
        _pss(HASH, _mgf(MGF1 + bytes.fromhex("300506032a0304")), SALT_32),
        # MGF1 over SHA-1 with SHA-256 declared for the message
        _pss(HASH, _mgf(MGF1 + SHA1), SALT_32),
        # SHA-256 with the default MGF (MGF1 over SHA-1)
        _pss(HASH, SALT_32),
        # a mask generation function that is not MGF1
        _pss(HASH, _mgf(bytes.fromhex("06032a0304") + SHA256)),
        # a negative salt (pyca's PSS would raise), a salt beyond any block, a trailer of 2
        _pss(HASH, _mgf(MGF1 + SHA256), _tlv(0xA2, b"\x02\x01\xff")),
        _pss(HASH, _mgf(MGF1 + SHA256), _tlv(0xA2, b"\x02\x02\x10\x00")),
        _pss(HASH, _mgf(MGF1 + SHA256), SALT_32, _tlv(0xA3, b"\x02\x01\x02")),
    ],
    ids=["mgf-hash-unknown", "mgf-hash-other", "mgf-default", "not-mgf1", "salt-negative",
         "salt-huge", "trailer-2"],
)
def test_pss_parameters_not_checked_fail_chain_signature_invalid(algorithm: bytes) -> None:
    chain, root = _chain()
    with pytest.raises(VerificationError) as refused:
        verify_chain([_with_algorithm(chain[0], algorithm), chain[1]], [_anchor(root)], NOW)
    assert refused.value.code == "chain_signature_invalid"


@pytest.mark.parametrize(
    "parameters", [bytes.fromhex("020101"), bytes.fromhex("3000")], ids=["integer", "sequence"]
)
def test_pkcs1_link_with_parameters_other_than_null_fails_chain_signature_invalid(
    parameters: bytes,
) -> None:
    # pyca refuses such a certificate and the tolerant reader used to ignore the parameters
    # (found by review): the same signature under several encodings of its algorithm
    chain, root = _chain(pss=False)
    verify_chain(chain, [_anchor(root)], NOW)  # as signed (sha256WithRSAEncryption, NULL)
    pkcs1 = _tlv(0x30, bytes.fromhex("06092a864886f70d01010b") + parameters)
    with pytest.raises(VerificationError) as refused:
        verify_chain([_with_algorithm(chain[0], pkcs1), chain[1]], [_anchor(root)], NOW)
    assert refused.value.code == "chain_signature_invalid"


def test_pss_link_with_an_issuer_key_too_small_fails_chain_signature_invalid() -> None:
    # pyca raised ValueError ("Digest too large for key size") for RSA-PSS with SHA-512 and
    # a 512-bit issuer key: an uncaught exception before any trust check (found in review)
    small = rsa.RSAPublicNumbers(65537, (1 << 511) | (0xF2E3A7B5 << 64) | 0xD1).public_key()
    assert small.key_size == 512
    chain, root = _chain()
    issuer = (
        x509.CertificateBuilder().subject_name(_name("small")).issuer_name(_name("root"))
        .public_key(small).serial_number(3)
        .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA256())
    )
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = (
        x509.CertificateBuilder().subject_name(_name("leaf")).issuer_name(_name("small"))
        .public_key(ec.generate_private_key(ec.SECP256R1()).public_key()).serial_number(4)
        .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
        .sign(signer, hashes.SHA512(),
              rsa_padding=padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64))
    )
    cert = decode_certificate(leaf.public_bytes(Encoding.DER), 0)
    assert not signature_valid(cert, small)
    with pytest.raises(VerificationError) as refused:
        verify_chain(
            [leaf.public_bytes(Encoding.DER), issuer.public_bytes(Encoding.DER), chain[1]],
            [_anchor(root)], NOW,
        )
    assert refused.value.code == "chain_signature_invalid"


def _junk_with_extensions(count: int) -> bytes:
    """A self-signed certificate with ``count`` extensions that pyca refuses (ECDSA with
    NULL parameters outside the signed part), so that the tolerant reader is the one asked."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder().subject_name(_name("x")).issuer_name(_name("x"))
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
    )
    for n in range(count):
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(f"1.2.3.{n}"), b"\x05\x00"), False
        )
    der = builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)
    return _with_algorithm(der, bytes.fromhex("300c06082a8648ce3d0403020500"))


def test_a_certificate_too_large_for_the_tolerant_reader_fails_certificate_malformed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # pyasn1 took ~19 ms a certificate of 700 extensions, before any signature was checked:
    # ten of them cost a request 0.19 s (found in review); now refused before pyasn1 reads it
    from platform_verifiers.android import certs

    junk = _junk_with_extensions(700)
    with monkeypatch.context() as patched:
        def unexpected(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("pyasn1 was asked to read it")

        patched.setattr(certs.ber_decoder, "decode", unexpected)
        with pytest.raises(VerificationError) as refused:
            decode_certificate(junk, 3)
    assert refused.value.code == "certificate_malformed"
    assert refused.value.detail["index"] == 3
    read = decode_certificate(_junk_with_extensions(20), 0)  # a plausible size: still read
    assert len(read.extensions) == 20
