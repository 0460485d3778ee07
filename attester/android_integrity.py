"""How Play Integrity joins Key Attestation for an Android registration.

Per app (``[apps.android.play_integrity]``):

- not configured: Key Attestation only. A registration that *sends* an ``integrity_token``
  is refused (``integrity_not_configured``): an unexamined signal must not look accepted.
- ``mode = "both"`` (the default once configured): Key Attestation and a passing token.
- ``mode = "ka_required_pi_optional"``: Key Attestation decides; a token, when sent, must pass.

Play Integrity never replaces Key Attestation: it attests no key, so it cannot tell that
the instance key lives in the device's hardware. The token is bound to the redeemed
challenge and the instance key by :func:`integrity_binding` (``requestHash`` or ``nonce``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from attester.challenges import Challenge
from attester.errors import ProblemError
from attester.platforms import VerifiedInstance
from attester.play_integrity import (
    GoogleDecoder,
    IntegrityDecoder,
    LocalDecoder,
    load_service_account,
    read_secret,
)
from attester.settings import AndroidAppConfig, PlayIntegrityConfig, Settings
from platform_verifiers.android.play_integrity import (
    PlayIntegrityPolicy,
    PlayIntegrityVerdict,
    integrity_binding,
    verify_integrity_payload,
)

log = logging.getLogger("attester.android")


def integrity_policy(config: PlayIntegrityConfig) -> PlayIntegrityPolicy:
    """The verifier's policy dataclass from an app's configuration."""
    return PlayIntegrityPolicy(
        required_device_labels=frozenset(config.required_device_labels),
        require_play_recognized=config.require_play_recognized,
        require_licensed=config.require_licensed,
        max_token_age=timedelta(seconds=config.max_token_age),
        max_device_activity_level=config.max_device_activity_level,
    )


def build_decoder(
    config: PlayIntegrityConfig, settings: Settings, *, what: str
) -> IntegrityDecoder:
    """A decoder from the app's configuration; keys are read here, once, at start-up."""
    if config.decode == "local":
        return LocalDecoder.from_base64(
            read_secret(
                file=config.decryption_key_file,
                env=config.decryption_key_env,
                what=f"{what}.decryption_key",
            ),
            read_secret(
                file=config.verification_key_file,
                env=config.verification_key_env,
                what=f"{what}.verification_key",
            ),
        )
    info = load_service_account(
        read_secret(
            file=config.service_account_file,
            env=config.service_account_env,
            what=f"{what}.service_account",
        )
    )
    android = settings.android
    return GoogleDecoder(
        info,
        api_url=android.play_integrity_url,
        token_uri=android.play_integrity_token_uri,
        timeout=android.play_integrity_timeout,
    )


@dataclass(frozen=True)
class IntegrityOutcome:
    """What a checked token adds to a registration: JWT claims and stored facts."""

    claims: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


def _pass_through(verdict: PlayIntegrityVerdict, names: tuple[str, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {
        "device_recognition_verdict": list(verdict.device_recognition_verdict),
        "app_recognition_verdict": verdict.app_recognition_verdict,
        "app_licensing_verdict": verdict.app_licensing_verdict,
        "device_activity_level": verdict.device_activity_level,
    }
    chosen = {name: values[name] for name in names if values[name] is not None}
    return {"play_integrity": chosen} if chosen else {}


class IntegrityGate:
    """Play Integrity decoders per app, and the combination rule above."""

    def __init__(
        self, settings: Settings, *, decoders: dict[str, IntegrityDecoder] | None = None
    ) -> None:
        self.settings = settings
        self.decoders: dict[str, IntegrityDecoder] = dict(decoders or {})
        for app in settings.apps:
            config = app.android.play_integrity if app.android else None
            if config is not None and app.client_id not in self.decoders:
                self.decoders[app.client_id] = build_decoder(
                    config, settings, what=f"apps.{app.client_id}.android.play_integrity"
                )

    def deferred(
        self,
        verified: VerifiedInstance,
        *,
        token: str | None,
        attested_packages: tuple[str, ...],
        challenge: Challenge,
        key_thumbprint: str,
        now: datetime,
    ) -> VerifiedInstance:
        """``verified`` with the check as its online step (run after the key proof), when
        there is one: an app without Play Integrity and a request without a token have
        nothing to check (the service runs an online step in a thread: a hop there and
        back, ~120 us on an idle event loop, for nothing)."""
        app = verified.app.android
        assert app is not None
        if app.play_integrity is None and token is None:
            return verified

        def online() -> VerifiedInstance:
            outcome = self.check(
                client_id=verified.app.client_id,
                app=app,
                token=token,
                attested_packages=attested_packages,
                challenge=challenge,
                key_thumbprint=key_thumbprint,
                now=now,
            )
            if not outcome.facts:
                return replace(verified, online=None)
            facts = {**verified.stored.get("android_facts", {}), "play_integrity": outcome.facts}
            stored = {**verified.stored, "android_facts": facts}
            return replace(verified, claims=outcome.claims, stored=stored, online=None)

        return replace(verified, online=online)

    def at_renewal(
        self,
        *,
        client_id: str,
        app: AndroidAppConfig,
        token: object,
        attested_packages: tuple[str, ...],
        challenge: Challenge,
        key_thumbprint: str,
        now: datetime,
    ) -> None:
        """The renewal rule: a sent token is always checked; ``renewal = "required"`` needs one.

        The token is bound to the renewal's own challenge and the registered instance key,
        so a registration's token cannot be replayed here. Its verdict is checked only: it is
        neither passed on into the renewed JWT nor stored.
        """
        if token is not None and (not isinstance(token, str) or not 0 < len(token) <= 16384):
            raise ProblemError("malformed_request", "integrity_token must be a string")
        config = app.play_integrity
        if token is None and config is not None and config.renewal == "required":
            raise ProblemError(
                "integrity_token_required", "this app requires a Play Integrity token at renewal"
            )
        if token is None:
            return
        self.check(
            client_id=client_id,
            app=app,
            token=token,
            attested_packages=attested_packages,
            challenge=challenge,
            key_thumbprint=key_thumbprint,
            now=now,
        )

    def check(
        self,
        *,
        client_id: str,
        app: AndroidAppConfig,
        token: str | None,
        attested_packages: tuple[str, ...],
        challenge: Challenge,
        key_thumbprint: str,
        now: datetime,
    ) -> IntegrityOutcome:
        """Apply the app's combination mode; raise ProblemError/VerificationError to refuse."""
        config = app.play_integrity
        if config is None:
            if token is not None:
                raise ProblemError(
                    "integrity_not_configured",
                    "this app does not accept Play Integrity tokens; send none",
                )
            return IntegrityOutcome()
        if token is None:
            if config.mode == "both":
                raise ProblemError(
                    "integrity_token_required", "this app requires a Play Integrity token"
                )
            return IntegrityOutcome()
        # the package Google decodes for, and the only ones the verdict may name: those the
        # Keystore attested and the app allows (a token of the publisher's other app is refused)
        packages = sorted(set(attested_packages) & set(app.package_names)) or sorted(
            app.package_names
        )
        payload = self.decoders[client_id].decode(token, package_name=packages[0])
        verdict = verify_integrity_payload(
            payload,
            request_type=config.request_type,
            expected_binding=integrity_binding(challenge.text, key_thumbprint),
            package_names=frozenset(packages),
            signer_digests=frozenset(bytes.fromhex(d) for d in app.signing_cert_sha256),
            policy=integrity_policy(config),
            now=now,
            skew=timedelta(seconds=self.settings.clock_skew),
        )
        return IntegrityOutcome(
            claims=_pass_through(verdict, config.pass_claims),
            facts={
                "request_type": verdict.request_type,
                "device_recognition_verdict": list(verdict.device_recognition_verdict),
                "app_recognition_verdict": verdict.app_recognition_verdict,
                "app_licensing_verdict": verdict.app_licensing_verdict,
                "device_activity_level": verdict.device_activity_level,
                "verdict_time": verdict.timestamp.isoformat(),
            },
        )
