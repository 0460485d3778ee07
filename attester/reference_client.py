"""Reference client for the client attester and for attestation-based client authentication.

Two halves, usable apart:

* :class:`AttesterClient` plays the app instance towards this attester: challenge, registration
  with platform evidence plus a key proof, renewal. It keeps the returned Client Attestation JWT.
* :class:`AsClient` plays the same instance towards an OAuth authorization server (AS): it fetches
  the AS metadata and challenge, builds the ``OAuth-Client-Attestation-PoP`` JWT or, in combined
  mode, a DPoP proof, and requests a ``client_credentials`` token, retrying once on
  ``use_attestation_challenge`` or ``use_dpop_nonce``.

Both count the HTTP requests they send (:attr:`AttesterClient.request_count`,
:attr:`AsClient.request_count`) so a test can report the cost of start-up.

Specifications:
https://datatracker.ietf.org/doc/draft-ietf-oauth-attestation-based-client-auth/ (draft -12),
RFC 9449 (DPoP), RFC 7638 (JWK thumbprint), RFC 8414 (AS metadata).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from jwcrypto import jwk, jwt

__all__ = [
    "ATTESTATION_HEADER",
    "ATTESTATION_POP_HEADER",
    "CHALLENGE_HEADER",
    "KEY_PROOF_TYP",
    "POP_TYP",
    "AsClient",
    "AsError",
    "AttesterClient",
    "AttesterError",
    "InstanceKey",
]

ATTESTATION_HEADER = "OAuth-Client-Attestation"
ATTESTATION_POP_HEADER = "OAuth-Client-Attestation-PoP"
CHALLENGE_HEADER = "OAuth-Client-Attestation-Challenge"
DPOP_HEADER = "DPoP"
DPOP_NONCE_HEADER = "DPoP-Nonce"

KEY_PROOF_TYP = "key-proof+jwt"
POP_TYP = "oauth-client-attestation-pop+jwt"
DPOP_TYP = "dpop+jwt"


def _epoch(now: datetime | None) -> int:
    moment = now if now is not None else datetime.now(UTC)
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return int(moment.timestamp())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class InstanceKey:
    """An app instance's EC P-256 key: the key that goes into ``cnf.jwk`` and signs PoPs.

    On a device this key lives in Android Keystore or the Secure Enclave; here it is a software
    key so that tests and AS developers can play the instance.
    """

    key: jwk.JWK

    @classmethod
    def generate(cls) -> InstanceKey:
        """Make a fresh EC P-256 key."""
        return cls(jwk.JWK.generate(kty="EC", crv="P-256"))

    @classmethod
    def from_pem(cls, private_pem: bytes) -> InstanceKey:
        """Load an EC P-256 private key from PEM (e.g. the key a simulated device attests)."""
        key = jwk.JWK.from_pem(private_pem)
        if key.get("kty") != "EC" or key.get("crv") != "P-256" or not key.has_private:
            raise ValueError("an EC P-256 private key is required")
        return cls(key)

    @property
    def public_jwk(self) -> dict[str, str]:
        """The public JWK (``kty``, ``crv``, ``x``, ``y``), as it appears in ``cnf.jwk``."""
        exported: dict[str, str] = self.key.export_public(as_dict=True)
        return {name: exported[name] for name in ("kty", "crv", "x", "y")}

    @property
    def thumbprint(self) -> str:
        """RFC 7638 SHA-256 thumbprint, base64url."""
        return str(self.key.thumbprint())

    def sign(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        """Sign ``claims`` as a compact ES256 JWS with the given protected ``header``.

        ``alg`` is forced to ES256; JWS ECDSA signatures are raw ``r || s`` (RFC 7518 3.4),
        which jwcrypto produces itself.
        """
        token = jwt.JWT(header={**header, "alg": "ES256"}, claims=dict(claims))
        token.make_signed_token(self.key)
        return str(token.serialize())


class AttesterError(Exception):
    """The attester refused a request; ``problem`` is its RFC 9457 body, ``code`` its code."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        self.code = str(problem.get("code", "unknown"))
        super().__init__(f"attester answered {status}: {self.code}")


class AsError(Exception):
    """The AS refused a request; ``error`` is the OAuth error code."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = response.headers
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            body = {}
        self.body = body
        self.error = str(body.get("error", "unknown"))
        self.error_description = body.get("error_description")
        super().__init__(f"AS answered {self.status}: {self.error} ({self.error_description})")


class AttesterClient:
    """The app instance's side of the attester API (DESIGN.md, "Flows").

    ``key`` is the instance key: for Android it is the attested Keystore key (the chain's leaf
    key); for Apple it is the Secure Enclave key whose JWK goes into ``client_data``.
    """

    def __init__(
        self, base_url: str, http: httpx.Client, *, key: InstanceKey | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.key = key if key is not None else InstanceKey.generate()
        self.client_attestation: str | None = None
        self.request_count = 0

    def _post(self, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        self.request_count += 1
        response = self.http.post(f"{self.base_url}{path}", json=dict(body or {}))
        if response.is_error:
            try:
                problem = response.json()
            except ValueError:
                problem = {"code": "unknown", "detail": response.text[:200]}
            raise AttesterError(response.status_code, problem)
        result: dict[str, Any] = response.json()
        return result

    def _keep(self, result: dict[str, Any]) -> dict[str, Any]:
        attestation = result.get("client_attestation")
        if isinstance(attestation, str):
            self.client_attestation = attestation
        return result

    def get_challenge(self) -> str:
        """``POST /v1/challenge``: a single-use challenge (base64url string)."""
        return str(self._post("/v1/challenge")["challenge"])

    def key_proof(self, challenge: str, audience: str, now: datetime | None = None) -> str:
        """The key proof: compact ES256 JWS by the instance key over ``{challenge, aud, iat}``.

        ``audience`` is the attester's issuer URL. Header: ``{alg: ES256, typ: key-proof+jwt}``.
        """
        claims = {"challenge": challenge, "aud": audience, "iat": _epoch(now)}
        return self.key.sign({"typ": KEY_PROOF_TYP}, claims)

    def register_android(
        self,
        chain_der: Sequence[bytes],
        challenge: str,
        key_proof: str,
        *,
        integrity_token: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/android/attestations`` with a Key Attestation chain, leaf first.

        Returns the JSON answer, whose ``client_attestation`` is the Client Attestation JWT
        (also kept in :attr:`client_attestation`).
        """
        body: dict[str, Any] = {
            "certificate_chain": [_b64(der) for der in chain_der],
            "challenge": challenge,
            "key_proof": key_proof,
        }
        if integrity_token is not None:
            body["integrity_token"] = integrity_token
        return self._keep(self._post("/v1/android/attestations", body))

    def register_apple(
        self, key_id: bytes, attestation_object: bytes, client_data: bytes, key_proof: str
    ) -> dict[str, Any]:
        """``POST /v1/apple/attestations`` with an App Attest attestation object.

        ``client_data`` is the UTF-8 JSON whose SHA-256 the app passed as ``clientDataHash``;
        see :meth:`apple_client_data`. Returns the JSON answer (``client_attestation``).
        """
        body = {
            "key_id": _b64(key_id),
            "attestation_object": _b64(attestation_object),
            "client_data": _b64url(client_data),
            "key_proof": key_proof,
        }
        return self._keep(self._post("/v1/apple/attestations", body))

    def apple_client_data(self, challenge: str) -> bytes:
        """The ``client_data`` an iOS app builds: ``{"challenge", "jwk"}`` as compact JSON."""
        document = {"challenge": challenge, "jwk": self.key.public_jwk}
        return json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")

    def renew(
        self,
        challenge: str,
        key_proof: str,
        *,
        assertion: bytes | None = None,
        client_data: bytes | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/attestations/renew``: a new JWT for a registered instance.

        Sends ``key_thumbprint`` (RFC 7638, of :attr:`key`), the fresh ``challenge`` and a key
        proof over it. Apple apps add the App Attest ``assertion`` (CBOR, sent base64) over
        ``client_data`` (sent base64url). ``extra`` adds fields verbatim.
        """
        body: dict[str, Any] = {
            "key_thumbprint": self.key.thumbprint,
            "challenge": challenge,
            "key_proof": key_proof,
        }
        if assertion is not None:
            body["assertion"] = _b64(assertion)
        if client_data is not None:
            body["client_data"] = _b64url(client_data)
        body.update(extra or {})
        return self._keep(self._post("/v1/attestations/renew", body))


class AsClient:
    """An attested client instance talking to an OAuth AS (draft -12 section 5 and 6).

    ``issuer`` is the AS issuer; its metadata is read from
    ``/.well-known/oauth-authorization-server`` unless ``metadata`` is given.
    """

    def __init__(
        self,
        issuer: str,
        http: httpx.Client,
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.issuer = issuer.rstrip("/")
        self.http = http
        self._metadata: dict[str, Any] | None = dict(metadata) if metadata else None
        self.challenge: str | None = None
        self.dpop_nonce: str | None = None
        self.request_count = 0

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        self.request_count += 1
        response = self.http.request(method, url, **kwargs)
        self._remember(response)
        return response

    def _remember(self, response: httpx.Response) -> None:
        # The AS hands out the next challenge/nonce on any response; keep the latest.
        if CHALLENGE_HEADER in response.headers:
            self.challenge = response.headers[CHALLENGE_HEADER]
        if DPOP_NONCE_HEADER in response.headers:
            self.dpop_nonce = response.headers[DPOP_NONCE_HEADER]

    @property
    def metadata(self) -> dict[str, Any]:
        """RFC 8414 metadata (fetched once)."""
        if self._metadata is None:
            url = f"{self.issuer}/.well-known/oauth-authorization-server"
            response = self._send("GET", url)
            response.raise_for_status()
            self._metadata = response.json()
        return self._metadata

    @property
    def token_endpoint(self) -> str:
        """The AS token endpoint."""
        return str(self.metadata["token_endpoint"])

    def get_challenge(self) -> str:
        """``POST challenge_endpoint`` → ``attestation_challenge`` (also keeps any DPoP nonce)."""
        response = self._send("POST", str(self.metadata["challenge_endpoint"]))
        if response.is_error:
            raise AsError(response)
        challenge = str(response.json()["attestation_challenge"])
        self.challenge = challenge
        return challenge

    def attestation_pop(
        self, key: InstanceKey, challenge: str | None, now: datetime | None = None
    ) -> str:
        """The ``OAuth-Client-Attestation-PoP`` JWT, signed by the ``cnf`` key.

        Claims ``aud`` (the AS issuer, one string), ``jti`` (random), ``iat`` and ``challenge``;
        no ``iss`` and no ``exp``.
        """
        claims: dict[str, Any] = {
            "aud": self.issuer,
            "jti": secrets.token_urlsafe(16),
            "iat": _epoch(now),
        }
        if challenge is not None:
            claims["challenge"] = challenge
        return key.sign({"typ": POP_TYP}, claims)

    def dpop_proof(
        self,
        key: InstanceKey,
        htm: str,
        htu: str,
        nonce: str | None,
        now: datetime | None = None,
        access_token: str | None = None,
    ) -> str:
        """An RFC 9449 DPoP proof whose ``jwk`` header is the instance key (combined mode)."""
        claims: dict[str, Any] = {
            "htm": htm,
            "htu": htu,
            "iat": _epoch(now),
            "jti": secrets.token_urlsafe(16),
        }
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["ath"] = _b64url(hashlib.sha256(access_token.encode("ascii")).digest())
        return key.sign({"typ": DPOP_TYP, "jwk": key.public_jwk}, claims)

    def token_request(
        self,
        client_attestation: str,
        *,
        pop: str | None = None,
        dpop: str | None = None,
        scope: str | None = None,
    ) -> httpx.Response:
        """One raw ``client_credentials`` request with the given headers, no retry."""
        headers = {ATTESTATION_HEADER: client_attestation}
        if pop is not None:
            headers[ATTESTATION_POP_HEADER] = pop
        if dpop is not None:
            headers[DPOP_HEADER] = dpop
        form = {"grant_type": "client_credentials"}
        if scope is not None:
            form["scope"] = scope
        return self._send("POST", self.token_endpoint, data=form, headers=headers)

    def request_token(
        self,
        client_attestation: str,
        key: InstanceKey,
        *,
        combined: bool = False,
        scope: str | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """Get a ``client_credentials`` access token, authenticating with the attestation.

        ``combined=False``: ``OAuth-Client-Attestation-PoP`` with the AS challenge (fetched first
        if none is known). ``combined=True``: a DPoP proof with the AS nonce instead of a PoP.
        Retries once on ``use_attestation_challenge`` / ``use_dpop_nonce``; raises
        :class:`AsError` otherwise.
        """
        if combined:
            if self.dpop_nonce is None:
                self.get_challenge()  # the challenge endpoint also hands out the DPoP nonce
        elif self.challenge is None:
            self.get_challenge()
        for attempt in range(2):
            if combined:
                proof = self.dpop_proof(key, "POST", self.token_endpoint, self.dpop_nonce, now)
                response = self.token_request(client_attestation, dpop=proof, scope=scope)
            else:
                pop = self.attestation_pop(key, self.challenge, now)
                response = self.token_request(client_attestation, pop=pop, scope=scope)
            if response.is_success:
                result: dict[str, Any] = response.json()
                return result
            error = AsError(response)
            retryable = (
                (error.error == "use_dpop_nonce" and DPOP_NONCE_HEADER in response.headers)
                if combined
                else (
                    error.error == "use_attestation_challenge"
                    and CHALLENGE_HEADER in response.headers
                )
            )
            if attempt == 1 or not retryable:
                raise error
        raise AssertionError("unreachable")
