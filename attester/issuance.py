"""Issuance of the Client Attestation JWT (draft-ietf-oauth-attestation-based-client-auth).

Header: ``typ`` oauth-client-attestation+jwt, ``alg`` ES256, ``kid`` (and ``x5c`` when the
publisher configured a chain for the key). Claims: ``iss`` (on by default for draft-07
receivers), ``sub`` = the app's client_id, ``iat``, ``exp``, ``cnf.jwk`` (public members
only) and the app's static claims. No per-instance identifier beyond ``cnf``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from attester.settings import MAX_ATTESTATION_LIFETIME, AppConfig
from keys.jwks import b64url
from keys.signer import Signer
from keys.store import KeyStore

TYP = "oauth-client-attestation+jwt"
_PUBLIC_EC_MEMBERS = ("kty", "crv", "x", "y")


@dataclass(frozen=True)
class IssuedAttestation:
    jwt: str
    # internal reference (SHA-256 of the JWT): the token itself carries no jti
    reference: str
    kid: str
    issued_at: datetime
    expires_at: datetime


class AttestationIssuer:
    def __init__(
        self,
        *,
        key_store: KeyStore,
        issuer: str,
        include_iss: bool,
        default_lifetime: int,
        iat_granularity: int = 0,
    ) -> None:
        self._keys = key_store
        self._issuer = issuer
        self._include_iss = include_iss
        self._default_lifetime = default_lifetime
        self._granularity = iat_granularity
        # encoded header per (kid, x5c): it only changes with the signing key
        self._headers: dict[tuple[str, tuple[str, ...] | None], str] = {}

    def claims(self, *, app: AppConfig, instance_jwk: dict[str, Any], now: datetime) -> dict[str, Any]:
        lifetime = min(app.attestation_lifetime or self._default_lifetime, MAX_ATTESTATION_LIFETIME)
        iat = int(now.timestamp())
        if self._granularity:
            iat -= iat % self._granularity
        claims: dict[str, Any] = dict(app.claims)
        if self._include_iss:
            claims["iss"] = self._issuer
        claims.update(
            sub=app.client_id,
            iat=iat,
            exp=iat + lifetime,
            cnf={"jwk": {m: instance_jwk[m] for m in _PUBLIC_EC_MEMBERS}},
        )
        return claims

    def issue(self, *, app: AppConfig, instance_jwk: dict[str, Any], now: datetime) -> IssuedAttestation:
        claims = self.claims(app=app, instance_jwk=instance_jwk, now=now)
        # a rotation by another process is noticed within a second (see KeyStore.reload)
        self._keys.reload(unless_checked_within=1.0)
        signer = self._keys.active_signer(now)
        signing_input = self._header(signer) + "." + _segment(claims)
        jwt = signing_input + "." + b64url(signer.sign(signing_input.encode("ascii")))
        return IssuedAttestation(
            jwt=jwt,
            reference=b64url(hashlib.sha256(jwt.encode("ascii")).digest()),
            kid=signer.kid,
            issued_at=datetime.fromtimestamp(claims["iat"], UTC),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )

    def _header(self, signer: Signer) -> str:
        chain = self._keys.x5c(signer.kid)
        key = (signer.kid, chain)
        encoded = self._headers.get(key)
        if encoded is None:
            header: dict[str, Any] = {"alg": signer.alg, "typ": TYP, "kid": signer.kid}
            if chain:
                header["x5c"] = list(chain)
            encoded = _segment(header)
            if len(self._headers) > 64:  # rotations are rare; never grow without bound
                self._headers.clear()
            self._headers[key] = encoded
        return encoded


def _segment(obj: dict[str, Any]) -> str:
    # orjson: compact UTF-8 JSON like json.dumps(separators=(",", ":")) at about a tenth
    # of its cost (JSON encoding was the largest share of issuance outside the signature)
    return b64url(orjson.dumps(obj))
