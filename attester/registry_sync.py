"""An app registry reload reaches every process of a replica, not only the one that ran it.

``POST /admin/v1/apps/reload`` runs in one process: a worker of ``serve --workers N`` when
the admin API shares the public port, the parent (which serves no traffic) when it has a
port of its own. Each process holds its own registry, so before this the others kept the
one they started with until a restart.

The process that reloads now publishes it: it replaces a marker file in the data directory
(:data:`MARKER`, written to a temporary name and renamed over the old one, so each
publication is a new file). Every process serving requests looks at the marker at most
once a second (one ``stat``, on a request; as :meth:`keys.store.KeyStore.reload` does for
``keys.json``) and, when it changed, reads the registry from the configuration file again
and applies it the way the reload did (its checks included). So within about a second of
a reload every process of the replica uses the new registry; other replicas have their
own data directory and their own reload (RUNBOOK.md).

A process whose re-read fails (the file was edited again since, into something invalid)
keeps its registry and logs an error; the next successful reload reaches it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

MARKER = "registry.reloaded"

log = logging.getLogger("attester")


class RegistryFollower:
    """Publishes this process's reloads and tells whether another process published one."""

    def __init__(
        self, path: Path, *, interval: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        # what this process has applied: the registry it started with is the file's latest
        self._seen = self._stamp()
        self._checked_at = clock()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns  # a new file for every publication

    def published(self) -> None:
        """This process reloaded: tell the others, and do not follow its own publication."""
        with self._lock:
            temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            temporary.write_bytes(b"")
            os.replace(temporary, self.path)
            self._seen = self._stamp()

    def due(self) -> bool:
        """Whether a look at the marker is due (cheap: called on every request)."""
        return self._clock() - self._checked_at >= self._interval

    def follow(self, apply: Callable[[], None]) -> bool:
        """``apply()`` if another process published a reload since this one last looked.

        One caller at a time: concurrent requests that find a look due apply it once.
        A failed ``apply`` is logged and not retried until the next publication.
        """
        with self._lock:
            self._checked_at = self._clock()
            try:
                stamp = self._stamp()
            except OSError:  # not readable (permissions): this process cannot follow
                log.exception("the app registry's reload marker %s cannot be read", self.path)
                return False
            if stamp == self._seen:
                return False
            self._seen = stamp
            try:
                apply()
            except Exception:
                log.exception(
                    "the app registry reloaded in another process could not be applied here; "
                    "this process keeps its registry (fix the configuration and reload again)"
                )
                return False
            log.info("app registry reloaded, as published by another process")
            return True
