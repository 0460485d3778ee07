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

from attester.challenges import Challenge, ChallengeService
from attester.errors import ProblemError
from attester.issuance import AttestationIssuer, IssuedAttestation
from attester.keyproof import parse_instance_jwk, verify_key_proof
from attester.metrics import Metrics, Outcome, service_gauges
from attester.platforms import Platform, VerifiedInstance
from attester.ratelimit import RateLimits, build_rate_limits
from attester.settings import MAX_ATTESTATION_LIFETIME, AppConfig, Settings
from attester.storage import (
    AlreadyRegistered,
    InstanceRecord,
    InstanceRevoked,
    Store,
    create_store,
)
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
    metrics: Metrics
    rate_limits: RateLimits

    # -- challenge -------------------------------------------------------------------
    def new_challenge(self) -> dict[str, Any]:
        self.metrics.challenges_issued.inc()
        return {
            "challenge": self.challenges.issue(self.clock()),
            "expires_in": int(self.challenges.lifetime.total_seconds()),
        }

    # -- registration ----------------------------------------------------------------
    def redeem_challenge(self, text: object, now: datetime) -> Challenge:
        """Redeem a challenge, counting the outcome (``redeemed`` or the problem code)."""
        try:
            redeemed = self.challenges.redeem(text, now)
        except ProblemError as exc:
            self.metrics.challenge_redemptions.labels(exc.code).inc()
            raise
        self.metrics.challenge_redemptions.labels("redeemed").inc()
        return redeemed

    def register(
        self,
        *,
        platform: str,
        challenge: object,
        key_proof: object,
        verify: Callable[[Challenge, datetime], VerifiedInstance],
    ) -> dict[str, Any]:
        """Redeem the challenge, verify evidence and key proof, store, issue.

        The challenge is redeemed first, so a failed attempt burns it too: evidence
        cannot be retried against the same challenge. The app's rate limit is counted
        once the evidence named the app (the per-IP limit ran before anything else).
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
        redeemed = self.redeem_challenge(challenge, now)
        with self.metrics.timed(self.metrics.verification_duration.labels(platform, "registration")):
            verified = verify(redeemed, now)
        self.rate_limits.hit_app("registration", verified.app.client_id)
        jwk, _ = parse_instance_jwk(verified.instance_jwk)
        self.check_key_proof(key_proof, jwk=jwk, challenge=redeemed, now=now)
        try:
            record = self.store.register_instance(
                platform=verified.platform,
                client_id=verified.app.client_id,
                key_thumbprint=thumbprint(jwk),
                instance_jwk=jwk,
                now=now,
                replace_same_key=verified.replace_same_key,
                **verified.stored,
            )
        except AlreadyRegistered:
            raise ProblemError(
                "instance_already_registered", "this instance key is registered already"
            ) from None
        except InstanceRevoked:
            raise ProblemError("instance_revoked", "this instance key has been revoked") from None
        log.info(
            "instance registered",
            extra={"fields": {"platform": record.platform, "client_id": record.client_id}},
        )
        return self._issue(record, verified.app, now)

    # -- renewal ---------------------------------------------------------------------
    def renew(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """A new JWT for a registered instance: fresh challenge, key proof, platform re-check."""
        with self.metrics.outcome("renewal") as outcome:
            return self._renew(request, outcome)

    def _renew(self, request: Mapping[str, Any], outcome: Outcome) -> dict[str, Any]:
        now = self.clock()
        key_thumbprint = request.get("key_thumbprint")
        redeemed = self.redeem_challenge(request.get("challenge"), now)
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
            raise ProblemError("instance_revoked", "this instance is no longer allowed to renew")
        app = self.settings.app(instance.client_id)
        if app is None:
            raise ProblemError("app_not_registered", "the instance's app is no longer configured")
        self.check_key_proof(
            request.get("key_proof"), jwk=instance.instance_jwk, challenge=redeemed, now=now
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
            platform.renew(instance, dict(request), app=app, challenge=redeemed, now=now)
        return self._issue(instance, app, now)

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

    def _issue(self, instance: InstanceRecord, app: AppConfig, now: datetime) -> dict[str, Any]:
        with self.metrics.timed(self.metrics.issuance_duration):
            issued: IssuedAttestation = self.issuer.issue(
                app=app, instance_jwk=instance.instance_jwk, now=now
            )
            # recorded before we answer: nothing we hand out is unaccounted for after a crash
            self.store.record_issued(
                jti=issued.reference,
                instance_id=instance.id,
                kid=issued.kid,
                issued_at=issued.issued_at,
                expires_at=issued.expires_at,
            )
        return {
            "client_attestation": issued.jwt,
            "token_type": "oauth-client-attestation+jwt",
            "expires_at": int(issued.expires_at.timestamp()),
            "expires_in": int((issued.expires_at - now).total_seconds()),
            "key_thumbprint": instance.key_thumbprint,
        }

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
            "jwks_uri": f"{base}/.well-known/jwks.json",
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

        The database answers, an active signing key is loaded, and every platform that
        depends on a revocation list has one that is not stale.
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
        for name in sorted(self.platforms):
            report = getattr(self.platforms[name], "readiness", None)
            if report is not None:
                checks.update(report(now))
        return checks


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
    store = create_store(settings.resolved_database_url)
    # a retired key stays published until every JWT it could have signed has expired
    retention = timedelta(seconds=MAX_ATTESTATION_LIFETIME + settings.clock_skew)
    key_store = KeyStore(settings.resolved_key_dir, retention=retention)
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
    )
    service = AttesterService(
        settings=settings,
        store=store,
        key_store=key_store,
        challenges=challenges,
        issuer=issuer,
        clock=clock,
        platforms=dict(platforms or {}),
        metrics=metrics,
        rate_limits=build_rate_limits(
            settings, engine=store.engine, clock=lambda: clock().timestamp(), metrics=metrics
        ),
    )
    metrics.add_live(lambda: service_gauges(service))
    return service
