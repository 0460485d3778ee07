"""The key store that the settings describe (key directory, optional PKCS#11 token).

Kept apart from attester/service.py so that ``attester keys ...`` starts without importing the
web and storage stacks (a rotation must be quick: tests time it against a JWKS max-age).
"""

from __future__ import annotations

from datetime import timedelta

from attester.settings import MAX_ATTESTATION_LIFETIME, Settings
from keys.pkcs11 import Pkcs11Config, Pkcs11Token
from keys.store import KeyStore


def build_key_store(settings: Settings) -> KeyStore:
    """The key store of ``settings``: the key directory, and the PKCS#11 token if configured.

    Raises :class:`keys.pkcs11.Pkcs11Error` (with a code) when the token is configured but
    cannot be used: wrong module path, token label or slot, or PIN.
    """
    token = None
    if settings.pkcs11 is not None:
        p11 = settings.pkcs11
        token = Pkcs11Token(
            Pkcs11Config(
                module=p11.module,
                pin=p11.user_pin(),
                token_label=p11.token_label,
                slot=p11.slot,
                pool_size=p11.pool_size,
                pool_timeout=p11.pool_timeout,
            )
        )
        token.check()  # fail at start-up, not at the first registration
    # a retired key stays published until everything it could have signed has expired: the
    # Client Attestation JWTs, and the Status List Tokens, whose lifetime may be longer (up to
    # 7 days: a list signed by a key gone from the JWKS could not be checked; found in review)
    longest = max(MAX_ATTESTATION_LIFETIME, settings.status_list.lifetime)
    retention = timedelta(seconds=longest + settings.clock_skew)
    return KeyStore(settings.resolved_key_dir, retention=retention, token=token)
