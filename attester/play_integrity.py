"""Decoding Play Integrity tokens: Google's ``decodeIntegrityToken`` or the publisher's keys.

Two ways Google offers (https://developer.android.com/google/play/integrity/standard and
https://developer.android.com/google/play/integrity/classic):

- **Google-server decode** (standard and classic requests): POST the token to
  ``{play_integrity_url}/v1/{packageName}:decodeIntegrityToken`` with an OAuth access token
  of the publisher's service account, scope ``https://www.googleapis.com/auth/playintegrity``.
  google-auth signs the JWT grant (RS256) and refreshes the token; HTTP goes through httpx.
- **Local decode** (classic requests only): the token is a JWE (A256KW + A256GCM) under the
  publisher's AES-256 decryption key holding a JWS (ES256) under Google's verification key
  for the app. jwcrypto does both with exactly those algorithms allowed.

Both return the verdict payload; ``platform_verifiers.android.play_integrity`` checks it.
Keys are read from files or environment variables at start-up and never logged.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attester.errors import ProblemError
from attester.settings import ConfigError

log = logging.getLogger("attester.play_integrity")

PLAY_INTEGRITY_SCOPE = "https://www.googleapis.com/auth/playintegrity"
MAX_TOKEN_CHARS = 16384


class IntegrityDecoder(Protocol):
    """Turns an integrity token into its verdict payload (``tokenPayloadExternal``)."""

    def decode(self, token: str, *, package_name: str) -> Mapping[str, Any]: ...


def read_secret(*, file: Path | None, env: str | None, what: str) -> bytes:
    """The bytes of a key from a file or an environment variable (exactly one is set)."""
    if (file is None) == (env is None):
        raise ConfigError(f"invalid configuration: {what}: set exactly one of the file or env")
    if file is not None:
        try:
            return file.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"invalid configuration: {what}: cannot read {file}: {exc.strerror}"
            ) from None
    value = os.environ.get(str(env))
    if not value:
        raise ConfigError(f"invalid configuration: {what}: environment variable {env} is not set")
    return value.encode()


def _b64(data: bytes, *, what: str) -> bytes:
    text = b"".join(data.split()).decode("ascii", "replace").rstrip("=")
    text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"invalid configuration: {what}: not base64") from None


# -- local decode ----------------------------------------------------------------------


@dataclass(frozen=True)
class LocalDecoder:
    """Decrypt (A256KW + A256GCM) and verify (ES256) a classic integrity token locally."""

    decryption_key: bytes = field(repr=False)
    verification_key: ec.EllipticCurvePublicKey = field(repr=False)

    @classmethod
    def from_base64(cls, decryption_key_b64: bytes, verification_key_b64: bytes) -> LocalDecoder:
        """Keys as the Play Console shows them: base64 AES-256 key, base64 DER public key."""
        aes = _b64(decryption_key_b64, what="play_integrity decryption key")
        if len(aes) != 32:
            raise ConfigError("invalid configuration: play_integrity decryption key: not AES-256")
        der = _b64(verification_key_b64, what="play_integrity verification key")
        try:
            key = serialization.load_der_public_key(der)
        except ValueError:
            raise ConfigError(
                "invalid configuration: play_integrity verification key: not a DER public key"
            ) from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ConfigError(
                "invalid configuration: play_integrity verification key: not EC P-256"
            )
        return cls(decryption_key=aes, verification_key=key)

    def decode(self, token: str, *, package_name: str) -> Mapping[str, Any]:
        from jwcrypto import jwe, jwk, jws
        from jwcrypto.common import JWException

        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 4:
            raise ProblemError("integrity_token_malformed", "the integrity token is not a JWE")
        try:
            envelope = jwe.JWE(algs=["A256KW", "A256GCM"])
            envelope.deserialize(token)
        except (JWException, ValueError, TypeError):
            raise ProblemError(
                "integrity_token_malformed", "the integrity token is not a JWE"
            ) from None
        protected = envelope.jose_header if isinstance(envelope.jose_header, dict) else {}
        if protected.get("alg") != "A256KW" or protected.get("enc") != "A256GCM":
            raise ProblemError(
                "integrity_token_malformed", "the integrity token uses unexpected algorithms"
            )
        try:
            envelope.decrypt(jwk.JWK(kty="oct", k=_b64url(self.decryption_key)))
        except (JWException, ValueError, TypeError):
            raise ProblemError(
                "integrity_token_invalid", "the integrity token does not decrypt"
            ) from None
        try:
            signed = jws.JWS()
            signed.allowed_algs = ["ES256"]
            signed.deserialize(envelope.payload.decode("ascii"))
        except (JWException, ValueError, TypeError, UnicodeDecodeError):
            raise ProblemError(
                "integrity_token_malformed", "the integrity token holds no JWS"
            ) from None
        try:
            signed.verify(jwk.JWK.from_pyca(self.verification_key), alg="ES256")
        except (JWException, ValueError, TypeError):
            raise ProblemError(
                "integrity_token_invalid", "the integrity token signature does not verify"
            ) from None
        try:
            payload = json.loads(signed.payload)
        except (ValueError, RecursionError):
            raise ProblemError(
                "integrity_token_malformed", "the integrity verdict is not JSON"
            ) from None
        if not isinstance(payload, dict):
            raise ProblemError(
                "integrity_token_malformed", "the integrity verdict is not an object"
            )
        return payload


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- Google-server decode ----------------------------------------------------------------


class HttpxTransport:
    """A ``google.auth.transport.Request`` over httpx (google-auth ships none for httpx)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        from google.auth import exceptions

        try:
            response = self.client.request(
                method,
                url,
                content=body,
                headers=dict(headers or {}),
                # google-auth passes no timeout: httpx's None would mean "wait forever"
                timeout=timeout if timeout else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            raise exceptions.TransportError(type(exc).__name__) from None  # type: ignore[no-untyped-call]

        return _Response(response)


class _Response:
    """google-auth's response interface (status, headers, data) over an httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = dict(response.headers)
        self.data = response.content


class GoogleDecoder:
    """``decodeIntegrityToken`` with service-account credentials (google-auth) over httpx."""

    def __init__(
        self,
        service_account_info: Mapping[str, Any],
        *,
        api_url: str,
        token_uri: str,
        timeout: float,
        client: httpx.Client | None = None,
    ) -> None:
        from google.oauth2 import service_account

        info = dict(service_account_info)
        # every URL is a setting: the token endpoint too (google-auth reads it from the info)
        info["token_uri"] = token_uri
        try:
            self._credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                info,
                scopes=[PLAY_INTEGRITY_SCOPE],
                # google-auth 2.x signs the grant with Google's fixed token URL as aud; the
                # endpoint we post to is the audience Google (or a stand-in) checks
                additional_claims={"aud": token_uri},
            )
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"invalid configuration: play_integrity service account: {type(exc).__name__}"
            ) from None
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)
        self._transport = HttpxTransport(self._client)
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never show key material
        return f"GoogleDecoder(api_url={self.api_url!r})"

    def _access_token(self) -> str:
        from google.auth import exceptions

        with self._lock:  # one refresh at a time; the token is cached until near expiry
            if not self._credentials.valid:
                try:
                    self._credentials.refresh(self._transport)
                except (exceptions.RefreshError, exceptions.TransportError) as exc:
                    log.error(
                        "Play Integrity access token refresh failed",
                        extra={"fields": {"error": type(exc).__name__}},
                    )
                    raise ProblemError(
                        "integrity_decode_unavailable",
                        "Play Integrity verification is unavailable; try again later",
                    ) from None
            return str(self._credentials.token)

    def decode(self, token: str, *, package_name: str) -> Mapping[str, Any]:
        access_token = self._access_token()
        url = f"{self.api_url}/v1/{quote(package_name, safe='')}:decodeIntegrityToken"
        try:
            response = self._client.post(
                url,
                json={"integrity_token": token},
                headers={"Authorization": f"Bearer {access_token}"},
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            log.error(
                "decodeIntegrityToken failed", extra={"fields": {"error": type(exc).__name__}}
            )
            raise ProblemError(
                "integrity_decode_unavailable",
                "Play Integrity verification is unavailable; try again later",
            ) from None
        if response.status_code == 400:
            # Google's INVALID_ARGUMENT: the token is not one it issued for this package
            raise ProblemError("integrity_token_invalid", "Google refused the integrity token")
        if response.status_code != 200:
            log.error(
                "decodeIntegrityToken refused", extra={"fields": {"status": response.status_code}}
            )
            raise ProblemError(
                "integrity_decode_unavailable",
                "Play Integrity verification is unavailable; try again later",
            )
        try:
            payload = response.json().get("tokenPayloadExternal")
        except (ValueError, AttributeError):
            payload = None
        if not isinstance(payload, dict):
            raise ProblemError(
                "integrity_decode_unavailable", "Google's answer could not be read; try again later"
            )
        return payload

    def close(self) -> None:
        self._client.close()


def load_service_account(data: bytes) -> dict[str, Any]:
    """Parse a service-account JSON key file (its content never reaches a log)."""
    try:
        info = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(
            "invalid configuration: play_integrity service account: not JSON"
        ) from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ConfigError(
            "invalid configuration: play_integrity service account: not a service-account key"
        )
    return info
