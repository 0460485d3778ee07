"""Core routes: liveness, readiness, metrics, JWKS, metadata, challenge, renewal.

Each decodes, calls, responds. ``responses=`` document the problem codes of each endpoint
(attester/openapi.py); limited routes start with the per-IP check (attester/ratelimit.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from attester.errors import ProblemError
from attester.openapi import (
    CHALLENGE_PROBLEMS,
    ISSUANCE_PROBLEMS,
    JWK_PROBLEMS,
    KEY_PROOF_PROBLEMS,
    REQUEST_PROBLEMS,
    problem_responses,
)
from attester.ratelimit import parse_networks
from attester.service import AttesterService

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

ShortText = Annotated[str, Field(max_length=4096)]

RENEWAL_PROBLEMS = (
    *REQUEST_PROBLEMS,
    *CHALLENGE_PROBLEMS,
    *KEY_PROOF_PROBLEMS,
    *ISSUANCE_PROBLEMS,
    "rate_limited",
    "instance_not_found",
    "instance_revoked",
    "app_not_registered",
    "registration_too_old",
    "platform_not_supported",
    # Android: the stored chain and KeyDescription are re-checked
    "chain_untrusted",
    "certificate_revoked",
    "revocation_list_stale",
    "revocation_list_unavailable",
    "policy_violation",
    # Apple: an App Attest assertion over fresh client_data
    "client_data_malformed",
    "client_data_challenge_mismatch",
    "client_data_key_mismatch",
    *JWK_PROBLEMS,
    "assertion_malformed",
    "assertion_signature_invalid",
    "app_id_mismatch",
    "counter_not_increasing",
)
CHALLENGE_ENDPOINT_PROBLEMS = (
    "request_too_large",
    "unsupported_media_type",
    "internal_error",
    "rate_limited",
)


class RenewRequest(BaseModel):
    """``POST /v1/attestations/renew``; Apple adds ``assertion`` and ``client_data``."""

    model_config = ConfigDict(extra="ignore")

    key_thumbprint: Annotated[str, Field(min_length=43, max_length=43)]
    challenge: ShortText
    key_proof: Annotated[str, Field(max_length=8192)]
    assertion: Annotated[str | None, Field(max_length=16384)] = None
    client_data: Annotated[str | None, Field(max_length=16384)] = None


def build_core_router(service: AttesterService) -> APIRouter:
    router = APIRouter()
    limits = service.rate_limits

    @router.get("/.well-known/jwks.json", responses=problem_responses("internal_error"))
    async def jwks(if_none_match: Annotated[str | None, Header()] = None) -> Response:
        document = service.jwks()
        headers = {
            "Cache-Control": f"public, max-age={service.settings.jwks_max_age}",
            "ETag": document.etag,
        }
        if if_none_match is not None and document.etag in {
            tag.strip() for tag in if_none_match.split(",")
        }:
            return Response(status_code=304, headers=headers)
        return Response(document.body, media_type="application/jwk-set+json", headers=headers)

    @router.get("/.well-known/client-attester", responses=problem_responses("internal_error"))
    async def metadata() -> JSONResponse:
        return JSONResponse(
            service.metadata(),
            headers={"Cache-Control": f"public, max-age={service.settings.jwks_max_age}"},
        )

    @router.post("/v1/challenge", responses=problem_responses(*CHALLENGE_ENDPOINT_PROBLEMS))
    async def challenge(request: Request) -> JSONResponse:
        await limits.check_ip_async("challenge", request)
        return JSONResponse(service.new_challenge(), headers=NO_STORE)

    @router.post("/v1/attestations/renew", responses=problem_responses(*RENEWAL_PROBLEMS))
    def renew(body: RenewRequest, request: Request) -> JSONResponse:
        limits.check_ip("renewal", request)
        fields: dict[str, Any] = body.model_dump()
        return JSONResponse(service.renew(fields), headers=NO_STORE)

    # operational routes last: routes are matched in order, the JWKS and challenge first
    @router.get("/healthz", tags=["operation"])
    async def healthz() -> JSONResponse:
        """Liveness: the process answers. Readiness (database, key, lists) is ``/readyz``."""
        return JSONResponse({"status": "ok"}, headers=NO_STORE)

    @router.get("/readyz", tags=["operation"], responses=problem_responses("not_ready"))
    def readyz() -> JSONResponse:
        """Readiness: database reachable, an active signing key, revocation lists not stale."""
        checks = service.readiness()
        failing = sorted(name for name, state in checks.items() if state != "ok")
        if failing:
            raise ProblemError(
                "not_ready",
                "the service is not ready",
                headers=NO_STORE,
                checks=checks,
                not_ready=failing,
            )
        return JSONResponse({"status": "ready", "checks": checks}, headers=NO_STORE)

    if service.settings.metrics.enabled:
        allowed = parse_networks(service.settings.metrics.allowed_networks)

        @router.get("/metrics", tags=["operation"], responses=problem_responses("not_found"))
        def metrics(request: Request) -> Response:
            """Prometheus text exposition, for callers in ``metrics.allowed_networks``."""
            address = limits.address(request)
            if address is None or not any(address in network for network in allowed):
                raise ProblemError("not_found", "no such resource", status=404)
            body, content_type = service.metrics.render()
            return Response(body, media_type=content_type, headers=NO_STORE)

    return router
