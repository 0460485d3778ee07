"""Issue 8 for App Attest: unknown critical extensions, a nonce above the leaf, and what
the fuzz suite found (lazily parsed names, unknown curves) fail closed with codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from platform_verifiers.apple.chain import check_extensions, load_chain, verify_chain
from platform_verifiers.errors import VerificationError

from .synth import NONCE_OID, encode_nonce_extension, make_test_root

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _cert(
    extensions: list[tuple[x509.ExtensionType, bool]], *, ca: bool = False
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    return builder.sign(key, hashes.SHA256())


def _code(certs: list[x509.Certificate]) -> str:
    with pytest.raises(VerificationError) as caught:
        check_extensions(certs)
    return caught.value.code


def test_apple_chain_unknown_critical_extension_fails_extension_critical_unknown() -> None:
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.3"), b"\x05\x00")
    assert _code([_cert([(ext, True)])]) == "extension_critical_unknown"
    assert _code([_cert([]), _cert([(ext, True)], ca=True)]) == "extension_critical_unknown"


def test_apple_chain_unknown_non_critical_extension_passes() -> None:
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.3"), b"\x05\x00")
    check_extensions([_cert([(ext, False)])])


def test_apple_chain_nonce_above_leaf_fails_extension_below_leaf() -> None:
    nonce = x509.UnrecognizedExtension(NONCE_OID, encode_nonce_extension(b"\x00" * 32))
    check_extensions([_cert([(nonce, False)])])  # on the credential certificate: fine
    assert _code([_cert([]), _cert([(nonce, False)], ca=True)]) == "extension_below_leaf"


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_apple_load_chain_unparsable_issuer_fails_attestation_malformed() -> None:
    der = bytearray(_der(_cert([])))
    # the issuer's CN value "t" (UTF8String) becomes a BMPString of odd length
    at = der.index(bytes.fromhex("0c0174"))
    der[at] = 0x1E
    with pytest.raises(VerificationError) as caught:
        load_chain([bytes(der)])
    assert caught.value.code == "attestation_malformed"


def test_apple_chain_issuer_with_unknown_curve_fails_chain_signature_invalid() -> None:
    root = make_test_root()
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(root.key, hashes.SHA256())
    )
    issuer = bytearray(_der(root.cert))
    at = issuer.index(bytes.fromhex("06052b81040022"))  # secp384r1
    issuer[at + 6] ^= 0x40  # a curve no one implements
    certs = load_chain([_der(leaf), bytes(issuer)])
    with pytest.raises(VerificationError) as caught:
        verify_chain(certs, anchors=[root.anchor], now=NOW)
    assert caught.value.code == "chain_signature_invalid"


def test_apple_cached_certificate_arriving_on_top_has_its_issuer_read() -> None:
    """Found in review: a certificate with a broken issuer name, first seen (and cached)
    below the top, then sent as the top one, was taken from the cache without its issuer
    read, and the anchor match raised a bare ValueError (a 500). Now attestation_malformed."""
    from platform_verifiers.linkcache import VerifiedLinkCache

    root = make_test_root()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "X")])
    x = (
        x509.CertificateBuilder().subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")]))
        .public_key(key.public_key()).serial_number(5)
        .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    broken = bytearray(_der(x))
    broken[broken.index(bytes.fromhex("0c0174")) + 2] = 0xFF  # issuer CN: invalid UTF-8
    leaf = _der(
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
        .issuer_name(name).public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
        .serial_number(6).not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1)).sign(key, hashes.SHA256())
    )
    cache = VerifiedLinkCache()
    below = [leaf, bytes(broken), _der(root.cert)]
    with pytest.raises(VerificationError):
        verify_chain(load_chain(below, cache), anchors=[root.anchor], now=NOW,
                     verified_cache=cache, ders=below)
    with pytest.raises(VerificationError) as caught:
        load_chain([leaf, bytes(broken)], cache)
    assert caught.value.code == "attestation_malformed"


def test_apple_load_chain_issuer_attribute_not_a_string_fails_attestation_malformed() -> None:
    """Found in review: a name attribute encoded as a BIT STRING made pyca raise TypeError."""
    der = bytearray(_der(_cert([])))
    at = der.index(bytes.fromhex("0c0174"))
    der[at : at + 3] = bytes.fromhex("030100")  # CN "t" -> an empty BIT STRING
    with pytest.raises(VerificationError) as caught:
        load_chain([bytes(der)])
    assert caught.value.code == "attestation_malformed"
