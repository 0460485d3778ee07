"""Core routes: health, JWKS, metadata, challenge, renewal. Each decodes, calls, responds."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from attester.errors import ProblemError
from attester.service import AttesterService

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

ShortText = Annotated[str, Field(max_length=4096)]


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

    @router.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            service.ready()
        except Exception:  # noqa: BLE001 - readiness reports, it does not raise
            raise ProblemError("not_ready", "the service is not ready", status=503) from None
        return JSONResponse({"status": "ok"}, headers=NO_STORE)

    @router.get("/.well-known/jwks.json")
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

    @router.get("/.well-known/client-attester")
    async def metadata() -> JSONResponse:
        return JSONResponse(
            service.metadata(),
            headers={"Cache-Control": f"public, max-age={service.settings.jwks_max_age}"},
        )

    @router.post("/v1/challenge")
    async def challenge() -> JSONResponse:
        return JSONResponse(service.new_challenge(), headers=NO_STORE)

    @router.post("/v1/attestations/renew")
    def renew(body: RenewRequest) -> JSONResponse:
        request: dict[str, Any] = body.model_dump()
        return JSONResponse(service.renew(request), headers=NO_STORE)

    return router
