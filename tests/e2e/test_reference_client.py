"""The reference client's key proof and thumbprint are what the attester itself checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from attester.keyproof import verify_key_proof
from attester.reference_client import AttesterClient, InstanceKey
from keys.jwks import thumbprint

pytestmark = pytest.mark.e2e


def test_reference_client_key_proof_verified_by_attester() -> None:
    with httpx.Client() as http:
        client = AttesterClient("http://127.0.0.1:1", http)
        now = datetime.now(UTC)
        proof = client.key_proof("a-challenge", "https://attester.test", now=now)
        claims = verify_key_proof(
            proof,
            jwk=client.key.public_jwk,
            challenge="a-challenge",
            audience="https://attester.test",
            now=now,
            max_age=timedelta(minutes=5),
            skew=timedelta(seconds=30),
        )
    assert claims == {
        "challenge": "a-challenge",
        "aud": "https://attester.test",
        "iat": int(now.timestamp()),
    }


def test_reference_client_thumbprint_matches_attester() -> None:
    key = InstanceKey.generate()
    assert key.thumbprint == thumbprint(key.public_jwk)
    assert set(key.public_jwk) == {"kty", "crv", "x", "y"}
