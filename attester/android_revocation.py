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
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from attester import cooperative
from platform_verifiers.android.revocation import RevocationSnapshot, parse_status_list
from platform_verifiers.errors import VerificationError

DEFAULT_STATUS_URL = "https://android.googleapis.com/attestation/status"
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)
log = logging.getLogger(__name__)


def _max_age(cache_control: str | None) -> timedelta:
    if cache_control and "no-store" not in cache_control.lower():
        match = _MAX_AGE.search(cache_control)
        if match:
            return timedelta(seconds=int(match.group(1)))
    return timedelta(0)


RETRY_AFTER_FAILURE = timedelta(seconds=60)


class RevocationFetcher:
    """Keeps a ``RevocationSnapshot`` of the status list at ``url`` up to date.

    ``get(now)`` returns the current snapshot (fetching only when the cached one is no
    longer fresh per Cache-Control), or None when no list was ever obtained. Thread-safe.
    """

    def __init__(
        self,
        url: str = DEFAULT_STATUS_URL,
        cache_path: Path | str | None = None,
        client: httpx.Client | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._client = client or httpx.Client(timeout=timeout)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._snapshot: RevocationSnapshot | None = None
        self._fresh_until: datetime | None = None
        self._retry_at: datetime | None = None
        self._load_from_disk()

    def _load_from_disk(self) -> None:
        if self.cache_path is None or not self.cache_path.exists():
            return
        try:
            stored = json.loads(self.cache_path.read_text())
            fetched_at = datetime.fromisoformat(stored["fetched_at"])
            self._snapshot = parse_status_list(stored["body"].encode(), fetched_at)
            self._fresh_until = fetched_at + timedelta(seconds=int(stored.get("max_age", 0)))
        except (OSError, ValueError, KeyError, TypeError, VerificationError):
            log.warning("ignoring unreadable revocation cache %s", self.cache_path)

    def _store(self, body: bytes, fetched_at: datetime, max_age: timedelta) -> None:
        if self.cache_path is None:
            return
        record = {
            "url": self.url,
            "fetched_at": fetched_at.isoformat(),
            "max_age": int(max_age.total_seconds()),
            "body": body.decode(),
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

    def refresh(self, now: datetime) -> RevocationSnapshot | None:
        """Fetch now; on any failure keep (and return) the last good snapshot."""
        try:
            response = self._client.get(self.url, timeout=self._timeout)
            response.raise_for_status()
            snapshot = parse_status_list(response.content, now)
        except (httpx.HTTPError, VerificationError) as exc:
            log.warning("revocation list fetch failed (%s); keeping last good copy", exc)
            # back off, so an outage does not make every request wait for a timeout
            self._retry_at = now + RETRY_AFTER_FAILURE
            return self._snapshot
        max_age = _max_age(response.headers.get("cache-control"))
        self._snapshot, self._fresh_until = snapshot, now + max_age
        try:
            self._store(response.content, now, max_age)
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
        lock and fetches in a thread: the lock is held while fetching, and the loop must
        neither wait for it nor suspend holding it."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if cooperative.active():
            return self._fresh(now) or cooperative.blocking(self._get, now)
        return self._get(now)

    def _fresh(self, now: datetime) -> RevocationSnapshot | None:
        """The snapshot if it is still fresh at ``now`` (read without the lock: a refresh
        replaces both attributes, and either pairing of them is a valid answer)."""
        snapshot, fresh_until = self._snapshot, self._fresh_until
        return snapshot if snapshot is not None and fresh_until and now < fresh_until else None

    def _get(self, now: datetime) -> RevocationSnapshot | None:
        with self._lock:
            fresh = self._fresh(now)
            if fresh is not None:
                return fresh
            if self._retry_at is not None and now < self._retry_at:
                return self._snapshot
            return self.refresh(now)

    def close(self) -> None:
        self._client.close()
