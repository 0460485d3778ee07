"""Status list parsing (pure) and the fetcher against a real loopback HTTP server."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from attester import android_revocation
from attester.android_revocation import RevocationFetcher
from platform_verifiers.android import parse_status_list
from platform_verifiers.android.revocation import FUTURE_TOLERANCE, check_revocation
from platform_verifiers.errors import VerificationError

from .conftest import VECTORS
from .status_server import LIST_A, LIST_B, StatusServer

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def server() -> Iterator[StatusServer]:
    s = StatusServer()
    yield s
    s.close()


def test_parse_status_list_google_doc_example_both_statuses() -> None:
    path = VECTORS / "roots" / "google_attestation_status_example_developer_docs.json"
    if not path.exists():
        pytest.skip("vectors absent")
    snapshot = parse_status_list(path.read_bytes(), NOW)
    assert dict(snapshot.entries) == {
        "2c8cdddfd5e03bfc": "REVOKED",
        "c8966fcb2fbb0d7a": "SUSPENDED",
    }


def test_parse_status_list_garbage_fails_revocation_list_malformed() -> None:
    for garbage in (b"not json", b"[]", b'{"entries": []}', b'{"entries": {"a": {}}}'):
        with pytest.raises(VerificationError) as caught:
            parse_status_list(garbage, NOW)
        assert caught.value.code == "revocation_list_malformed"


def test_fetcher_fresh_copy_not_refetched(server: StatusServer, tmp_path: Path) -> None:
    fetcher = RevocationFetcher(server.url, tmp_path / "status.json", None, 5.0)
    first = fetcher.get(NOW)
    again = fetcher.get(NOW + timedelta(minutes=59))
    assert first is again and server.requests == 1
    assert first is not None and first.entries == {"c8966fcb2fbb0d7a": "SUSPENDED"}
    server.body = LIST_B
    later = fetcher.get(NOW + timedelta(minutes=61))
    assert server.requests == 2
    assert later is not None and "2c8cdddfd5e03bfc" in later.entries
    fetcher.close()


def test_fetcher_failure_keeps_last_good_copy(server: StatusServer, tmp_path: Path) -> None:
    fetcher = RevocationFetcher(server.url, tmp_path / "status.json", None, 5.0)
    good = fetcher.get(NOW)
    server.status = 500
    assert fetcher.get(NOW + timedelta(hours=2)) is good
    server.status, server.body = 200, b"garbage"
    kept = fetcher.get(NOW + timedelta(hours=3))
    assert kept is good and kept is not None and kept.fetched_at == NOW
    fetcher.close()


def test_fetcher_last_good_copy_loaded_at_start(server: StatusServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "status.json"
    RevocationFetcher(server.url, cache, None, 5.0).get(NOW)
    stored = json.loads(cache.read_text())
    assert stored["fetched_at"] == NOW.isoformat() and stored["max_age"] == 3600
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".revocation-")]
    server.close()  # the network is gone: the disk copy must serve
    restarted = RevocationFetcher(server.url, cache, None, 0.5)
    snapshot = restarted.get(NOW + timedelta(minutes=10))
    assert snapshot is not None and snapshot.fetched_at == NOW
    stale = restarted.get(NOW + timedelta(days=2))  # refetch fails, last good copy stays
    assert stale is not None and stale.fetched_at == NOW
    restarted.close()


def test_fetcher_a_cached_max_age_is_capped_too(server: StatusServer, tmp_path: Path) -> None:
    cache = tmp_path / "status.json"
    RevocationFetcher(server.url, cache, None, 5.0).get(NOW)
    cache.write_text(json.dumps({**json.loads(cache.read_text()), "max_age": 10**40}))
    restarted = RevocationFetcher(server.url, cache, None, 5.0, max_fresh=timedelta(hours=1))
    assert restarted.get(NOW + timedelta(minutes=59)) is not None and server.requests == 1
    restarted.get(NOW + timedelta(minutes=61))
    assert server.requests == 2
    restarted.close()


def test_fetcher_no_store_refetches_after_a_minute(server: StatusServer) -> None:
    # no-store (or max-age=0, or no Cache-Control) would fetch, parse and fsync the whole list
    # on every registration, one at a time: a copy is kept a minute whatever the headers say
    for cache_control in ("no-store", "no-cache, max-age=0", ""):
        server.cache_control, server.requests = cache_control, 0
        fetcher = RevocationFetcher(server.url, None, None, 5.0)
        fetcher.get(NOW)
        fetcher.get(NOW + timedelta(seconds=59))
        assert server.requests == 1
        fetcher.get(NOW + timedelta(seconds=61))
        assert server.requests == 2
        fetcher.close()


def test_fetcher_max_age_is_capped_below_the_staleness_limit(server: StatusServer) -> None:
    # a max-age past the staleness limit would let the copy go stale before its refetch: every
    # registration refused while Google is healthy. So a copy is refetched after max_fresh
    server.cache_control = "max-age=604800"
    fetcher = RevocationFetcher(server.url, None, None, 5.0, max_fresh=timedelta(hours=24))
    fetcher.get(NOW)
    fetcher.get(NOW + timedelta(hours=23))
    assert server.requests == 1
    fetcher.get(NOW + timedelta(hours=25))
    assert server.requests == 2
    # so large it overflowed timedelta: capped the same
    server.cache_control = "max-age=" + "9" * 40
    fetcher.get(NOW + timedelta(hours=50))
    assert server.requests == 3
    assert fetcher.get(NOW + timedelta(hours=75)) is not None and server.requests == 4
    fetcher.close()


def test_fetcher_age_header_shortens_the_max_age(server: StatusServer) -> None:
    server.cache_control, server.headers = "max-age=3600", {"Age": "3000"}
    fetcher = RevocationFetcher(server.url, None, None, 5.0)
    fetcher.get(NOW)
    fetcher.get(NOW + timedelta(minutes=11))  # 3600 - 3000 s = 10 min
    assert server.requests == 2
    fetcher.close()


def test_fetcher_a_stalled_body_fails_within_its_timeout(server: StatusServer) -> None:
    # the list trickled a byte at a time: httpx's timeout is per read, so without a deadline
    # on the whole body the registration waited as long as the server liked
    server.body = LIST_A * 100
    server.drip = 0.05
    fetcher = RevocationFetcher(server.url, None, None, 0.5)
    started = time.monotonic()
    assert fetcher.get(NOW) is None
    assert time.monotonic() - started < 3  # not the 30 s the body takes
    fetcher.close()


def test_fetcher_a_fetch_under_way_does_not_hold_other_callers(server: StatusServer) -> None:
    # once a copy is held, a caller that finds a fetch running answers from that copy at once
    fetcher = RevocationFetcher(server.url, None, None, 1.0)
    good = fetcher.get(NOW)
    server.body, server.drip = LIST_B * 100, 0.05
    later = NOW + timedelta(hours=2)
    starter = threading.Thread(target=fetcher.get, args=(later,))
    starter.start()
    while server.requests < 2:
        time.sleep(0.01)
    started = time.monotonic()
    assert fetcher.get(later) is good
    assert time.monotonic() - started < 0.5
    starter.join()
    assert fetcher.get(later) is good  # that fetch failed: backed off, the copy stays
    fetcher.close()


def test_fetcher_a_body_over_the_limit_fails_counted_decompressed(
    server: StatusServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a gzip bomb: 1 MiB on the wire grew the worker by ~1 GB; it is counted as decompressed
    monkeypatch.setattr(android_revocation, "MAX_LIST_BYTES", 64 * 1024)
    big = b'{"entries": {}, "x": "' + b"a" * (1024 * 1024) + b'"}'
    server.body, server.headers = gzip.compress(big), {"Content-Encoding": "gzip"}
    assert len(server.body) < 64 * 1024
    fetcher = RevocationFetcher(server.url, None, None, 5.0)
    assert fetcher.get(NOW) is None
    server.body, server.headers = LIST_A, {}
    assert fetcher.get(NOW + timedelta(seconds=61)) is not None  # after the back-off
    fetcher.close()


@pytest.mark.parametrize(
    "body",
    [
        b'{"entries": ' * 100_000 + b"{}" + b"}" * 100_000,  # RecursionError
        LIST_A.decode().encode("utf-16"),  # json.loads alone reads UTF-16
        b'{"entries": {"c0ffee": {"status": "REVOKED"}}, "entries": {}}',  # two readings
    ],
    ids=["nested", "utf16", "duplicate-key"],
)
def test_fetcher_an_unreadable_list_keeps_the_last_copy(
    server: StatusServer, tmp_path: Path, body: bytes
) -> None:
    # each escaped as a 500 on every registration, the back-off never starting
    fetcher = RevocationFetcher(server.url, tmp_path / "status.json", None, 5.0)
    good = fetcher.get(NOW)
    server.body = body
    assert fetcher.get(NOW + timedelta(hours=2)) is good
    assert fetcher.get(NOW + timedelta(hours=2, seconds=30)) is good
    assert server.requests == 2  # backed off
    fetcher.close()


def test_parse_status_list_refuses_what_two_readers_could_read_two_ways() -> None:
    for data in (
        b'{"entries": {"c0ffee": {"status": "REVOKED"}, "c0ffee": {"status": "SUSPENDED"}}}',
        b'{"entries": {}, "entries": {}}',
        LIST_A.decode().encode("utf-32"),
        b'{"entries": ' * 100_000,
    ):
        with pytest.raises(VerificationError) as caught:
            parse_status_list(data, NOW)
        assert caught.value.code == "revocation_list_malformed"


def test_fetcher_a_bad_url_is_a_failed_fetch_not_an_error(tmp_path: Path) -> None:
    for url in ("https://[::1/status", "http://127.0.0.1:9/\x00", "status"):
        fetcher = RevocationFetcher(url, tmp_path / "s.json", None, 0.5)
        assert fetcher.get(NOW) is None
        fetcher.close()


def test_fetcher_a_copy_from_the_future_is_refetched(server: StatusServer) -> None:
    # fetched while the clock ran a year ahead: once the clock is right, that copy's
    # fresh_until (and a back-off set then) must not stop refetching for a year
    fetcher = RevocationFetcher(server.url, None, None, 5.0)
    fetcher.get(NOW + timedelta(days=365))
    server.body = LIST_B
    snapshot = fetcher.get(NOW)
    assert server.requests == 2 and snapshot is not None and snapshot.fetched_at == NOW
    server.status = 500
    fetcher.get(NOW + timedelta(days=365, hours=2))  # fails: back-off until a year ahead
    server.status = 200
    fetcher.get(NOW + timedelta(hours=2))
    assert server.requests == 4
    fetcher.close()


def test_check_revocation_a_copy_from_the_future_is_stale() -> None:
    snapshot = parse_status_list(LIST_A, NOW + timedelta(days=1))
    with pytest.raises(VerificationError) as caught:
        check_revocation(["abc"], snapshot, now=NOW, max_age=timedelta(hours=48))
    assert caught.value.code == "revocation_list_stale"
    # within the tolerance: fine
    check_revocation(["abc"], snapshot, now=NOW + timedelta(days=1) - FUTURE_TOLERANCE,
                     max_age=timedelta(hours=48))


def test_check_revocation_reports_only_documented_statuses() -> None:
    # the list's own text went into the problem: a lone surrogate made that a 500
    for status, reported in (("REVOKED", "REVOKED"), ("SUSPENDED", "SUSPENDED"),
                             ("\ud800", "UNRECOGNISED"), ("x" * 10_000, "UNRECOGNISED")):
        data = json.dumps({"entries": {"abc": {"status": status}}}).encode()
        with pytest.raises(VerificationError) as caught:
            check_revocation(["abc"], parse_status_list(data, NOW), now=NOW)
        assert caught.value.code == "certificate_revoked"
        assert caught.value.detail["status"] == reported


def test_fetcher_cache_of_another_url_is_ignored(server: StatusServer, tmp_path: Path) -> None:
    cache = tmp_path / "status.json"
    RevocationFetcher(server.url, cache, None, 5.0).get(NOW)
    other = RevocationFetcher("http://127.0.0.1:9/status", cache, None, 0.5)
    assert other.snapshot is None
    other.close()


@pytest.mark.parametrize(
    "record",
    [
        {"body": 5},
        {"body": '{"entries": ' * 100_000},
        {"fetched_at": "yesterday"},
    ],
)
def test_fetcher_a_damaged_cache_is_ignored_at_start(
    server: StatusServer, tmp_path: Path, record: dict[str, object]
) -> None:
    cache = tmp_path / "status.json"
    RevocationFetcher(server.url, cache, None, 5.0).get(NOW)
    cache.write_text(json.dumps({**json.loads(cache.read_text()), **record}))
    restarted = RevocationFetcher(server.url, cache, None, 5.0)  # did not raise
    assert restarted.snapshot is None
    assert restarted.get(NOW) is not None and server.requests == 2
    restarted.close()


def test_fetcher_never_fetched_returns_none(tmp_path: Path) -> None:
    fetcher = RevocationFetcher("http://127.0.0.1:9/status", tmp_path / "s.json", None, 0.5)
    assert fetcher.get(NOW) is None
    fetcher.close()
