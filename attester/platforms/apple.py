"""Apple App Attest in the service: the registration route and assertion-based renewal.

DESIGN.md, "Registration" (Apple) and "Renewal"; the checks themselves are Apple's,
"Validating apps that connect to your server":
https://developer.apple.com/documentation/devicecheck/validating-apps-that-connect-to-your-server

App Attest keys cannot sign a JWS, so the instance key is a separate P-256 key whose public
JWK the app puts into ``client_data`` (UTF-8 JSON ``{"challenge", "jwk", ...}``). The SHA-256
of those exact bytes is the ``clientDataHash`` the attestation (and every later assertion)
signs, which binds the instance key and the challenge to the App Attest key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from attester import cooperative
from attester.apple_fraud import FraudMetric
from attester.challenges import Challenge
from attester.codec import decode_base64
from attester.errors import ProblemError
from attester.json_routes import lean
from attester.keyproof import parse_instance_jwk
from attester.openapi import (
    CHALLENGE_PROBLEMS,
    ISSUANCE_PROBLEMS,
    JWK_PROBLEMS,
    KEY_PROOF_PROBLEMS,
    RECEIPT_PROBLEMS,
    REQUEST_PROBLEMS,
    problem_responses,
)
from attester.platforms import Platform, VerifiedInstance, unchanged_components
from attester.routes import NO_STORE
from attester.service import AttesterService
from attester.settings import AppConfig, Settings
from attester.storage import InstanceRecord, Store
from keys.jwks import thumbprint
from platform_verifiers.anchors import TrustAnchor, load_anchor
from platform_verifiers.apple import (
    AAGUIDS,
    APP_ATTEST_ROOT_NAME,
    MAX_ATTESTATION_BYTES,
    VerifiedLinkCache,
    apple_app_attest_roots,
    parse_attestation_object,
    verify_assertion,
    verify_attestation,
)
from platform_verifiers.errors import VerificationError

log = logging.getLogger("attester.apple")

PLATFORM = "apple"
MAX_CLIENT_DATA_CHARS = 4096
KEY_ID_BYTES = 32  # SHA-256 of the App Attest public key


REGISTRATION_PROBLEMS = (
    *REQUEST_PROBLEMS,
    *CHALLENGE_PROBLEMS,
    *KEY_PROOF_PROBLEMS,
    *JWK_PROBLEMS,
    *ISSUANCE_PROBLEMS,
    "rate_limited",
    "app_not_registered",
    "app_ambiguous",
    "instance_already_registered",
    "instance_revoked",
    "client_data_malformed",
    "client_data_challenge_mismatch",
    "attestation_too_large",
    "attestation_malformed",
    "attestation_format_unsupported",
    "nonce_extension_missing",
    "nonce_extension_malformed",
    "certificate_expired",
    "certificate_not_yet_valid",
    "chain_signature_invalid",
    "chain_untrusted",
    "nonce_mismatch",
    "key_id_mismatch",
    "credential_id_mismatch",
    "app_id_mismatch",
    "counter_not_zero",
    "environment_mismatch",
    # fail-closed chain checks (issue 8)
    "extension_below_leaf",
    "extension_critical_unknown",
    # the receipt exchanged with Apple for the fraud metric (issue 10)
    *RECEIPT_PROBLEMS,
)


def _base64_chars(n_bytes: int) -> int:
    return 4 * -(-n_bytes // 3)


class AppleAttestationRequest(BaseModel):
    """``POST /v1/apple/attestations`` (DESIGN.md, Registration, Apple)."""

    model_config = ConfigDict(extra="ignore")

    key_id: Annotated[str, Field(min_length=1, max_length=64)]
    attestation_object: Annotated[
        str, Field(min_length=1, max_length=_base64_chars(MAX_ATTESTATION_BYTES))
    ]
    client_data: Annotated[str, Field(min_length=1, max_length=MAX_CLIENT_DATA_CHARS)]
    key_proof: Annotated[str, Field(max_length=8192)]
    client_id: Annotated[str | None, Field(min_length=1, max_length=255)] = None


def _no_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # the hash covers the bytes: two readings of one document must not be possible
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate member")
    return dict(pairs)


@dataclass(frozen=True)
class ClientData:
    """The decoded ``client_data``: its exact bytes (hashed) and the members we read."""

    raw: bytes
    challenge: str
    jwk: object  # validated by parse_instance_jwk where it is used

    @property
    def hash(self) -> bytes:
        """The App Attest ``clientDataHash``: SHA-256 of the bytes as sent."""
        return hashlib.sha256(self.raw).digest()

    @classmethod
    def decode(cls, text: str) -> ClientData:
        """Decode base64url UTF-8 JSON holding at least ``challenge`` and ``jwk``."""
        raw = decode_base64(text, code="client_data_malformed", what="client_data")
        try:
            document = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_members)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ProblemError("client_data_malformed", "client_data is not UTF-8 JSON") from None
        if not isinstance(document, dict):
            raise ProblemError("client_data_malformed", "client_data must be a JSON object")
        challenge, jwk = document.get("challenge"), document.get("jwk")
        if not isinstance(challenge, str) or not isinstance(jwk, dict):
            raise ProblemError(
                "client_data_malformed",
                "client_data needs a string challenge and a jwk object",
                required=["challenge", "jwk"],
            )
        return cls(raw=raw, challenge=challenge, jwk=jwk)


@dataclass(frozen=True)
class AppleEvidence:
    """A registration request, decoded (no verification yet)."""

    key_id: bytes
    attestation_object: bytes
    client_data: ClientData
    client_id: str | None

    @classmethod
    def decode(cls, body: AppleAttestationRequest) -> AppleEvidence:
        key_id = decode_base64(body.key_id, code="malformed_request", what="key_id")
        if len(key_id) != KEY_ID_BYTES:
            raise ProblemError("malformed_request", "key_id must be 32 bytes (base64)")
        return cls(
            key_id=key_id,
            attestation_object=decode_base64(
                body.attestation_object, code="attestation_malformed", what="attestation_object"
            ),
            client_data=ClientData.decode(body.client_data),
            client_id=body.client_id,
        )


def load_trust_anchors(settings: Settings) -> tuple[TrustAnchor, ...]:
    """Apple's pinned root, plus test roots only when the test-only setting names some."""
    anchors = apple_app_attest_roots()
    extra = tuple(
        load_anchor(
            f"test root {path.name}",
            path.read_bytes(),
            source=f"settings apple.test_root_files: {path}",
        )
        for path in settings.apple.test_root_files
    )
    if extra:
        log.warning(
            "App Attest test roots are trusted; never do this in production",
            extra={"fields": {"test_roots": [a.sha256 for a in extra]}},
        )
    return anchors + extra


def _app_id_hash(app: AppConfig) -> bytes:
    assert app.apple is not None
    return hashlib.sha256(app.apple.app_id.encode("utf-8")).digest()


class AppleAppAttest:
    """The Apple plug-in: registration (:meth:`attest`) and renewal (:meth:`renew`)."""

    name = PLATFORM

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        anchors: tuple[TrustAnchor, ...],
        verified_cache: VerifiedLinkCache | None = None,
        fraud: FraudMetric | None = None,
    ) -> None:
        if not anchors:
            raise ValueError("App Attest needs at least one trust anchor")
        self.settings = settings
        self.store = store
        self.anchors = anchors
        # one per process: verified intermediate links are pure facts about bytes
        self.verified_cache = verified_cache or VerifiedLinkCache()
        # Apple's fraud metric (issue 10): receipt exchanges for the apps that configure it
        self.fraud = fraud or FraudMetric(settings, store)

    def with_registry(self, settings: Settings) -> Callable[[], None]:
        """Build the receipt exchangers of ``settings``' apps (their keys read here, so a bad
        file fails the reload); the returned call swaps them in with the registry."""
        # an app whose section is unchanged keeps its component (and its caches)
        kept = unchanged_components(
            self.fraud.exchangers, self.settings, settings,
            lambda a: a.apple.fraud_metric if a.apple else None,
        )
        fraud = FraudMetric(settings, self.store, exchangers=kept)

        def apply() -> None:
            self.settings, self.fraud = settings, fraud

        return apply

    # -- registration ----------------------------------------------------------------
    def attest(
        self, evidence: AppleEvidence, *, challenge: Challenge, now: datetime
    ) -> VerifiedInstance:
        """Verify an attestation for a registration whose challenge has been redeemed."""
        if evidence.client_data.challenge != challenge.text:  # public value: plain comparison
            raise ProblemError(
                "client_data_challenge_mismatch", "client_data does not hold this challenge"
            )
        jwk, _ = parse_instance_jwk(evidence.client_data.jwk)
        candidates = self._candidate_apps(evidence.client_id)
        app, matched = self._select_app(candidates, evidence.attestation_object)
        assert app.apple is not None
        try:
            attestation = verify_attestation(
                attestation_object=evidence.attestation_object,
                key_id=evidence.key_id,
                client_data_hash=evidence.client_data.hash,
                app_ids=[app.apple.app_id],
                environment=app.apple.environment,
                anchors=self.anchors,
                now=now,
                verified_cache=self.verified_cache,
            )
        except VerificationError as exc:
            if exc.code == "app_id_mismatch":
                # do not list the registry's App IDs to an anonymous caller
                raise ProblemError(
                    "app_id_mismatch", "the attestation is not for a registered app"
                ) from None
            raise
        if not matched or attestation.app_id != app.apple.app_id:  # pragma: no cover
            raise ProblemError("app_id_mismatch", "the attestation is not for a registered app")
        verified = VerifiedInstance(
            platform=PLATFORM,
            app=app,
            instance_jwk=jwk,
            stored={
                "apple_key_id": base64.urlsafe_b64encode(attestation.key_id)
                .rstrip(b"=")
                .decode("ascii"),
                "apple_public_key": attestation.public_key,
                "apple_counter": attestation.counter,
                "apple_receipt": attestation.receipt,
                "apple_environment": attestation.environment,
                "apple_root": attestation.root_anchor,
            },
        )
        # fraud metric (issue 10): the receipt exchange, after the key proof
        return self.fraud.deferred(verified, public_key=attestation.public_key, now=now)

    def _candidate_apps(self, client_id: str | None) -> list[AppConfig]:
        if client_id is not None:
            app = self.settings.app(client_id)
            if app is None or app.apple is None:
                raise ProblemError("app_not_registered", "no App Attest app with this client_id")
            return [app]
        apps = [a for a in self.settings.apps if a.apple is not None]
        if not apps:
            raise ProblemError("app_not_registered", "no App Attest app is configured")
        return apps

    def _select_app(
        self, candidates: list[AppConfig], attestation_object: bytes
    ) -> tuple[AppConfig, bool]:
        """The app named by the rpIdHash (App ID) and, among those, by the aaguid (environment).

        Only routing: the chosen app's App ID and environment are then checked by
        ``verify_attestation`` in Apple's order. When no candidate's App ID matches, the
        first candidate comes back with ``False`` so verification fails at the right step
        (an untrusted chain is reported before a foreign App ID).
        """
        auth_data = parse_attestation_object(attestation_object).auth_data
        by_app_id = [
            a for a in candidates if hmac.compare_digest(_app_id_hash(a), auth_data.rp_id_hash)
        ]
        if not by_app_id:
            return candidates[0], False
        by_environment = [
            a
            for a in by_app_id
            if a.apple is not None and AAGUIDS[a.apple.environment] == auth_data.aaguid
        ]
        if len(by_environment) > 1:
            raise ProblemError(
                "app_ambiguous", "several apps share this App ID and environment; send client_id"
            )
        return (by_environment or by_app_id)[0], True

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
        """An assertion over fresh client_data; the counter advances by compare-and-set."""
        if app.apple is None:
            raise ProblemError("app_not_registered", "the instance's app no longer uses App Attest")
        # the registration must still pass the app's current policy (DESIGN.md, Renewal): its
        # environment, and a root still trusted (before migration 0006 none was recorded:
        # those instances were taken to be under Apple's own root)
        if instance.apple_environment != app.apple.environment:
            raise VerificationError(
                "environment_mismatch",
                "the instance was attested in another App Attest environment than the app's",
                seen=instance.apple_environment,
                required=app.apple.environment,
            )
        if (instance.apple_root or APP_ATTEST_ROOT_NAME) not in {a.name for a in self.anchors}:
            raise VerificationError(
                "chain_untrusted", "the instance was attested under a root no longer trusted"
            )
        if request.get("integrity_token") is not None:  # an unexamined signal is not accepted
            raise ProblemError(
                "integrity_not_configured", "App Attest renewals take no Play Integrity token"
            )
        assertion_text, client_data_text = request.get("assertion"), request.get("client_data")
        if not isinstance(assertion_text, str) or not isinstance(client_data_text, str):
            raise ProblemError(
                "malformed_request",
                "an App Attest renewal needs assertion and client_data",
                required=["assertion", "client_data"],
            )
        client_data = ClientData.decode(client_data_text)
        assertion = decode_base64(assertion_text, code="assertion_malformed", what="assertion")
        if client_data.challenge != challenge.text:  # public value: plain comparison
            raise ProblemError(
                "client_data_challenge_mismatch", "client_data does not hold this challenge"
            )
        jwk, _ = parse_instance_jwk(client_data.jwk)
        if not hmac.compare_digest(thumbprint(jwk), instance.key_thumbprint):
            raise ProblemError(
                "client_data_key_mismatch", "client_data does not hold the registered instance key"
            )
        if instance.apple_public_key is None or instance.apple_counter is None:
            log.error(
                "apple instance without App Attest key", extra={"fields": {"id": instance.id}}
            )
            raise ProblemError("internal_error", "internal error", status=500)
        verified = verify_assertion(
            assertion=assertion,
            public_key=instance.apple_public_key,
            client_data_hash=client_data.hash,
            app_ids=[app.apple.app_id],
            previous_counter=instance.apple_counter,
        )
        # the read above may be stale: only the UPDATE decides which of two racers wins
        if not self.store.advance_counter(instance.id, new_counter=verified.counter, now=now):
            raise ProblemError(
                "counter_not_increasing", "this assertion counter has been used already"
            )
        # fraud metric (issue 10): after the counter, so a replayed assertion costs no exchange
        # Apple's service and the receipt's write: in a thread when on the event loop
        cooperative.blocking(self.fraud.at_renewal, instance, app, now=now)


def plug_in(service: AttesterService) -> tuple[Platform, APIRouter]:
    """Build the Apple platform (trust anchors once, one link cache) and its route."""
    platform = AppleAppAttest(
        settings=service.settings,
        store=service.store,
        anchors=load_trust_anchors(service.settings),
    )
    router = APIRouter()

    @router.post("/v1/apple/attestations", responses=problem_responses(*REGISTRATION_PROBLEMS))
    @lean
    def register(body: AppleAttestationRequest, request: Request) -> JSONResponse:
        service.rate_limits.check_ip("registration", request)
        evidence = AppleEvidence.decode(body)

        def verify(challenge: Challenge, now: datetime) -> VerifiedInstance:
            return platform.attest(evidence, challenge=challenge, now=now)

        result = service.register(
            platform=platform.name,
            challenge=evidence.client_data.challenge, key_proof=body.key_proof, verify=verify
        )
        return JSONResponse(result, headers=NO_STORE)

    return platform, router
