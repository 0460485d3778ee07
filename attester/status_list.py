"""Token Status List (draft-ietf-oauth-status-list-20): index allocation and the signed list.

Each issued Client Attestation JWT gets a fresh random index (privacy: indexes are not
sequential, so they do not correlate JWTs) and carries
``"status": {"status_list": {"idx": <int>, "uri": "<issuer>/statuslists/<n>"}}``.
The Status List Token at that uri is a JWT, ``typ`` ``statuslist+jwt``, signed with the
attester's active key, with claims ``sub`` (= the uri), ``iat``, ``exp``, ``ttl`` and
``status_list: {bits: 2, lst}``; ``lst`` is base64url of the zlib (RFC 1950, DEFLATE)
compressed byte array in which status ``i`` sits in byte ``i // 4`` at bit ``2 * (i % 4)``,
least significant bits first (section 4.1). Two bits so that SUSPENDED (2) is expressible.

The signed bytes are cached and served as they are (an endpoint meant for thousands of
requests per second); they are rebuilt when a status changes (a local change at once; a
change on another replica within ``check_interval``, through a version counter in the
database) or when half of the token's lifetime has passed.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from attester.issuance import sign_compact
from attester.settings import ConfigError, StatusListSettings
from attester.storage.status_entries import StatusEntries
from keys.jwks import b64url
from keys.store import KeyStore

TYP = "statuslist+jwt"
MEDIA_TYPE = "application/statuslist+jwt"
BITS = 2
PATH = "/statuslists/{list_id}"


def encode_statuses(statuses: Mapping[int, int], *, size: int, bits: int = BITS) -> str:
    """``lst``: the statuses packed LSB first, zlib-compressed, base64url without padding."""
    per_byte = 8 // bits
    packed = bytearray((size + per_byte - 1) // per_byte)
    for idx, value in statuses.items():
        packed[idx // per_byte] |= value << (bits * (idx % per_byte))
    return b64url(zlib.compress(bytes(packed), 9))


@dataclass(frozen=True)
class SignedList:
    token: bytes
    etag: str
    version: int
    refresh_at: datetime  # re-sign from here on (half of the lifetime)
    checked: float  # monotonic time of the last version check


class StatusLists:
    """Allocates indexes and publishes the Status List Tokens of one attester."""

    def __init__(
        self,
        *,
        entries: StatusEntries,
        key_store: KeyStore,
        issuer: str,
        settings: StatusListSettings,
        clock: Callable[[], datetime],
        clock_skew: timedelta = timedelta(0),
    ) -> None:
        self._entries = entries
        self._skew = clock_skew
        self._keys = key_store
        self._issuer = issuer
        self._settings = settings
        self._clock = clock
        self._cache: dict[int, SignedList] = {}
        self._lock = threading.Lock()

    def ensure_lists(self) -> None:
        """Create the lists' version rows; refuse settings that would drop live entries.

        Lowering ``status_list.count`` or ``size`` below an index still held (by a JWT that
        may be alive) would make its list 404 or too short for that index: a verifier
        would reject a valid JWT, or a revocation would no longer be published.
        """
        max_list, max_idx = self._entries.extent()
        if max_list >= self._settings.count or max_idx >= self._settings.size:
            raise ConfigError(
                f"status_list.count = {self._settings.count} / status_list.size = "
                f"{self._settings.size} are too small for stored entries (list {max_list}, "
                f"index {max_idx}): keep them until those JWTs expired and were purged"
            )
        self._entries.ensure_lists(self._settings.count)

    def uri(self, list_id: int) -> str:
        return self._issuer + PATH.format(list_id=list_id)

    def allocate(
        self,
        instance_id: str,
        *,
        expires_at: datetime,
        connection: Connection | None = None,
        locked: bool = False,
        prefer: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """Reserve an index for a JWT expiring at ``expires_at``; return its ``status`` claim.

        With ``connection``, inside its transaction (the one that records the JWT). Raises
        ``InstanceNotActive`` when the instance is revoked or suspended meanwhile (unless
        ``locked``: see :meth:`StatusEntries.allocate_in`, as for ``prefer``).
        """
        sizes = {"lists": self._settings.count, "size": self._settings.size}
        if connection is None:
            list_id, idx = self._entries.allocate(instance_id, expires_at=expires_at, **sizes)
        else:
            list_id, idx = self._entries.allocate_in(
                connection, instance_id, expires_at=expires_at, locked=locked, prefer=prefer, **sizes
            )
        return self.claim(list_id, idx)

    def claim(self, list_id: int, idx: int) -> dict[str, Any]:
        """The JWT's ``status`` claim for index ``idx`` of list ``list_id``."""
        return {"status_list": {"idx": idx, "uri": self.uri(list_id)}}

    def candidate(self) -> tuple[int, int]:
        """A random ``(list_id, idx)`` to sign with before it is reserved (``prefer``)."""
        return secrets.randbelow(self._settings.count), secrets.randbelow(self._settings.size)

    def invalidate(self, list_ids: list[int]) -> None:
        """A status changed here: rebuild these lists on their next request."""
        with self._lock:
            for list_id in list_ids:
                self._cache.pop(list_id, None)

    def fresh(self, list_id: int) -> SignedList | None:
        """The cached token when it needs neither a database check nor re-signing (no I/O)."""
        cached = self._cache.get(list_id)
        if cached is None or self._clock() >= cached.refresh_at:
            return None
        if time.monotonic() - cached.checked >= self._settings.check_interval:
            return None
        return cached

    def token(self, list_id: int) -> SignedList | None:
        """The signed Status List Token of list ``list_id`` (None for an unknown list)."""
        if not 0 <= list_id < self._settings.count:
            return None
        cached = self.fresh(list_id)
        if cached is not None:
            return cached
        now = self._clock()
        with self._lock:
            rebuilt = self.fresh(list_id)  # another thread may have just done it
            if rebuilt is not None:
                return rebuilt
            cached = self._cache.get(list_id)
            version = self._entries.version(list_id)
            if cached is not None and now < cached.refresh_at and cached.version == version:
                cached = SignedList(
                    cached.token, cached.etag, version, cached.refresh_at, time.monotonic()
                )
            else:
                cached = self._build(list_id, version, now)
            self._cache[list_id] = cached
            return cached

    def _build(self, list_id: int, version: int, now: datetime) -> SignedList:
        # a JWT past exp + skew is refused by every AS anyway: its bit is left out, so that no
        # list signed from then on describes its index, which the purge frees once the last
        # list that did has expired (service.purge); a list that kept the bit could mark the
        # index's next JWT revoked (found in review)
        statuses = self._entries.statuses(list_id, alive_after=now - self._skew)
        iat = int(now.timestamp())
        lifetime = self._settings.lifetime
        claims = {
            "sub": self.uri(list_id),
            "iat": iat,
            "exp": iat + lifetime,
            "ttl": self._settings.ttl,
            "status_list": {
                "bits": BITS,
                "lst": encode_statuses(statuses, size=self._settings.size),
            },
        }
        self._keys.reload()
        signer = self._keys.active_signer(now)
        header = {"alg": signer.alg, "typ": TYP, "kid": signer.kid}
        token = sign_compact(signer, header, claims).encode("ascii")
        etag = '"' + hashlib.sha256(token).hexdigest()[:32] + '"'
        refresh_at = now + timedelta(seconds=lifetime // 2)
        return SignedList(token, etag, version, refresh_at, time.monotonic())
