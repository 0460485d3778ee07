"""Issuance of the Client Attestation JWT (draft-ietf-oauth-attestation-based-client-auth).

Header: ``typ`` oauth-client-attestation+jwt, ``alg`` ES256, ``kid`` (and ``x5c`` when the
publisher configured a chain for the key). Claims: ``iss`` (on by default for draft-07
receivers), ``sub`` = the app's client_id, ``iat``, ``exp``, ``cnf.jwk`` (public members
only), the app's static claims and, when the app uses it, the Token Status List reference
``status`` (allocated by :mod:`attester.status_list`). No per-instance identifier beyond ``cnf``
(the status index is random per JWT).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

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

    def lifetime(self, app: AppConfig) -> int:
        """Seconds from ``iat`` to ``exp`` for ``app``'s JWTs."""
        return min(app.attestation_lifetime or self._default_lifetime, MAX_ATTESTATION_LIFETIME)

    def claims(
        self,
        *,
        app: AppConfig,
        instance_jwk: dict[str, Any],
        now: datetime,
        status: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        lifetime = self.lifetime(app)
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
        if status is not None:
            claims["status"] = status  # {"status_list": {"idx", "uri"}}
        return claims

    def issue(
        self,
        *,
        app: AppConfig,
        instance_jwk: dict[str, Any],
        now: datetime,
        status: dict[str, Any] | None = None,
    ) -> IssuedAttestation:
        claims = self.claims(app=app, instance_jwk=instance_jwk, now=now, status=status)
        self._keys.reload()
        signer = self._keys.active_signer(now)
        header: dict[str, Any] = {"alg": signer.alg, "typ": TYP, "kid": signer.kid}
        chain = self._keys.x5c(signer.kid)
        if chain:
            header["x5c"] = list(chain)
        jwt = sign_compact(signer, header, claims)
        return IssuedAttestation(
            jwt=jwt,
            reference=b64url(hashlib.sha256(jwt.encode()).digest()),
            kid=signer.kid,
            issued_at=datetime.fromtimestamp(claims["iat"], UTC),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )


def sign_compact(signer: Signer, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS over ``header`` (which names ``signer``'s alg and kid) and ``claims``."""
    signing_input = _segment(header) + "." + _segment(claims)
    return signing_input + "." + b64url(signer.sign(signing_input.encode("ascii")))


def _segment(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())
