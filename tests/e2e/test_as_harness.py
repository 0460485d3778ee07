"""The AS harness works without the attester: node-oidc-provider accepts a Client Attestation
JWT minted here (what the attester will issue) in both PoP modes, and rejects the forgeries the
issue lists. The AS answers every authentication failure with ``invalid_client``; its log line
(``error_detail``) tells the reasons apart, and the tests check both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from jwcrypto import jwk

from attester.reference_client import AsClient, AsError, InstanceKey
from tests.e2e.e2e_support import JwksServer, RunningAs, StartAs, mint_attestation

pytestmark = pytest.mark.e2e

ATTESTER_ISSUER = "https://attester.test"


def _signing_key() -> tuple[jwk.JWK, str, dict[str, str]]:
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    kid = str(key.thumbprint())
    public = {**key.export_public(as_dict=True), "kid": kid, "alg": "ES256", "use": "sig"}
    return key, kid, public


@dataclass
class Harness:
    running: RunningAs
    jwks: JwksServer
    attester_key: jwk.JWK
    kid: str
    http: httpx.Client

    def attestation(
        self,
        instance: InstanceKey,
        *,
        combined: bool = False,
        lifetime: timedelta = timedelta(hours=1),
        signing_key: jwk.JWK | None = None,
        kid: str | None = None,
        iss: str = ATTESTER_ISSUER,
        sub: str | None = None,
        typ: str = "oauth-client-attestation+jwt",
    ) -> str:
        now = datetime.now(UTC)
        client_id = self.running.dpop_client_id if combined else self.running.client_id
        return mint_attestation(
            signing_key or self.attester_key,
            kid=kid or self.kid,
            sub=sub or client_id,
            cnf_jwk=instance.public_jwk,
            iat=min(now, now + lifetime) - timedelta(seconds=5),
            exp=now + lifetime,
            iss=iss,
            typ=typ,
        )

    def as_client(self) -> AsClient:
        return AsClient(self.running.issuer, self.http)


@pytest.fixture(scope="module")
def harness(start_as_module: StartAs, jwks_server: JwksServer) -> Iterator[Harness]:
    key, kid, public = _signing_key()
    jwks_server.keys = [public]
    running = start_as_module(jwks_server.jwks_uri, attester_issuer=ATTESTER_ISSUER)
    with httpx.Client(timeout=10) as http:
        yield Harness(running, jwks_server, key, kid, http)


def _reject(harness: Harness, send: Callable[[], object]) -> tuple[AsError, str]:
    seen = len(harness.running.events)
    with pytest.raises(AsError) as caught:
        send()
    details = harness.running.details_since(seen)
    return caught.value, details[-1] if details else ""


def _raise_for(response: httpx.Response) -> None:
    if response.is_error:
        raise AsError(response)


def test_metadata_advertises_attestation_based_client_auth(harness: Harness) -> None:
    metadata = harness.as_client().metadata
    assert {"attest_jwt_client_auth", "attest_jwt_client_auth_dpop"} <= set(
        metadata["token_endpoint_auth_methods_supported"]
    )
    assert "ES256" in metadata["client_attestation_signing_alg_values_supported"]
    assert "ES256" in metadata["client_attestation_pop_signing_alg_values_supported"]
    assert metadata["challenge_endpoint"] == f"{harness.running.issuer}/challenge"
    assert "client_credentials" in metadata["grant_types_supported"]


def test_token_pop_mode_attestation_accepted(harness: Harness) -> None:
    instance = InstanceKey.generate()
    client = harness.as_client()
    token = client.request_token(harness.attestation(instance), instance)
    assert token["token_type"] == "Bearer"
    assert token["access_token"]
    assert client.request_count == 3  # metadata, challenge, token


def test_token_combined_mode_attestation_accepted(harness: Harness) -> None:
    instance = InstanceKey.generate()
    client = harness.as_client()
    token = client.request_token(
        harness.attestation(instance, combined=True), instance, combined=True
    )
    assert token["token_type"] == "DPoP"
    assert client.request_count == 3  # metadata, challenge (hands out the DPoP nonce), token


def test_token_pop_mode_stale_challenge_retried_once(harness: Harness) -> None:
    instance = InstanceKey.generate()
    client = harness.as_client()
    client.challenge = "not-a-challenge-the-AS-issued"
    token = client.request_token(harness.attestation(instance), instance)
    assert token["access_token"]
    assert client.request_count == 3  # metadata, token (use_attestation_challenge), token


def test_token_combined_mode_stale_nonce_retried_once(harness: Harness) -> None:
    instance = InstanceKey.generate()
    client = harness.as_client()
    client.dpop_nonce = "not-a-nonce-the-AS-issued"
    token = client.request_token(
        harness.attestation(instance, combined=True), instance, combined=True
    )
    assert token["token_type"] == "DPoP"
    assert client.request_count == 3  # metadata, token (use_dpop_nonce), token


def test_token_pop_without_challenge_use_attestation_challenge(harness: Harness) -> None:
    instance = InstanceKey.generate()
    client = harness.as_client()
    pop = client.attestation_pop(instance, challenge=None)
    response = client.token_request(harness.attestation(instance), pop=pop)
    assert response.status_code == 400
    assert response.json()["error"] == "use_attestation_challenge"
    assert response.headers["OAuth-Client-Attestation-Challenge"]


def test_token_pop_signed_by_other_key_rejected(harness: Harness) -> None:
    instance, other = InstanceKey.generate(), InstanceKey.generate()
    client = harness.as_client()
    challenge = client.get_challenge()
    attestation = harness.attestation(instance)

    error, detail = _reject(
        harness,
        lambda: _raise_for(
            client.token_request(attestation, pop=client.attestation_pop(other, challenge))
        ),
    )
    assert (error.status, error.error) == (401, "invalid_client")
    assert detail == "signature verification failed"


def test_token_dpop_key_not_cnf_rejected(harness: Harness) -> None:
    instance, other = InstanceKey.generate(), InstanceKey.generate()
    client = harness.as_client()
    client.get_challenge()
    attestation = harness.attestation(instance, combined=True)
    proof = client.dpop_proof(other, "POST", client.token_endpoint, client.dpop_nonce)

    error, detail = _reject(
        harness, lambda: _raise_for(client.token_request(attestation, dpop=proof))
    )
    assert (error.status, error.error) == (401, "invalid_client")
    assert detail == "DPoP proof key does not match the Client Attestation key"


def test_token_expired_attestation_rejected(harness: Harness) -> None:
    instance = InstanceKey.generate()
    client = harness.as_client()
    attestation = harness.attestation(instance, lifetime=timedelta(minutes=-2))

    error, detail = _reject(harness, lambda: client.request_token(attestation, instance))
    assert (error.status, error.error) == (401, "invalid_client")
    assert detail == '"exp" claim timestamp check failed'


def test_token_attestation_unknown_kid_rejected(harness: Harness) -> None:
    instance = InstanceKey.generate()
    rogue, rogue_kid, _ = _signing_key()
    client = harness.as_client()
    attestation = harness.attestation(instance, signing_key=rogue, kid=rogue_kid)

    error, detail = _reject(harness, lambda: client.request_token(attestation, instance))
    assert (error.status, error.error) == (401, "invalid_client")
    assert detail == "no applicable key found in the JSON Web Key Set"


def test_token_attestation_trusted_kid_wrong_key_rejected(harness: Harness) -> None:
    instance = InstanceKey.generate()
    rogue, _, _ = _signing_key()
    client = harness.as_client()
    attestation = harness.attestation(instance, signing_key=rogue)  # kid of the trusted key

    error, detail = _reject(harness, lambda: client.request_token(attestation, instance))
    assert (error.status, error.error) == (401, "invalid_client")
    assert detail == "signature verification failed"


def test_token_attestation_other_issuer_rejected(harness: Harness) -> None:
    instance = InstanceKey.generate()
    client = harness.as_client()
    attestation = harness.attestation(instance, iss="https://someone-else.test")

    error, detail = _reject(harness, lambda: client.request_token(attestation, instance))
    assert (error.status, error.error) == (401, "invalid_client")
    assert detail == "Client Attestation iss is not the trusted attester"


def test_token_attestation_wrong_typ_rejected(harness: Harness) -> None:
    instance = InstanceKey.generate()
    client = harness.as_client()
    attestation = harness.attestation(instance, typ="JWT")

    error, detail = _reject(harness, lambda: client.request_token(attestation, instance))
    assert (error.status, error.error) == (401, "invalid_client")
    assert detail == 'unexpected "typ" JWT header value'


def test_token_attestation_unknown_client_rejected(harness: Harness) -> None:
    instance = InstanceKey.generate()
    client = harness.as_client()
    attestation = harness.attestation(instance, sub="not-registered")

    error, detail = _reject(harness, lambda: client.request_token(attestation, instance))
    assert (error.status, error.error) == (401, "invalid_client")
    assert detail == "client not found"


def test_token_replayed_pop_rejected(harness: Harness) -> None:
    instance = InstanceKey.generate()
    client = harness.as_client()
    attestation = harness.attestation(instance)
    pop = client.attestation_pop(instance, client.get_challenge())
    first = client.token_request(attestation, pop=pop)
    assert first.status_code == 200, first.text

    error, detail = _reject(harness, lambda: _raise_for(client.token_request(attestation, pop=pop)))
    assert (error.status, error.error) == (401, "invalid_client")
    assert detail == "oauth-client-attestation-pop tokens must only be used once"


def test_token_replayed_dpop_proof_rejected(harness: Harness) -> None:
    instance = InstanceKey.generate()
    client = harness.as_client()
    client.get_challenge()
    attestation = harness.attestation(instance, combined=True)
    proof = client.dpop_proof(instance, "POST", client.token_endpoint, client.dpop_nonce)
    first = client.token_request(attestation, dpop=proof)
    assert first.status_code == 200, first.text

    error, detail = _reject(
        harness, lambda: _raise_for(client.token_request(attestation, dpop=proof))
    )
    assert (error.status, error.error) == (400, "invalid_dpop_proof")
    assert detail == "None"  # the replay message is the error_description itself
    assert error.error_description == "DPoP proof JWT Replay detected"


def test_token_attestation_reused_with_fresh_pops_accepted(harness: Harness) -> None:
    instance = InstanceKey.generate()
    client = harness.as_client()
    attestation = harness.attestation(instance)
    for _ in range(3):
        assert client.request_token(attestation, instance)["access_token"]
    # the AS hands back its next challenge on success; no extra challenge requests were needed
    assert client.request_count == 1 + 1 + 3


def test_rotation_with_cached_jwks_accepted(start_as: StartAs) -> None:
    """The attester publishes its next key before signing with it; an AS that cached the JWKS
    (no refetch for an hour) accepts attestations from before, during and after the rotation.
    Publishing and signing with a new key at once would be rejected by the same AS."""
    old, old_kid, old_public = _signing_key()
    new, new_kid, new_public = _signing_key()
    late, late_kid, late_public = _signing_key()
    hour = 3_600_000
    with JwksServer() as jwks, httpx.Client(timeout=10) as http:
        jwks.keys = [old_public, new_public]  # old active, new published as "next"
        running = start_as(jwks.jwks_uri, jwks_cooldown_ms=hour, jwks_cache_max_age_ms=hour)
        now = datetime.now(UTC)

        def attest(key: jwk.JWK, kid: str, instance: InstanceKey) -> str:
            return mint_attestation(
                key,
                kid=kid,
                sub=running.client_id,
                cnf_jwk=instance.public_jwk,
                iat=now,
                exp=now + timedelta(hours=1),
            )

        def accepted(attestation: str, instance: InstanceKey) -> bool:
            try:
                AsClient(running.issuer, http).request_token(attestation, instance)
            except AsError:
                return False
            return True

        before = InstanceKey.generate()
        before_jwt = attest(old, old_kid, before)
        assert accepted(before_jwt, before)
        assert jwks.fetches == 1

        jwks.keys = [new_public, old_public]  # rotation: new active, old retired but published
        during = InstanceKey.generate()
        assert accepted(attest(new, new_kid, during), during)
        assert accepted(before_jwt, before)

        jwks.keys = [new_public, old_public, late_public]
        after = InstanceKey.generate()
        assert accepted(attest(new, new_kid, after), after)
        assert jwks.fetches == 1  # everything above came from the AS's cache

        skipped_next = InstanceKey.generate()
        assert not accepted(attest(late, late_kid, skipped_next), skipped_next)
