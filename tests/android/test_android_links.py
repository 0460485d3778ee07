"""Which signature algorithms a chain's links may use: the ones listed in certs.py, each
checked by pyca. No real chain in ../shared/vectors signs with Ed25519 or ML-DSA, so the
chains here are synthetic (factory-style: an intermediate with a serialNumber under a
test root). A link in an algorithm not listed is ``chain_signature_invalid``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import NameOID

from platform_verifiers.anchors import load_anchor
from platform_verifiers.android import AndroidPolicy, verify_android_attestation
from platform_verifiers.errors import VerificationError

from .synth import KEY_DESCRIPTION_OID, default_key_description, factory_name

NOW = datetime(2026, 11, 1, tzinfo=UTC)
mldsa: Any = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.mldsa")


def _certificate(
    subject: x509.Name, issuer: x509.Name, public: Any, key: Any, *, ca: bool, digest: Any
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=10)).not_valid_after(NOW + timedelta(days=100))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(KEY_DESCRIPTION_OID, default_key_description()), False
        )
    return builder.sign(key, digest)


def _verify(intermediate_key: Any, *, digest: Any = None, signer: Any = None) -> Any:
    """A leaf signed by ``signer`` (default: ``intermediate_key``) under an intermediate
    with ``intermediate_key``'s public key, under an EC test root."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root")])
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _certificate(name, name, root_key.public_key(), root_key, ca=True,
                        digest=hashes.SHA384())
    intermediate = _certificate(factory_name(), name, intermediate_key.public_key(), root_key,
                                ca=True, digest=hashes.SHA384())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    keystore = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Android Keystore Key")])
    leaf = _certificate(keystore, factory_name(), leaf_key.public_key(),
                        signer or intermediate_key, ca=False, digest=digest)
    anchor = load_anchor("links", root.public_bytes(serialization.Encoding.PEM), source="test")
    return verify_android_attestation(
        chain=[c.public_bytes(serialization.Encoding.DER) for c in (leaf, intermediate, root)],
        challenge=b"challenge", policy=AndroidPolicy(), anchors=[anchor], revocation=None,
        now=NOW,
    )


@pytest.mark.parametrize("size", ["44", "65", "87"])
def test_ml_dsa_link_verifies_and_a_forged_one_fails_chain_signature_invalid(size: str) -> None:
    key_class = getattr(mldsa, f"MLDSA{size}PrivateKey")
    key = key_class.generate()
    assert _verify(key).key_description.attestation_challenge == b"challenge"
    with pytest.raises(VerificationError) as refused:  # signed by another key of the set
        _verify(key, signer=key_class.generate())
    assert refused.value.code == "chain_signature_invalid"


def test_ed25519_link_verifies() -> None:
    assert _verify(ed25519.Ed25519PrivateKey.generate()) is not None


@pytest.mark.parametrize(
    ("key", "digest"),
    [
        (ed448.Ed448PrivateKey.generate(), None),
        (ec.generate_private_key(ec.SECP256R1()), hashes.SHA224()),
        (ec.generate_private_key(ec.SECP256R1()), hashes.SHA3_256()),
    ],
    ids=["ed448", "ecdsa-sha224", "ecdsa-sha3-256"],
)
def test_link_in_an_algorithm_not_listed_fails_chain_signature_invalid(
    key: Any, digest: Any
) -> None:
    with pytest.raises(VerificationError) as refused:
        _verify(key, digest=digest)
    assert refused.value.code == "chain_signature_invalid"
    assert refused.value.detail["index"] == 0
