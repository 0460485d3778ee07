"""Core routes: health, status lists, challenge, renewal (each decodes, calls, responds); JWKS and
metadata documents."""

from __future__ import annotations

import functools
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from attester.documents import Document, DocumentSource, etag_matches
from attester.errors import ProblemError
from attester.service import AttesterService
from attester.status_list import MEDIA_TYPE as STATUS_LIST_MEDIA_TYPE
from keys.jwks import JwksDocument

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
    # Android: a fresh Play Integrity token (checked when sent; see attester/android_integrity.py)
    integrity_token: Annotated[str | None, Field(max_length=16384)] = None


JWKS_PATH = "/.well-known/jwks.json"
METADATA_PATH = "/.well-known/client-attester"


def document_sources(service: AttesterService) -> dict[str, DocumentSource]:
    """The published documents, by path, served as cached bytes by ``CachedDocuments``."""
    cache_control = f"public, max-age={service.settings.jwks_max_age}"
    jwks_memo: list[tuple[JwksDocument, Document]] = []

    def jwks() -> Document:
        current = service.jwks()  # one stat of keys.json; the document is cached in the store
        if not jwks_memo or jwks_memo[0][0] is not current:
            jwks_memo[:] = [
                (current, Document(current.body, current.etag, "application/jwk-set+json", cache_control))
            ]
        return jwks_memo[0][1]

    @functools.cache
    def metadata() -> Document:
        # fixed once the platforms are plugged in (on the first request, after create_app)
        return Document.of(orjson.dumps(service.metadata()), media_type="application/json", cache_control=cache_control)

    return {JWKS_PATH: jwks, METADATA_PATH: metadata}


def build_core_router(service: AttesterService) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz")
    def healthz() -> JSONResponse:
        try:
            service.ready()
        except Exception:  # noqa: BLE001 - readiness reports, it does not raise
            raise ProblemError("not_ready", "the service is not ready", status=503) from None
        return JSONResponse({"status": "ok"}, headers=NO_STORE)

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
        if if_none_match is not None and etag_matches(if_none_match, signed.etag):
            return Response(status_code=304, headers=headers)
        return Response(signed.token, media_type=STATUS_LIST_MEDIA_TYPE, headers=headers)

    @router.post("/v1/challenge")
    async def challenge() -> JSONResponse:
        return JSONResponse(service.new_challenge(), headers=NO_STORE)

    @router.post("/v1/attestations/renew")
    def renew(body: RenewRequest) -> JSONResponse:
        request: dict[str, Any] = body.model_dump()
        return JSONResponse(service.renew(request), headers=NO_STORE)

    return router
