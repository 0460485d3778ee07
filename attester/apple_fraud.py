"""Apple's fraud metric: exchange the stored App Attest receipt for a fresh one, keep its risk metric.

Apple, "Assessing fraud risk":
https://developer.apple.com/documentation/devicecheck/assessing-fraud-risk

The attester POSTs the stored receipt (base64) to Apple's receipt endpoint (a setting, one
per environment) with ``Authorization: <JWT>``: ES256, header ``kid`` = the publisher's
App Store Connect key id, claims ``iss`` = team id and ``iat``. Apple answers 200 with a new
receipt (base64), or 304 when the stored receipt is still current. The new receipt is
verified (``platform_verifiers.apple.receipt``: PKCS#7 chain to Apple Root CA - G3, App ID,
attested key, type ``RECEIPT``, freshness), stored with its risk metric on the instance, and
an app's ``max_risk_metric`` refuses registrations and renewals above the cap.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attester.errors import ProblemError
from attester.platforms import VerifiedInstance
from attester.play_integrity import read_secret
from attester.settings import AppConfig, AppleFraudMetricConfig, ConfigError, Settings
from attester.storage import InstanceRecord, Store
from keys.jwks import b64url
from keys.signer import FileSigner
from platform_verifiers.anchors import TrustAnchor, load_anchor
from platform_verifiers.apple import apple_receipt_roots, verify_receipt
from platform_verifiers.errors import PolicyViolation

log = logging.getLogger("attester.apple")

MAX_ANSWER_BYTES = 64 * 1024


class ReceiptExchanger:
    """One app's receipt exchange with Apple (JWT auth, httpx)."""

    def __init__(
        self,
        *,
        url: str,
        team_id: str,
        signer: FileSigner,
        timeout: float,
        client: httpx.Client | None = None,
    ) -> None:
        self.url = url
        self.team_id = team_id
        self._signer = signer
        self.timeout = timeout
        self._client = client or httpx.Client(timeout=timeout, follow_redirects=False)

    def __repr__(self) -> str:  # never show key material
        return f"ReceiptExchanger(url={self.url!r}, kid={self._signer.kid!r})"

    def authorization(self, now: datetime) -> str:
        """The ES256 JWT Apple wants: ``kid`` header, ``iss`` team id, ``iat``."""
        header = {"alg": "ES256", "kid": self._signer.kid, "typ": "JWT"}
        claims = {"iss": self.team_id, "iat": int(now.timestamp())}
        signing_input = ".".join(
            b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        return signing_input + "." + b64url(self._signer.sign(signing_input.encode("ascii")))

    def exchange(self, receipt: bytes, *, now: datetime) -> bytes | None:
        """A new receipt, or None when Apple says the stored one is current (304)."""
        try:
            response = self._client.post(
                self.url,
                content=base64.b64encode(receipt),
                headers={"Authorization": self.authorization(now)},
                timeout=self.timeout,
            )
        except httpx.HTTPError as exc:
            log.error("receipt exchange failed", extra={"fields": {"error": type(exc).__name__}})
            raise _unavailable() from None
        if response.status_code == 304:
            return None
        if response.status_code == 400:
            # Apple refused this receipt (malformed or not one it issued)
            raise ProblemError("receipt_exchange_rejected", "Apple refused the App Attest receipt")
        if response.status_code != 200 or len(response.content) > MAX_ANSWER_BYTES:
            # 401/403: our JWT or key; 429/5xx: Apple. Either way not the caller's fault.
            log.error(
                "receipt exchange refused", extra={"fields": {"status": response.status_code}}
            )
            raise _unavailable()
        try:
            return base64.b64decode(b"".join(response.content.split()), validate=True)
        except (binascii.Error, ValueError):
            log.error("receipt exchange answer is not base64")
            raise _unavailable() from None

    def close(self) -> None:
        self._client.close()


def _unavailable() -> ProblemError:
    return ProblemError(
        "receipt_exchange_unavailable", "Apple's fraud metric is unavailable; try again later"
    )


def load_signer(config: AppleFraudMetricConfig, *, what: str) -> FileSigner:
    """The App Store Connect key (.p8 PEM, P-256) from a file or an environment variable."""
    pem = read_secret(file=config.private_key_file, env=config.private_key_env, what=what)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"invalid configuration: {what}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"invalid configuration: {what}: not an EC P-256 key")
    return FileSigner(config.key_id, key)


def load_receipt_anchors(test_root_files: tuple[Path, ...]) -> tuple[TrustAnchor, ...]:
    """Apple Root CA - G3, plus test roots only when the test-only setting names some."""
    extra = tuple(
        load_anchor(f"test receipt root {p.name}", p.read_bytes(), source=f"settings: {p}")
        for p in test_root_files
    )
    if extra:
        log.warning("TEST SETTING: extra App Attest receipt roots are trusted")
    return apple_receipt_roots() + extra


@dataclass(frozen=True)
class FreshReceipt:
    receipt: bytes
    risk_metric: int | None


class FraudMetric:
    """Receipt exchanges per app, verification of Apple's answer, and the risk cap."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        exchangers: dict[str, ReceiptExchanger] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.anchors = load_receipt_anchors(settings.apple.test_receipt_root_files)
        self.exchangers: dict[str, ReceiptExchanger] = dict(exchangers or {})
        for app in settings.apps:
            config = app.apple.fraud_metric if app.apple else None
            if config is None or app.client_id in self.exchangers:
                continue
            assert app.apple is not None
            url = (
                settings.apple.receipt_url
                if app.apple.environment == "production"
                else settings.apple.receipt_url_development
            )
            self.exchangers[app.client_id] = ReceiptExchanger(
                url=url,
                team_id=app.apple.team_id,
                signer=load_signer(config, what=f"apps.{app.client_id}.apple.fraud_metric"),
                timeout=settings.apple.receipt_timeout,
            )

    def exchange(
        self, app: AppConfig, *, receipt: bytes, public_key: bytes, now: datetime
    ) -> FreshReceipt | None:
        """Exchange and verify; None when Apple answered 304 (the stored receipt is current)."""
        assert app.apple is not None
        fresh = self.exchangers[app.client_id].exchange(receipt, now=now)
        if fresh is None:
            return None
        verified = verify_receipt(
            fresh,
            anchors=self.anchors,
            app_id=app.apple.app_id,
            public_key=public_key,
            now=now,
            receipt_type="RECEIPT",
            max_age=timedelta(seconds=self.settings.apple.receipt_max_age),
            skew=timedelta(seconds=self.settings.clock_skew),
        )
        return FreshReceipt(receipt=fresh, risk_metric=verified.risk_metric)

    def deferred(
        self, verified: VerifiedInstance, *, public_key: bytes, now: datetime
    ) -> VerifiedInstance:
        """``verified`` with the registration exchange as its online step, when configured."""
        app = verified.app
        if app.apple is None or app.apple.fraud_metric is None:
            return verified
        receipt = verified.stored["apple_receipt"]
        # The attestation's signature does not cover its receipt: verify it here (offline,
        # before any request to Apple) so a swapped or forged receipt is never stored nor sent.
        verify_receipt(
            receipt,
            anchors=self.anchors,
            app_id=app.apple.app_id,
            public_key=public_key,
            now=now,
            receipt_type="ATTEST",
            skew=timedelta(seconds=self.settings.clock_skew),
        )

        def online() -> VerifiedInstance:
            extra = self.at_registration(app, receipt=receipt, public_key=public_key, now=now)
            return replace(verified, stored={**verified.stored, **extra}, online=None)

        return replace(verified, online=online)

    def at_registration(
        self, app: AppConfig, *, receipt: bytes, public_key: bytes, now: datetime
    ) -> dict[str, object]:
        """Store fields for a new instance (empty when the app does not use the metric)."""
        config = app.apple.fraud_metric if app.apple else None
        if config is None or not config.exchange_at_registration:
            return {}
        fresh = self.exchange(app, receipt=receipt, public_key=public_key, now=now)
        if fresh is None:
            check_cap(config, None)
            return {}
        check_cap(config, fresh.risk_metric)
        return {
            "apple_receipt": fresh.receipt,
            "apple_risk_metric": fresh.risk_metric,
            "apple_receipt_refreshed_at": now,
        }

    def at_renewal(self, instance: InstanceRecord, app: AppConfig, *, now: datetime) -> None:
        """Refresh the receipt when it is due, store it, and apply the cap."""
        config = app.apple.fraud_metric if app.apple else None
        if config is None:
            return
        metric = instance.apple_risk_metric
        refreshed = instance.apple_receipt_refreshed_at
        due = refreshed is None or now - refreshed >= timedelta(seconds=config.refresh_interval)
        if due and instance.apple_receipt and instance.apple_public_key:
            fresh = self.exchange(
                app, receipt=instance.apple_receipt, public_key=instance.apple_public_key, now=now
            )
            if fresh is not None:
                self.store.store_receipt(
                    instance.id, receipt=fresh.receipt, risk_metric=fresh.risk_metric, now=now
                )
                metric = fresh.risk_metric
        check_cap(config, metric)


def check_cap(config: AppleFraudMetricConfig, metric: int | None) -> None:
    """Refuse above the app's cap; an unknown metric fails closed when a cap is set."""
    if config.max_risk_metric is None:
        return
    if metric is None or metric > config.max_risk_metric:
        raise PolicyViolation(
            "apple_risk_metric",
            seen=metric,
            required=f"at most {config.max_risk_metric}",
        )
