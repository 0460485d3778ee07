"""Fetch and cache Google's attestation status list (the I/O half of revocation).

https://developer.android.com/privacy-and-security/security-key-attestation#certificate_status
The list is fetched with httpx, kept while its ``Cache-Control: max-age`` says it is
fresh, and written atomically to disk as the last good copy, which is loaded at start
and kept when a fetch fails. Parsing is pure: ``platform_verifiers.android.revocation``.
Whether a snapshot is too old is decided by the verifier (``max_revocation_age``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from attester import cooperative
from platform_verifiers.android.revocation import (
    FUTURE_TOLERANCE,
    RevocationSnapshot,
    parse_status_list,
)

DEFAULT_STATUS_URL = "https://android.googleapis.com/attestation/status"
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)
log = logging.getLogger(__name__)

#: the list as Google serves it is tens of KiB; past this (decompressed) a fetch fails
MAX_LIST_BYTES = 16 * 1024 * 1024
#: refetched no sooner than this, whatever Cache-Control says (no-store, max-age=0, none)
MIN_FRESH = timedelta(seconds=60)
#: refetched no later than this by default: RevocationFetcher's ``max_fresh``
MAX_FRESH = timedelta(hours=24)
RETRY_AFTER_FAILURE = timedelta(seconds=60)


def _fresh_for(headers: httpx.Headers, max_fresh: timedelta) -> timedelta:
    """How long a response stays fresh: its ``max-age`` less its ``Age``, within
    [:data:`MIN_FRESH`, ``max_fresh``]. The ceiling keeps a long max-age from outliving the
    staleness limit, when every registration would fail while Google is healthy."""
    seconds = 0
    cache_control = headers.get("cache-control")
    if cache_control and "no-store" not in cache_control.lower():
        match = _MAX_AGE.search(cache_control)
        if match:
            age = headers.get("age", "0").strip()
            seconds = int(match.group(1)[:12]) - (int(age[:12]) if age.isdigit() else 0)
    ceiling = int(max_fresh.total_seconds())
    floor = min(int(MIN_FRESH.total_seconds()), ceiling)
    return timedelta(seconds=max(min(seconds, ceiling), floor))


class RevocationFetcher:
    """Keeps a ``RevocationSnapshot`` of the status list at ``url`` up to date.

    ``get(now)`` returns the current snapshot (fetching only when the cached one is no
    longer fresh per Cache-Control, within [:data:`MIN_FRESH`, ``max_fresh``]), or None
    when no list was ever obtained. Thread-safe.

    One fetch runs at a time, in a thread of its own. The caller that starts it waits for
    it, but no longer than ``timeout`` and a second; a caller that finds one running
    answers from the copy it holds (whether that copy is too old is the verifier's call),
    and with no copy waits as long. So a slow or stalled list server delays one request a
    minute, not every request. A fetch takes at most ``timeout`` to connect and per read,
    and ``timeout`` in all once its body starts; a body over :data:`MAX_LIST_BYTES` fails.
    """

    def __init__(
        self,
        url: str = DEFAULT_STATUS_URL,
        cache_path: Path | str | None = None,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
        max_fresh: timedelta = MAX_FRESH,
    ) -> None:
        self.url = url
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._client = client or httpx.Client(timeout=timeout)
        self._timeout = timeout
        self._max_fresh = max_fresh
        self._lock = threading.Lock()
        self._fetching: threading.Thread | None = None
        self._snapshot: RevocationSnapshot | None = None
        self._fresh_until: datetime | None = None
        self._retry_at: datetime | None = None
        self._load_from_disk()

    def _load_from_disk(self) -> None:
        if self.cache_path is None or not self.cache_path.exists():
            return
        try:
            stored = json.loads(self.cache_path.read_text())
            if stored["url"] != self.url:  # the setting changed: that list is not this one
                log.warning("ignoring revocation cache %s of another url", self.cache_path)
                return
            fetched_at = datetime.fromisoformat(stored["fetched_at"])
            max_age = min(int(stored.get("max_age", 0)), int(self._max_fresh.total_seconds()))
            self._snapshot = parse_status_list(stored["body"].encode(), fetched_at)
            self._fresh_until = fetched_at + timedelta(seconds=max_age)
        except Exception:  # whatever the file holds, it is only a cache
            self._snapshot = self._fresh_until = None
            log.warning("ignoring unreadable revocation cache %s", self.cache_path, exc_info=True)

    def _store(self, body: bytes, fetched_at: datetime, max_age: timedelta) -> None:
        if self.cache_path is None:
            return
        record = {
            "url": self.url,
            "fetched_at": fetched_at.isoformat(),
            "max_age": int(max_age.total_seconds()),
            "body": body.decode(),  # UTF-8: parse_status_list read it so
        }
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a crash never leaves a half-written last good copy.
        fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=".revocation-")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.cache_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _download(self) -> tuple[bytes, httpx.Headers]:
        deadline = time.monotonic() + self._timeout
        with self._client.stream("GET", self.url, timeout=self._timeout) as response:
            response.raise_for_status()
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_LIST_BYTES:
                    raise ValueError(f"the list is over {MAX_LIST_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the list took over {self._timeout} s")
            return bytes(body), response.headers

    def refresh(self, now: datetime) -> RevocationSnapshot | None:
        """Fetch now; on any failure keep (and return) the last good snapshot."""
        try:
            body, headers = self._download()
            snapshot = parse_status_list(body, now)
        except Exception as exc:  # whatever went wrong, the last good copy stays
            log.warning(
                "revocation list fetch failed (%s: %s); keeping last good copy",
                type(exc).__name__, exc,
            )
            # back off, so an outage does not make every request wait for a timeout
            self._retry_at = now + RETRY_AFTER_FAILURE
            return self._snapshot
        max_age = _fresh_for(headers, self._max_fresh)
        self._snapshot, self._fresh_until = snapshot, now + max_age
        try:
            self._store(body, now, max_age)
        except OSError as exc:
            log.warning("could not write revocation cache: %s", exc)
        return snapshot

    @property
    def snapshot(self) -> RevocationSnapshot | None:
        """The snapshot held now, without fetching (for metrics)."""
        return self._snapshot

    def get(self, now: datetime) -> RevocationSnapshot | None:
        """The current snapshot, refetched only once the cached one is stale.

        A request on the event loop (cooperative.py) reads a fresh snapshot without the
        lock and waits for a fetch in a thread: the loop must not wait."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if cooperative.active():
            return self._fresh(now) or cooperative.blocking(self._get, now)
        return self._get(now)

    def _fresh(self, now: datetime) -> RevocationSnapshot | None:
        """The snapshot if it is still fresh at ``now`` (read without the lock: a refresh
        replaces both attributes, and either pairing of them is a valid answer). A copy
        fetched after ``now`` is not: the clock was wrong then, or is now."""
        snapshot, fresh_until = self._snapshot, self._fresh_until
        if snapshot is None or fresh_until is None:
            return None
        fresh = snapshot.fetched_at - FUTURE_TOLERANCE <= now < fresh_until
        return snapshot if fresh else None

    def _get(self, now: datetime) -> RevocationSnapshot | None:
        with self._lock:
            fresh = self._fresh(now)
            if fresh is not None:
                return fresh
            retry_at = self._retry_at
            if retry_at is not None and now < retry_at <= now + RETRY_AFTER_FAILURE:
                return self._snapshot
            fetching = self._fetching
            if fetching is None:
                fetching = self._fetching = threading.Thread(
                    target=self._fetch, args=(now,), name="revocation-fetch", daemon=True
                )
                fetching.start()
            elif self._snapshot is not None:
                return self._snapshot  # a fetch is under way: do not wait for it
        fetching.join(self._timeout + 1)
        return self._snapshot

    def _fetch(self, now: datetime) -> None:
        try:
            self.refresh(now)
        finally:
            with self._lock:
                self._fetching = None

    def close(self) -> None:
        self._client.close()
