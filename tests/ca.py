"""A certificate authority made by a test (root + issuing CA) to certify attester keys."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = datetime.now(UTC).replace(microsecond=0)


def name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class LocalCa:
    """A root and an intermediate CA made in the test; only the root is a trust anchor."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    inter_key: ec.EllipticCurvePrivateKey
    inter: x509.Certificate

    @classmethod
    def make(cls) -> LocalCa:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = make_cert(
            name("test root"), root_key.public_key(), name("test root"), root_key, ca=True
        )
        inter_key = ec.generate_private_key(ec.SECP256R1())
        inter = make_cert(
            name("test issuing CA"), inter_key.public_key(), name("test root"), root_key, ca=True
        )
        return cls(root_key, root, inter_key, inter)

    def sign_csr(
        self,
        csr: x509.CertificateSigningRequest,
        *,
        days: int = 90,
        not_before: datetime | None = None,
    ) -> x509.Certificate:
        assert csr.is_signature_valid
        public = csr.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        return make_cert(
            csr.subject,
            public,
            self.inter.subject,
            self.inter_key,
            days=days,
            not_before=not_before,
        )

    def chain_pem(self, leaf: x509.Certificate, *extra: x509.Certificate) -> bytes:
        return b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (leaf, self.inter, *extra)
        )


def make_cert(
    subject: x509.Name,
    public: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    days: int = 90,
    not_before: datetime | None = None,
) -> x509.Certificate:
    start = not_before or NOW - timedelta(hours=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    return builder.sign(issuer_key, hashes.SHA256())
