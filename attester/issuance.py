"""Issuance of the Client Attestation JWT (draft-ietf-oauth-attestation-based-client-auth).

Header: ``typ`` oauth-client-attestation+jwt, ``alg`` ES256, ``kid``; ``x5c`` when the key
has a certificate chain and the receiver profile wants it; ``jku`` (our jwks_uri) when asked
for. Claims: ``iss`` (on by default for draft-07 receivers), ``sub`` = the app's client_id,
``iat``, ``exp``, ``cnf.jwk`` (public members only), the app's static claims and, when the app
uses it, the Token Status List reference ``status`` (allocated by :mod:`attester.status_list`).
No per-instance identifier beyond ``cnf`` (the status index is random per JWT).

Receiver profile (README "Compatibility"): ``include_iss``, ``include_jku`` and
``include_x5c`` are service-wide settings that each app may override. The header is
:func:`compose_header` of (key, :class:`HeaderOptions`) only, so it can be computed once
per (kid, app) and cached.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from attester.errors import ProblemError
from attester.settings import MAX_ATTESTATION_LIFETIME, AppConfig
from keys.jwks import b64url
from keys.pkcs11 import Pkcs11Error
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


# -- receiver profile: header composition ----------------------------------------------
@dataclass(frozen=True)
class HeaderOptions:
    """What an app's receivers want in the JOSE header beyond alg, typ and kid."""

    include_x5c: bool
    jku: str | None  # the JWKS URL, or None to leave jku out


def compose_header(
    *, kid: str, alg: str, x5c: tuple[str, ...] | None, options: HeaderOptions
) -> dict[str, Any]:
    """The JWT header for key ``kid`` (with its chain ``x5c``, if any) under ``options``.

    A pure function: equal arguments give equal headers (cacheable per kid and app).
    """
    header: dict[str, Any] = {"alg": alg, "typ": TYP, "kid": kid}
    if options.jku is not None:
        header["jku"] = options.jku
    if options.include_x5c and x5c:
        header["x5c"] = list(x5c)
    return header


class AttestationIssuer:
    def __init__(
        self,
        *,
        key_store: KeyStore,
        issuer: str,
        include_iss: bool,
        default_lifetime: int,
        iat_granularity: int = 0,
        include_jku: bool = False,
        include_x5c: bool = True,
        jwks_uri: str | None = None,
    ) -> None:
        self._keys = key_store
        self._issuer = issuer
        self._include_iss = include_iss
        self._default_lifetime = default_lifetime
        self._granularity = iat_granularity
        self._include_jku = include_jku
        self._include_x5c = include_x5c
        self._jwks_uri = jwks_uri or f"{issuer}/.well-known/jwks.json"
        # encoded header per (kid, x5c, receiver profile): it only changes with the signing key
        self._headers: dict[tuple[str, tuple[str, ...] | None, HeaderOptions], str] = {}

    def include_iss(self, app: AppConfig) -> bool:
        return self._include_iss if app.include_iss is None else app.include_iss

    def header_options(self, app: AppConfig) -> HeaderOptions:
        """The app's header profile: its overrides, else the service-wide settings."""
        jku = self._include_jku if app.include_jku is None else app.include_jku
        x5c = self._include_x5c if app.include_x5c is None else app.include_x5c
        return HeaderOptions(include_x5c=x5c, jku=self._jwks_uri if jku else None)

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
        extra_claims: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        lifetime = self.lifetime(app)
        iat = int(now.timestamp())
        if self._granularity:
            iat -= iat % self._granularity
        claims: dict[str, Any] = dict(app.claims)
        # verdicts the publisher configured to pass on; registered claims below win
        claims.update(extra_claims or {})
        if self.include_iss(app):
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
        extra_claims: Mapping[str, Any] | None = None,
    ) -> IssuedAttestation:
        claims = self.claims(
            app=app, instance_jwk=instance_jwk, now=now, status=status, extra_claims=extra_claims
        )
        try:
            # a rotation by another process is noticed within a second (see KeyStore.reload)
            self._keys.reload(unless_checked_within=1.0)
            signer = self._keys.active_signer(now)
            signing_input = (
                self._header(signer, self.header_options(app), claims["iat"], claims["exp"])
                + "."
                + _segment(claims)
            )
            jwt = signing_input + "." + b64url(signer.sign(signing_input.encode("ascii")))
        except Pkcs11Error as exc:  # the HSM is unreachable or refuses: our fault, retryable
            raise ProblemError(
                "signing_key_unavailable", "the signing key is unavailable", status=503
            ) from exc
        return IssuedAttestation(
            jwt=jwt,
            reference=b64url(hashlib.sha256(jwt.encode("ascii")).digest()),
            kid=signer.kid,
            issued_at=datetime.fromtimestamp(claims["iat"], UTC),
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )

    def _header(self, signer: Signer, options: HeaderOptions, iat: int, exp: int) -> str:
        chain = None
        if options.include_x5c:  # only a chain valid for the JWT's whole lifetime is sent
            chain = self._keys.x5c_valid(
                signer.kid, datetime.fromtimestamp(iat, UTC), datetime.fromtimestamp(exp, UTC)
            )
        key = (signer.kid, chain, options)
        encoded = self._headers.get(key)
        if encoded is None:
            header = compose_header(kid=signer.kid, alg=signer.alg, x5c=chain, options=options)
            encoded = _segment(header)
            if len(self._headers) > 256:  # rotations are rare; never grow without bound
                self._headers.clear()
            self._headers[key] = encoded
        return encoded


def sign_compact(signer: Signer, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS over ``header`` (which names ``signer``'s alg and kid) and ``claims``."""
    signing_input = _segment(header) + "." + _segment(claims)
    return signing_input + "." + b64url(signer.sign(signing_input.encode("ascii")))


def _segment(obj: dict[str, Any]) -> str:
    # orjson: compact UTF-8 JSON like json.dumps(separators=(",", ":")) at about a tenth
    # of its cost (JSON encoding was the largest share of issuance outside the signature)
    return b64url(orjson.dumps(obj))
