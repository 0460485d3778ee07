"""The attester's own signing keys: file key store, rotation states, JWKS document."""

from keys.jwks import JwksDocument, public_jwk, thumbprint
from keys.signer import FileSigner, Signer
from keys.store import KeyRecord, KeyState, KeyStore, KeyStoreError

__all__ = [
    "FileSigner",
    "JwksDocument",
    "KeyRecord",
    "KeyState",
    "KeyStore",
    "KeyStoreError",
    "Signer",
    "public_jwk",
    "thumbprint",
]
