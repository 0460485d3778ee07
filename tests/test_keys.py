"""Signing keys: thumbprint kids, 0600 files, rotation states, JWKS publication."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jwcrypto import jwk

from keys.store import KeyState, KeyStore, KeyStoreError

T0 = datetime(2026, 11, 1, tzinfo=UTC)
RETENTION = timedelta(hours=24, seconds=60)
DELAY = timedelta(seconds=300)


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    ks = KeyStore(tmp_path / "keys", retention=RETENTION)
    ks.ensure_initialised(T0)
    return ks


def test_key_store_first_start_creates_private_files_0600(store: KeyStore) -> None:
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    files = list(store.directory.glob("*.pem")) + [store.directory / "keys.json"]
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)


def test_key_store_kid_is_rfc7638_thumbprint(store: KeyStore) -> None:
    (published,) = json.loads(store.jwks(T0).body)["keys"]
    assert published["kid"] == jwk.JWK(**published).thumbprint()
    assert published["use"] == "sig" and published["alg"] == "ES256"


def test_key_store_jwks_never_has_private_members(store: KeyStore) -> None:
    store.rotate(T0, delay=DELAY)
    for key in json.loads(store.jwks(T0).body)["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & key.keys()


def test_key_store_rotation_publishes_next_before_it_signs(store: KeyStore) -> None:
    old = store.active_signer(T0).kid
    new = store.rotate(T0, delay=DELAY).kid
    published = {k["kid"] for k in json.loads(store.jwks(T0).body)["keys"]}
    assert published == {old, new}
    assert store.active_signer(T0 + DELAY - timedelta(seconds=1)).kid == old
    assert store.active_signer(T0 + DELAY).kid == new
    states = {s.record.kid: s.state for s in store.statuses(T0 + DELAY)}
    assert states == {old: KeyState.RETIRED, new: KeyState.ACTIVE}


def test_key_store_retired_key_published_until_its_jwts_expire(store: KeyStore) -> None:
    old = store.active_signer(T0).kid
    store.rotate(T0, delay=DELAY)
    still = T0 + DELAY + RETENTION - timedelta(seconds=1)
    assert old in {k["kid"] for k in json.loads(store.jwks(still).body)["keys"]}
    gone = T0 + DELAY + RETENTION
    assert old not in {k["kid"] for k in json.loads(store.jwks(gone).body)["keys"]}
    assert {s.record.kid: s.state for s in store.statuses(gone)}[old] is KeyState.EXPIRED


def test_key_store_second_rotation_while_next_pending_refused(store: KeyStore) -> None:
    store.rotate(T0, delay=DELAY)
    with pytest.raises(KeyStoreError):
        store.rotate(T0 + timedelta(seconds=10), delay=DELAY)


def test_key_store_other_process_rotation_is_seen(store: KeyStore, tmp_path: Path) -> None:
    other = KeyStore(store.directory, retention=RETENTION)
    other.reload(force=True)
    new = other.rotate(T0, delay=DELAY).kid
    os.utime(store.directory / "keys.json", ns=(1, 2))  # mtime change, whatever the clock
    store.reload()
    assert new in {k["kid"] for k in json.loads(store.jwks(T0).body)["keys"]}


def test_key_store_group_readable_key_refused(store: KeyStore) -> None:
    pem = next(store.directory.glob("*.pem"))
    pem.chmod(0o644)
    fresh = KeyStore(store.directory, retention=RETENTION)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        fresh.reload(force=True)


def test_key_store_etag_changes_with_contents(store: KeyStore) -> None:
    before = store.jwks(T0).etag
    store.rotate(T0, delay=DELAY)
    assert store.jwks(T0).etag != before
    assert store.jwks(T0).etag == store.jwks(T0).etag


@pytest.mark.parametrize("skew", [0, 60])
def test_key_store_no_instant_without_verifiable_signer(store: KeyStore, skew: int) -> None:
    """An AS holding a JWKS fetched up to max-age ago can verify every JWT signed now,
    even by a replica whose clock runs ``skew`` seconds ahead (delay = max-age + skew)."""
    max_age = timedelta(seconds=300)
    ahead = timedelta(seconds=skew)
    rotated = T0 + timedelta(days=1)
    store.rotate(rotated, delay=max_age + ahead)
    step = timedelta(seconds=15)
    t = rotated - 2 * max_age  # from well before the rotation, through it, to well after
    while t < rotated + 4 * max_age:
        signer = store.active_signer(t + ahead)  # the fast replica signs
        for age in (timedelta(0), max_age / 2, max_age):  # any JWKS the AS may still hold
            cached = {k["kid"] for k in json.loads(store.jwks(t - age).body)["keys"]}
            assert signer.kid in cached, (t, age)
        t += step


def test_key_store_delay_shorter_than_max_age_would_break(store: KeyStore) -> None:
    """The guarantee above is not vacuous: a too-short delay is caught by the same check."""
    max_age = timedelta(seconds=300)
    store.rotate(T0, delay=max_age / 2)
    t = T0 + max_age / 2
    signer = store.active_signer(t)
    cached = {k["kid"] for k in json.loads(store.jwks(t - max_age).body)["keys"]}
    assert signer.kid not in cached


@pytest.mark.parametrize(("list_lifetime", "kept_hours"), [(3600, 24), (3 * 86400, 72)])
def test_settings_key_store_keeps_a_retired_key_past_what_it_signed(
    make_settings: Any, list_lifetime: int, kept_hours: int
) -> None:
    # a Status List Token may live up to 7 days: a retired key left the JWKS 24 h after its
    # supersession while lists it signed were still valid (found in review)
    from attester.signing_keys import build_key_store

    settings = make_settings(status_list={"lifetime": list_lifetime})
    store = build_key_store(settings)
    assert store.retention == timedelta(hours=kept_hours, seconds=settings.clock_skew)
