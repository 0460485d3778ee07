"""A cache of certificate links whose signature already verified (shared by the verifiers)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


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

    It also remembers the *decoded* form of certificates above the leaf (``decoded``),
    keyed by their exact DER: decoding is a pure function of those bytes, and re-reading
    the same intermediates on every request was most of a cached verification's time.
    """

    key = staticmethod(link_key)

    def __init__(self, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, None] = OrderedDict()
        self._decoded: OrderedDict[tuple[str, bytes], Any] = OrderedDict()
        self._lock = threading.Lock()

    def decoded(self, kind: str, der: bytes, decode: Callable[[bytes], T]) -> T:
        """``decode(der)``, memoised per ``kind`` (one per verifier) and exact DER bytes.

        A decoding error propagates and is not remembered.
        """
        key = (kind, der)
        with self._lock:
            if key in self._decoded:
                self._decoded.move_to_end(key)
                value: T = self._decoded[key]
                return value
        value = decode(der)
        with self._lock:
            self._decoded[key] = value
            while len(self._decoded) > self._max_entries:
                self._decoded.popitem(last=False)
        return value

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
