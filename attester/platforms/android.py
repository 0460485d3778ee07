"""Android Key Attestation behind the service: registration route and renewal re-check.

``POST /v1/android/attestations`` takes the Keystore attestation chain (base64 DER, leaf
first, root optional), the challenge and a key proof signed by the attested key. The
attested leaf key is the instance key: it becomes ``cnf.jwk``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from attester import cooperative
from attester.android_integrity import IntegrityGate
from attester.android_revocation import RevocationFetcher
from attester.challenges import Challenge
from attester.codec import decode_base64
from attester.errors import ProblemError
from attester.json_routes import lean
from attester.openapi import (
    CHALLENGE_PROBLEMS,
    INTEGRITY_PROBLEMS,
    ISSUANCE_PROBLEMS,
    JWK_PROBLEMS,
    KEY_PROOF_PROBLEMS,
    REQUEST_PROBLEMS,
    problem_responses,
)
from attester.platforms import VerifiedInstance, unchanged_components
from attester.routes import NO_STORE
from attester.settings import AndroidAppConfig, AppConfig, ConfigError, Settings
from attester.storage import InstanceRecord
from keys.jwks import public_jwk, thumbprint
from platform_verifiers.anchors import TrustAnchor, load_anchor
from platform_verifiers.android import (
    MAX_CHAIN_LENGTH,
    AndroidAttestation,
    AndroidPolicy,
    RevocationSnapshot,
    SecurityLevel,
    VerifiedLinkCache,
    aosp_software_roots,
    google_hardware_roots,
    verify_android_attestation,
)
from platform_verifiers.android.certs import decode_certificate
from platform_verifiers.android.fastkd import decode_key_description
from platform_verifiers.android.policy import check_policy
from platform_verifiers.android.revocation import check_revocation, is_stale
from platform_verifiers.errors import PolicyViolation, VerificationError

if TYPE_CHECKING:
    from attester.service import AttesterService

log = logging.getLogger("attester.android")

LEVELS = {
    "software": SecurityLevel.SOFTWARE,
    "tee": SecurityLevel.TRUSTED_ENVIRONMENT,
    "strongbox": SecurityLevel.STRONG_BOX,
}
# a DER attestation certificate is a few KiB; base64 of 16 KiB is generous
CertificateB64 = Annotated[str, Field(min_length=1, max_length=16384)]


class AndroidRegistration(BaseModel):
    model_config = ConfigDict(extra="ignore")

    certificate_chain: Annotated[list[CertificateB64], Field(min_length=1, max_length=MAX_CHAIN_LENGTH)]
    challenge: Annotated[str, Field(max_length=4096)]
    key_proof: Annotated[str, Field(max_length=8192)]
    client_id: Annotated[str | None, Field(max_length=255)] = None
    # Play Integrity token (standard or classic); see attester/android_integrity.py
    integrity_token: Annotated[str | None, Field(max_length=16384)] = None


REGISTRATION_PROBLEMS = (
    *REQUEST_PROBLEMS,
    *CHALLENGE_PROBLEMS,
    *KEY_PROOF_PROBLEMS,
    *JWK_PROBLEMS,
    *ISSUANCE_PROBLEMS,
    "rate_limited",
    "app_not_registered",
    "instance_already_registered",
    "instance_revoked",
    "policy_violation",
    # fail-closed chain checks (issue 8)
    "extension_duplicate",
    "extension_critical_unknown",
    "extension_malformed",
    "chain_certificate_repeated",
    "chain_continues_past_root",
    # Play Integrity (issue 10)
    *INTEGRITY_PROBLEMS,
    "chain_empty",
    "chain_too_long",
    "certificate_malformed",
    "chain_untrusted",
    "chain_signature_invalid",
    "intermediate_not_ca",
    "extension_below_leaf",
    "path_length_exceeded",
    "certificate_expired",
    "certificate_not_yet_valid",
    "certificate_revoked",
    "revocation_list_stale",
    "revocation_list_unavailable",
    "key_description_missing",
    "key_description_malformed",
    "challenge_mismatch",
)


def policy_for(app: AndroidAppConfig) -> AndroidPolicy:
    """The verifier's policy dataclass from an app's configuration."""
    return AndroidPolicy(
        min_security_level=LEVELS[app.min_security_level],
        package_names=frozenset(app.package_names),
        signer_digests=frozenset(bytes.fromhex(d) for d in app.signing_cert_sha256),
        require_verified_boot=app.require_verified_boot,
        require_device_locked=app.require_device_locked,
        allowed_verified_boot_keys=frozenset(bytes.fromhex(k) for k in app.allowed_verified_boot_keys),
        min_os_patch_level=app.min_os_patch_level,
    )


def _decode_certificates(items: Sequence[str]) -> list[bytes]:
    # line-wrapped base64 (as in PEM bodies) is accepted: whitespace is not data
    return [
        decode_base64("".join(item.split()), code="malformed_request", what="certificate_chain")
        for item in items
    ]


def _load_test_roots(paths: Sequence[Path]) -> list[TrustAnchor]:
    anchors = []
    for path in paths:
        try:
            anchors.append(load_anchor(f"test:{path.name}", path.read_bytes(), source=str(path)))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"invalid configuration: android.test_root_files: {path}: {exc}") from None
    return anchors


class AndroidPlatform:
    """Registration verification and renewal re-checks for Android instances."""

    name = "android"

    @staticmethod
    def validate_settings(settings: Settings) -> None:
        """Registry rules only this platform knows (also run when the registry is reloaded)."""
        for app in settings.apps:
            if app.android and app.android.min_security_level == "software" and not settings.android.allow_software_level:
                raise ConfigError(
                    f"invalid configuration: apps.{app.client_id}.android.min_security_level: "
                    "'software' needs the test-only setting android.allow_software_level"
                )

    def __init__(
        self,
        settings: Settings,
        *,
        fetcher: RevocationFetcher | None = None,
        integrity: IntegrityGate | None = None,
    ) -> None:
        self.validate_settings(settings)
        self.settings = settings
        android = settings.android
        anchors: list[TrustAnchor] = list(google_hardware_roots())
        if android.allow_software_root:
            log.warning("TEST SETTING: the AOSP software attestation roots are trusted")
            anchors += aosp_software_roots()
        if android.test_root_files:
            log.warning("TEST SETTING: extra Android roots are trusted")
            anchors += _load_test_roots(android.test_root_files)
        self.anchors = tuple(anchors)
        self.cache = VerifiedLinkCache()
        self.fetcher = fetcher or RevocationFetcher(
            url=android.revocation_url,
            cache_path=settings.data_dir / "android-revocation.json",
            timeout=android.revocation_timeout,
            # refetched well before a copy counts as stale, whatever max-age Google sends
            max_fresh=timedelta(seconds=android.revocation_max_staleness) / 2,
        )
        # Play Integrity (issue 10): decoders per app, keys read once here
        self.integrity = integrity or IntegrityGate(settings)

    def with_registry(self, settings: Settings) -> Callable[[], None]:
        """Build what depends on the app registry for ``settings`` (Play Integrity decoders,
        their keys read here, so a bad file fails the reload); the returned call swaps it in."""
        # an app whose section is unchanged keeps its component (and its caches)
        kept = unchanged_components(
            self.integrity.decoders, self.settings, settings,
            lambda a: a.android.play_integrity if a.android else None,
        )
        integrity = IntegrityGate(settings, decoders=kept)

        def apply() -> None:
            self.settings, self.integrity = settings, integrity

        return apply

    # -- revocation ------------------------------------------------------------------
    def revocation(self, now: datetime) -> tuple[RevocationSnapshot | None, timedelta | None]:
        """The snapshot to check against and the staleness limit to apply."""
        android = self.settings.android
        snapshot = self.fetcher.get(now)
        limit = timedelta(seconds=android.revocation_max_staleness)
        if snapshot is None:
            if android.allow_stale_revocation:
                log.warning("no Android revocation list available; accepting (allow_stale_revocation)")
                return None, None
            raise ProblemError(
                "revocation_list_unavailable",
                "the attestation revocation list cannot be obtained; try again later",
            )
        if android.allow_stale_revocation:
            if is_stale(snapshot, now, limit):
                log.warning("Android revocation list is stale; accepting (allow_stale_revocation)")
            return snapshot, None
        return snapshot, limit

    def readiness(self, now: datetime) -> dict[str, str]:
        """``android_revocation_list``: ok, stale or unavailable (fetched when due).

        Only when an Android app is configured; ``allow_stale_revocation`` makes a stale or
        missing list ready, as it makes registrations accept it.
        """
        if not any(app.android for app in self.settings.apps):
            return {}
        android = self.settings.android
        snapshot = self.fetcher.get(now)
        if snapshot is None:
            state = "unavailable"
        elif is_stale(snapshot, now, timedelta(seconds=android.revocation_max_staleness)):
            state = "stale"
        else:
            state = "ok"
        if state != "ok" and android.allow_stale_revocation:
            state = "ok"
        return {"android_revocation_list": state}

    def revocation_list_age(self, now: datetime) -> float | None:
        """Seconds since the list in use was fetched (None before the first fetch)."""
        snapshot = self.fetcher.snapshot
        return None if snapshot is None else (now - snapshot.fetched_at).total_seconds()

    # -- registration ----------------------------------------------------------------
    def candidates(self, client_id: str | None) -> list[AppConfig]:
        apps = [a for a in self.settings.apps if a.android is not None]
        if client_id is not None:
            apps = [a for a in apps if a.client_id == client_id]
        if not apps:
            raise ProblemError("app_not_registered", "no Android app is configured for this request")
        return apps

    def verify(
        self, body: AndroidRegistration, challenge: Challenge, now: datetime
    ) -> VerifiedInstance:
        chain = _decode_certificates(body.certificate_chain)
        snapshot, max_age = self.revocation(now)
        first_error: VerificationError | None = None
        attestation: AndroidAttestation | None = None
        chosen: AppConfig | None = None
        # Several Android apps may be configured: the one whose packages and signer
        # match wins; the most specific failure is reported otherwise.
        for app in self.candidates(body.client_id):
            assert app.android is not None
            try:
                attestation = verify_android_attestation(
                    chain=chain,
                    challenge=challenge.raw,
                    policy=policy_for(app.android),
                    anchors=self.anchors,
                    revocation=snapshot,
                    now=now,
                    max_revocation_age=max_age,
                    verified_cache=self.cache,
                )
            except PolicyViolation as exc:
                if exc.rule in {"package_name", "signer_digest"}:
                    first_error = first_error or exc
                    continue
                raise
            chosen = app
            break
        if attestation is None or chosen is None:
            assert first_error is not None
            raise first_error
        try:
            leaf_key = attestation.leaf_public_key()
        except (ValueError, UnsupportedAlgorithm):
            leaf_key = None  # a key type this build cannot load (e.g. ML-DSA) is not P-256
        if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or leaf_key.curve.name != "secp256r1":
            raise ProblemError("jwk_key_type_not_allowed", "the attested key must be EC P-256")
        kd = attestation.key_description
        instance_jwk = public_jwk(leaf_key)
        verified = VerifiedInstance(
            platform=self.name,
            app=chosen,
            instance_jwk=instance_jwk,
            stored={
                "android_serials": attestation.chain_serials,
                "android_facts": {
                    # the leaf is kept so renewal re-applies the current policy to it
                    "leaf": base64.b64encode(chain[0]).decode(),
                    "root": attestation.root_anchor,
                    "provisioning": str(attestation.provisioning.name),
                    "provisioning_rule": attestation.provisioning_rule.value,
                    "security_level": attestation.security_level.name,
                    "attestation_version": kd.attestation_version,
                },
            },
            replace_same_key=True,
        )
        # Play Integrity (issue 10): the app's combination mode, after the key proof
        application = kd.authorization("attestation_application_id")
        return self.integrity.deferred(
            verified,
            token=body.integrity_token,
            attested_packages=application.package_names if application else (),
            challenge=challenge,
            key_thumbprint=thumbprint(instance_jwk),
            now=now,
        )

    # -- renewal ---------------------------------------------------------------------
    def renew(
        self,
        instance: InstanceRecord,
        request: dict[str, Any],
        *,
        app: AppConfig,
        challenge: Challenge,
        now: datetime,
    ) -> None:
        """Re-check revocation of the stored chain and the app's current policy."""
        if app.android is None:
            raise ProblemError("app_not_registered", "the app no longer accepts Android instances")
        if instance.android_facts.get("root") not in {a.name for a in self.anchors}:
            # registered under a root this service no longer trusts (e.g. a test setting)
            raise ProblemError(
                "chain_untrusted", "the instance was attested under a root no longer trusted"
            )
        snapshot, max_age = self.revocation(now)
        if snapshot is not None:
            check_revocation(instance.android_serials, snapshot, now=now, max_age=max_age)
        leaf_der = base64.b64decode(instance.android_facts["leaf"])
        leaf = decode_certificate(leaf_der, 0)
        kd = decode_key_description(leaf.key_descriptions[0])
        check_policy(kd, leaf.public_key(), policy_for(app.android))
        # Play Integrity (review of issue 10): a token sent at renewal is checked, never ignored
        application = kd.authorization("attestation_application_id")
        cooperative.blocking(  # Google's service: in a thread when on the event loop
            self.integrity.at_renewal,
            client_id=app.client_id,
            app=app.android,
            token=request.get("integrity_token"),
            attested_packages=application.package_names if application else (),
            challenge=challenge,
            key_thumbprint=thumbprint(instance.instance_jwk),
            now=now,
        )


# registry rules of this platform, for ``attester apps check`` (no platform is built there)
validate_settings = AndroidPlatform.validate_settings


def plug_in(service: AttesterService) -> tuple[AndroidPlatform, APIRouter]:
    platform = AndroidPlatform(service.settings)
    router = APIRouter()

    @router.post("/v1/android/attestations", responses=problem_responses(*REGISTRATION_PROBLEMS))
    @lean
    def register(body: AndroidRegistration, request: Request) -> JSONResponse:
        service.rate_limits.check_ip("registration", request)
        result = service.register(
            platform=platform.name,
            challenge=body.challenge,
            key_proof=body.key_proof,
            verify=lambda challenge, now: platform.verify(body, challenge, now),
        )
        return JSONResponse(result, headers=NO_STORE)

    return platform, router
