"""Status list parsing (pure) and the fetcher against a real loopback HTTP server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from attester.android_revocation import RevocationFetcher
from platform_verifiers.android import parse_status_list
from platform_verifiers.errors import VerificationError

from .conftest import VECTORS
from .status_server import LIST_B, StatusServer

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


def test_fetcher_no_store_refetches_every_time(server: StatusServer) -> None:
    server.cache_control = "no-store"
    fetcher = RevocationFetcher(server.url, None, None, 5.0)
    fetcher.get(NOW)
    fetcher.get(NOW)
    assert server.requests == 2
    fetcher.close()


def test_fetcher_never_fetched_returns_none(tmp_path: Path) -> None:
    fetcher = RevocationFetcher("http://127.0.0.1:9/status", tmp_path / "s.json", None, 0.5)
    assert fetcher.get(NOW) is None
    fetcher.close()
