"""Rate limits: client address rules, the database counter storage, 429 over HTTP."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from limits import parse

from attester.app import create_app
from attester.ratelimit import (
    DatabaseCounterStorage,
    LocalCounterStorage,
    client_address,
    client_key,
    parse_networks,
)
from attester.settings import ConfigError
from attester.storage import create_store
from tests.support import LiveServer, MutableClock, live_server

PROXY = parse_networks(["127.0.0.0/8", "10.0.0.0/8"])


# -- client address ------------------------------------------------------------------------
def test_ratelimit_forwarded_for_without_trusted_proxies_ignored() -> None:
    address = client_address("203.0.113.9", "198.51.100.1", ())
    assert address == ipaddress.ip_address("203.0.113.9")


def test_ratelimit_forwarded_for_from_untrusted_peer_ignored() -> None:
    address = client_address("203.0.113.9", "198.51.100.1", PROXY)
    assert address == ipaddress.ip_address("203.0.113.9")


def test_ratelimit_forwarded_for_rightmost_untrusted_hop_is_client() -> None:
    # the caller wrote 1.1.1.1 itself; the proxies appended 198.51.100.7 and 10.0.0.5
    address = client_address("127.0.0.1", "1.1.1.1, 198.51.100.7, 10.0.0.5", PROXY)
    assert address == ipaddress.ip_address("198.51.100.7")


def test_ratelimit_forwarded_for_all_trusted_leftmost_used() -> None:
    assert client_address("127.0.0.1", "10.0.0.9, 10.0.0.5", PROXY) == ipaddress.ip_address("10.0.0.9")


def test_ratelimit_forwarded_for_garbage_hop_last_good_used() -> None:
    address = client_address("127.0.0.1", "198.51.100.7, not-an-ip, 10.0.0.5", PROXY)
    assert address == ipaddress.ip_address("10.0.0.5")


def test_ratelimit_ipv6_counted_per_prefix_and_mapped_ipv4_unmapped() -> None:
    one = client_key(client_address("2001:db8:1:2::1", None, ()), 64)
    other = client_key(client_address("2001:db8:1:2:ffff::9", None, ()), 64)
    assert one == other == "2001:db8:1:2::/64"
    assert client_key(client_address("::ffff:192.0.2.4", None, ()), 64) == "192.0.2.4"
    assert client_key(client_address("not an address", None, ()), 64) == "unknown"


def test_ratelimit_invalid_rate_setting_names_field(make_settings: Any) -> None:
    with pytest.raises(ConfigError, match="rate_limits.challenge_per_ip"):
        make_settings(rate_limits={"challenge_per_ip": "many per minute"})
    with pytest.raises(ConfigError, match="trusted_proxies"):
        make_settings(trusted_proxies=["10.0.0.0/33"])


# -- database storage ----------------------------------------------------------------------
def test_ratelimit_database_window_counts_and_restarts(database_url: str) -> None:
    store = create_store(database_url)
    now = [1_800_000_000.0]
    storage = DatabaseCounterStorage(store.engine, clock=lambda: now[0])
    try:
        assert [storage.incr("k", 60) for _ in range(3)] == [1, 2, 3]
        assert storage.get("k") == 3 and storage.get_expiry("k") == now[0] + 60
        now[0] += 61  # the window has passed: the counter starts again
        assert storage.get("k") == 0
        assert storage.incr("k", 60) == 1
        assert storage.purge(now[0] + 3600) == 1 and storage.get("k") == 0
        assert storage.check()
    finally:
        store.dispose()


def test_ratelimit_database_long_keys_kept_apart(database_url: str) -> None:
    store = create_store(database_url)
    storage = DatabaseCounterStorage(store.engine)
    one, other = "app/" + "x" * 300 + "1", "app/" + "x" * 300 + "2"
    try:
        assert storage.incr(one, 60) == 1 and storage.incr(other, 60) == 1
        assert storage.get(one) == 1 and storage.get(other) == 1
    finally:
        store.dispose()


def test_ratelimit_memory_window_counts_restarts_and_purges() -> None:
    now = [1_800_000_000.0]
    storage = LocalCounterStorage(clock=lambda: now[0])
    assert [storage.incr("k", 60) for _ in range(3)] == [1, 2, 3]
    assert storage.get("k") == 3 and storage.get_expiry("k") == now[0] + 60
    now[0] += 61
    assert storage.get("k") == 0 and storage.incr("k", 60) == 1
    for i in range(LocalCounterStorage.PURGE_EVERY):  # many one-off callers, then time passes
        storage.incr(f"ip-{i}", 1)
    now[0] += 120
    for _ in range(LocalCounterStorage.PURGE_EVERY):
        storage.incr("k", 60)
    assert len(storage._counters) == 1  # expired windows do not pile up


def test_ratelimit_database_two_replicas_lose_no_hit(database_url: str) -> None:
    """Two engines (two replicas) hammer one key from several threads: the count is exact."""
    stores = [create_store(database_url), create_store(database_url, migrate=False)]
    storages = [DatabaseCounterStorage(s.engine) for s in stores]
    item = parse("1000/hour")
    per_thread, threads = 25, []
    seen: list[int] = []
    lock = threading.Lock()

    def hammer(storage: DatabaseCounterStorage) -> None:
        for _ in range(per_thread):
            value = storage.incr(item.key_for("registration", "ip", "192.0.2.1"), item.get_expiry())
            with lock:
                seen.append(value)

    try:
        for i in range(4):
            threads.append(threading.Thread(target=hammer, args=(storages[i % 2],)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = 4 * per_thread
        # every increment returned a distinct count: none was lost or counted twice
        assert sorted(seen) == list(range(1, total + 1))
        assert storages[1].get(item.key_for("registration", "ip", "192.0.2.1")) == total
    finally:
        for s in stores:
            s.dispose()


# -- over HTTP -----------------------------------------------------------------------------
@pytest.fixture
def limited(make_settings: Any, clock: MutableClock) -> Iterator[LiveServer]:
    settings = make_settings(
        rate_limits={"challenge_per_ip": "3/minute"}, trusted_proxies=["127.0.0.1/32"]
    )
    app = create_app(settings, clock=clock)
    with live_server(app) as live:
        yield live
    app.state.service.store.dispose()


def _assert_rate_limited(response: httpx.Response, *, window: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "rate_limited" and body["status"] == 429
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= window and body["retry_after"] == retry_after


def test_ratelimit_challenge_per_ip_429_with_retry_after(limited: LiveServer) -> None:
    with httpx.Client(base_url=limited.url) as http:
        assert [http.post("/v1/challenge").status_code for _ in range(3)] == [200] * 3
        _assert_rate_limited(http.post("/v1/challenge"), window=60)
        # GETs are not limited (the JWKS must stay cheap)
        assert http.get("/.well-known/jwks.json").status_code == 200


def test_ratelimit_trusted_proxy_counts_forwarded_clients_apart(limited: LiveServer) -> None:
    with httpx.Client(base_url=limited.url) as http:
        for _ in range(3):
            assert http.post("/v1/challenge", headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 200
        _assert_rate_limited(
            http.post("/v1/challenge", headers={"X-Forwarded-For": "198.51.100.1"}), window=60
        )
        # another client behind the same proxy has its own budget
        assert http.post("/v1/challenge", headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 200


def test_ratelimit_untrusted_forwarded_for_does_not_escape_limit(
    make_settings: Any, clock: MutableClock
) -> None:
    app = create_app(make_settings(rate_limits={"challenge_per_ip": "2/minute"}), clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        codes = [
            http.post("/v1/challenge", headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
            for i in range(3)
        ]
        assert codes == [200, 200, 429]
    app.state.service.store.dispose()


def test_ratelimit_disabled_never_429(make_settings: Any, clock: MutableClock) -> None:
    settings = make_settings(rate_limits={"enabled": False, "challenge_per_ip": "1/minute"})
    app = create_app(settings, clock=clock)
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        assert {http.post("/v1/challenge").status_code for _ in range(5)} == {200}
    app.state.service.store.dispose()


def test_ratelimit_database_storage_holds_across_two_replicas(
    make_settings: Any, database_url: str, clock: MutableClock, tmp_path: Any
) -> None:
    """Two replicas on one database share the budget; the window restarts by the clock."""
    apps = [
        create_app(
            make_settings(
                data_dir=tmp_path / name,
                database_url=database_url,
                rate_limits={"storage": "database", "challenge_per_ip": "4/minute"},
            ),
            clock=clock,
        )
        for name in ("a", "b")
    ]
    with (
        live_server(apps[0]) as a,
        live_server(apps[1]) as b,
        httpx.Client(base_url=a.url) as http_a,
        httpx.Client(base_url=b.url) as http_b,
    ):
        assert [http_a.post("/v1/challenge").status_code for _ in range(2)] == [200, 200]
        assert [http_b.post("/v1/challenge").status_code for _ in range(2)] == [200, 200]
        _assert_rate_limited(http_a.post("/v1/challenge"), window=60)
        _assert_rate_limited(http_b.post("/v1/challenge"), window=60)
        clock.advance(61)
        assert http_b.post("/v1/challenge").status_code == 200
    for app in apps:
        app.state.service.store.dispose()


def test_ratelimit_renewal_per_app_429(make_settings: Any, clock: MutableClock) -> None:
    """The per-app limit counts renewals of one app's instances, whatever their address."""
    settings = make_settings(rate_limits={"renewal_per_app": "2/minute", "renewal_per_ip": ""})
    app = create_app(settings, clock=clock)
    service = app.state.service
    client_id = settings.apps[0].client_id
    record = service.store.register_instance(
        platform="android",
        client_id=client_id,
        key_thumbprint="T" * 43,
        instance_jwk={"kty": "EC", "crv": "P-256", "x": "x", "y": "y"},
        now=datetime.now(UTC),
    )
    with live_server(app) as live, httpx.Client(base_url=live.url) as http:
        codes = []
        for _ in range(3):
            challenge = http.post("/v1/challenge").json()["challenge"]
            response = http.post(
                "/v1/attestations/renew",
                json={"key_thumbprint": record.key_thumbprint, "challenge": challenge, "key_proof": "x"},
            )
            codes.append(response.json()["code"])
        # the first two reach the key proof check; the third is refused before it
        assert codes == ["key_proof_malformed", "key_proof_malformed", "rate_limited"]
        assert response.json()["scope"] == "app" and "retry-after" in response.headers
    service.store.dispose()
