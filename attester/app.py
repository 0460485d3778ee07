"""The FastAPI application, built by :func:`create_app` (nothing happens at import)."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import ModuleType
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from attester import logs
from attester.json_routes import JsonEndpoints, lean_endpoints
from attester.documents import CachedDocuments
from attester.errors import PROBLEM_JSON, ProblemError, from_verification, loggable
from attester.metrics import metrics_from_environment
from attester.routes import build_core_router, document_sources
from attester.service import AttesterService, Clock, build_service, utcnow
from attester.settings import Settings, load_settings
from attester.storage.group_commit import StorageBusy, storage_outage
from keys.pkcs11 import Pkcs11Error
from keys.store import KeyStoreError
from platform_verifiers.errors import VerificationError

log = logging.getLogger("attester.http")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Each platform module offers ``plug_in(service) -> (Platform, APIRouter)``.
PLATFORM_MODULES = ("attester.platforms.android", "attester.platforms.apple")


def _platform_modules() -> Iterator[ModuleType]:
    """The installed platform modules (a missing one is simply not offered)."""
    import importlib

    for module_name in PLATFORM_MODULES:
        try:
            yield importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise


def validate_platform_rules(settings: Settings) -> None:
    """The registry rules the platform modules add (module-level ``validate_settings``);
    raises ConfigError. The running service applies them when it builds its platforms."""
    for module in _platform_modules():
        validate = getattr(module, "validate_settings", None)
        if validate is not None:
            validate(settings)


def problem_response(error: ProblemError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        error.body(logs.request_id.get()),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


#: FastAPI's own OpenTelemetry spans, metrics and logs: off (metrics and the access log are
#: ours: attester/metrics.py, RequestContext). On, FastAPI looks up the OpenTelemetry
#: providers, environment variables included, on every request: 1.6% of a registration's CPU.
NO_OPENTELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def _json_media_type(headers: list[tuple[bytes, bytes]]) -> bool:
    """The first Content-Type is ``application/json`` or ``application/<x>+json`` (the one
    FastAPI reads: a second header, or ``text/x+json``, does not make a body JSON)."""
    value = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    media = value.decode("latin-1").split(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def _utf8_json_text(body: bytes) -> bool:
    """Whether ``body`` can be a JSON text in UTF-8: it decodes, and holds no NUL byte (in
    UTF-8 JSON a NUL is escaped inside strings and invalid outside them). Python's
    ``json.loads`` of bytes guesses UTF-16 and -32 from where NULs fall, and the parsers
    behind both request paths took such bodies (found in review)."""
    if b"\x00" in body:
        return False
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class RequestContext:
    """Pure ASGI middleware: request id, JSON access log, body size limit.

    The body is read (up to the limit) before the app sees it, so an oversized or
    endless body is answered 413 without buffering more than ``max_body`` bytes.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        observe: Callable[[Scope, int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        # metrics: called once per request with the scope (its route), status and duration
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        supplied = headers.get("x-request-id", "")
        rid = supplied if _REQUEST_ID.fullmatch(supplied) else secrets.token_hex(8)
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        status_holder = [500]
        observed = False

        def observe() -> float:
            nonlocal observed
            elapsed = time.perf_counter() - started
            if self.observe is not None and not observed:
                self.observe(scope, status_holder[0], elapsed)
            observed = True
            return elapsed

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # counted before the last byte leaves: a client that saw the response and
                # then scrapes /metrics (on any worker) sees the request counted
                observe()
            await send(message)

        try:
            body = await self._read_body(headers, receive)
            if body and scope.get("method") == "POST" and not _json_media_type(scope["headers"]):
                response = problem_response(
                    ProblemError("unsupported_media_type", "send application/json", status=415)
                )
                await response(scope, receive, send_with_id)
                return
            if body and not _utf8_json_text(body):
                response = problem_response(
                    ProblemError("malformed_request", "the JSON body is not UTF-8 (RFC 8259 8.1)")
                )
                await response(scope, receive, send_with_id)
                return
            if body is None:
                response = problem_response(
                    ProblemError(
                        "request_too_large",
                        "the request body exceeds the size limit",
                        limit=self.max_body,
                    ),
                    headers={"connection": "close"},
                )
                await response(scope, receive, send_with_id)
                return
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send_with_id)
        finally:
            elapsed = observe()
            log.info(
                "request",
                extra={
                    "fields": {
                        "request_id": rid,
                        "method": scope.get("method"),
                        "path": scope.get("path"),
                        "status": status_holder[0],
                        "duration_ms": round(elapsed * 1000, 2),
                    }
                },
            )
            logs.request_id.reset(token)

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | None:
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        log.info("rejected", extra={"fields": {"code": exc.code, "status": exc.status}})
        return problem_response(exc, headers=exc.headers)

    @app.exception_handler(VerificationError)
    async def _verification(_: Request, exc: VerificationError) -> JSONResponse:
        problem = from_verification(exc)
        log.info(
            "evidence rejected",
            extra={"fields": {"code": problem.code, "detail": loggable(exc)}},
        )
        return problem_response(problem)

    async def _no_signer(_: Request, exc: Exception) -> JSONResponse:
        # nothing can be signed (issuance, Status List Tokens, the JWKS): no key, or the HSM
        # refuses; the operator's fault, not the caller's; the reason stays in the log
        log.error("no usable signing key: %s", exc)
        return problem_response(
            ProblemError("signing_key_unavailable", "no signing key is available; try again later")
        )

    app.add_exception_handler(KeyStoreError, _no_signer)
    app.add_exception_handler(Pkcs11Error, _no_signer)

    async def _no_storage(request: Request, exc: Exception) -> JSONResponse:
        if not storage_outage(exc):  # a schema mismatch, a corrupt file: a bug, not an outage
            return await _internal(request, exc)
        # the database cannot be reached or stays locked: our fault, retryable; the driver's
        # message (paths, SQL, host names) stays in the log
        log.error("database unavailable: %s", type(exc).__name__, exc_info=exc)
        return problem_response(
            ProblemError("storage_unavailable", "the database is unavailable; try again later"),
            headers={"retry-after": "1"},
        )

    for kind in (OperationalError, InterfaceError, PoolTimeout, StorageBusy):
        app.add_exception_handler(kind, _no_storage)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem_response(
                ProblemError("malformed_request", "the request body is not valid JSON")
            )
        # report where and what kind of problem, never the caller's values
        fields = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "type": e.get("type")}
            for e in errors[:20]
        ]
        return problem_response(
            ProblemError("invalid_request", "the request does not match the expected shape", errors=fields)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}
        code = codes.get(exc.status_code, "malformed_request")
        titles = {
            "not_found": "no such resource",
            "method_not_allowed": "method not allowed on this resource",
            "unsupported_media_type": "send application/json",
            "malformed_request": "the request cannot be processed",
        }
        return problem_response(ProblemError(code, titles[code], status=exc.status_code))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return problem_response(ProblemError("internal_error", "internal error", status=500))


class FollowRegistry:
    """Pure ASGI middleware: before a request, apply an app registry reload another process
    of this replica published (attester/registry_sync.py): one request a second reads the
    marker, in a thread, and re-reads the configuration when it names another registry."""

    def __init__(self, app: ASGIApp, *, service: AttesterService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.service.registry.claim():
            from attester.admin import follow_registry

            await run_in_threadpool(follow_registry, self.service)
        await self.app(scope, receive, send)


class HeadAsGet:
    """Pure ASGI middleware: ``HEAD`` is answered as ``GET`` (RFC 9110 9.3.2: the same
    headers, no content; uvicorn leaves the body out for a HEAD request). The routes are
    declared GET only, and caches and monitors ask the JWKS, the status lists and
    ``/healthz`` with HEAD (they got 405: found in review). A route that takes no GET
    answers HEAD as it answers GET: 405."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


def _admin_router(service: AttesterService) -> APIRouter:
    from attester.admin import Admin
    from attester.admin_routes import build_admin_router

    return build_admin_router(Admin.of(service), config=type(service.settings).toml_path)


def create_admin_app(service: AttesterService) -> FastAPI:
    """The admin API alone, for its own listen address (``admin.port``)."""
    app = FastAPI(
        title="Client Attester admin",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        telemetry=NO_OPENTELEMETRY,
        redirect_slashes=False,  # (as the service's app, below)
    )
    app.state.service = service
    app.include_router(_admin_router(service))
    _install_error_handlers(app)
    app.add_middleware(HeadAsGet)
    app.add_middleware(FollowRegistry, service=service)
    app.add_middleware(RequestContext, max_body=service.settings.max_body_bytes)
    return app


def _lifespan(service: AttesterService) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Runs the periodic purge (``purge_interval``) while the app serves."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        interval = service.settings.purge_interval
        task = asyncio.create_task(_purge_periodically(service, interval)) if interval else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            # an exiting worker is behind no reload: its last value stays in the metrics
            # directory (the gauge is the maximum over every worker's file)
            service.metrics.registry_behind.set(0)

    return lifespan


async def _purge_periodically(service: AttesterService, interval: int) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(service.purge)
        except Exception:  # the next round retries; serving goes on
            log.exception("purge failed")


def create_app(
    settings: Settings,
    *,
    clock: Clock = utcnow,
    service: AttesterService | None = None,
    lean: bool = True,
) -> FastAPI:
    """Build the service and its HTTP interface from ``settings``.

    The admin API is mounted here only when it is enabled without a port of its own.
    ``lean``: the registrations and the renewal answered before FastAPI's router
    (attester/json_routes.py); False leaves every request to FastAPI (for the tests that
    compare the two).
    """
    service = service or build_service(settings, clock=clock, metrics=metrics_from_environment())
    routers: list[APIRouter] = [build_core_router(service)]
    if settings.admin.enabled and settings.admin.port is None:
        routers.append(_admin_router(service))
    for module in _platform_modules():
        platform, router = module.plug_in(service)
        service.platforms[platform.name] = platform
        routers.append(router)

    app = FastAPI(
        title="Client Attester",
        version="0.1.0",
        description=API_DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan(service),
        openapi_url="/openapi.json" if settings.docs.enabled else None,
        telemetry=NO_OPENTELEMETRY,
        # Starlette answered a path with a trailing slash 307 to the Host header's origin: a
        # client following it re-sent its POST (its evidence) there (found in review); 404
        redirect_slashes=False,
    )
    app.state.service = service
    for router in routers:
        app.include_router(router)
    if settings.docs.enabled:
        _install_docs(app, settings)
    _install_error_handlers(app)
    service.metrics.bind_routes(app)
    # inside RequestContext (request id, access log, metrics), before the router: the
    # registrations and the renewal (attester/json_routes.py), then the published documents
    app.add_middleware(
        JsonEndpoints,
        endpoints=lean_endpoints(routers) if lean else {},
        exception_handlers=lambda: app.exception_handlers,
    )
    app.add_middleware(
        CachedDocuments,
        sources=document_sources(service),
        method_not_allowed=lambda: problem_response(
            ProblemError("method_not_allowed", "method not allowed on this resource", status=405)
        ),
    )
    app.add_middleware(HeadAsGet)
    app.add_middleware(FollowRegistry, service=service)
    app.add_middleware(
        RequestContext,
        max_body=settings.max_body_bytes,
        observe=service.metrics.observe_request if settings.metrics.enabled else None,
    )
    return app


API_DESCRIPTION = (
    "Verifies Android Key Attestation and Apple App Attest evidence and issues Client "
    "Attestation JWTs (draft-ietf-oauth-attestation-based-client-auth). Every rejection is "
    "RFC 9457 application/problem+json with a stable `code`; each operation lists the codes "
    "it can answer with (also as `x-problem-codes` in each response)."
)


def _install_docs(app: FastAPI, settings: Settings) -> None:
    """Swagger UI at /docs over /openapi.json; its assets' URLs are settings."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Client Attester API",
            swagger_js_url=settings.docs.swagger_js_url,
            swagger_css_url=settings.docs.swagger_css_url,
            swagger_favicon_url="data:,",
        )


def app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --factory`` workers: settings from ATTESTER_CONFIG + environment."""
    import os
    from pathlib import Path

    config = os.environ.get("ATTESTER_CONFIG")
    settings = load_settings(Path(config) if config else None)
    logs.configure(settings.log_level)
    app = create_app(settings)
    freeze_startup_heap()
    return app


def freeze_startup_heap() -> None:
    """Keep what start-up built out of the garbage collector's scans (``gc.freeze``).

    A serving process's modules, settings and service (some 150k objects, nearly all of
    them kept as long as the process runs) were scanned again by every full collection:
    ~130 ms each on the benchmark machine, one or two per worker in 3,000 registrations
    (bench/bench_all.py, register), a pause for every request of that worker. One
    collection first, so no garbage is kept. For ``attester serve`` only: tests build many
    apps in one process.
    """
    gc.collect()
    gc.freeze()


__all__ = [
    "app_from_environment",
    "create_admin_app",
    "create_app",
    "freeze_startup_heap",
    "problem_response",
]
