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

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from attester import cooperative
from attester.errors import ProblemError
from attester.settings import MAX_ATTESTATION_LIFETIME, AppConfig
from keys.jwks import b64url, b64url_bytes
from keys.pkcs11 import Pkcs11Error
from keys.signer import FileSigner, Signer
from keys.store import KeyStore

TYP = "oauth-client-attestation+jwt"
_PUBLIC_EC_MEMBERS = ("kty", "crv", "x", "y")


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ was 2% of an issuance
class IssuedAttestation:
    jwt: str
    # internal reference (the key of its stored row): the token itself carries no jti. The
    # base64url of the signature's r, a point coordinate of a fresh random (RFC 6979:
    # message-derived) nonce, so as unique as a hash of the token without hashing it
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
        # encoded header (with the "." that follows it) per (kid, x5c, the app's header
        # overrides): it only changes with the signing key or its certificate
        self._headers: dict[tuple[str, tuple[str, ...] | None, bool | None, bool | None], bytes] = {}
        # per app object: it, and the encoded start of its claims (see claims_json)
        self._prefixes: dict[int, tuple[AppConfig, bytes]] = {}

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

    def _iat(self, now: datetime) -> int:
        iat = int(now.timestamp())
        return iat - iat % self._granularity if self._granularity else iat

    def claims(
        self,
        *,
        app: AppConfig,
        instance_jwk: dict[str, Any],
        now: datetime,
        status: dict[str, Any] | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        iat = self._iat(now)
        claims: dict[str, Any] = dict(app.claims)
        # verdicts the publisher configured to pass on; registered claims below win
        claims.update(extra_claims or {})
        if self.include_iss(app):
            claims["iss"] = self._issuer
        claims.update(
            sub=app.client_id,
            iat=iat,
            exp=iat + self.lifetime(app),
            cnf={"jwk": {m: instance_jwk[m] for m in _PUBLIC_EC_MEMBERS}},
        )
        if status is not None:
            claims["status"] = status  # {"status_list": {"idx", "uri"}}
        return claims

    def claims_json(
        self,
        *,
        app: AppConfig,
        instance_jwk: dict[str, Any],
        iat: int,
        status: dict[str, Any] | None = None,
    ) -> bytes:
        """``orjson.dumps(self.claims(...))`` for a JWT without extra claims, byte for byte.

        The app's part (its static claims, ``iss``, ``sub``) is encoded once per app and
        the per-JWT members appended to it: building and encoding the whole dict per
        issuance was the largest share of issuance outside the signature. Registered
        names cannot be static claims (settings), so no member is written twice.
        """
        return self._claims_json(app, instance_jwk, iat, iat + self.lifetime(app), status)

    def _claims_json(
        self,
        app: AppConfig,
        instance_jwk: dict[str, Any],
        iat: int,
        exp: int,
        status: dict[str, Any] | None,
    ) -> bytes:
        cached = self._prefixes.get(id(app))
        if cached is None or cached[0] is not app:  # the app object is held: its id stays its own
            fixed: dict[str, Any] = dict(app.claims)
            if self.include_iss(app):
                fixed["iss"] = self._issuer
            fixed["sub"] = app.client_id
            if len(self._prefixes) > 256:  # apps reload rarely; never grow without bound
                self._prefixes.clear()
            cached = self._prefixes[id(app)] = (app, orjson.dumps(fixed)[:-1] + b",")
        jwk = {m: instance_jwk[m] for m in _PUBLIC_EC_MEMBERS}
        out = b"%s\"iat\":%d,\"exp\":%d,\"cnf\":{\"jwk\":%s}" % (cached[1], iat, exp, orjson.dumps(jwk))
        if status is not None:
            out += b',"status":' + orjson.dumps(status)
        return out + b"}"

    def issue(
        self,
        *,
        app: AppConfig,
        instance_jwk: dict[str, Any],
        now: datetime,
        status: dict[str, Any] | None = None,
        extra_claims: Mapping[str, Any] | None = None,
    ) -> IssuedAttestation:
        # each step written out once (iat, lifetime, exp): this runs at about 1.3x the cost
        # of the signature alone, and every call or keyword argument here shows
        iat = self._iat(now)
        lifetime = self.lifetime(app)
        exp = iat + lifetime
        if extra_claims:
            claims = self.claims(
                app=app, instance_jwk=instance_jwk, now=now, status=status, extra_claims=extra_claims
            )
            body = orjson.dumps(claims)
        else:
            body = self._claims_json(app, instance_jwk, iat, exp, status)
        keys = self._keys
        try:
            # a rotation by another process is noticed within a second (see KeyStore.reload)
            keys.reload(unless_checked_within=1.0)
            signer = keys.active_signer(now)
            # built as bytes: signed and hashed as bytes, decoded to str once
            signing_input = self._header(signer, app, iat, exp) + b64url_bytes(body)
            signature = b64url_bytes(_sign(signer, signing_input))
            jwt = signing_input + b"." + signature
        except Pkcs11Error as exc:  # the HSM is unreachable or refuses: our fault, retryable
            raise ProblemError(
                "signing_key_unavailable", "the signing key is unavailable", status=503
            ) from exc
        return IssuedAttestation(
            jwt.decode("ascii"),
            signature[:43].decode("ascii"),  # r: the first 32 of the 64 signature bytes
            signer.kid,
            datetime.fromtimestamp(iat, UTC),
            datetime.fromtimestamp(exp, UTC),  # (a timedelta added to iat's cost twice this)
        )

    def _header(self, signer: Signer, app: AppConfig, iat: int, exp: int) -> bytes:
        """The encoded header of ``signer`` for ``app``'s profile, followed by ``.``.

        Keyed by the app's two header overrides (not by the :class:`HeaderOptions` they
        resolve to): building and hashing that object per issuance was most of this cost.
        The key's chain goes in only when it is valid for the JWT's whole lifetime
        (:meth:`KeyStore.x5c_valid`: receivers validating x5c would refuse it otherwise).
        """
        chain = self._keys.x5c(signer.kid)
        if chain is not None:
            wanted = self._include_x5c if app.include_x5c is None else app.include_x5c
            chain = (
                self._keys.x5c_valid(
                    signer.kid, datetime.fromtimestamp(iat, UTC), datetime.fromtimestamp(exp, UTC)
                )
                if wanted
                else None
            )
        key = (signer.kid, chain, app.include_jku, app.include_x5c)
        encoded = self._headers.get(key)
        if encoded is None:
            header = compose_header(
                kid=signer.kid, alg=signer.alg, x5c=chain, options=self.header_options(app)
            )
            encoded = b64url_bytes(orjson.dumps(header)) + b"."
            if len(self._headers) > 256:  # rotations are rare; never grow without bound
                self._headers.clear()
            self._headers[key] = encoded
        return encoded


def sign_compact(signer: Signer, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWS over ``header`` (which names ``signer``'s alg and kid) and ``claims``."""
    signing_input = _segment(header) + "." + _segment(claims)
    return signing_input + "." + b64url(_sign(signer, signing_input.encode("ascii")))


def _sign(signer: Signer, signing_input: bytes) -> bytes:
    """A key file's signature is computed right here; another signer's (an HSM's) may wait
    on a device or the network: in a thread when the request runs on the event loop."""
    if isinstance(signer, FileSigner):
        return signer.sign(signing_input)
    return cooperative.blocking(signer.sign, signing_input)


def _segment(obj: dict[str, Any]) -> str:
    # orjson: compact UTF-8 JSON like json.dumps(separators=(",", ":")) at about a tenth
    # of its cost (JSON encoding was the largest share of issuance outside the signature)
    return b64url(orjson.dumps(obj))
