"""The admin HTTP API under ``/admin/v1/`` (off by default; see :mod:`attester.admin`).

Every route needs ``Authorization: Bearer <token>``; a missing or unknown token gets 401
``admin_unauthorized``. Routes decode, call one :class:`~attester.admin.Admin` method, respond.
"""

# no `from __future__ import annotations`: FastAPI must see the local `Actor` dependency

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from attester.admin import Admin, authenticate
from attester.errors import ProblemError
from attester.routes import NO_STORE

PREFIX = "/admin/v1"

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
RELOAD: Responses = {**AUTH, 422: {"description": "registry_invalid", **_PROBLEM}}


class StatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(min_length=1, max_length=500)]


def build_admin_router(admin: Admin, *, config: Path | None) -> APIRouter:
    tokens = admin.service.settings.admin.tokens

    def actor(authorization: Annotated[str | None, Header()] = None) -> str:
        scheme, _, presented = (authorization or "").partition(" ")
        name = authenticate(tokens, presented.strip()) if scheme.lower() == "bearer" else None
        if name is None:
            raise ProblemError("admin_unauthorized", "a valid admin bearer token is required")
        return name

    Actor = Annotated[str, Depends(actor)]
    router = APIRouter(prefix=PREFIX)

    def ok(body: Any) -> JSONResponse:
        return JSONResponse(body, headers=NO_STORE)

    @router.get("/instances", responses=AUTH)
    def list_instances(
        _: Actor,
        client_id: Annotated[str | None, Query(max_length=255)] = None,
        platform: Annotated[str | None, Query(max_length=16)] = None,
        key_thumbprint: Annotated[str | None, Query(max_length=64)] = None,
        status: Literal["active", "suspended", "revoked"] | None = None,
        after: Annotated[str | None, Query(max_length=36)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
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
        _: Actor, instance_id: Annotated[str, PathParam(max_length=36)]
    ) -> JSONResponse:
        return ok(admin.show_instance(instance_id))

    @router.post("/instances/{instance_id}/{action}", responses=CHANGE)
    def change_status(
        who: Actor,
        instance_id: Annotated[str, PathParam(max_length=36)],
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
        target: Annotated[str | None, Query(max_length=255)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JSONResponse:
        return ok({"audit": admin.audit(target=target, limit=limit)})

    return router
