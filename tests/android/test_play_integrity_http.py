"""Play Integrity in Android registrations over HTTP on loopback, per combination mode.

Google's OAuth token endpoint and decodeIntegrityToken are loopback stand-ins
(``play_integrity_stand_in.py``); locally decoded tokens are made with keys generated here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk, jwt

from attester.app import create_app
from attester.settings import ConfigError
from platform_verifiers.android.play_integrity import integrity_binding
from tests.support import MutableClock, live_server

from .play_integrity_stand_in import GoogleStandIn, LocalKeys, make_service_account, verdict_payload
from .status_server import StatusServer
from .synth import DEFAULT_PACKAGE, DEFAULT_SIGNER, TestRoot, make_chain, make_root

CLIENT_ID = "https://app.example/android-pi"


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


@pytest.fixture
def google() -> Iterator[GoogleStandIn]:
    info, key = make_service_account()
    stand_in = GoogleStandIn(info, key.public_key())
    yield stand_in
    stand_in.close()


@pytest.fixture
def keys() -> LocalKeys:
    return LocalKeys()


class Harness:
    """Starts the attester with a Play Integrity configuration and registers devices."""

    def __init__(
        self,
        make_settings: Any,
        root: TestRoot,
        root_file: Path,
        status: StatusServer,
        google: GoogleStandIn,
        keys: LocalKeys,
        clock: MutableClock,
        tmp_path: Path,
    ) -> None:
        self.make_settings, self.root, self.root_file, self.status = (
            make_settings,
            root,
            root_file,
            status,
        )
        self.google, self.keys, self.clock, self.tmp_path = google, keys, clock, tmp_path
        self._stack: list[Any] = []
        self.http: httpx.Client | None = None

    def start(self, play_integrity: dict[str, Any] | None, **android: Any) -> None:
        sa_file = self.tmp_path / "sa.json"
        sa_file.write_text(json.dumps(self.google.service_account))
        (self.tmp_path / "dec.b64").write_text(self.keys.decryption_b64)
        (self.tmp_path / "ver.b64").write_text(self.keys.verification_b64)
        app_android: dict[str, Any] = {
            "package_names": [DEFAULT_PACKAGE],
            "signing_cert_sha256": [DEFAULT_SIGNER.hex()],
            **android,
        }
        if play_integrity is not None:
            config = dict(play_integrity)
            if config.get("decode") == "local":
                config.setdefault("decryption_key_file", str(self.tmp_path / "dec.b64"))
                config.setdefault("verification_key_file", str(self.tmp_path / "ver.b64"))
            else:
                config.setdefault("service_account_file", str(sa_file))
            app_android["play_integrity"] = config
        settings = self.make_settings(
            apps=[{"client_id": CLIENT_ID, "android": app_android}],
            android={
                "revocation_url": self.status.url,
                "test_root_files": [self.root_file],
                "play_integrity_url": self.google.base_url,
                "play_integrity_token_uri": self.google.token_uri,
            },
        )
        app = create_app(settings, clock=self.clock)
        manager = live_server(app)
        live = manager.__enter__()
        self._stack.append(manager)
        self.http = httpx.Client(base_url=live.url, timeout=20)

    def close(self) -> None:
        if self.http:
            self.http.close()
        for manager in self._stack:
            manager.__exit__(None, None, None)

    def register(self, token_for: Any = None, **overrides: Any) -> httpx.Response:
        """``token_for(binding) -> token | None`` makes the integrity token for this request."""
        assert self.http is not None
        challenge = str(self.http.post("/v1/challenge").json()["challenge"])
        raw = base64.urlsafe_b64decode(challenge + "=")
        chain = make_chain(challenge=raw, root=self.root)
        pem = chain.leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        key = jwk.JWK.from_pem(pem)
        self.last_key = key
        proof = jwt.JWT(
            header={"alg": "ES256", "typ": "key-proof+jwt"},
            claims={
                "challenge": challenge,
                "aud": "https://attester.test",
                "iat": int(self.clock().timestamp()),
            },
        )
        proof.make_signed_token(key)
        body: dict[str, Any] = {
            "certificate_chain": [base64.b64encode(c).decode() for c in chain.chain],
            "challenge": challenge,
            "key_proof": proof.serialize(),
        }
        token = token_for(integrity_binding(challenge, key.thumbprint())) if token_for else None
        if token is not None:
            body["integrity_token"] = token
        body.update(overrides)
        return self.http.post("/v1/android/attestations", json=body)

    def renew(self, token_for: Any = None, **overrides: Any) -> httpx.Response:
        """Renew the instance registered last; ``token_for`` as for :meth:`register`."""
        assert self.http is not None
        key = self.last_key
        challenge = str(self.http.post("/v1/challenge").json()["challenge"])
        proof = jwt.JWT(
            header={"alg": "ES256", "typ": "key-proof+jwt"},
            claims={
                "challenge": challenge,
                "aud": "https://attester.test",
                "iat": int(self.clock().timestamp()),
            },
        )
        proof.make_signed_token(key)
        body: dict[str, Any] = {
            "key_thumbprint": key.thumbprint(),
            "challenge": challenge,
            "key_proof": proof.serialize(),
        }
        token = token_for(integrity_binding(challenge, key.thumbprint())) if token_for else None
        if token is not None:
            body["integrity_token"] = token
        body.update(overrides)
        return self.http.post("/v1/attestations/renew", json=body)

    # token makers
    def google_token(self, request_type: str = "standard", **verdict: Any) -> Any:
        def make(binding: str) -> str:
            name = f"tok-{len(self.google.verdicts)}"
            self.google.verdicts[name] = verdict_payload(
                binding=verdict.pop("binding", binding),
                package=DEFAULT_PACKAGE,
                signer=DEFAULT_SIGNER,
                now=self.clock(),
                request_type=request_type,
                **verdict,
            )
            return name

        return make

    def local_token(self, **verdict: Any) -> Any:
        def make(binding: str) -> str:
            return self.keys.token(
                verdict_payload(
                    binding=binding,
                    package=DEFAULT_PACKAGE,
                    signer=DEFAULT_SIGNER,
                    now=self.clock(),
                    request_type="classic",
                    **verdict,
                )
            )

        return make


@pytest.fixture
def harness(
    make_settings: Any,
    root: TestRoot,
    root_file: Path,
    status: StatusServer,
    google: GoogleStandIn,
    keys: LocalKeys,
    clock: MutableClock,
    tmp_path: Path,
) -> Iterator[Harness]:
    h = Harness(make_settings, root, root_file, status, google, keys, clock, tmp_path)
    yield h
    h.close()


def _problem(response: httpx.Response, status: int, code: str, rule: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == code
    if rule:
        assert body["rule"] == rule


def _claims(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    token = response.json()["client_attestation"]
    return dict(json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==")))


def test_pi_http_not_configured_token_sent_rejected(harness: Harness) -> None:
    harness.start(None)
    _problem(harness.register(lambda b: "any-token"), 400, "integrity_not_configured")
    assert harness.register().status_code == 200  # Key Attestation alone still works


def test_pi_http_both_google_standard_passes_without_claims(
    harness: Harness, google: GoogleStandIn
) -> None:
    harness.start({"mode": "both"})
    claims = _claims(harness.register(harness.google_token()))
    assert "play_integrity" not in claims  # nothing passes through unless configured
    assert (google.token_requests, google.decode_requests) == (1, 1)
    assert google.decoded_packages == [DEFAULT_PACKAGE]
    _claims(harness.register(harness.google_token()))
    assert (google.token_requests, google.decode_requests) == (1, 2)  # access token cached


def test_pi_http_both_missing_token_rejected(harness: Harness) -> None:
    harness.start({"mode": "both"})
    _problem(harness.register(), 403, "integrity_token_required")


def test_pi_http_optional_missing_token_passes_bad_token_rejected(harness: Harness) -> None:
    harness.start({"mode": "ka_required_pi_optional"})
    assert harness.register().status_code == 200
    _problem(harness.register(lambda b: "never-issued"), 403, "integrity_token_invalid")


def test_pi_http_pass_claims_only_configured_ones(harness: Harness) -> None:
    harness.start({"pass_claims": ["device_recognition_verdict", "app_licensing_verdict"]})
    claims = _claims(harness.register(harness.google_token()))
    assert claims["play_integrity"] == {
        "device_recognition_verdict": ["MEETS_BASIC_INTEGRITY", "MEETS_DEVICE_INTEGRITY"],
        "app_licensing_verdict": "LICENSED",
    }


def test_pi_http_token_bound_to_other_challenge_rejected(harness: Harness) -> None:
    harness.start({})
    other = integrity_binding("another-challenge", "another-key")
    _problem(
        harness.register(harness.google_token(binding=other)), 403, "integrity_binding_mismatch"
    )


def test_pi_http_weak_device_policy_rule(harness: Harness) -> None:
    harness.start({})
    response = harness.register(harness.google_token(labels=("MEETS_BASIC_INTEGRITY",)))
    _problem(response, 403, "policy_violation", rule="pi_device_recognition")


def test_pi_http_stale_token_rejected(harness: Harness, clock: MutableClock) -> None:
    harness.start({"max_token_age": 60})
    make = harness.google_token()

    def stale(binding: str) -> str:
        token = make(binding)
        clock.advance(120)  # Google issued it two minutes before the attester sees it
        return token

    _problem(harness.register(stale), 403, "integrity_token_stale")


def test_pi_http_google_down_unavailable(harness: Harness, google: GoogleStandIn) -> None:
    harness.start({})
    google.decode_status = 500
    _problem(harness.register(harness.google_token()), 503, "integrity_decode_unavailable")


def test_pi_http_local_classic_passes_and_rejects(harness: Harness, google: GoogleStandIn) -> None:
    harness.start({"decode": "local", "request_type": "classic"})
    assert harness.register(harness.local_token()).status_code == 200
    assert google.token_requests == google.decode_requests == 0  # nothing online
    _problem(harness.register(lambda b: "not.a.jwe.token.x"), 400, "integrity_token_malformed")
    _problem(
        harness.register(harness.local_token(recognition="UNRECOGNIZED_VERSION")),
        403,
        "policy_violation",
        rule="pi_app_recognition",
    )


def test_pi_http_local_keys_from_env(
    harness: Harness, keys: LocalKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PI_DEC", keys.decryption_b64)
    monkeypatch.setenv("PI_VER", keys.verification_b64)
    harness.start(
        {
            "decode": "local",
            "request_type": "classic",
            "decryption_key_env": "PI_DEC",
            "verification_key_env": "PI_VER",
            "decryption_key_file": None,
            "verification_key_file": None,
        }
    )
    assert harness.register(harness.local_token()).status_code == 200


def test_pi_settings_local_standard_config_error(make_settings: Any) -> None:
    app = {
        "client_id": "x",
        "android": {
            "package_names": ["a"],
            "signing_cert_sha256": ["00" * 32],
            "play_integrity": {
                "decode": "local",
                "request_type": "standard",
                "decryption_key_env": "A",
                "verification_key_env": "B",
            },
        },
    }
    with pytest.raises(ConfigError) as info:
        make_settings(apps=[app])
    assert "classic" in str(info.value)


def test_pi_settings_missing_key_env_config_error(make_settings: Any, clock: MutableClock) -> None:
    app = {
        "client_id": "x",
        "android": {
            "package_names": ["a"],
            "signing_cert_sha256": ["00" * 32],
            "play_integrity": {"service_account_env": "PI_UNSET_SA"},
        },
    }
    with pytest.raises(ConfigError) as info:
        create_app(make_settings(apps=[app]), clock=clock)
    assert "PI_UNSET_SA" in str(info.value)


def test_pi_http_bad_key_proof_costs_no_google_request(
    harness: Harness, google: GoogleStandIn
) -> None:
    harness.start({})
    response = harness.register(harness.google_token(), key_proof="a.b.c")
    assert response.status_code in (400, 401) and response.json()["code"].startswith("key_proof_")
    assert (google.token_requests, google.decode_requests) == (0, 0)


# -- review: Play Integrity at renewal -------------------------------------------------------
def test_pi_http_renewal_default_without_token_passes(harness: Harness) -> None:
    harness.start({"mode": "both"})
    _claims(harness.register(harness.google_token()))
    assert harness.renew().status_code == 200  # existing clients keep renewing


def test_pi_http_renewal_sent_token_checked_not_ignored(harness: Harness) -> None:
    harness.start({"mode": "both"})
    _claims(harness.register(harness.google_token()))
    _problem(harness.renew(lambda b: "never-issued"), 403, "integrity_token_invalid")
    weak = harness.google_token(labels=("MEETS_BASIC_INTEGRITY",))
    _problem(harness.renew(weak), 403, "policy_violation", rule="pi_device_recognition")
    assert harness.renew(harness.google_token()).status_code == 200


def test_pi_http_renewal_required_without_token_rejected(harness: Harness) -> None:
    harness.start({"mode": "both", "renewal": "required"})
    _claims(harness.register(harness.google_token()))
    _problem(harness.renew(), 403, "integrity_token_required")
    assert harness.renew(harness.google_token()).status_code == 200


def test_pi_http_renewal_registration_token_replayed_binding_mismatch(harness: Harness) -> None:
    harness.start({"mode": "both", "renewal": "required"})
    tokens: list[str] = []
    make = harness.google_token()

    def keep(binding: str) -> str:
        tokens.append(make(binding))
        return tokens[-1]

    _claims(harness.register(keep))
    _problem(harness.renew(lambda b: tokens[0]), 403, "integrity_binding_mismatch")


def test_pi_http_renewal_token_without_configuration_rejected(harness: Harness) -> None:
    harness.start(None)
    assert harness.register().status_code == 200
    _problem(harness.renew(lambda b: "any-token"), 400, "integrity_not_configured")
    _problem(harness.renew(lambda b: 12), 422, "invalid_request")


# -- review: keys and tokens never reach logs or problem bodies -------------------------------
@pytest.mark.parametrize("decode", ["google", "local"])
def test_pi_http_keys_and_tokens_absent_from_logs_and_bodies(
    harness: Harness,
    google: GoogleStandIn,
    keys: LocalKeys,
    caplog: pytest.LogCaptureFixture,
    decode: str,
) -> None:
    caplog.set_level("DEBUG")
    if decode == "local":
        harness.start({"decode": "local", "request_type": "classic"})
        make, bad = harness.local_token, harness.local_token(recognition="UNRECOGNIZED_VERSION")
    else:
        harness.start({})
        make, bad = harness.google_token, harness.google_token(labels=("MEETS_BASIC_INTEGRITY",))
    sent: list[str] = []

    def keep(maker: Any) -> Any:
        def inner(binding: str) -> str:
            sent.append(maker(binding))
            return sent[-1]

        return inner

    bodies = [
        harness.register(keep(make())).text,
        harness.register(keep(bad)).text,
        harness.register(keep(lambda b: "x" * 200)).text,
    ]
    google.decode_status = 500
    bodies.append(harness.register(keep(make())).text)
    pem_lines = google.service_account["private_key"].splitlines()[1:-1]
    secrets_ = [
        keys.decryption_b64,
        keys.verification_b64[20:60],
        *pem_lines[:3],
        *google.access_tokens,
        *(t for t in sent if len(t) > 40),  # the caller's tokens are not echoed either
    ]
    text = caplog.text + "\n".join(bodies)
    for secret in secrets_:
        assert secret not in text


def test_pi_http_token_of_publishers_other_package_mismatch(
    harness: Harness, google: GoogleStandIn
) -> None:
    # the app allows two packages; Key Attestation attests DEFAULT_PACKAGE only
    harness.start({}, package_names=[DEFAULT_PACKAGE, "com.example.other"])

    def other(binding: str) -> str:
        google.verdicts["other"] = verdict_payload(
            binding=binding, package="com.example.other", signer=DEFAULT_SIGNER, now=harness.clock()
        )
        return "other"

    _problem(harness.register(other), 403, "integrity_package_mismatch")
    assert harness.register(harness.google_token()).status_code == 200


def test_pi_registry_reload_builds_decoders_of_new_apps(
    make_settings: Any, keys: LocalKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that adds Play Integrity to an app gives it a decoder (not a KeyError 500
    at its first token), and a reload whose keys cannot be read fails before any swap."""
    from attester.platforms.android import AndroidPlatform

    monkeypatch.setenv("PI_DEC", keys.decryption_b64)
    monkeypatch.setenv("PI_VER", keys.verification_b64)
    android = {"package_names": ["a.b"], "signing_cert_sha256": ["00" * 32]}
    section = {
        "decode": "local",
        "request_type": "classic",
        "decryption_key_env": "PI_DEC",
        "verification_key_env": "PI_VER",
    }
    before = make_settings(apps=[{"client_id": "x", "android": android}])
    platform = AndroidPlatform(before)
    assert "x" not in platform.integrity.decoders
    after = make_settings(apps=[{"client_id": "x", "android": {**android, "play_integrity": section}}])
    platform.with_registry(after)()
    assert "x" in platform.integrity.decoders and platform.settings is after
    kept = platform.integrity.decoders["x"]
    platform.with_registry(after)()
    assert platform.integrity.decoders["x"] is kept  # unchanged section: same decoder
    broken = {**section, "decryption_key_env": "PI_MISSING"}
    with pytest.raises(ConfigError):
        platform.with_registry(
            make_settings(apps=[{"client_id": "x", "android": {**android, "play_integrity": broken}}])
        )
    assert platform.settings is after
