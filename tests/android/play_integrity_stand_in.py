"""Loopback stand-ins for Google's OAuth token endpoint and Play Integrity decode endpoint.

Google cannot be reached from here. The token endpoint checks the service-account JWT
grant the way Google documents it (https://developers.google.com/identity/protocols/oauth2/service-account#httprest):
grant type ``urn:ietf:params:oauth:grant-type:jwt-bearer``, RS256 signature by the service
account's key (``kid`` = its private_key_id), ``iss`` = the client email, ``aud`` = the token
endpoint, ``scope`` holding the Play Integrity scope, ``exp`` at most one hour after ``iat``.
The decode endpoint wants a bearer token from that endpoint and answers verdicts registered
by the test (``verdicts[token]``), 400 INVALID_ARGUMENT otherwise, like Google.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwcrypto import jwe, jwk, jws

SCOPE = "https://www.googleapis.com/auth/playintegrity"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_service_account(
    token_uri: str = "https://oauth2.googleapis.com/token",
) -> tuple[dict[str, Any], rsa.RSAPrivateKey]:
    """A service-account key file's content (JSON info) made in the test."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "attester-test",
        "private_key_id": secrets.token_hex(20),
        "private_key": pem,
        "client_email": "verifier@attester-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    return info, key


class GoogleStandIn:
    """OAuth token endpoint + ``decodeIntegrityToken`` on one loopback server; counts requests."""

    def __init__(self, service_account: dict[str, Any], public_key: rsa.RSAPublicKey) -> None:
        self.service_account = service_account
        self.public_key = public_key
        self.verdicts: dict[str, dict[str, Any]] = {}
        self.access_tokens: set[str] = set()
        self.token_requests = 0
        self.decode_requests = 0
        self.grant_errors: list[str] = []
        self.decode_status: int | None = None  # force an answer (e.g. 500)
        self.delay = 0.0
        self.decoded_packages: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if outer.delay:
                    time.sleep(outer.delay)
                if self.path == "/token":
                    outer.token_requests += 1
                    status, answer = outer.grant(body)
                    self._answer(status, answer)
                    return
                if self.path.startswith("/v1/") and self.path.endswith(":decodeIntegrityToken"):
                    outer.decode_requests += 1
                    outer.decoded_packages.append(self.path[4 : -len(":decodeIntegrityToken")])
                    status, answer = outer.decode(self.headers.get("Authorization", ""), body)
                    self._answer(status, answer)
                    return
                self._answer(404, {"error": {"status": "NOT_FOUND"}})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.token_uri = f"{self.base_url}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    # -- Google's checks -----------------------------------------------------------------
    def _refuse(self, why: str, error: str = "invalid_grant") -> tuple[int, dict[str, Any]]:
        self.grant_errors.append(why)
        return 400, {"error": error, "error_description": why}

    def grant(self, body: bytes) -> tuple[int, dict[str, Any]]:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if form.get("grant_type") != GRANT_TYPE:
            return self._refuse("grant_type", "unsupported_grant_type")
        parts = form.get("assertion", "").split(".")
        if len(parts) != 3:
            return self._refuse("assertion")
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
        if (
            header.get("alg") != "RS256"
            or header.get("kid") != self.service_account["private_key_id"]
        ):
            return self._refuse("header")
        try:
            self.public_key.verify(
                _b64url_decode(parts[2]),
                f"{parts[0]}.{parts[1]}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except Exception:  # noqa: BLE001 - any failure is a bad signature
            return self._refuse("signature")
        now = time.time()
        if claims.get("iss") != self.service_account["client_email"]:
            return self._refuse("iss")
        if claims.get("aud") != self.token_uri:
            return self._refuse("aud")
        if SCOPE not in str(claims.get("scope", "")).split():
            return self._refuse("scope", "invalid_scope")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int) or exp - iat > 3600:
            return self._refuse("lifetime")
        if iat > now + 300 or exp < now:
            return self._refuse("time")
        token = "ya29." + secrets.token_urlsafe(24)
        self.access_tokens.add(token)
        return 200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}

    def decode(self, authorization: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if not authorization.startswith("Bearer ") or authorization[7:] not in self.access_tokens:
            return 401, {"error": {"status": "UNAUTHENTICATED"}}
        if self.decode_status is not None:
            return self.decode_status, {"error": {"status": "INTERNAL"}}
        token = json.loads(body).get("integrity_token")
        verdict = self.verdicts.get(token)
        if verdict is None:
            return 400, {"error": {"status": "INVALID_ARGUMENT"}}
        return 200, {"tokenPayloadExternal": verdict}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def verdict_payload(
    *,
    binding: str,
    package: str,
    signer: bytes,
    now: datetime,
    request_type: str = "standard",
    labels: tuple[str, ...] = ("MEETS_BASIC_INTEGRITY", "MEETS_DEVICE_INTEGRITY"),
    recognition: str = "PLAY_RECOGNIZED",
    licensing: str = "LICENSED",
    activity: str | None = "LEVEL_1",
) -> dict[str, Any]:
    """A verdict shaped like Google's ``tokenPayloadExternal``."""
    member = "requestHash" if request_type == "standard" else "nonce"
    payload: dict[str, Any] = {
        "requestDetails": {
            "requestPackageName": package,
            member: binding,
            "timestampMillis": str(int(now.timestamp() * 1000)),
        },
        "appIntegrity": {
            "appRecognitionVerdict": recognition,
            "packageName": package,
            "certificateSha256Digest": [base64.urlsafe_b64encode(signer).rstrip(b"=").decode()],
            "versionCode": "42",
        },
        "deviceIntegrity": {"deviceRecognitionVerdict": list(labels)},
        "accountDetails": {"appLicensingVerdict": licensing},
    }
    if activity is not None:
        payload["deviceIntegrity"]["recentDeviceActivity"] = {"deviceActivityLevel": activity}
    return payload


class LocalKeys:
    """A publisher's classic-request keys, made in the test (Play Console shows them base64)."""

    def __init__(self) -> None:
        self.aes = secrets.token_bytes(32)
        self.signing = ec.generate_private_key(ec.SECP256R1())

    @property
    def decryption_b64(self) -> str:
        return base64.b64encode(self.aes).decode()

    @property
    def verification_b64(self) -> str:
        der = self.signing.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def token(
        self,
        payload: dict[str, Any],
        *,
        signing: ec.EllipticCurvePrivateKey | None = None,
        aes: bytes | None = None,
    ) -> str:
        """Sign (ES256) and encrypt (A256KW + A256GCM) like Google does for classic requests."""
        key = signing or self.signing
        signer = jwk.JWK.from_pyca(key)
        signed = jws.JWS(json.dumps(payload).encode())
        signed.add_signature(signer, alg="ES256", protected=json.dumps({"alg": "ES256"}))
        inner = signed.serialize(compact=True)
        enc_key = jwk.JWK(
            kty="oct", k=base64.urlsafe_b64encode(aes or self.aes).rstrip(b"=").decode()
        )
        envelope = jwe.JWE(
            inner.encode(), protected=json.dumps({"alg": "A256KW", "enc": "A256GCM"})
        )
        envelope.add_recipient(enc_key)
        return str(envelope.serialize(compact=True))
