"""Core routes: liveness, readiness, metrics, JWKS, metadata, status lists, challenge,
renewal.

Each decodes, calls, responds. ``responses=`` document the problem codes of each endpoint
(attester/openapi.py); limited routes start with the per-IP check (attester/ratelimit.py).
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from attester.json_routes import lean
from attester.documents import Document, DocumentSource, etag_matches
from attester.errors import ProblemError
from attester.openapi import (
    CHALLENGE_PROBLEMS,
    INTEGRITY_PROBLEMS,
    ISSUANCE_PROBLEMS,
    JWK_PROBLEMS,
    KEY_PROOF_PROBLEMS,
    RECEIPT_PROBLEMS,
    REQUEST_PROBLEMS,
    problem_responses,
)
from attester.ratelimit import parse_networks
from attester.service import AttesterService
from attester.status_list import MEDIA_TYPE as STATUS_LIST_MEDIA_TYPE
from attester.status_list import PATH as STATUS_LIST_PATH
from attester.status_list import SignedList
from keys.jwks import JwksDocument

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
    # Android: the stored chain and KeyDescription are re-checked; both platforms: the
    # root the instance was attested under must still be trusted
    "chain_untrusted",
    "certificate_revoked",
    "revocation_list_stale",
    "revocation_list_unavailable",
    "policy_violation",
    # Apple: the app's current environment, an App Attest assertion over fresh client_data
    "environment_mismatch",
    "client_data_malformed",
    "client_data_challenge_mismatch",
    "client_data_key_mismatch",
    *JWK_PROBLEMS,
    "assertion_malformed",
    "assertion_signature_invalid",
    "app_id_mismatch",
    "counter_not_increasing",
    # Android: a Play Integrity token sent with (or required for) the renewal
    *INTEGRITY_PROBLEMS,
    # Apple: the fraud metric, when the app caps it and the stored receipt is due for refresh
    *RECEIPT_PROBLEMS,
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

    sources: dict[str, DocumentSource] = {JWKS_PATH: jwks, METADATA_PATH: metadata}
    for list_id in range(service.settings.status_list.count):  # at most 64 lists
        sources[STATUS_LIST_PATH.format(list_id=list_id)] = _status_list_source(service, list_id)
    return sources


def _status_list_source(service: AttesterService, list_id: int) -> DocumentSource:
    """Status list ``list_id`` as cached bytes while ``StatusLists.fresh`` has it (no I/O).

    When it is stale (due for its version check, re-signing or never built), this returns
    None and the request goes on to the ``/statuslists/{list_id}`` route, which does the
    database check in a worker thread. The route answers with the same bytes and headers.
    """
    cache_control = f"public, max-age={service.settings.status_list.ttl}"
    memo: list[tuple[SignedList, Document]] = []

    def source() -> Document | None:
        signed = service.status_lists.fresh(list_id)
        if signed is None:
            return None
        if not memo or memo[0][0].token is not signed.token:
            memo[:] = [(signed, Document(signed.token, signed.etag, STATUS_LIST_MEDIA_TYPE, cache_control))]
        return memo[0][1]

    return source


def build_core_router(service: AttesterService) -> APIRouter:
    router = APIRouter()
    limits = service.rate_limits

    sources = document_sources(service)

    def published(path: str, if_none_match: str | None) -> Response:
        document = sources[path]()
        if document is None:  # only status lists are ever absent, and they are not served here
            raise ProblemError("not_found", "no such resource", status=404)
        headers = {"Cache-Control": document.cache_control, "ETag": document.etag}
        if if_none_match is not None and etag_matches(if_none_match, document.etag):
            return Response(status_code=304, headers=headers)
        return Response(document.body, media_type=document.media_type, headers=headers)

    # GET of these two is answered from cached bytes by CachedDocuments before the router;
    # the routes give them their OpenAPI entries and metrics labels (and serve HEAD-less tests)
    @router.get(JWKS_PATH, responses=problem_responses("internal_error"))
    async def jwks(if_none_match: Annotated[str | None, Header()] = None) -> Response:
        return published(JWKS_PATH, if_none_match)

    @router.get(METADATA_PATH, responses=problem_responses("internal_error"))
    async def metadata(if_none_match: Annotated[str | None, Header()] = None) -> Response:
        return published(METADATA_PATH, if_none_match)

    @router.get(
        STATUS_LIST_PATH,
        responses=problem_responses("not_found", "signing_key_unavailable"),
    )
    async def status_list(
        list_id: str, if_none_match: Annotated[str | None, Header()] = None
    ) -> Response:
        """The Status List Token (draft-ietf-oauth-status-list): cached signed bytes, served
        from the event loop; only a version check or a re-signing goes to a worker thread.

        ``list_id`` as the JWTs' uri writes it: digits, no leading zero (an int parameter
        also took 00, -0, 0.0 and 1_0, one document under several URLs; found in review)."""
        canonical = len(list_id) <= 9 and list_id.isascii() and list_id.isdigit()
        if not canonical or str(int(list_id)) != list_id:
            raise ProblemError("not_found", "no such status list")
        number = int(list_id)
        signed = service.status_lists.fresh(number) or await run_in_threadpool(
            service.status_lists.token, number
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

    @router.post("/v1/challenge", responses=problem_responses(*CHALLENGE_ENDPOINT_PROBLEMS))
    async def challenge(request: Request) -> JSONResponse:
        await limits.check_ip_async("challenge", request)
        return JSONResponse(service.new_challenge(), headers=NO_STORE)

    @router.post("/v1/attestations/renew", responses=problem_responses(*RENEWAL_PROBLEMS))
    @lean
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
