"""The key proof: a compact JWS by the instance key over ``{challenge, aud, iat}``.

It shows the caller controls the private key that goes into ``cnf`` (the draft requires
the attester to check that before it signs). Only ES256 with a P-256 key is accepted;
``none``, HMAC and every other algorithm are refused before any key is touched.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attester.errors import ProblemError
from keys.jwks import public_jwk, thumbprint

MAX_KEY_PROOF_BYTES = 8 * 1024
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
ALLOWED_ALG = "ES256"


_B64URL = re.compile(r"[A-Za-z0-9_-]+")
# a P-256 coordinate: 32 bytes, exactly 43 base64url characters
_COORDINATE = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
# iat as a JSON number within what a float timestamp can hold exactly
_MAX_IAT = 2**53


def _b64url_decode(part: str) -> bytes:
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _json(segment: str) -> Any:
    try:
        return json.loads(_b64url_decode(segment))
    except RecursionError:  # absurdly nested JSON
        raise ValueError("too deeply nested") from None


def parse_instance_jwk(value: object) -> tuple[dict[str, str], ec.EllipticCurvePublicKey]:
    """Validate an instance's public JWK: EC P-256, no private members, a point on the curve."""
    if not isinstance(value, dict):
        raise ProblemError("jwk_malformed", "the instance key must be a JWK object")
    if PRIVATE_MEMBERS & value.keys():
        raise ProblemError(
            "jwk_private_members", "the instance JWK contains private key members; send the public key only"
        )
    if value.get("kty") != "EC" or value.get("crv") != "P-256":
        raise ProblemError(
            "jwk_key_type_not_allowed",
            "only EC P-256 instance keys are accepted",
            allowed=[{"kty": "EC", "crv": "P-256"}],
        )
    x_text, y_text = value.get("x"), value.get("y")
    try:
        # canonical encoding only, so one key has one thumbprint and one cnf
        if not (isinstance(x_text, str) and _COORDINATE.fullmatch(x_text)):
            raise ValueError("x")
        if not (isinstance(y_text, str) and _COORDINATE.fullmatch(y_text)):
            raise ValueError("y")
        x, y = _b64url_decode(x_text), _b64url_decode(y_text)
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
    except (ValueError, binascii.Error):
        raise ProblemError("jwk_malformed", "the instance JWK is not a valid P-256 public key") from None
    return public_jwk(key), key


def verify_key_proof(
    token: object,
    *,
    jwk: dict[str, str],
    challenge: str,
    audience: str,
    now: datetime,
    max_age: timedelta,
    skew: timedelta,
) -> dict[str, Any]:
    """Verify the key proof and return its claims; every failure has its own code."""
    if not isinstance(token, str) or len(token) > MAX_KEY_PROOF_BYTES or token.count(".") != 2:
        raise ProblemError("key_proof_malformed", "the key proof is not a compact JWS")
    header_b64, payload_b64, signature_b64 = token.split(".")
    try:
        header = _json(header_b64)
        payload = _json(payload_b64)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ProblemError("key_proof_malformed", "the key proof is not a compact JWS") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise ProblemError("key_proof_malformed", "the key proof header and payload must be objects")
    alg = header.get("alg")
    if alg != ALLOWED_ALG:
        raise ProblemError(
            "key_proof_alg_not_allowed", "the key proof must be signed with ES256", allowed=[ALLOWED_ALG]
        )
    if "crit" in header:
        raise ProblemError("key_proof_malformed", "critical header parameters are not supported")
    _, key = parse_instance_jwk(jwk)
    if "jwk" in header:
        # a key in the header must be the instance key itself, and public
        embedded, _ = parse_instance_jwk(header["jwk"])
        if thumbprint(embedded) != thumbprint(jwk):
            raise ProblemError(
                "key_proof_signature_invalid", "the key proof is not signed by the instance key"
            )
    try:
        signature = _b64url_decode(signature_b64)
    except (ValueError, binascii.Error):
        signature = b""
    if len(signature) != 64:
        raise ProblemError("key_proof_signature_invalid", "the key proof is not signed by the instance key")
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        key.verify(der, f"{header_b64}.{payload_b64}".encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ProblemError(
            "key_proof_signature_invalid", "the key proof is not signed by the instance key"
        ) from None

    aud = payload.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if audience not in audiences:
        raise ProblemError(
            "key_proof_wrong_audience", "the key proof audience must be this attester", expected=audience
        )
    sent = payload.get("challenge")
    # the challenge is public: a plain comparison leaks nothing
    if not isinstance(sent, str) or sent != challenge:
        raise ProblemError("key_proof_challenge_mismatch", "the key proof is not over this challenge")
    iat = payload.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool) or abs(iat) > _MAX_IAT:
        raise ProblemError("key_proof_malformed", "the key proof needs a numeric iat")
    issued = now.timestamp() - iat
    if issued < -skew.total_seconds():
        raise ProblemError("key_proof_future", "the key proof iat is in the future")
    if issued > max_age.total_seconds() + skew.total_seconds():
        raise ProblemError("key_proof_stale", "the key proof is too old", max_age=int(max_age.total_seconds()))
    return payload
