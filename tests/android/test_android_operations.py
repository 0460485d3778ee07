"""Operating an Android deployment: /readyz on the revocation list, metrics of real
registrations and renewals, and the per-app registration limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from attester.app import create_app
from tests.support import MutableClock, live_server

from . import test_android_http as android_http
from .status_server import StatusServer
from .synth import DEFAULT_PACKAGE, DEFAULT_SIGNER, TestRoot
from .test_android_http import CLIENT_ID, Device, _android_settings

# the Android HTTP tests' fixtures: a loopback status list, a test root and its PEM file
status, root, root_file = android_http.status, android_http.root, android_http.root_file


def samples(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics scrape, keyed by (name, sorted labels)."""
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _settings(
    make_settings: Any, root_file: Path, status_url: str, *, rate_limits: Any = None, **android: Any
) -> Any:
    app = {
        "client_id": CLIENT_ID,
        "android": {"package_names": [DEFAULT_PACKAGE], "signing_cert_sha256": [DEFAULT_SIGNER.hex()]},
    }
    return make_settings(
        apps=[app],
        android={"revocation_url": status_url, "test_root_files": [root_file], **android},
        **({"rate_limits": rate_limits} if rate_limits else {}),
    )


def test_readyz_android_list_fresh_ready(
    make_settings: Any, root_file: Path, status: StatusServer, clock: MutableClock
) -> None:
    app = create_app(_android_settings(make_settings, root_file, status), clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        response = http.get("/readyz")
        assert response.status_code == 200, response.text
        assert response.json() == {
            "status": "ready",
            "checks": {
                "database": "ok",
                "signing_key": "ok",
                "app_registry": "ok",
                "android_revocation_list": "ok",
            },
        }
        assert response.headers["cache-control"] == "no-store"


def test_readyz_android_list_unavailable_503_names_it(
    make_settings: Any, root_file: Path, clock: MutableClock
) -> None:
    app = create_app(_settings(make_settings, root_file, "http://127.0.0.1:9/status"), clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        response = http.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/problem+json")
        body = response.json()
        assert body["code"] == "not_ready" and body["not_ready"] == ["android_revocation_list"]
        assert body["checks"]["android_revocation_list"] == "unavailable"
        assert body["checks"]["database"] == "ok"
        # liveness does not depend on it: the process must not be restarted for Google's outage
        assert http.get("/healthz").status_code == 200


def test_readyz_android_list_stale_503_then_ready_when_allowed(
    make_settings: Any, root_file: Path, status: StatusServer, clock: MutableClock
) -> None:
    def serve(**android: Any) -> Any:
        settings = _settings(
            make_settings, root_file, status.url, revocation_max_staleness=3600, **android
        )
        return live_server(create_app(settings, clock=clock))

    with serve() as live, httpx.Client(base_url=live.url) as http:
        assert http.get("/readyz").status_code == 200  # fetched now
        status.close()  # Google goes away
        clock.advance(7200)
        response = http.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["android_revocation_list"] == "stale"
    with serve(allow_stale_revocation=True) as live, httpx.Client(base_url=live.url) as http:
        assert http.get("/readyz").status_code == 200


def test_metrics_android_registration_and_renewal_counted(
    make_settings: Any, root_file: Path, status: StatusServer, root: TestRoot, clock: MutableClock
) -> None:
    app = create_app(_android_settings(make_settings, root_file, status), clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url, timeout=20) as http:
        device = Device(http, root, clock)
        challenge = device.challenge()
        assert device.register(challenge=challenge).status_code == 200
        replay = Device(http, root, clock).register(challenge=challenge)
        assert replay.json()["code"] == "challenge_replayed"
        clock.advance(5)
        assert device.renew().status_code == 200
        got = samples(http)
    android = (("code", ""), ("kind", "registration"), ("outcome", "accepted"), ("platform", "android"))
    assert got[("attester_verifications_total", android)] == 1
    replayed = (
        ("code", "challenge_replayed"),
        ("kind", "registration"),
        ("outcome", "rejected"),
        ("platform", "android"),
    )
    assert got[("attester_verifications_total", replayed)] == 1
    renewed = (("code", ""), ("kind", "renewal"), ("outcome", "accepted"), ("platform", "android"))
    assert got[("attester_verifications_total", renewed)] == 1
    assert got[("attester_challenge_redemptions_total", (("outcome", "redeemed"),))] == 2
    assert got[("attester_challenge_redemptions_total", (("outcome", "challenge_replayed"),))] == 1
    assert got[("attester_challenges_issued_total", ())] == 2
    # verification timed once per registration that reached the verifier, and per renewal
    reg = (("kind", "registration"), ("platform", "android"))
    assert got[("attester_verification_duration_seconds_count", reg)] == 1
    ren = (("kind", "renewal"), ("platform", "android"))
    assert got[("attester_verification_duration_seconds_count", ren)] == 1
    assert got[("attester_issuance_duration_seconds_count", ())] == 2
    assert got[("attester_issuance_duration_seconds_sum", ())] > 0
    # the list was fetched "now" on the service's clock, 5 s ago
    assert got[("attester_revocation_list_age_seconds", (("platform", "android"),))] == 5
    route = (("method", "POST"), ("route", "/v1/android/attestations"), ("status", "200"))
    assert got[("attester_http_requests_total", route)] == 1


def test_ratelimit_android_registration_per_app_429(
    make_settings: Any, root_file: Path, status: StatusServer, root: TestRoot, clock: MutableClock
) -> None:
    settings = _settings(
        make_settings, root_file, status.url, rate_limits={"registration_per_app": "2/hour"}
    )
    app = create_app(settings, clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url, timeout=20) as http:
        assert [Device(http, root, clock).register().status_code for _ in range(2)] == [200, 200]
        third = Device(http, root, clock).register()
        assert third.status_code == 429 and third.json()["code"] == "rate_limited"
        assert third.json()["scope"] == "app"
        assert 1 <= int(third.headers["retry-after"]) <= 3600
        got = samples(http)
    limited = (("endpoint", "registration"), ("scope", "app"))
    assert got[("attester_rate_limited_total", limited)] == 1
