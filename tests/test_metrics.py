"""Prometheus /metrics: route-template labels, access rule, key states, several workers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from attester.app import create_app
from tests.support import LiveServer, MutableClock, live_server
from tests.test_cli import serving

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(http: httpx.Client, **kwargs: Any) -> Samples:
    response = http.get("/metrics", **kwargs)
    assert response.status_code == 200, response.text
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def requests_of(samples: Samples, route: str, method: str, status: int) -> float:
    key = (("method", method), ("route", route), ("status", str(status)))
    return samples.get(("attester_http_requests_total", key), 0.0)


@pytest.fixture
def served(make_settings: Any, clock: MutableClock) -> Iterator[LiveServer]:
    app = create_app(make_settings(trusted_proxies=["127.0.0.1/32"]), clock=clock)
    with live_server(app) as live:
        yield live
    app.state.service.store.dispose()


def test_metrics_requests_labelled_by_route_template(served: LiveServer) -> None:
    with httpx.Client(base_url=served.url) as http:
        for _ in range(3):
            assert http.get("/.well-known/jwks.json").status_code == 200
        for _ in range(2):
            assert http.get(f"/nope/{uuid.uuid4().hex}").status_code == 404
        assert http.request("PROPFIND", "/v1/challenge").status_code == 405
        # answered 413 by the middleware before routing: still the route's template
        assert http.post("/v1/challenge", content=b"{" * 70000, headers={"content-type": "application/json"}).status_code == 413
        samples = scrape(http)
    assert requests_of(samples, "/.well-known/jwks.json", "GET", 200) == 3
    assert requests_of(samples, "unmatched", "GET", 404) == 2
    assert requests_of(samples, "/v1/challenge", "other", 405) == 1
    assert requests_of(samples, "/v1/challenge", "POST", 413) == 1
    routes = {dict(labels).get("route") for name, labels in samples if name == "attester_http_requests_total"}
    assert not any(r and r.startswith("/nope") for r in routes)  # raw paths never become labels
    histogram = (("le", "+Inf"), ("route", "/.well-known/jwks.json"))
    assert samples[("attester_http_request_duration_seconds_bucket", histogram)] == 3


def test_metrics_routes_added_under_prefix_labelled_by_full_template(
    make_settings: Any, clock: MutableClock
) -> None:
    """A router included later with a prefix (as the admin API is) needs no metrics change."""
    from fastapi import APIRouter

    app = create_app(make_settings(), clock=clock)
    extra = APIRouter()

    @extra.get("/instances/{instance_id}")
    async def show(instance_id: str) -> dict[str, str]:
        return {"id": instance_id}

    app.include_router(extra, prefix="/admin/v1")
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        for n in range(3):
            assert http.get(f"/admin/v1/instances/{n}").status_code == 200
        samples = scrape(http)
    assert requests_of(samples, "/admin/v1/instances/{instance_id}", "GET", 200) == 3
    app.state.service.store.dispose()


def test_metrics_challenge_rejections_counted_by_code(served: LiveServer) -> None:
    with httpx.Client(base_url=served.url) as http:
        response = http.post(
            "/v1/attestations/renew",
            json={"key_thumbprint": "A" * 43, "challenge": "not-one-of-ours", "key_proof": "a.b.c"},
        )
        assert response.json()["code"] == "challenge_invalid"
        samples = scrape(http)
    renewal = (("code", "challenge_invalid"), ("kind", "renewal"), ("outcome", "rejected"), ("platform", "unknown"))
    assert samples[("attester_verifications_total", renewal)] == 1
    assert samples[("attester_challenge_redemptions_total", (("outcome", "challenge_invalid"),))] == 1


def test_metrics_key_states_follow_rotation(served: LiveServer, clock: MutableClock) -> None:
    service = served.server.config.app.state.service  # type: ignore[attr-defined]
    with httpx.Client(base_url=served.url) as http:
        before = scrape(http)
        service.key_store.rotate(clock(), delay=timedelta(seconds=600))
        after = scrape(http)
    assert before[("attester_signing_keys", (("state", "active"),))] == 1
    assert before[("attester_signing_keys", (("state", "next"),))] == 0
    assert after[("attester_signing_keys", (("state", "next"),))] == 1


def test_metrics_refused_outside_allowed_networks(make_settings: Any, clock: MutableClock) -> None:
    settings = make_settings(metrics={"allowed_networks": ["10.0.0.0/8"]})
    app = create_app(settings, clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        response = http.get("/metrics")
        assert response.status_code == 404 and response.json()["code"] == "not_found"
        # X-Forwarded-For is not believed without trusted_proxies
        spoofed = http.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"})
        assert spoofed.status_code == 404
    app.state.service.store.dispose()


def test_metrics_allowed_through_trusted_proxy(make_settings: Any, clock: MutableClock) -> None:
    settings = make_settings(
        metrics={"allowed_networks": ["10.0.0.0/8"]}, trusted_proxies=["127.0.0.1/32"]
    )
    app = create_app(settings, clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        assert http.get("/metrics", headers={"X-Forwarded-For": "10.1.2.3"}).status_code == 200
        assert http.get("/metrics", headers={"X-Forwarded-For": "203.0.113.5"}).status_code == 404
    app.state.service.store.dispose()


def test_metrics_disabled_not_served(make_settings: Any, clock: MutableClock) -> None:
    app = create_app(make_settings(metrics={"enabled": False}), clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        assert http.get("/metrics").json()["code"] == "not_found"
        assert "/metrics" not in http.get("/openapi.json").json()["paths"]
    app.state.service.store.dispose()


def test_metrics_several_workers_summed(tmp_path: Path) -> None:
    """``serve --workers 2``: each scrape, on whichever worker, counts every worker's requests."""
    data = tmp_path / "data"
    with serving(data, "--workers", "2") as url:
        # fresh connections, so the kernel spreads them over both workers
        for _ in range(40):
            assert httpx.get(url + "/.well-known/jwks.json").status_code == 200
        counts = {requests_of(scrape(httpx.Client(base_url=url)), "/.well-known/jwks.json", "GET", 200) for _ in range(6)}
    assert counts == {40.0}


def test_metrics_several_workers_operator_dir_emptied_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's PROMETHEUS_MULTIPROC_DIR is used, without an earlier run's counts."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    with serving(tmp_path / "data", "--workers", "2") as url:
        for _ in range(3):
            assert httpx.get(url + "/.well-known/jwks.json").status_code == 200
    with serving(tmp_path / "data", "--workers", "2") as url:
        assert httpx.get(url + "/.well-known/jwks.json").status_code == 200
        samples = scrape(httpx.Client(base_url=url))
    assert requests_of(samples, "/.well-known/jwks.json", "GET", 200) == 1
    assert list(directory.glob("*.db"))
