"""App Attest over HTTP: registration, renewal, replay and concurrent renewals.

A real loopback server (uvicorn in a thread) on SQLite; the device is simulated with
synthetic evidence from a test root that only the ``apple.test_root_files`` setting trusts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk, jwt

from attester.app import create_app
from attester.errors import ProblemError
from attester.service import AttesterService
from attester.settings import Settings
from keys.jwks import thumbprint
from tests.conftest import ISSUER
from tests.support import LiveServer, MutableClock, live_server, make_key_proof, new_instance_key
from tests.support import public_jwk as export_public

from .synth import SynthRoot, make_assertion, make_attestation

TEAM_ID = "TEAM123456"
BUNDLE_ID = "com.example.wallet"
APP_ID = f"{TEAM_ID}.{BUNDLE_ID}"
CLIENT_ID = "https://wallet.test/ios"
SECRET_MARKER = "SECRET-CALLER-BYTES-1234"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _client_data(challenge: str, jwk_members: dict[str, Any]) -> bytes:
    return json.dumps({"challenge": challenge, "jwk": jwk_members}, separators=(",", ":")).encode()


@dataclass
class Device:
    """A simulated iOS app instance: its Secure Enclave instance key and App Attest key."""

    instance_key: jwk.JWK
    device_key: ec.EllipticCurvePrivateKey
    key_id: bytes

    @property
    def thumbprint(self) -> str:
        return thumbprint(export_public(self.instance_key))


class Apple:
    """Drives the service like an iOS app would (challenge → client_data → evidence)."""

    def __init__(
        self, http: httpx.Client, clock: MutableClock, root: SynthRoot, service: AttesterService
    ) -> None:
        self.http = http
        self.service = service
        self.clock = clock
        self.root = root

    def challenge(self) -> str:
        return str(self.http.post("/v1/challenge").json()["challenge"])

    def proof(self, key: jwk.JWK, challenge: str) -> str:
        return make_key_proof(
            key, challenge=challenge, aud=ISSUER, iat=int(self.clock.now.timestamp())
        )

    def registration(
        self,
        *,
        challenge: str | None = None,
        app_id: str = APP_ID,
        environment: str = "production",
        root: SynthRoot | None = None,
        device_key: ec.EllipticCurvePrivateKey | None = None,
        jwk_members: dict[str, Any] | None = None,
        proof_key: jwk.JWK | None = None,
        receipt_for: Any = None,
    ) -> tuple[dict[str, Any], Device]:
        """A complete registration body; each keyword changes one thing."""
        challenge = challenge or self.challenge()
        instance_key = new_instance_key()
        client_data = _client_data(challenge, jwk_members or export_public(instance_key))
        root = root or self.root
        if receipt_for is not None:  # the receipt names the App Attest key: make it first
            device_key = device_key or ec.generate_private_key(ec.SECP256R1())
        extra: dict[str, Any] = {}
        if receipt_for is not None:
            extra["receipt"] = receipt_for(device_key)
        obj, key_id, device_key = make_attestation(
            root_key=root.key,
            root_cert=root.cert,
            client_data_hash=hashlib.sha256(client_data).digest(),
            app_id=app_id,
            environment=environment,
            now=self.clock.now,
            device_key=device_key,
            **extra,
        )
        body = {
            "key_id": _b64(key_id),
            "attestation_object": _b64(obj),
            "client_data": _b64url(client_data),
            "key_proof": self.proof(proof_key or instance_key, challenge),
        }
        return body, Device(instance_key, device_key, key_id)

    def register(self, **kwargs: Any) -> tuple[httpx.Response, Device]:
        body, device = self.registration(**kwargs)
        return self.http.post("/v1/apple/attestations", json=body), device

    def renewal(self, device: Device, *, counter: int) -> dict[str, Any]:
        """A renewal body: fresh challenge, assertion over fresh client_data, key proof."""
        challenge = self.challenge()
        client_data = _client_data(challenge, export_public(device.instance_key))
        assertion = make_assertion(
            device.device_key,
            client_data_hash=hashlib.sha256(client_data).digest(),
            app_id=APP_ID,
            counter=counter,
        )
        return {
            "key_thumbprint": device.thumbprint,
            "challenge": challenge,
            "key_proof": self.proof(device.instance_key, challenge),
            "assertion": _b64(assertion),
            "client_data": _b64url(client_data),
        }

    def renew(self, device: Device, *, counter: int) -> httpx.Response:
        return self.http.post("/v1/attestations/renew", json=self.renewal(device, counter=counter))


def _app(client_id: str, environment: str) -> dict[str, Any]:
    apple = {"team_id": TEAM_ID, "bundle_id": BUNDLE_ID, "environment": environment}
    return {"client_id": client_id, "apple": apple}


def _apple_settings(
    make_settings: Any, test_roots: list[Path], apps: list[dict[str, Any]] | None = None
) -> Settings:
    apps = apps or [_app(CLIENT_ID, "production")]
    settings: Settings = make_settings(apps=apps, apple={"test_root_files": test_roots})
    return settings


@pytest.fixture
def root_pem(tmp_path: Path, synth_root: SynthRoot) -> Path:
    path = tmp_path / "test-app-attest-root.pem"
    path.write_bytes(synth_root.cert.public_bytes(serialization.Encoding.PEM))
    return path


def _serve(settings: Settings, clock: MutableClock, root: SynthRoot) -> Iterator[Apple]:
    app = create_app(settings, clock=clock)
    live: LiveServer
    with live_server(app) as live, httpx.Client(base_url=live.url, timeout=30) as client:
        yield Apple(client, clock, root, app.state.service)
    app.state.service.store.dispose()


@pytest.fixture
def apple(
    make_settings: Any, root_pem: Path, clock: MutableClock, synth_root: SynthRoot
) -> Iterator[Apple]:
    yield from _serve(_apple_settings(make_settings, [root_pem]), clock, synth_root)


@pytest.fixture
def apple_untrusting(
    make_settings: Any, clock: MutableClock, synth_root: SynthRoot
) -> Iterator[Apple]:
    """A server trusting only Apple's real root: the synthetic root is a stranger."""
    yield from _serve(_apple_settings(make_settings, []), clock, synth_root)


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status
    assert SECRET_MARKER not in response.text
    return body


def _verify_jwt(http: httpx.Client, token: str, device: Device) -> dict[str, Any]:
    keyset = jwk.JWKSet.from_json(http.get("/.well-known/jwks.json").text)
    parsed = jwt.JWT(jwt=token, key=keyset, expected_type="JWS")
    header = json.loads(parsed.header)
    assert header["typ"] == "oauth-client-attestation+jwt" and header["alg"] == "ES256"
    claims: dict[str, Any] = json.loads(parsed.claims)
    assert claims["sub"] == CLIENT_ID and claims["iss"] == ISSUER
    assert claims["cnf"]["jwk"] == export_public(device.instance_key)
    return claims


# -- registration ------------------------------------------------------------------------
def test_apple_http_register_valid_issues_jwt(apple: Apple) -> None:
    response, device = apple.register()
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "oauth-client-attestation+jwt"
    assert body["key_thumbprint"] == device.thumbprint
    _verify_jwt(apple.http, body["client_attestation"], device)


def test_apple_http_register_url_safe_key_id_accepted(apple: Apple) -> None:
    body, device = apple.registration()
    body["key_id"] = _b64url(device.key_id)
    body["attestation_object"] = (
        body["attestation_object"].rstrip("=").translate(str.maketrans("+/", "-_"))
    )
    response = apple.http.post("/v1/apple/attestations", json=body)
    assert response.status_code == 200, response.text


def test_apple_http_register_explicit_client_id_accepted(apple: Apple) -> None:
    body, _ = apple.registration()
    response = apple.http.post("/v1/apple/attestations", json={**body, "client_id": CLIENT_ID})
    assert response.status_code == 200, response.text


def test_apple_http_register_unknown_client_id_refused(apple: Apple) -> None:
    body, _ = apple.registration()
    response = apple.http.post(
        "/v1/apple/attestations", json={**body, "client_id": "https://other.test/app"}
    )
    _problem(response, 403, "app_not_registered")


def test_apple_http_register_replayed_challenge_refused(apple: Apple) -> None:
    challenge = apple.challenge()
    first, _ = apple.register(challenge=challenge)
    assert first.status_code == 200, first.text
    again, _ = apple.register(challenge=challenge)
    _problem(again, 409, "challenge_replayed")


def test_apple_http_register_same_key_id_twice_refused(apple: Apple) -> None:
    first, device = apple.register()
    assert first.status_code == 200, first.text
    # same App Attest key, new instance key and challenge
    again, _ = apple.register(device_key=device.device_key)
    _problem(again, 409, "instance_already_registered")


def test_apple_http_register_wrong_app_id_refused(apple: Apple) -> None:
    response, _ = apple.register(app_id="OTHER12345.com.example.other")
    body = _problem(response, 403, "app_id_mismatch")
    assert APP_ID not in response.text and "app_ids" not in body


def test_apple_http_register_untrusted_root_refused(apple_untrusting: Apple) -> None:
    response, _ = apple_untrusting.register()
    _problem(response, 403, "chain_untrusted")


def test_apple_http_register_other_root_refused(apple: Apple, other_root: SynthRoot) -> None:
    response, _ = apple.register(root=other_root)
    _problem(response, 403, "chain_untrusted")


def test_apple_http_register_private_jwk_refused(apple: Apple) -> None:
    leaked = new_instance_key().export_private(as_dict=True)
    response, _ = apple.register(jwk_members=leaked)
    _problem(response, 400, "jwk_private_members")
    assert leaked["d"] not in response.text


def test_apple_http_register_key_proof_by_other_key_refused(apple: Apple) -> None:
    response, _ = apple.register(proof_key=new_instance_key())
    _problem(response, 401, "key_proof_signature_invalid")


def test_apple_http_register_client_data_other_challenge_refused(apple: Apple) -> None:
    # the attestation binds client_data; swapping the challenge breaks the nonce
    body, _ = apple.registration()
    document = json.loads(base64.urlsafe_b64decode(body["client_data"] + "=="))
    document["challenge"] = apple.challenge()
    body["client_data"] = _b64url(json.dumps(document).encode())
    response = apple.http.post("/v1/apple/attestations", json=body)
    _problem(response, 403, "nonce_mismatch")


@pytest.mark.parametrize(
    ("member", "value", "code"),
    [
        ("key_id", SECRET_MARKER + "!!", "malformed_request"),
        ("key_id", _b64(b"short"), "malformed_request"),
        ("attestation_object", SECRET_MARKER + "$$", "attestation_malformed"),
        ("attestation_object", _b64(SECRET_MARKER.encode()), "attestation_malformed"),
        ("client_data", SECRET_MARKER + "**", "client_data_malformed"),
        ("client_data", _b64url(SECRET_MARKER.encode()), "client_data_malformed"),
        ("client_data", _b64url(b'{"challenge": "x"}'), "client_data_malformed"),
        (
            "client_data",
            _b64url(b'{"challenge": "a", "challenge": "b", "jwk": {}}'),
            "client_data_malformed",
        ),
        ("client_data", _b64url(b"\xff\xfe" + SECRET_MARKER.encode()), "client_data_malformed"),
    ],
)
def test_apple_http_register_garbage_400_without_echo(
    apple: Apple, member: str, value: str, code: str
) -> None:
    body, _ = apple.registration()
    response = apple.http.post("/v1/apple/attestations", json={**body, member: value})
    _problem(response, 400, code)


def test_apple_http_register_missing_member_422(apple: Apple) -> None:
    body, _ = apple.registration()
    del body["attestation_object"]
    _problem(apple.http.post("/v1/apple/attestations", json=body), 422, "invalid_request")


DEV_CLIENT_ID = "https://wallet.test/ios-dev"


@pytest.fixture
def apple_two_envs(
    make_settings: Any, root_pem: Path, clock: MutableClock, synth_root: SynthRoot
) -> Iterator[Apple]:
    """One App ID configured twice: a development and a production client_id."""
    apps = [_app(CLIENT_ID, "production"), _app(DEV_CLIENT_ID, "development")]
    yield from _serve(_apple_settings(make_settings, [root_pem], apps), clock, synth_root)


@pytest.mark.parametrize(
    ("environment", "client_id"), [("development", DEV_CLIENT_ID), ("production", CLIENT_ID)]
)
def test_apple_http_register_aaguid_selects_environment(
    apple_two_envs: Apple, environment: str, client_id: str
) -> None:
    response, _ = apple_two_envs.register(environment=environment)
    assert response.status_code == 200, response.text
    payload = response.json()["client_attestation"].split(".")[1]
    assert json.loads(base64.urlsafe_b64decode(payload + "=="))["sub"] == client_id


def test_apple_http_register_wrong_environment_refused(apple: Apple) -> None:
    response, _ = apple.register(environment="development")
    _problem(response, 403, "environment_mismatch")


def test_apple_http_register_shared_app_id_needs_client_id(
    make_settings: Any, root_pem: Path, clock: MutableClock, synth_root: SynthRoot
) -> None:
    apps = [_app(CLIENT_ID, "production"), _app(DEV_CLIENT_ID, "production")]
    for apple in _serve(_apple_settings(make_settings, [root_pem], apps), clock, synth_root):
        response, _ = apple.register()
        _problem(response, 400, "app_ambiguous")
        body, _ = apple.registration()
        chosen = apple.http.post(
            "/v1/apple/attestations", json={**body, "client_id": DEV_CLIENT_ID}
        )
        assert chosen.status_code == 200, chosen.text


# -- renewal -----------------------------------------------------------------------------
@pytest.fixture
def registered(apple: Apple) -> Device:
    response, device = apple.register()
    assert response.status_code == 200, response.text
    return device


def test_apple_http_renew_valid_issues_new_jwt(apple: Apple, registered: Device) -> None:
    apple.clock.advance(60)
    response = apple.renew(registered, counter=1)
    assert response.status_code == 200, response.text
    claims = _verify_jwt(apple.http, response.json()["client_attestation"], registered)
    assert claims["iat"] == int(apple.clock.now.timestamp())
    assert apple.renew(registered, counter=2).status_code == 200


def test_apple_http_renew_with_integrity_token_not_configured(
    apple: Apple, registered: Device
) -> None:
    body = {**apple.renewal(registered, counter=1), "integrity_token": "any-token"}
    _problem(apple.http.post("/v1/attestations/renew", json=body), 400, "integrity_not_configured")


def test_apple_http_renew_replayed_counter_refused(apple: Apple, registered: Device) -> None:
    assert apple.renew(registered, counter=1).status_code == 200
    _problem(apple.renew(registered, counter=1), 409, "counter_not_increasing")
    _problem(apple.renew(registered, counter=0), 409, "counter_not_increasing")


def test_apple_http_renew_replayed_request_refused(apple: Apple, registered: Device) -> None:
    body = apple.renewal(registered, counter=1)
    assert apple.http.post("/v1/attestations/renew", json=body).status_code == 200
    _problem(apple.http.post("/v1/attestations/renew", json=body), 409, "challenge_replayed")


def test_apple_http_renew_concurrent_same_counter_one_wins(
    apple: Apple, registered: Device
) -> None:
    bodies = [apple.renewal(registered, counter=5) for _ in range(8)]
    barrier = threading.Barrier(len(bodies))
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def fire(body: dict[str, Any]) -> None:
        with httpx.Client(base_url=str(apple.http.base_url), timeout=60) as client:
            barrier.wait()
            response = client.post("/v1/attestations/renew", json=body)
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=fire, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(responses) == len(bodies)
    assert sorted(r.status_code for r in responses) == [200] + [409] * (len(bodies) - 1)
    for response in responses:
        if response.status_code == 409:
            _problem(response, 409, "counter_not_increasing")
    # the winner's counter is stored: 5 is spent, 6 passes
    _problem(apple.renew(registered, counter=5), 409, "counter_not_increasing")
    assert apple.renew(registered, counter=6).status_code == 200


def test_apple_renew_stale_counter_read_refused_by_store(apple: Apple, registered: Device) -> None:
    # both renewals read counter 0 and pass the verifier; only the store's CAS decides
    service = apple.service
    platform = service.platforms["apple"]
    stale = service.store.instance_by_thumbprint(registered.thumbprint)
    app = service.settings.app(CLIENT_ID)
    assert stale is not None and stale.apple_counter == 0 and app is not None
    first, second = (apple.renewal(registered, counter=3) for _ in range(2))
    now = apple.clock.now
    platform.renew(
        stale, first, app=app, challenge=service.challenges.redeem(first["challenge"], now), now=now
    )
    with pytest.raises(ProblemError) as refused:
        platform.renew(
            stale,
            second,
            app=app,
            challenge=service.challenges.redeem(second["challenge"], now),
            now=now,
        )
    assert refused.value.code == "counter_not_increasing" and refused.value.status == 409
    current = service.store.instance_by_thumbprint(registered.thumbprint)
    assert current is not None and current.apple_counter == 3


def test_apple_http_renew_without_assertion_refused(apple: Apple, registered: Device) -> None:
    body = apple.renewal(registered, counter=1)
    del body["assertion"]
    _problem(apple.http.post("/v1/attestations/renew", json=body), 400, "malformed_request")


def test_apple_http_renew_client_data_other_challenge_refused(
    apple: Apple, registered: Device
) -> None:
    stale = apple.renewal(registered, counter=1)
    body = apple.renewal(registered, counter=1)
    body["client_data"], body["assertion"] = stale["client_data"], stale["assertion"]
    _problem(
        apple.http.post("/v1/attestations/renew", json=body), 400, "client_data_challenge_mismatch"
    )


def test_apple_http_renew_client_data_other_key_refused(apple: Apple, registered: Device) -> None:
    body = apple.renewal(registered, counter=1)
    client_data = _client_data(body["challenge"], export_public(new_instance_key()))
    body["client_data"] = _b64url(client_data)
    _problem(apple.http.post("/v1/attestations/renew", json=body), 400, "client_data_key_mismatch")


def test_apple_http_renew_assertion_by_other_key_refused(apple: Apple, registered: Device) -> None:
    impostor = Device(
        registered.instance_key, ec.generate_private_key(ec.SECP256R1()), registered.key_id
    )
    _problem(apple.renew(impostor, counter=1), 403, "assertion_signature_invalid")


def test_apple_http_renew_garbage_assertion_400_without_echo(
    apple: Apple, registered: Device
) -> None:
    body = apple.renewal(registered, counter=1)
    body["assertion"] = SECRET_MARKER + "%%"
    _problem(apple.http.post("/v1/attestations/renew", json=body), 400, "assertion_malformed")


def _restarted(settings: Settings, clock: MutableClock, root: SynthRoot) -> tuple[Any, Apple]:
    """The service again, on the same data directory, with ``settings``."""
    serving = _serve(settings, clock, root)
    return serving, next(serving)


def test_apple_http_renew_after_app_moved_to_production_fails_environment_mismatch(
    make_settings: Any, root_pem: Path, clock: MutableClock, synth_root: SynthRoot
) -> None:
    # a development key is no production evidence: renewal re-applies the app's current
    # environment as registration does (found in review: it kept renewing)
    serving, apple = _restarted(
        _apple_settings(make_settings, [root_pem], [_app(CLIENT_ID, "development")]), clock,
        synth_root,
    )
    response, device = apple.register(environment="development")
    assert response.status_code == 200, response.text
    serving.close()
    serving, apple = _restarted(_apple_settings(make_settings, [root_pem]), clock, synth_root)
    try:
        renewed = apple.renew(device, counter=1)
        _problem(renewed, 403, "environment_mismatch")
        stored = apple.service.store.instance_by_thumbprint(device.thumbprint)
        assert stored is not None and stored.apple_counter == 0  # nothing advanced
    finally:
        serving.close()


def test_apple_http_renew_after_its_root_is_no_longer_trusted_fails_chain_untrusted(
    make_settings: Any, root_pem: Path, clock: MutableClock, synth_root: SynthRoot
) -> None:
    # as on Android: the stored anchor must still be trusted (found in review)
    serving, apple = _restarted(_apple_settings(make_settings, [root_pem]), clock, synth_root)
    response, device = apple.register()
    assert response.status_code == 200, response.text
    stored = apple.service.store.instance_by_thumbprint(device.thumbprint)
    assert stored is not None and stored.apple_root not in (None, "Apple App Attestation Root CA")
    assert apple.renew(device, counter=1).status_code == 200  # still trusted: renews
    serving.close()
    serving, apple = _restarted(_apple_settings(make_settings, []), clock, synth_root)
    try:
        _problem(apple.renew(device, counter=2), 403, "chain_untrusted")
    finally:
        serving.close()
