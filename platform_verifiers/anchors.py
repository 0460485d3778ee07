"""Trust anchors as versioned data with provenance."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization


@dataclass(frozen=True)
class TrustAnchor:
    """A pinned root certificate and where it came from."""

    name: str
    certificate: x509.Certificate
    source: str
    sha256: str
    not_after: datetime

    @property
    def spki_sha256(self) -> str:
        spki = self.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha256(spki).hexdigest()


def load_anchor(name: str, pem: bytes, *, source: str, sha256: str | None = None) -> TrustAnchor:
    """Load a PEM root; when ``sha256`` is given the DER must hash to it (pinning)."""
    cert = x509.load_pem_x509_certificate(pem)
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    if sha256 is not None and digest != sha256.lower():
        raise ValueError(f"trust anchor {name} does not match its pinned SHA-256")
    return TrustAnchor(
        name=name,
        certificate=cert,
        source=source,
        sha256=digest,
        not_after=cert.not_valid_after_utc,
    )
