"""Rotation end to end: ``attester keys rotate`` while node-oidc-provider holds a cached JWKS.

The attester publishes ``Cache-Control: max-age=jwks_max_age`` (2 s here) and pre-publishes the
next key for ``--delay`` = jwks_max_age before signing with it. The AS keeps its JWKS for exactly
that max-age and never refetches because of an unknown ``kid`` (jose cooldown one hour), so the
only thing that can make it know the new key in time is the pre-publication. Attestations issued
before, during (next key published, old one still signing) and after (new key signing) the
rotation are all accepted, in both modes; a JWT signed by the next key before it is due, which
the attester never does, is refused by the AS holding the pre-rotation JWKS (the cache is real).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from jwcrypto import jwk, jwt

from tests.e2e.e2e_support import DEFAULT_CLIENT_ID, DEFAULT_DPOP_CLIENT_ID, mint_attestation
from tests.e2e.stack import Device, Stack, running_stack

pytestmark = pytest.mark.e2e

JWKS_MAX_AGE = 5  # seconds: the attester's jwks_max_age and key_prepublish_delay (2 was too
# little on a loaded 2-core machine: the CLI's rotation alone can take most of it)
JWKS_PATH = "/.well-known/jwks.json"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("e2e-rotation"),
        settings={"jwks_max_age": JWKS_MAX_AGE, "key_prepublish_delay": JWKS_MAX_AGE, "clock_skew": 0},
        as_options={
            "jwks_cache_max_age_ms": JWKS_MAX_AGE * 1000,  # honours the attester's max-age
            "jwks_cooldown_ms": 3_600_000,  # no refetch for an unknown kid during the test
        },
    ) as running:
        yield running


def _kid(token: str) -> str:
    return str(jwt.JWT(jwt=token).token.jose_header["kid"])


def _accepted(device: Device, attestation: str) -> None:
    token = device.token(attestation=attestation)
    assert token["access_token"], token


def test_rotation_with_cached_jwks_nothing_rejected(stack: Stack) -> None:
    android, ios = stack.android(DEFAULT_CLIENT_ID), stack.ios(DEFAULT_DPOP_CLIENT_ID)
    devices = (android, ios)

    # before: registered and used; the AS fetches the JWKS (only the current key) and caches it
    before = [device.register() for device in devices]
    for device, attestation in zip(devices, before, strict=True):
        _accepted(device, attestation)
    old_kid = _kid(before[0])
    assert _kid(before[1]) == old_kid
    deadline = time.monotonic() + 2  # the attester logs a request just after answering it
    while stack.attester.requests_to(JWKS_PATH) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    as_fetches = stack.attester.requests_to(JWKS_PATH)
    assert as_fetches >= 1

    # rotate: the next key is published at once and signs after the delay
    rotated = stack.attester.cli("keys", "rotate", "--delay", str(JWKS_MAX_AGE))
    assert rotated.returncode == 0, rotated.stderr
    record = json.loads(rotated.stdout)
    new_kid = str(record["kid"])
    activates_at = datetime.fromisoformat(record["activates_at"])

    # the AS really holds its pre-rotation JWKS: a JWT by the next key (which the attester
    # would not sign with yet) is refused, without the AS fetching again
    next_key = jwk.JWK.from_pem((stack.attester.data_dir / "keys" / f"{new_kid}.pem").read_bytes())
    now = datetime.now(UTC)
    premature = mint_attestation(
        next_key,
        kid=new_kid,
        sub=DEFAULT_CLIENT_ID,
        cnf_jwk=android.key.public_jwk,
        iat=now,
        exp=now + timedelta(minutes=5),
        iss=stack.issuer,
    )
    seen = len(stack.as_.events)
    response = android.as_client.token_request(
        premature, pop=android.as_client.attestation_pop(android.key, android.as_client.challenge)
    )
    assert stack.attester.requests_to(JWKS_PATH) == as_fetches, (
        "the AS refetched the JWKS within its cache: the machine is too slow for this check"
    )
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    assert stack.as_.details_since(seen)[-1] == "no applicable key found in the JSON Web Key Set"

    published = {k["kid"] for k in httpx.get(stack.attester.jwks_uri).json()["keys"]}
    assert published == {old_kid, new_kid}

    # during: the old key still signs; accepted (the AS may still be on its cached JWKS)
    during = [device.renew() for device in devices]
    assert {_kid(a) for a in during} == {old_kid}
    for device, attestation in zip(devices, during, strict=True):
        _accepted(device, attestation)

    # after: the new key signs; the AS's cache has expired by then and its refetch has it
    time.sleep(max(0.0, (activates_at - datetime.now(UTC)).total_seconds()) + 0.1)
    after = [device.renew() for device in devices]
    assert {_kid(a) for a in after} == {new_kid}
    for attestations in (after, before, during):  # the retired key is still published
        for device, attestation in zip(devices, attestations, strict=True):
            _accepted(device, attestation)

    fetches = stack.attester.requests_to(JWKS_PATH) - 1  # minus the test's own GET
    print(
        f"\nrotation: AS fetched the attester's JWKS {fetches} times; kids {old_kid[:8]}.. -> "
        f"{new_kid[:8]}.."
    )
    assert as_fetches < fetches
