"""Public JWKs, RFC 7638 thumbprints and the JWKS document with its ETag."""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

_CURVES = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48)}
# RFC 7638 section 3.2: the required members of each key type, in lexicographic order
_REQUIRED = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2), straight from binascii: on every issuance."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_URLSAFE).decode("ascii")


def b64url_bytes(data: bytes) -> bytes:
    """:func:`b64url` as ASCII bytes (issuance builds the compact JWS as bytes: it is
    signed and hashed as bytes, so it is decoded to ``str`` once instead of encoded twice)."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").translate(_URLSAFE)


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK (kty, crv, x, y) of an EC key."""
    crv, size = _CURVES[key.curve.name]
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        "x": b64url(numbers.x.to_bytes(size, "big")),
        "y": b64url(numbers.y.to_bytes(size, "big")),
    }


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    members = _REQUIRED.get(str(jwk.get("kty")))
    if members is None:
        raise ValueError("unsupported key type for a thumbprint")
    canonical = json.dumps(
        {m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True
    ).encode()
    return b64url(hashlib.sha256(canonical).digest())


@dataclass(frozen=True)
class JwksDocument:
    """A serialised JWKS with a strong ETag over its exact bytes."""

    body: bytes
    etag: str

    @classmethod
    def build(cls, keys: Iterable[Mapping[str, Any]]) -> JwksDocument:
        body = json.dumps({"keys": list(keys)}, separators=(",", ":"), sort_keys=True).encode()
        return cls(body=body, etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"')
