"""Signers for the attester's JWTs: a file-backed key now, KMS or PKCS#11 later."""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


class Signer(Protocol):
    """Signs JWS signing input; ``sign`` returns the JWS signature bytes (r || s for ES256)."""

    kid: str
    alg: str

    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign(self, signing_input: bytes) -> bytes: ...


class FileSigner:
    """ES256 with a P-256 private key held in process memory (loaded from a 0600 file)."""

    alg = "ES256"

    def __init__(self, kid: str, private_key: ec.EllipticCurvePrivateKey) -> None:
        if private_key.curve.name != "secp256r1":
            raise ValueError("ES256 needs a P-256 key")
        self.kid = kid
        self._key = private_key

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, signing_input: bytes) -> bytes:
        der = self._key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def __repr__(self) -> str:  # never show key material
        return f"FileSigner(kid={self.kid!r})"
