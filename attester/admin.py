"""Operator use cases, shared by the admin HTTP API and the ``attester`` CLI.

Every action that changes something writes an audit record (who, what, when, before/after)
in the database, in the same transaction as the change where the change is in the database.
Bearer tokens are configured as SHA-256 digests of high-entropy secrets; a presented token
is hashed and compared with every configured digest in constant time.
"""

from __future__ import annotations

import hashlib
import logging
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from attester.errors import ProblemError
from attester.registry_sync import Prepared, digest, registry_json, reload_registry
from attester.service import AttesterService
from attester.settings import AdminToken, ConfigError, load_settings
from attester.storage import InstanceRecord
from attester.storage.admin import AdminStore, InstanceMissing, TransitionRefused
from attester.storage.status_entries import StatusEntries
from keys.certs import chain_expiry
from keys.store import KeyStore

log = logging.getLogger("attester")

ACTIONS = ("revoke", "suspend", "reinstate")
REASON_MAX = 500  # characters of an operator's reason kept in the audit record
LIMIT_MAX = 1000  # rows one listing returns at most (page with ``after``)


def new_token() -> tuple[str, str]:
    """A fresh admin token (256 random bits) and the SHA-256 hex to put in the settings."""
    token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


def authenticate(tokens: tuple[AdminToken, ...], presented: str) -> str | None:
    """The name of the token that matches ``presented``, else None (constant time per token)."""
    digest = hashlib.sha256(presented.encode("utf-8", "replace")).hexdigest()
    found = None
    for token in tokens:  # no early exit: the time does not tell which entry matched
        if hmac.compare_digest(digest, token.sha256):
            found = token.name
    return found


def instance_json(
    record: InstanceRecord, entries: list[tuple[int, int, int]] | None = None
) -> dict[str, Any]:
    """What an operator sees of an instance (no App Attest receipt or public key bytes)."""
    body: dict[str, Any] = {
        "id": record.id,
        "platform": record.platform,
        "client_id": record.client_id,
        "key_thumbprint": record.key_thumbprint,
        "status": record.status,
        "registered_at": record.registered_at.isoformat(),
        "apple_key_id": record.apple_key_id,
        "apple_environment": record.apple_environment,
        "apple_root": record.apple_root,
        # Apple's fraud metric from the latest exchanged receipt (issue 10), and when
        "apple_risk_metric": record.apple_risk_metric,
        "apple_receipt_refreshed_at": (
            record.apple_receipt_refreshed_at.isoformat()
            if record.apple_receipt_refreshed_at
            else None
        ),
        "android_serials": list(record.android_serials),
        # what the evidence showed at registration: security level, chain class and rule, ...
        "android_facts": record.android_facts,
    }
    if entries is not None:
        body["status_entries"] = [{"list": e[0], "idx": e[1], "status": e[2]} for e in entries]
    return body


def app_json(service: AttesterService, client_id: str) -> dict[str, Any]:
    """An app with its effective policy: every default filled in."""
    app = service.settings.app(client_id)
    assert app is not None
    body = app.model_dump(mode="json")
    body["effective_attestation_lifetime"] = service.issuer.lifetime(app)
    return body


def prepare_registry(
    service: AttesterService, config: Path | None
) -> tuple[dict[str, Any], dict[str, Any], Prepared]:
    """Read the app registry from ``config`` and check it: (before, after, its swap into
    ``service``, not yet done). ``registry_invalid`` when it does not load or breaks a
    platform's rule."""
    before = registry_json(service.settings)
    try:
        updated = reload_registry(service.settings, load_settings(config))
        swaps = []
        for platform in service.platforms.values():
            validate = getattr(platform, "validate_settings", None)
            if validate is not None:
                validate(updated)
            # per-app components (Play Integrity decoders, receipt exchangers) are
            # rebuilt for the new registry before anything is swapped
            prepare = getattr(platform, "with_registry", None)
            if prepare is not None:
                swaps.append(prepare(updated))
    except ConfigError as exc:
        # the message names the field; it is the operator's own file
        raise ProblemError(
            "registry_invalid", "the app registry is invalid", errors=str(exc).splitlines()[:50]
        ) from None

    def apply() -> None:
        # platforms read the registry from their settings too: swap them all together
        service.settings = updated
        for platform in service.platforms.values():
            if hasattr(platform, "settings"):
                platform.settings = updated
        for swap in swaps:
            swap()

    after = registry_json(updated)
    return before, after, Prepared(digest(after), apply)


def follow_registry(service: AttesterService) -> None:
    """Apply a reload another process of this replica published (registry_sync.py)."""
    config = type(service.settings).toml_path
    try:
        service.registry.follow(lambda: prepare_registry(service, config)[2])
    finally:
        service.metrics.registry_behind.set(1 if service.registry.behind else 0)


@dataclass
class Admin:
    service: AttesterService
    store: AdminStore

    @classmethod
    def of(cls, service: AttesterService) -> Admin:
        return cls(service, AdminStore(service.store.engine))

    def list_instances(self, *, limit: int = 100, **filters: Any) -> list[dict[str, Any]]:
        return [instance_json(r) for r in self.store.instances(limit=bounded(limit), **filters)]

    def show_instance(self, instance_id: str) -> dict[str, Any]:
        record = self.store.instance(instance_id)
        if record is None:
            raise ProblemError("instance_not_found", "no instance has this id")
        entries = StatusEntries(self.service.store.engine).entries_for(instance_id)
        return instance_json(record, entries)

    def change_status(
        self, instance_id: str, action: str, *, actor: str, reason: str
    ) -> dict[str, Any]:
        """Revoke, suspend or reinstate an instance and flip its JWTs' status-list entries.

        A refusal is audited too (``instance.<action>.refused``, the problem code in
        ``after``): who tried what on which instance shows, not only what was done.
        """
        if action not in ACTIONS:
            raise ProblemError("invalid_request", "unknown action")
        # the API validates this too; the CLI comes through here only
        if not 1 <= len(reason) <= REASON_MAX or any(ord(c) < 0x20 or ord(c) == 0x7F for c in reason):
            raise ProblemError(
                "invalid_request", f"the reason must be 1 to {REASON_MAX} printable characters"
            )
        try:
            record, lists = self.store.change_status(
                instance_id, action, actor=actor, reason=reason, now=self.service.clock()
            )
        except InstanceMissing:
            problem = ProblemError("instance_not_found", "no instance has this id")
        except TransitionRefused as exc:
            problem = ProblemError(
                "instance_status_conflict",
                "the action does not apply to the instance's status",
                instance_status=exc.status,
            )
        else:
            self.service.status_lists.invalidate(lists)
            return instance_json(record)
        self._refused(
            f"instance.{action}", problem, actor=actor, target=instance_id, reason=reason
        )
        raise problem

    def _refused(
        self,
        action: str,
        problem: ProblemError,
        *,
        actor: str,
        target: str | None = None,
        reason: str | None = None,
    ) -> None:
        """Audit a refused action (``<action>.refused``): its problem code and details.

        The refusal is answered whether or not its record could be written (the database
        may be what refused); a record that could not be written is logged instead.
        """
        after = {"code": problem.code, **problem.extra}
        try:
            self.store.audit(
                actor=actor,
                action=f"{action}.refused",
                now=self.service.clock(),
                target=target[:255] if target is not None else None,
                reason=reason,
                after=after,
            )
        except Exception:
            log.exception("a refused admin action could not be audited: %s by %s", action, actor)

    def apps(self) -> list[dict[str, Any]]:
        return [app_json(self.service, a.client_id) for a in self.service.settings.apps]

    def reload_apps(self, *, actor: str, config: Path | None) -> dict[str, Any]:
        """Re-read the app registry from the configuration file, in every process of this
        replica (attester/registry_sync.py: published first, the others follow within
        about a second). ``registry_unpublished`` (503, nothing changed) if the data
        directory refuses the publication."""
        try:
            # other reloads wait, in any process of the replica
            with self.service.registry.reloading() as publish:
                before, after, prepared = self._prepared(config, actor)
                # the record first: a reload the database cannot record is not applied (it
                # was applied, unrecorded, when the audit came after; found in review). The
                # whole registry before and after: a policy change shows, not only app ids
                self.store.audit(
                    actor=actor, action="apps.reload", now=self.service.clock(), before=before,
                    after=after,
                )
                publish(prepared)
            self.service.metrics.registry_behind.set(0)  # it applies what it published
        except OSError:
            log.exception("the app registry reload could not be published")
            problem = ProblemError(
                "registry_unpublished",
                "the reload could not be published to this replica's processes; nothing changed",
                status=503,
            )
            # (after the apps.reload record: this one says that reload did not happen)
            self._refused("apps.reload", problem, actor=actor)
            raise problem from None
        return {"apps": sorted(after["apps"])}

    def _prepared(
        self, config: Path | None, actor: str
    ) -> tuple[dict[str, Any], dict[str, Any], Prepared]:
        try:
            return prepare_registry(self.service, config)
        except ProblemError as problem:
            self._refused("apps.reload", problem, actor=actor)
            raise

    def keys(self) -> list[dict[str, Any]]:
        self.service.key_store.reload()
        return key_statuses_json(self.service.key_store, self.service.clock())

    def audit(self, *, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.store.audit_records(target=target, limit=bounded(limit))]


def bounded(limit: int) -> int:
    """A page size the database is asked for: 1 .. LIMIT_MAX (a negative LIMIT is an error
    on PostgreSQL and "no limit" on SQLite)."""
    if not 1 <= limit <= LIMIT_MAX:
        raise ProblemError("invalid_request", f"limit must be 1 to {LIMIT_MAX}")
    return limit


def key_statuses_json(key_store: KeyStore, now: datetime) -> list[dict[str, Any]]:
    """Signing keys, their rotation states and certificate expiry, as ``attester keys list``
    and the admin API show them."""
    rows = []
    for s in key_store.statuses(now):
        chain = key_store.chain(s.record.kid)
        expires = chain_expiry(chain) if chain else None
        rows.append(
            {
                "kid": s.record.kid,
                "state": s.state.value,
                "alg": s.record.alg,
                "backend": s.record.backend,
                "created_at": s.record.created_at.isoformat(),
                "activates_at": s.record.activates_at.isoformat(),
                "published_until": s.published_until.isoformat() if s.published_until else None,
                "certificate_expires_at": expires.isoformat() if expires else None,
            }
        )
    return rows

