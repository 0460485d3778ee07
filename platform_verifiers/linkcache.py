"""A cache of certificate links whose signature already verified (shared by the verifiers)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict


def link_key(child_der: bytes, issuer_der: bytes) -> bytes:
    """Cache key for one link; the length prefix keeps (a‖b) and (a'‖b') from colliding."""
    return hashlib.sha256(len(child_der).to_bytes(4, "big") + child_der + issuer_der).digest()


class VerifiedLinkCache:
    """A bounded, thread-safe LRU set of issuer→child links whose signature verified.

    Many devices share intermediates, so a service sees the same upper links again and
    again. Keys are SHA-256 over both certificates' DER, so a hit means "these exact bytes
    were verified before"; a signature is a pure function of those bytes, so skipping the
    re-check is safe. Validity at ``now`` is never cached, and verifiers never cache the
    leaf link (every leaf is new). The caller owns the instance and injects it.
    """

    key = staticmethod(link_key)

    def __init__(self, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: bytes) -> bool:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return True
            return False

    def add(self, key: bytes) -> None:
        with self._lock:
            self._entries[key] = None
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
