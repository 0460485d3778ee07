"""Android over HTTP on a real loopback server: registration, renewal, rejections.

Google's status list is served from a loopback HTTP server (Google cannot be reached here);
the synthetic device chains come from a test root trusted only through the test setting.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk, jwt

from attester.app import create_app
from tests.support import LiveServer, MutableClock, live_server

from .status_server import StatusServer
from .synth import DEFAULT_PACKAGE, DEFAULT_SIGNER, TestRoot, make_chain, make_root

CLIENT_ID = "https://app.example/android"


@pytest.fixture
def status() -> Iterator[StatusServer]:
    server = StatusServer()
    server.body = b'{"entries": {}}'
    yield server
    server.close()


@pytest.fixture
def root() -> TestRoot:
    return make_root()


@pytest.fixture
def root_file(tmp_path: Path, root: TestRoot) -> Path:
    path = tmp_path / "test-root.pem"
    path.write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    return path


def _android_settings(make_settings: Any, root_file: Path, status: StatusServer, **android: Any) -> Any:
    app = {
        "client_id": CLIENT_ID,
        "android": {
            "package_names": [DEFAULT_PACKAGE],
            "signing_cert_sha256": [DEFAULT_SIGNER.hex()],
            **android,
        },
    }
    return make_settings(
        apps=[app],
        android={"revocation_url": status.url, "test_root_files": [root_file]},
    )


@pytest.fixture
def android_server(make_settings: Any, root_file: Path, status: StatusServer, clock: MutableClock) -> Iterator[LiveServer]:
    app = create_app(_android_settings(make_settings, root_file, status), clock=clock)
    with live_server(app) as live:
        yield live


class Device:
    """A simulated Android app instance: gets a challenge, attests a key, proves it."""

    def __init__(self, http: httpx.Client, root: TestRoot, clock: MutableClock, **chain_args: Any) -> None:
        self.http, self.root, self.clock, self.chain_args = http, root, clock, chain_args
        self.chain: Any = None

    def challenge(self) -> str:
        return str(self.http.post("/v1/challenge").json()["challenge"])

    def key_proof(self, challenge: str, *, key: Any = None, aud: str = "https://attester.test") -> str:
        key = key or self.chain.leaf_key
        signing = jwk.JWK.from_pem(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        token = jwt.JWT(
            header={"alg": "ES256", "typ": "key-proof+jwt"},
            claims={"challenge": challenge, "aud": aud, "iat": int(self.clock().timestamp())},
        )
        token.make_signed_token(signing)
        return str(token.serialize())

    def register(self, **overrides: Any) -> httpx.Response:
        challenge = overrides.pop("challenge", None) or self.challenge()
        raw = base64.urlsafe_b64decode(challenge + "=")
        args = {"challenge": raw, "root": self.root, **self.chain_args, **overrides.pop("chain_args", {})}
        self.chain = make_chain(**args)
        body = {
            "certificate_chain": [base64.b64encode(c).decode() for c in self.chain.chain],
            "challenge": challenge,
            "key_proof": overrides.pop("key_proof", None) or self.key_proof(challenge),
            **overrides,
        }
        return self.http.post("/v1/android/attestations", json=body)

    def renew(self, *, key: Any = None) -> httpx.Response:
        challenge = self.challenge()
        leaf_jwk = jwk.JWK.from_pem(
            self.chain.leaf_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return self.http.post(
            "/v1/attestations/renew",
            json={
                "key_thumbprint": leaf_jwk.thumbprint(),
                "challenge": challenge,
                "key_proof": self.key_proof(challenge, key=key),
            },
        )


@pytest.fixture
def http(android_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=android_server.url, timeout=20) as client:
        yield client


def _problem(response: httpx.Response, status: int, code: str, rule: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code
    if rule:
        assert body["rule"] == rule


def test_android_http_registration_issues_key_bound_jwt(http: httpx.Client, root: TestRoot, clock: MutableClock) -> None:
    device = Device(http, root, clock)
    response = device.register()
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    keyset = jwk.JWKSet.from_json(http.get("/.well-known/jwks.json").text)
    token = jwt.JWT(jwt=body["client_attestation"], key=keyset, check_claims=False)
    header, claims = json.loads(token.header), json.loads(token.claims)
    assert header["typ"] == "oauth-client-attestation+jwt"
    assert claims["sub"] == CLIENT_ID
    leaf = device.chain.leaf_key.public_key().public_numbers()
    assert base64.urlsafe_b64decode(claims["cnf"]["jwk"]["x"] + "==") == leaf.x.to_bytes(32, "big")
    assert body["key_thumbprint"] == jwk.JWK(**claims["cnf"]["jwk"]).thumbprint()


def test_android_http_replayed_challenge_rejected(http: httpx.Client, root: TestRoot, clock: MutableClock) -> None:
    device = Device(http, root, clock)
    challenge = device.challenge()
    assert device.register(challenge=challenge).status_code == 200
    _problem(device.register(challenge=challenge), 409, "challenge_replayed")


def test_android_http_wrong_challenge_in_chain_rejected(http: httpx.Client, root: TestRoot, clock: MutableClock) -> None:
    device = Device(http, root, clock)
    response = device.register(chain_args={"challenge": b"not the challenge"})
    _problem(response, 400, "challenge_mismatch")


def test_android_http_key_proof_by_other_key_rejected(http: httpx.Client, root: TestRoot, clock: MutableClock) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    device = Device(http, root, clock)
    challenge = device.challenge()
    other = device.key_proof(challenge, key=ec.generate_private_key(ec.SECP256R1()))
    _problem(device.register(challenge=challenge, key_proof=other), 401, "key_proof_signature_invalid")


def test_android_http_untrusted_root_rejected(http: httpx.Client, clock: MutableClock) -> None:
    device = Device(http, make_root("Some Other Root"), clock)
    _problem(device.register(), 403, "chain_untrusted")


def test_android_http_wrong_package_names_rule(http: httpx.Client, root: TestRoot, clock: MutableClock) -> None:
    device = Device(http, root, clock, package_name="com.evil.app")
    _problem(device.register(), 403, "policy_violation", rule="package_name")


def test_android_http_unlocked_bootloader_names_rule(http: httpx.Client, root: TestRoot, clock: MutableClock) -> None:
    device = Device(http, root, clock, device_locked=False)
    _problem(device.register(), 403, "policy_violation", rule="device_locked")


@pytest.mark.parametrize("status_value", ["REVOKED", "SUSPENDED"])
def test_android_http_revoked_intermediate_rejected_on_renewal_and_registration(
    http: httpx.Client, root: TestRoot, clock: MutableClock, status: StatusServer, status_value: str
) -> None:
    from cryptography import x509

    device = Device(http, root, clock)
    assert device.register().status_code == 200
    serial = format(x509.load_der_x509_certificate(device.chain.chain[1]).serial_number, "x")
    status.body = json.dumps({"entries": {serial: {"status": status_value}}}).encode()
    clock.advance(3601)  # the list served before was fresh for an hour (its Cache-Control)
    _problem(device.renew(), 403, "certificate_revoked")
    same_intermediate = make_chain(challenge=b"x", root=root)
    assert format(x509.load_der_x509_certificate(same_intermediate.chain[1]).serial_number, "x") != serial


def test_android_http_revocation_unreachable_refused(make_settings: Any, root_file: Path, root: TestRoot, clock: MutableClock) -> None:
    settings = make_settings(
        apps=[{"client_id": CLIENT_ID, "android": {"package_names": [DEFAULT_PACKAGE], "signing_cert_sha256": [DEFAULT_SIGNER.hex()]}}],
        android={"revocation_url": "http://127.0.0.1:9/status", "test_root_files": [root_file]},
    )
    with live_server(create_app(settings, clock=clock)) as live, httpx.Client(base_url=live.url) as http:
        _problem(Device(http, root, clock).register(), 503, "revocation_list_unavailable")


def test_android_http_stale_list_refused_then_allowed_by_setting(
    make_settings: Any, root_file: Path, root: TestRoot, clock: MutableClock, status: StatusServer
) -> None:
    def serve(**android: Any) -> Any:
        settings = make_settings(
            apps=[{"client_id": CLIENT_ID, "android": {"package_names": [DEFAULT_PACKAGE], "signing_cert_sha256": [DEFAULT_SIGNER.hex()]}}],
            android={"revocation_url": status.url, "test_root_files": [root_file], "revocation_max_staleness": 3600, **android},
        )
        return live_server(create_app(settings, clock=clock))

    with serve() as live, httpx.Client(base_url=live.url) as http:
        assert Device(http, root, clock).register().status_code == 200  # fetched now
        status.close()  # Google goes away
        clock.advance(7200)
        _problem(Device(http, root, clock).register(), 503, "revocation_list_stale")
    with serve(allow_stale_revocation=True) as live, httpx.Client(base_url=live.url) as http:
        assert Device(http, root, clock).register().status_code == 200


def test_android_http_renewal_issues_new_jwt(http: httpx.Client, root: TestRoot, clock: MutableClock) -> None:
    device = Device(http, root, clock)
    first = device.register().json()["client_attestation"]
    clock.advance(10)
    response = device.renew()
    assert response.status_code == 200, response.text
    assert response.json()["client_attestation"] != first


def test_android_http_renewal_by_other_key_rejected(http: httpx.Client, root: TestRoot, clock: MutableClock) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    device = Device(http, root, clock)
    assert device.register().status_code == 200
    _problem(device.renew(key=ec.generate_private_key(ec.SECP256R1())), 401, "key_proof_signature_invalid")


def test_android_http_renewal_after_policy_tightened_rejected(
    make_settings: Any, root_file: Path, root: TestRoot, clock: MutableClock, status: StatusServer, http: httpx.Client
) -> None:
    device = Device(http, root, clock, os_patch_level=202401)
    assert device.register().status_code == 200
    stricter = _android_settings(make_settings, root_file, status, min_os_patch_level=202501)
    with live_server(create_app(stricter, clock=clock)) as live, httpx.Client(base_url=live.url) as other:
        device.http = other
        _problem(device.renew(), 403, "policy_violation", rule="os_patch_level")


def test_android_http_renewal_registration_too_old(http: httpx.Client, root: TestRoot, clock: MutableClock) -> None:
    device = Device(http, root, clock)
    assert device.register().status_code == 200
    clock.advance(31 * 86400)
    _problem(device.renew(), 403, "registration_too_old")


def test_android_http_same_key_re_registers(http: httpx.Client, root: TestRoot, clock: MutableClock) -> None:
    device = Device(http, root, clock)
    assert device.register().status_code == 200
    leaf_key = device.chain.leaf_key
    again = device.register(chain_args={"leaf_key": leaf_key})
    assert again.status_code == 200, again.text


@pytest.mark.parametrize(
    "chain",
    [["!!!not base64!!!"], [base64.b64encode(b"\x30\x03\x02\x01\x01").decode()], [base64.b64encode(b"garbage").decode()]],
)
def test_android_http_garbage_chain_400(http: httpx.Client, root: TestRoot, clock: MutableClock, chain: list[str]) -> None:
    device = Device(http, root, clock)
    challenge = device.challenge()
    response = http.post(
        "/v1/android/attestations", json={"certificate_chain": chain, "challenge": challenge, "key_proof": "a.b.c"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] in {"malformed_request", "certificate_malformed"}
    assert "not base64" not in response.text


def test_android_http_over_long_chain_422(http: httpx.Client) -> None:
    response = http.post(
        "/v1/android/attestations",
        json={"certificate_chain": ["AAAA"] * 11, "challenge": "x", "key_proof": "a.b.c"},
    )
    assert response.status_code == 422 and response.json()["code"] == "invalid_request"


def test_android_http_digest_of_signer_is_config_format() -> None:
    # the registry takes hex SHA-256 of the signing certificate, as apksigner prints it
    assert len(hashlib.sha256(b"cert").hexdigest()) == len(DEFAULT_SIGNER.hex())


def test_android_http_several_apps_the_one_whose_package_matches_applies_its_policy(
    make_settings: Any, root_file: Path, status: StatusServer, clock: MutableClock, root: TestRoot
) -> None:
    # app A wants StrongBox; app B (the device's package) takes TEE. One app's rules other
    # than package and signer refused devices of another app (found in review)
    apps = [
        {"client_id": "https://a.example", "android": {
            "package_names": ["com.example.other"], "signing_cert_sha256": [DEFAULT_SIGNER.hex()],
            "min_security_level": "strongbox"}},
        {"client_id": "https://b.example", "android": {
            "package_names": [DEFAULT_PACKAGE], "signing_cert_sha256": [DEFAULT_SIGNER.hex()]}},
    ]
    settings = make_settings(
        apps=apps, android={"revocation_url": status.url, "test_root_files": [root_file]}
    )
    with live_server(create_app(settings, clock=clock)) as live, httpx.Client(
        base_url=live.url, timeout=20
    ) as http:
        accepted = Device(http, root, clock).register()  # no client_id: the package decides
        assert accepted.status_code == 200, accepted.text
        claims = jwt.JWT(jwt=accepted.json()["client_attestation"]).token.objects["payload"]
        assert json.loads(claims)["sub"] == "https://b.example"
        # app A's own device at TEE: A's security level refuses it, B is not tried
        refused = Device(http, root, clock, package_name="com.example.other").register()
        _problem(refused, 403, "policy_violation", "security_level")
        # a device of neither app: the first app's identity rule is the answer
        unknown = Device(http, root, clock, package_name="com.example.unknown").register()
        _problem(unknown, 403, "policy_violation", "package_name")
