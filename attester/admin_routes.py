"""The admin HTTP API under ``/admin/v1/`` (off by default; see :mod:`attester.admin`).

Every route needs ``Authorization: Bearer <token>``; a missing or unknown token gets 401
``admin_unauthorized`` with ``WWW-Authenticate: Bearer`` (RFC 6750 section 3). The check runs
in the route class, before FastAPI reads the body or validates a parameter, so a caller
without a token learns nothing about a route's shape. Routes decode, call one
:class:`~attester.admin.Admin` method, respond.
"""

# no `from __future__ import annotations`: FastAPI must see the local `Actor` dependency

import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from attester.admin import LIMIT_MAX, REASON_MAX, Admin, authenticate
from attester.errors import ProblemError
from attester.routes import NO_STORE
from attester.settings import AdminToken

PREFIX = "/admin/v1"

log = logging.getLogger(__name__)

# documented problem codes per route (OpenAPI ``responses``)
Responses = dict[int | str, dict[str, Any]]
_PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
AUTH: Responses = {401: {"description": "admin_unauthorized", **_PROBLEM}}
FOUND: Responses = {**AUTH, 404: {"description": "instance_not_found", **_PROBLEM}}
CHANGE: Responses = {
    **FOUND,
    409: {"description": "instance_status_conflict", **_PROBLEM},
    422: {"description": "invalid_request", **_PROBLEM},
}
RELOAD: Responses = {
    **AUTH,
    422: {"description": "registry_invalid", **_PROBLEM},
    503: {"description": "registry_unpublished", **_PROBLEM},
}


# no control characters (PostgreSQL refuses NUL in text: that would be a 500, not a 4xx)
TEXT = r"^[^\x00-\x1f\x7f]*$"


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=REASON_MAX, pattern=TEXT)]


def bearer_name(tokens: tuple[AdminToken, ...], authorization: str | None) -> str | None:
    """The name of the admin token in an ``Authorization: Bearer`` header, else None."""
    scheme, _, presented = (authorization or "").partition(" ")
    return authenticate(tokens, presented.strip()) if scheme.lower() == "bearer" else None


def authenticated_route(tokens: tuple[AdminToken, ...]) -> type[APIRoute]:
    """An APIRoute class that refuses a request without a valid token before anything else."""
    from attester.app import problem_response

    class AdminRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def authenticated(request: Request) -> Response:
                name = bearer_name(tokens, request.headers.get("authorization"))
                if name is None:
                    # never the presented token: a log reader must not become an admin
                    log.warning("admin authentication failed", extra={"fields": {"path": self.path}})
                    return problem_response(
                        ProblemError("admin_unauthorized", "a valid admin bearer token is required"),
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                request.state.admin_actor = name
                return await handler(request)

            return authenticated

    return AdminRoute


def actor(request: Request) -> str:
    """Who is acting (the token's name), as the route class authenticated it."""
    return str(request.state.admin_actor)


Actor = Annotated[str, Depends(actor)]


def build_admin_router(admin: Admin, *, config: Path | None) -> APIRouter:
    router = APIRouter(prefix=PREFIX, route_class=authenticated_route(admin.service.settings.admin.tokens))

    def ok(body: Any) -> JSONResponse:
        return JSONResponse(body, headers=NO_STORE)

    @router.get("/instances", responses=AUTH)
    def list_instances(
        _: Actor,
        client_id: Annotated[str | None, Query(max_length=255, pattern=TEXT)] = None,
        platform: Annotated[str | None, Query(max_length=16, pattern=TEXT)] = None,
        key_thumbprint: Annotated[str | None, Query(max_length=64, pattern=TEXT)] = None,
        status: Literal["active", "suspended", "revoked"] | None = None,
        after: Annotated[str | None, Query(max_length=36, pattern=TEXT)] = None,
        limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 100,
    ) -> JSONResponse:
        return ok(
            {
                "instances": admin.list_instances(
                    client_id=client_id,
                    platform=platform,
                    key_thumbprint=key_thumbprint,
                    status=status,
                    after=after,
                    limit=limit,
                )
            }
        )

    @router.get("/instances/{instance_id}", responses=FOUND)
    def show_instance(
        _: Actor, instance_id: Annotated[str, PathParam(max_length=36, pattern=TEXT)]
    ) -> JSONResponse:
        return ok(admin.show_instance(instance_id))

    @router.post("/instances/{instance_id}/{action}", responses=CHANGE)
    def change_status(
        who: Actor,
        instance_id: Annotated[str, PathParam(max_length=36, pattern=TEXT)],
        action: Literal["revoke", "suspend", "reinstate"],
        body: StatusChange,
    ) -> JSONResponse:
        return ok(admin.change_status(instance_id, action, actor=who, reason=body.reason))

    @router.get("/apps", responses=AUTH)
    def apps(_: Actor) -> JSONResponse:
        return ok({"apps": admin.apps()})

    @router.post("/apps/reload", responses=RELOAD)
    def reload_apps(who: Actor) -> JSONResponse:
        return ok(admin.reload_apps(actor=who, config=config))

    @router.get("/keys", responses=AUTH)
    def keys(_: Actor) -> JSONResponse:
        return ok({"keys": admin.keys()})

    @router.get("/audit", responses=AUTH)
    def audit(
        _: Actor,
        target: Annotated[str | None, Query(max_length=255, pattern=TEXT)] = None,
        limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 100,
    ) -> JSONResponse:
        return ok({"audit": admin.audit(target=target, limit=limit)})

    return router
