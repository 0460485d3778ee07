"""Trust anchors as versioned data with provenance."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from platform_verifiers.der import certificate_parts


@dataclass(frozen=True)
class TrustAnchor:
    """A pinned root certificate and where it came from."""

    name: str
    certificate: x509.Certificate
    source: str
    sha256: str
    not_after: datetime

    # Memos (an anchor is immutable): verifiers compare against these on every request,
    # and re-loading an RSA-4096 key or re-serialising a certificate each time showed up
    # in the verification profile.
    @functools.cached_property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @functools.cached_property
    def tbs(self) -> bytes:
        return certificate_parts(self.der)[0]

    @functools.cached_property
    def public_key(self) -> PublicKeyTypes:
        return self.certificate.public_key()

    @functools.cached_property
    def spki_der(self) -> bytes:
        """The key as the certificate encodes it: chain certificates are compared by
        theirs, read the same way (der.py)."""
        return certificate_parts(self.der)[1]

    @property
    def spki_sha256(self) -> str:
        return hashlib.sha256(self.spki_der).hexdigest()


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
