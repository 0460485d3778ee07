"""The attester's use cases: challenge, registration, renewal, JWKS, metadata.

Routes decode requests and call one method here. Only this layer reads the wall clock
(through the injected ``clock``); verifiers get ``now`` as an argument.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from attester import cooperative
from attester.challenges import Challenge, ChallengeService, replayed
from attester.errors import ProblemError
from attester.issuance import AttestationIssuer, IssuedAttestation
from attester.keyproof import parse_instance_jwk, verify_key_proof
from attester.metrics import Metrics, Outcome, service_gauges
from attester.platforms import Platform, VerifiedInstance
from attester.ratelimit import RateLimits, build_rate_limits
from attester.settings import AppConfig, Settings
from attester.signing_keys import build_key_store
from attester.status_list import StatusLists
from attester.storage import (
    AlreadyRegistered,
    ChallengeAlreadyRedeemed,
    InstanceRecord,
    InstanceRevoked,
    IssuedRow,
    Redemption,
    Store,
    create_store,
)
from attester.registry_sync import MARKER as REGISTRY_MARKER
from attester.registry_sync import RegistryFollower, registry_json
from attester.registry_sync import digest as registry_digest
from attester.storage.admin import AdminStore
from attester.storage.group_commit import storage_outage
from attester.storage.purge import PurgeCutoffs, purge
from attester.storage.status_entries import InstanceNotActive, StatusEntries, StatusListFull
from attester.storage.store import Presigned
from keys.jwks import JwksDocument, thumbprint
from keys.store import KeyStore, fsync_directory

log = logging.getLogger("attester")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class AttesterService:
    settings: Settings
    store: Store
    key_store: KeyStore
    challenges: ChallengeService
    issuer: AttestationIssuer
    clock: Clock
    platforms: dict[str, Platform]
    status_lists: StatusLists
    metrics: Metrics
    rate_limits: RateLimits
    # publishes this process's registry reloads and follows the others' (registry_sync.py)
    registry: RegistryFollower

    # -- challenge -------------------------------------------------------------------
    def new_challenge(self) -> dict[str, Any]:
        self.metrics.challenges_issued.inc()
        return {
            "challenge": self.challenges.issue(self.clock()),
            "expires_in": int(self.challenges.lifetime.total_seconds()),
        }

    # -- registration ----------------------------------------------------------------
    def _check_challenge(self, text: object, now: datetime) -> tuple[Challenge, Redemption]:
        """Check a challenge before use, counting a refusal by its problem code."""
        try:
            return self.challenges.check_unused(text, now)
        except ProblemError as exc:
            self.metrics.challenge_redemptions.labels(exc.code).inc()
            raise

    def _redeemed(self, now: datetime) -> None:
        """The challenge's redemption committed with the attempt's other writes."""
        self.challenges.redeemed(now)
        self.metrics.challenge_redemptions.labels("redeemed").inc()

    def _replayed(self) -> ProblemError:
        """Another request redeemed the challenge first (on any replica)."""
        self.metrics.challenge_redemptions.labels("challenge_replayed").inc()
        return replayed()

    def register(
        self,
        *,
        platform: str,
        challenge: object,
        key_proof: object,
        verify: Callable[[Challenge, datetime], VerifiedInstance],
    ) -> dict[str, Any]:
        """Check the challenge, verify evidence and key proof, issue, store.

        Every attempt uses the challenge up: a failed one burns it at once, so evidence
        cannot be retried against it. A successful one commits the redemption, the
        instance and the issued JWT in one transaction (one fsync instead of three, the
        largest cost of a registration after verification); of two concurrent uses of
        one challenge only one commits, and the other's JWT is never handed out.
        The app's rate limit is counted once the evidence named the app (the per-IP limit
        ran before anything else).
        """
        with self.metrics.outcome("registration", platform):
            return self._register(platform, challenge, key_proof, verify)

    def _register(
        self,
        platform: str,
        challenge: object,
        key_proof: object,
        verify: Callable[[Challenge, datetime], VerifiedInstance],
    ) -> dict[str, Any]:
        now = self.clock()
        checked, redemption = self._check_challenge(challenge, now)
        try:
            with self.metrics.timed(
                self.metrics.verification_duration.labels(platform, "registration")
            ):
                verified = verify(checked, now)
            self.rate_limits.hit_app("registration", verified.app.client_id)
            jwk, _ = parse_instance_jwk(verified.instance_jwk)
            self.check_key_proof(key_proof, jwk=jwk, challenge=checked, now=now)
            if verified.online is not None:  # Google's or Apple's services, once all else passed
                verified = cooperative.blocking(verified.online)  # the network: in a thread
        except Exception:
            self._burn(redemption, now)
            raise
        signed: list[IssuedAttestation] = []
        try:
            record = self.store.register_instance(
                platform=verified.platform,
                client_id=verified.app.client_id,
                key_thumbprint=thumbprint(jwk),
                instance_jwk=jwk,
                now=now,
                replace_same_key=verified.replace_same_key,
                redemption=redemption,
                issue=self._signing(verified.app, jwk, now, signed, claims=verified.claims),
                **verified.stored,
            )
        except ChallengeAlreadyRedeemed:
            raise self._replayed() from None
        except ProblemError:  # signing or status allocation failed: nothing was committed
            self._burn(redemption, now)
            raise
        except AlreadyRegistered:
            self._burn(redemption, now)
            raise ProblemError(
                "instance_already_registered", "this instance key is registered already"
            ) from None
        except InstanceRevoked as exc:
            self._burn(redemption, now)
            raise not_active(exc.status) from None
        except Exception as exc:  # our fault (no key, database busy): the attempt uses it up
            if not storage_outage(exc):  # (the database being down, nothing was stored, and
                self._burn(redemption, now)  # a burn would wait for it in vain once more)
            raise
        self._redeemed(now)
        log.info(
            "instance registered",
            extra={"fields": {"platform": record.platform, "client_id": record.client_id}},
        )
        return self._response(signed[0], record, now)

    def _burn(self, redemption: Redemption, now: datetime) -> None:
        try:
            self.challenges.burn(redemption, now)  # a failed attempt uses the challenge up
        except ProblemError:
            pass  # used concurrently by another request: burnt either way
        else:
            self.metrics.challenge_redemptions.labels("redeemed").inc()

    # -- renewal ---------------------------------------------------------------------
    def renew(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """A new JWT for a registered instance: fresh challenge, key proof, platform re-check.

        As for registration, a failed attempt burns the challenge at once and a successful
        one commits the redemption with the issued JWT (one commit).
        """
        with self.metrics.outcome("renewal") as outcome:
            return self._renew(request, outcome)

    def _renew(self, request: Mapping[str, Any], outcome: Outcome) -> dict[str, Any]:
        now = self.clock()
        checked, redemption = self._check_challenge(request.get("challenge"), now)
        try:
            instance, app = self._renewable(request, checked, now, outcome)
        except Exception:
            self._burn(redemption, now)
            raise
        signed: list[IssuedAttestation] = []
        try:
            # recorded before we answer: nothing we hand out is unaccounted for after a crash
            self.store.issue_for(
                instance.id,
                self._signing(app, instance.instance_jwk, now, signed),
                redemption=redemption,
            )
        except ChallengeAlreadyRedeemed:
            raise self._replayed() from None
        except InstanceNotActive as exc:  # revoked or suspended since the checks above
            self._burn(redemption, now)
            raise not_active(exc.status) from None
        except Exception as exc:  # a refusal, or our fault: the attempt uses the challenge up
            if not storage_outage(exc):  # (not while the database is down: as registration)
                self._burn(redemption, now)
            raise
        self._redeemed(now)
        return self._response(signed[0], instance, now)

    def _renewable(
        self, request: Mapping[str, Any], challenge: Challenge, now: datetime, outcome: Outcome
    ) -> tuple[InstanceRecord, AppConfig]:
        """The instance and its app, after every renewal check (platform's included)."""
        key_thumbprint = request.get("key_thumbprint")
        instance = (
            self.store.instance_by_thumbprint(key_thumbprint)
            if isinstance(key_thumbprint, str) and len(key_thumbprint) <= 64
            else None
        )
        if instance is None:
            raise ProblemError("instance_not_found", "no instance is registered with this key")
        outcome.platform = instance.platform
        self.rate_limits.hit_app("renewal", instance.client_id)
        if instance.status != "active":
            raise not_active(instance.status)
        app = self.settings.app(instance.client_id)
        if app is None:
            raise ProblemError("app_not_registered", "the instance's app is no longer configured")
        self.check_key_proof(
            request.get("key_proof"), jwk=instance.instance_jwk, challenge=challenge, now=now
        )
        if now - instance.registered_at > timedelta(seconds=app.max_registration_age):
            raise ProblemError(
                "registration_too_old",
                "the platform registration is too old; register again with fresh evidence",
                max_registration_age=app.max_registration_age,
            )
        platform = self.platforms.get(instance.platform)
        if platform is None:
            raise ProblemError("platform_not_supported", "renewal is not available for this platform")
        with self.metrics.timed(self.metrics.verification_duration.labels(platform.name, "renewal")):
            platform.renew(instance, dict(request), app=app, challenge=challenge, now=now)
        return instance, app

    # -- shared steps ----------------------------------------------------------------
    def check_key_proof(
        self, key_proof: object, *, jwk: dict[str, str], challenge: Challenge, now: datetime
    ) -> None:
        verify_key_proof(
            key_proof,
            jwk=jwk,
            challenge=challenge.text,
            audience=self.settings.issuer,
            now=now,
            max_age=timedelta(seconds=self.settings.key_proof_max_age),
            skew=timedelta(seconds=self.settings.clock_skew),
        )

    def _signing(
        self,
        app: AppConfig,
        instance_jwk: dict[str, Any],
        now: datetime,
        signed: list[IssuedAttestation],
        *,
        claims: Mapping[str, Any] | None = None,
    ) -> Presigned:
        """The step that records the JWT inside the store transaction (the JWT is signed
        here, before it: the transaction may hold the database's one write lock).

        The status-list index is reserved in that transaction (after the instance row
        exists, under its lock), so a registration or renewal is one commit and a JWT is
        handed out only when its row, its index and the challenge redemption all committed.
        The JWT is signed for a random index first; in the rare case that index is taken
        by then, another is reserved and the JWT signed again inside the transaction
        (registrations written together reserve their indexes in one statement: store.py).
        """
        candidate = self.status_lists.candidate() if app.status_list else None
        wanted = None if candidate is None else self.status_lists.claim(*candidate)

        def sign(status: dict[str, Any] | None) -> IssuedAttestation:
            with self.metrics.timed(self.metrics.issuance_duration):
                return self.issuer.issue(
                    app=app, instance_jwk=instance_jwk, now=now, status=status, extra_claims=claims
                )

        presigned = sign(wanted)

        def record(issued: IssuedAttestation) -> IssuedRow:
            signed[:] = [issued]  # a group commit may run this again (group_commit.py)
            return IssuedRow(issued.reference, issued.kid, issued.issued_at, issued.expires_at)

        def issue(connection: Connection, instance_id: str) -> IssuedRow:
            issued = presigned
            if candidate is not None:
                status = self._status_claim(connection, instance_id, app, now, prefer=candidate)
                if status != wanted:
                    issued = sign(status)
            return record(issued)

        return Presigned(
            issue,
            accept=lambda: record(presigned),
            candidate=candidate,
            status_expires_at=None if candidate is None else self._status_expiry(app, now),
        )

    @staticmethod
    def _response(issued: IssuedAttestation, instance: InstanceRecord, now: datetime) -> dict[str, Any]:
        return {
            "client_attestation": issued.jwt,
            "token_type": "oauth-client-attestation+jwt",
            "expires_at": int(issued.expires_at.timestamp()),
            "expires_in": int((issued.expires_at - now).total_seconds()),
            "key_thumbprint": instance.key_thumbprint,
        }

    def _status_claim(
        self,
        connection: Connection,
        instance_id: str,
        app: AppConfig,
        now: datetime,
        *,
        prefer: tuple[int, int],
    ) -> dict[str, Any]:
        """Reserve the JWT's status-list index (``prefer`` first).

        The store calls the issuing step with the instance locked and seen active in the
        same transaction (registration inserts or updates it, renewal checks it), so the
        allocation does not check again."""
        try:
            return self.status_lists.allocate(
                instance_id,
                expires_at=self._status_expiry(app, now),
                connection=connection,
                locked=True,
                prefer=prefer,
            )
        except StatusListFull:
            log.error("status lists full: raise status_list.size or status_list.count")
            raise ProblemError("status_list_full", "no status list index is free", status=503) from None

    def _status_expiry(self, app: AppConfig, now: datetime) -> datetime:
        """When a status entry of a JWT issued ``now`` may go: its exp at the latest (iat may
        be rounded down, never up)."""
        return now + timedelta(seconds=self.issuer.lifetime(app))

    # -- data lifecycle ----------------------------------------------------------------
    def purge(self, *, actor: str = "system:purge") -> dict[str, int]:
        """Delete expired challenges, expired issued-attestation rows and their status
        indexes, and audit records past ``audit_retention_days`` (see storage/purge.py).

        A purge that deleted something is audited (``actor``: the CLI user, or the periodic
        task inside ``serve``), so the trail shows when its own old records went."""
        now = self.clock()
        skew = timedelta(seconds=self.settings.clock_skew)
        # an index is freed only when no AS can still accept the JWT (exp + skew) nor still
        # use a list signed while the index was in use: ttl asks an AS to refetch, but a
        # list token is valid until its own exp, so the margin is the longer of the two
        lists = self.settings.status_list
        margin = skew + timedelta(seconds=max(lists.ttl, lists.lifetime))
        cutoffs = PurgeCutoffs(
            challenges=now - skew,
            attestations=now - margin,
            audit=now - timedelta(days=self.settings.audit_retention_days),
        )
        counts = purge(self.store.engine, cutoffs)
        log.info("purge", extra={"fields": counts})
        if any(counts.values()):
            AdminStore(self.store.engine).audit(
                actor=actor, action="purge", now=now, after={"deleted": counts}
            )
        return counts

    # -- publication -----------------------------------------------------------------
    def jwks(self) -> JwksDocument:
        self.key_store.reload()
        return self.key_store.jwks(self.clock())

    def metadata(self) -> dict[str, Any]:
        base = self.settings.issuer
        platforms = sorted(self.platforms)
        endpoints = {
            "android": f"{base}/v1/android/attestations",
            "apple": f"{base}/v1/apple/attestations",
        }
        return {
            "issuer": base,
            "jwks_uri": self.settings.jwks_uri,
            "challenge_endpoint": f"{base}/v1/challenge",
            "attestation_endpoints": {p: endpoints[p] for p in platforms if p in endpoints},
            "renewal_endpoint": f"{base}/v1/attestations/renew",
            "platforms_supported": platforms,
            "client_attestation_signing_alg_values_supported": ["ES256"],
            "key_proof_signing_alg_values_supported": ["ES256"],
            "instance_key_types_supported": [{"kty": "EC", "crv": "P-256"}],
            "client_attestation_lifetime": self.settings.attestation_lifetime,
        }

    def readiness(self) -> dict[str, str]:
        """Each readiness check and its state: ``ok`` or why not (RUNBOOK, "Health").

        The database answers, an active signing key is loaded, every platform that
        depends on a revocation list has one that is not stale, and this process applies
        the app registry last reloaded (registry_sync.py: ``behind`` when it could not).
        """
        now = self.clock()
        checks: dict[str, str] = {}
        try:
            with self.store.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
            checks["database"] = "ok"
        except Exception:  # readiness reports, it does not raise
            log.warning("readiness: database unreachable", exc_info=True)
            checks["database"] = "unreachable"
        try:
            self.key_store.reload()
            self.key_store.active_signer(now)
            checks["signing_key"] = "ok"
        except Exception:
            log.warning("readiness: no active signing key", exc_info=True)
            checks["signing_key"] = "unavailable"
        checks["app_registry"] = "behind" if self.registry.behind else "ok"
        for name in sorted(self.platforms):
            report = getattr(self.platforms[name], "readiness", None)
            if report is not None:
                checks.update(report(now))
        return checks


def not_active(status: str) -> ProblemError:
    """The refusal for an instance that is not active: suspended (may be reinstated) or revoked."""
    if status == "suspended":
        return ProblemError("instance_suspended", "this instance is suspended")
    return ProblemError("instance_revoked", "this instance is no longer allowed to obtain attestations")


def load_secret(path: Path) -> bytes:
    """Read the challenge MAC secret, creating a random one (0600) on first start."""
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another replica won the race; read its secret below
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
            fsync_directory(path.parent)
    secret = path.read_bytes()
    if len(secret) < 32:
        raise ValueError(f"challenge secret {path} is shorter than 32 bytes")
    return secret


def build_service(
    settings: Settings,
    *,
    clock: Clock = utcnow,
    platforms: dict[str, Platform] | None = None,
    metrics: Metrics | None = None,
) -> AttesterService:
    """Open storage and keys (creating them on first start) and wire the use cases."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = clock()
    store = create_store(settings.resolved_database_url, pool_size=settings.database_pool_size)
    key_store = build_key_store(settings)
    key_store.ensure_initialised(now)
    metrics = metrics or Metrics()
    secret = load_secret(settings.challenge_secret_file or settings.data_dir / "challenge.key")
    challenges = ChallengeService(
        secret=secret,
        store=store,
        lifetime=timedelta(seconds=settings.challenge_lifetime),
        skew=timedelta(seconds=settings.clock_skew),
    )
    issuer = AttestationIssuer(
        key_store=key_store,
        issuer=settings.issuer,
        include_iss=settings.include_iss,
        default_lifetime=settings.attestation_lifetime,
        iat_granularity=settings.iat_granularity,
        include_jku=settings.include_jku,
        include_x5c=settings.include_x5c,
        jwks_uri=settings.jwks_uri,
    )
    status_lists = StatusLists(
        entries=StatusEntries(store.engine),
        key_store=key_store,
        issuer=settings.issuer,
        settings=settings.status_list,
        clock=clock,
        clock_skew=timedelta(seconds=settings.clock_skew),
    )
    status_lists.ensure_lists()
    service = AttesterService(
        settings=settings,
        store=store,
        key_store=key_store,
        challenges=challenges,
        issuer=issuer,
        clock=clock,
        platforms=dict(platforms or {}),
        status_lists=status_lists,
        metrics=metrics,
        rate_limits=build_rate_limits(
            settings, engine=store.engine, clock=lambda: clock().timestamp(), metrics=metrics
        ),
        registry=RegistryFollower(
            settings.data_dir / REGISTRY_MARKER, current=registry_digest(registry_json(settings))
        ),
    )
    metrics.add_live(lambda: service_gauges(service))
    return service
