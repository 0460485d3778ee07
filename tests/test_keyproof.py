"""The key proof: every rejection has its own code."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from jwcrypto import jwk

from attester.errors import ProblemError
from attester.keyproof import parse_instance_jwk, verify_key_proof
from tests.support import make_key_proof, new_instance_key, public_jwk

AUD = "https://attester.test"
CHALLENGE = "c" * 55


def _verify(token: object, key: jwk.JWK, *, now: datetime | None = None) -> dict:  # type: ignore[type-arg]
    return verify_key_proof(
        token,
        jwk=public_jwk(key),
        challenge=CHALLENGE,
        audience=AUD,
        now=now or datetime.now(UTC),
        max_age=timedelta(seconds=300),
        skew=timedelta(seconds=60),
    )


def _code(token: object, key: jwk.JWK, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ProblemError) as info:
        _verify(token, key, **kw)
    return info.value.code


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_key_proof_valid_returns_claims() -> None:
    key = new_instance_key()
    claims = _verify(make_key_proof(key, challenge=CHALLENGE, aud=AUD), key)
    assert claims["challenge"] == CHALLENGE


def test_key_proof_with_matching_header_jwk_accepted() -> None:
    key = new_instance_key()
    token = make_key_proof(key, challenge=CHALLENGE, aud=AUD, header={"jwk": public_jwk(key)})
    assert _verify(token, key)["aud"] == AUD


def test_key_proof_other_key_signature_invalid() -> None:
    key, other = new_instance_key(), new_instance_key()
    assert _code(make_key_proof(other, challenge=CHALLENGE, aud=AUD), key) == "key_proof_signature_invalid"


def test_key_proof_header_jwk_of_other_key_signature_invalid() -> None:
    key, other = new_instance_key(), new_instance_key()
    token = make_key_proof(key, challenge=CHALLENGE, aud=AUD, header={"jwk": public_jwk(other)})
    assert _code(token, key) == "key_proof_signature_invalid"


def test_key_proof_tampered_payload_signature_invalid() -> None:
    key = new_instance_key()
    header, _, sig = make_key_proof(key, challenge=CHALLENGE, aud=AUD).split(".")
    forged = _b64({"challenge": CHALLENGE, "aud": AUD, "iat": int(time.time()) + 1})
    assert _code(f"{header}.{forged}.{sig}", key) == "key_proof_signature_invalid"


def test_key_proof_wrong_audience_rejected() -> None:
    key = new_instance_key()
    assert _code(make_key_proof(key, challenge=CHALLENGE, aud="https://other"), key) == "key_proof_wrong_audience"


def test_key_proof_other_challenge_rejected() -> None:
    key = new_instance_key()
    assert _code(make_key_proof(key, challenge="d" * 55, aud=AUD), key) == "key_proof_challenge_mismatch"


def test_key_proof_stale_iat_rejected() -> None:
    key = new_instance_key()
    token = make_key_proof(key, challenge=CHALLENGE, aud=AUD, iat=int(time.time()) - 3600)
    assert _code(token, key) == "key_proof_stale"


def test_key_proof_future_iat_rejected() -> None:
    key = new_instance_key()
    token = make_key_proof(key, challenge=CHALLENGE, aud=AUD, iat=int(time.time()) + 3600)
    assert _code(token, key) == "key_proof_future"


def test_key_proof_alg_none_rejected() -> None:
    key = new_instance_key()
    token = _b64({"alg": "none"}) + "." + _b64({"challenge": CHALLENGE, "aud": AUD, "iat": int(time.time())}) + "."
    assert _code(token, key) == "key_proof_alg_not_allowed"


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize("alg", ["HS256", "HS512"])
def test_key_proof_hmac_rejected(alg: str) -> None:
    key = new_instance_key()
    # an HMAC "signed" with the public key's bytes: the classic algorithm confusion
    # (the two coordinates decoded and joined: their base64url texts side by side are not
    # canonical base64url, which jwcrypto 1.6 refuses for three keys in four)
    x, y = (_unb64(public_jwk(key)[name]) for name in ("x", "y"))
    secret = jwk.JWK(kty="oct", k=base64.urlsafe_b64encode(x + y).rstrip(b"=").decode())
    token = make_key_proof(secret, challenge=CHALLENGE, aud=AUD, alg=alg)
    assert _code(token, key) == "key_proof_alg_not_allowed"


def test_key_proof_rs256_rejected() -> None:
    rsa = jwk.JWK.generate(kty="RSA", size=2048)
    assert _code(make_key_proof(rsa, challenge=CHALLENGE, aud=AUD, alg="RS256"), new_instance_key()) == "key_proof_alg_not_allowed"


def test_key_proof_header_jwk_with_private_members_rejected() -> None:
    key = new_instance_key()
    private = key.export_private(as_dict=True)
    token = make_key_proof(key, challenge=CHALLENGE, aud=AUD, header={"jwk": private})
    assert _code(token, key) == "jwk_private_members"


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.!!.!!", 5, None, "x" * 9000 + ".a.b"])
def test_key_proof_malformed_rejected(token: object) -> None:
    assert _code(token, new_instance_key()) == "key_proof_malformed"


def test_key_proof_missing_iat_malformed() -> None:
    key = new_instance_key()
    token = make_key_proof(key, challenge=CHALLENGE, aud=AUD, claims={"iat": "yesterday"})
    assert _code(token, key) == "key_proof_malformed"


def test_instance_jwk_private_members_rejected() -> None:
    with pytest.raises(ProblemError) as info:
        parse_instance_jwk(new_instance_key().export_private(as_dict=True))
    assert info.value.code == "jwk_private_members"


@pytest.mark.parametrize(
    "key",
    [
        jwk.JWK.generate(kty="EC", crv="P-384"),
        jwk.JWK.generate(kty="OKP", crv="Ed25519"),
        jwk.JWK.generate(kty="RSA", size=2048),
    ],
)
def test_instance_jwk_type_or_curve_not_allowed(key: jwk.JWK) -> None:
    with pytest.raises(ProblemError) as info:
        parse_instance_jwk(key.export_public(as_dict=True))
    assert info.value.code == "jwk_key_type_not_allowed"


def test_instance_jwk_point_off_curve_malformed() -> None:
    bad = dict(public_jwk(new_instance_key()))
    bad["y"] = bad["x"]
    with pytest.raises(ProblemError) as info:
        parse_instance_jwk(bad)
    assert info.value.code == "jwk_malformed"
