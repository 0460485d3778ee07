"""End to end: simulated Android and iOS devices register with the real ``attester serve``, and
node-oidc-provider, trusting the attester only through its ``jwks_uri``, gives them
client_credentials tokens in both modes (PoP header and combined DPoP); it rejects a PoP by
another key, an expired attestation, a key outside the JWKS and a replayed PoP.

The AS answers every authentication failure with ``invalid_client``; the reason is in its log
(``error_detail``), and the tests check both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from jwcrypto import jwk, jwt

from attester.reference_client import AsError, InstanceKey
from tests.e2e.e2e_support import DEFAULT_CLIENT_ID, DEFAULT_DPOP_CLIENT_ID, mint_attestation
from tests.e2e.stack import AppleDevice, Device, Stack, running_stack

pytestmark = pytest.mark.e2e

CLIENTS = [DEFAULT_CLIENT_ID, DEFAULT_DPOP_CLIENT_ID]
# attester challenge, registration; AS metadata, AS challenge (or DPoP nonce), token
REQUESTS_TO_FIRST_TOKEN = 5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("e2e-devices")) as running:
        yield running


def _device(stack: Stack, platform: str, client_id: str) -> Device:
    return stack.android(client_id) if platform == "android" else stack.ios(client_id)


def _claims(token: str) -> dict[str, object]:
    claims: dict[str, object] = json.loads(jwt.JWT(jwt=token).token.objects["payload"])
    return claims


def _header(token: str) -> dict[str, object]:
    return dict(jwt.JWT(jwt=token).token.jose_header)


def _rejected(stack: Stack, send: Callable[[], httpx.Response]) -> tuple[httpx.Response, str]:
    """Send a request the AS must refuse; return its answer and the reason it logged."""
    seen = len(stack.as_.events)
    response = send()
    details = stack.as_.details_since(seen)
    return response, details[-1] if details else ""


@pytest.mark.parametrize("client_id", CLIENTS)
@pytest.mark.parametrize("platform", ["android", "ios"])
def test_device_registers_and_gets_token(stack: Stack, platform: str, client_id: str) -> None:
    device = _device(stack, platform, client_id)
    attestation = device.register()
    token = device.token()

    combined = client_id == DEFAULT_DPOP_CLIENT_ID
    assert token["token_type"] == ("DPoP" if combined else "Bearer")
    assert token["access_token"]
    claims = _claims(attestation)
    assert claims["sub"] == client_id
    assert claims["iss"] == stack.issuer
    assert claims["cnf"] == {"jwk": device.key.public_jwk}
    assert _header(attestation)["typ"] == "oauth-client-attestation+jwt"
    mode = "combined DPoP" if combined else "PoP header"
    print(
        f"\n{platform} ({mode}): {device.request_count} requests from start-up to first token "
        f"(attester {device.attester.request_count}, AS {device.as_client.request_count})"
    )
    assert device.attester.request_count == 2  # challenge, registration
    assert device.as_client.request_count == 3  # metadata, challenge, token
    assert device.request_count == REQUESTS_TO_FIRST_TOKEN


@pytest.mark.parametrize("client_id", CLIENTS)
@pytest.mark.parametrize("platform", ["android", "ios"])
def test_device_renews_and_gets_token_with_renewed_jwt(
    stack: Stack, platform: str, client_id: str
) -> None:
    device = _device(stack, platform, client_id)
    first = device.register()
    device.token()
    renewed = device.renew()
    assert renewed != first
    assert _claims(renewed)["cnf"] == _claims(first)["cnf"]
    before = device.as_client.request_count
    token = device.token(attestation=renewed)
    assert token["access_token"]
    assert device.as_client.request_count == before + 1  # challenge / nonce reused: one request
    if isinstance(device, AppleDevice):
        assert device.counter == 1


def test_pop_signed_by_another_key_rejected(stack: Stack) -> None:
    device = stack.android()
    device.register()
    client = device.as_client
    pop = client.attestation_pop(InstanceKey.generate(), client.get_challenge())
    response, detail = _rejected(stack, lambda: client.token_request(device.attestation, pop=pop))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert detail == "signature verification failed"
    # the right key still works with the same attestation
    assert device.token()["access_token"]


def test_dpop_proof_by_another_key_rejected(stack: Stack) -> None:
    device = stack.ios(DEFAULT_DPOP_CLIENT_ID)
    device.register()
    client = device.as_client
    client.get_challenge()
    proof = client.dpop_proof(
        InstanceKey.generate(), "POST", client.token_endpoint, client.dpop_nonce
    )
    response, detail = _rejected(
        stack, lambda: client.token_request(device.attestation, dpop=proof)
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert detail == "DPoP proof key does not match the Client Attestation key"


def test_expired_attestation_rejected(stack: Stack) -> None:
    # signed with the attester's own active key (read from its data dir), expired 5 minutes ago
    signing_key, kid = stack.attester.active_key()
    instance = InstanceKey.generate()
    now = datetime.now(UTC)
    expired = mint_attestation(
        signing_key,
        kid=kid,
        sub=DEFAULT_CLIENT_ID,
        cnf_jwk=instance.public_jwk,
        iat=now - timedelta(hours=1, minutes=5),
        exp=now - timedelta(minutes=5),
        iss=stack.issuer,
    )
    # the same, still valid, is accepted: only exp differs
    fresh = mint_attestation(
        signing_key,
        kid=kid,
        sub=DEFAULT_CLIENT_ID,
        cnf_jwk=instance.public_jwk,
        iat=now,
        exp=now + timedelta(minutes=5),
        iss=stack.issuer,
    )
    client = stack.as_client()
    assert client.request_token(fresh, instance)["access_token"]
    pop = client.attestation_pop(instance, client.challenge)
    response, detail = _rejected(stack, lambda: client.token_request(expired, pop=pop))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert detail == '"exp" claim timestamp check failed'


def test_attestation_signed_by_key_not_in_jwks_rejected(stack: Stack) -> None:
    device = stack.android()
    device.register()
    stranger = jwk.JWK.generate(kty="EC", crv="P-256")
    now = datetime.now(UTC)

    def forged(kid: str) -> str:
        return mint_attestation(
            stranger,
            kid=kid,
            sub=DEFAULT_CLIENT_ID,
            cnf_jwk=device.key.public_jwk,
            iat=now,
            exp=now + timedelta(minutes=30),
            iss=stack.issuer,
        )

    client = device.as_client
    challenge = client.get_challenge()
    published = {k["kid"] for k in httpx.get(stack.attester.jwks_uri).json()["keys"]}
    own_kid = str(stranger.thumbprint())
    assert own_kid not in published
    # its own kid: the AS finds no such key in the attester's JWKS
    pop = client.attestation_pop(device.key, challenge)
    response, detail = _rejected(stack, lambda: client.token_request(forged(own_kid), pop=pop))
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    assert detail == "no applicable key found in the JSON Web Key Set"
    # the attester's kid: the published key does not verify the signature
    attester_kid = str(_header(device.attestation)["kid"])
    assert attester_kid in published
    pop = client.attestation_pop(device.key, challenge)
    response, detail = _rejected(stack, lambda: client.token_request(forged(attester_kid), pop=pop))
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    assert detail == "signature verification failed"


def test_replayed_pop_rejected(stack: Stack) -> None:
    device = stack.ios()
    device.register()
    client = device.as_client
    pop = client.attestation_pop(device.key, client.get_challenge())
    first = client.token_request(device.attestation, pop=pop)
    assert first.status_code == 200, first.text
    response, detail = _rejected(stack, lambda: client.token_request(device.attestation, pop=pop))
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    assert detail == "oauth-client-attestation-pop tokens must only be used once"


def test_replayed_dpop_proof_rejected(stack: Stack) -> None:
    device = stack.android(DEFAULT_DPOP_CLIENT_ID)
    device.register()
    client = device.as_client
    client.get_challenge()
    proof = client.dpop_proof(device.key, "POST", client.token_endpoint, client.dpop_nonce)
    first = client.token_request(device.attestation, dpop=proof)
    assert first.status_code == 200, first.text
    response = client.token_request(device.attestation, dpop=proof)
    assert (response.status_code, response.json()["error"]) == (400, "invalid_dpop_proof")


def test_attestation_of_one_client_not_accepted_for_the_other_mode(stack: Stack) -> None:
    # the PoP-mode client's attestation sent in combined mode: the AS refuses the auth method
    device = stack.android(DEFAULT_CLIENT_ID)
    device.register()
    seen = len(stack.as_.events)
    with pytest.raises(AsError) as caught:
        device.as_client.request_token(device.attestation, device.key, combined=True)
    assert caught.value.error == "invalid_client"
    assert stack.as_.details_since(seen)[-1] == (
        "the provided authentication mechanism does not match the registered client "
        "authentication method"
    )
