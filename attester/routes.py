"""Core routes: health, JWKS, status lists, metadata, challenge, renewal. Each decodes, calls, responds."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from attester.errors import ProblemError
from attester.service import AttesterService
from attester.status_list import MEDIA_TYPE as STATUS_LIST_MEDIA_TYPE

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


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match by weak comparison, ``*`` matching anything (RFC 9110 section 13.1.2):
    a cache or proxy that marked our tag weak (``W/``) still gets its 304."""
    if if_none_match is None:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


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
        if _etag_matches(if_none_match, document.etag):
            return Response(status_code=304, headers=headers)
        return Response(document.body, media_type="application/jwk-set+json", headers=headers)

    @router.get("/statuslists/{list_id}")
    async def status_list(
        list_id: int, if_none_match: Annotated[str | None, Header()] = None
    ) -> Response:
        """The Status List Token (draft-ietf-oauth-status-list): cached signed bytes, served
        from the event loop; only a version check or a re-signing goes to a worker thread."""
        signed = service.status_lists.fresh(list_id) or await run_in_threadpool(
            service.status_lists.token, list_id
        )
        if signed is None:
            raise ProblemError("not_found", "no such status list")
        headers = {
            "Cache-Control": f"public, max-age={service.settings.status_list.ttl}",
            "ETag": signed.etag,
        }
        if _etag_matches(if_none_match, signed.etag):
            return Response(status_code=304, headers=headers)
        return Response(signed.token, media_type=STATUS_LIST_MEDIA_TYPE, headers=headers)

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
