"""An app registry reload reaches every process of a replica, not only the one that ran it.

``POST /admin/v1/apps/reload`` runs in one process: a worker of ``serve --workers N`` when
the admin API shares the public port, the parent (which serves no traffic) when it has a
port of its own. Each process holds its own registry, so before this the others kept the
one they started with until a restart.

The process that reloads publishes what it reloaded: before applying it, it replaces a
marker file in the data directory (:data:`MARKER`: a temporary file renamed over the old
one) holding the SHA-256 of the registry it read and checked (:func:`digest`). Reloads are
serialised across processes by a lock file next to the marker, from reading the file to
publishing, so the marker always names the newest reload. Every process serving requests
reads the marker at most once a second (one request claims the look; the read, and any
re-read of the configuration, in a thread) and, when it names a registry other than its
own, reads the configuration file, checks it as the reload did and applies it **only if it
is the registry named**: a file edited since the reload is not applied unaudited (logged;
reload again). A process that cannot follow (the file unreadable for a moment, or edited
since) keeps its registry, logs it once per publication, and tries again at its next look.
A process that starts while a reload is published compares the marker with the registry it
started with, so it cannot miss it. A process that cannot follow is *behind*
(:attr:`RegistryFollower.behind`): it applies a policy the operator replaced, and its
``/readyz`` answers 503 with ``app_registry`` ``behind`` until a reload of the file as it
is reaches it. Readiness is the answering worker's: with ``--workers N`` a probe sees it
about once in N, so alert on the error log line or on the gauge
``attester_app_registry_behind``, the maximum over the workers (RUNBOOK). A process started
after the file was edited runs the file: the marker of a reload from before it started
does not make it behind (one published after it started, and the file then set back, does).

Other replicas follow only if they share the data directory (``deploy/compose.yaml``'s do);
otherwise each has its own reload (RUNBOOK.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attester.settings import Settings

MARKER = "registry.reloaded"

log = logging.getLogger("attester")


def registry_json(settings: Settings) -> dict[str, Any]:
    """The app registry as the audit trail records it: every app's configured policy."""
    return {"apps": {a.client_id: a.model_dump(mode="json") for a in settings.apps}}


def reload_registry(current: Settings, fresh: Settings) -> Settings:
    """``current`` with the app registry of ``fresh``; nothing else changes without a restart."""
    return current.model_copy(update={"apps": fresh.apps})


def digest(registry: Mapping[str, Any]) -> str:
    """SHA-256 of a registry's JSON (``admin.registry_json``), keys sorted."""
    return hashlib.sha256(json.dumps(registry, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Prepared:
    """A registry read from the configuration and checked, not yet applied."""

    digest: str
    apply: Callable[[], None]


class RegistryFollower:
    """Publishes this process's reloads and follows the other processes' ones."""

    def __init__(
        self,
        path: Path,
        *,
        current: str,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()  # one reload or follow at a time in this process
        self._applied = current  # the digest of the registry this process uses
        self._checked_at = float("-inf")  # the first request looks: a reload may be newer
        self._noted: str | None = None  # the publication a failure was logged for
        self._behind = False  # a newer registry is published and could not be applied here
        # the marker as this process starts (its configuration read just before): a reload
        # from before the start, the file edited since, does not make it behind
        self._before_start = self.published()

    @property
    def applied(self) -> str:
        return self._applied

    @property
    def behind(self) -> bool:
        """Whether, at the last look, the marker named a registry this process could not
        apply (it keeps serving its own until it can)."""
        return self._behind

    @contextmanager
    def reloading(self) -> Iterator[Callable[[Prepared], None]]:
        """Around a reload: other reloads (any process) wait; ``publish(prepared)`` then
        names the registry in the marker and applies it here.

        Published before it is applied: if the marker cannot be written, the reload
        raises ``OSError`` with nothing changed anywhere.
        """
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._lock, open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:

                def publish(prepared: Prepared) -> None:
                    self._write(prepared.digest)
                    prepared.apply()
                    self._applied = prepared.digest
                    self._behind = False

                yield publish
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self, registry_digest: str) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump({"digest": registry_digest}, out)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def published(self) -> str | None:
        """The digest the marker names (None: no reload published, or unreadable)."""
        try:
            value = json.loads(self.path.read_text()).get("digest")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, AttributeError):
            log.exception("the app registry's reload marker %s cannot be read", self.path)
            return None
        return value if isinstance(value, str) else None

    def claim(self) -> bool:
        """Whether this caller is to look at the marker now: at most once an interval, and
        one caller (called on the event loop, where one request at a time runs)."""
        now = self._clock()
        if now - self._checked_at < self._interval:
            return False
        self._checked_at = now
        return True

    def follow(self, prepare: Callable[[], Prepared]) -> bool:
        """Apply the registry the marker names, if it is not this process's: ``prepare()``
        reads and checks the configuration; applied only if it is the registry named."""
        with self._lock:
            wanted = self.published()
            if wanted is None:  # nothing published, or the marker unreadable (logged): as before
                return False
            if wanted == self._applied:
                self._behind = False
                return False
            try:
                prepared = prepare()
            except Exception as exc:
                self._note(wanted, "cannot be read or is invalid here: %s", _why(exc))
                return False
            if prepared.digest == self._applied and wanted == self._before_start:
                # a reload from before this process started, the file edited since (a rolling
                # restart): the process runs the file as it is; nothing to apply, not behind.
                # (A reload after it started, the file then set back: behind, below.)
                self._behind = False
                return False
            if prepared.digest != wanted:
                self._note(wanted, "is not the configuration file's any more (edited since)%s", "")
                return False
            prepared.apply()
            self._applied = wanted
            self._noted = None
            self._behind = False
            log.info("app registry reloaded, as published by another process")
            return True

    def _note(self, wanted: str, why: str, detail: str) -> None:
        self._behind = True
        if self._noted != wanted:  # once per publication; tried again at every look
            self._noted = wanted
            log.error(
                "the app registry another process reloaded " + why + "; this process keeps "
                "its registry and tries again (reload again once the file is right)",
                detail,
            )


def _why(exc: Exception) -> str:
    errors = getattr(exc, "extra", {}).get("errors")
    return "; ".join(errors[:20]) if isinstance(errors, list) else type(exc).__name__
