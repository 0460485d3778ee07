"""The JSON POST endpoints (registrations, renewal) answered before FastAPI's router.

FastAPI's request machinery around such an endpoint (matching the path against every route,
solving dependencies, ``json.loads`` of the body into a dict and validating the dict, five
middleware layers) cost 10-15% of a registration's CPU over HTTP: on 2 workers and 32
connections a throw-away bypass served 552 and 542 registrations/s where FastAPI served 475
and 496 (alternating runs). The routes stay FastAPI routes (the OpenAPI document, and every
request this layer does not take); marked with :func:`lean`, the same endpoint function is
called from here with the same arguments: the body parsed and validated by the same model
as FastAPI does it, and the Starlette request.

What FastAPI would answer is kept: a body that does not validate raises the same
``RequestValidationError`` (``loc`` under ``body``; an empty body is a missing one), and an
exception goes to the app's own exception handlers, looked up along its class's MRO (all of
them are async and keyed by class; Starlette's lookup by HTTP status is not needed). Three
differences, all deliberate: the endpoint runs on the event loop's thread (cooperative.py:
in a greenlet suspended where it would wait), where FastAPI runs a plain ``def`` in a
worker thread; an unexpected exception's 500 is answered here, inside RequestContext, so it
carries the request id (FastAPI answers it from its outermost layer, after the id is gone,
and re-raises it for uvicorn to log again; here the handler's "internal error" log is the
one record); and the paths are matched as sent, without a ``root_path`` (behind a proxy that
strips a prefix, requests go through FastAPI's router, as before).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from attester import cooperative
from attester.documents import ASGIApp, Receive, Scope, Send

F = TypeVar("F", bound=Callable[..., Response])


def lean(endpoint: F) -> F:
    """Mark a ``def endpoint(body: Model, request: Request)`` route for :class:`JsonEndpoints`."""
    endpoint.__lean_json__ = True  # type: ignore[attr-defined]
    return endpoint


@dataclass(frozen=True)
class _Endpoint:
    route: APIRoute
    call: Callable[..., Response]
    model: type[BaseModel]
    body: str  # the parameter names
    request: str


def lean_endpoints(routers: Iterable[APIRouter]) -> dict[str, _Endpoint]:
    """The POST paths of the routes marked :func:`lean` (of routers the app includes without
    a prefix); a marked route of another shape is a programming error, raised when the app
    is built."""
    found: dict[str, _Endpoint] = {}
    for route in (route for router in routers for route in router.routes):
        if not (isinstance(route, APIRoute) and getattr(route.endpoint, "__lean_json__", False)):
            continue
        call = route.endpoint
        parameters = inspect.signature(call, eval_str=True).parameters
        models = [n for n, p in parameters.items() if _is_model(p.annotation)]
        requests = [n for n, p in parameters.items() if p.annotation is Request]
        if (
            route.methods != {"POST"}
            or inspect.iscoroutinefunction(call)
            or len(parameters) != 2
            or len(models) != 1
            or len(requests) != 1
            or route.dependencies
        ):
            raise TypeError(f"{route.path}: a lean route is def f(body: Model, request: Request) on POST")
        found[route.path] = _Endpoint(route, call, parameters[models[0]].annotation, models[0], requests[0])
    return found


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


class JsonEndpoints:
    """Pure ASGI middleware: ``POST`` on a lean route's path, answered here."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        endpoints: Mapping[str, _Endpoint],
        exception_handlers: Callable[[], Mapping[Any, Callable[..., Any]]],
    ) -> None:
        self.app = app
        self.endpoints = endpoints
        self.exception_handlers = exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        # what the router would have set for the endpoint (nothing here reads it but, say, an
        # error reporter naming requests by their route would)
        scope["route"], scope["endpoint"], scope["path_params"] = endpoint.route, endpoint.call, {}
        request = Request(scope, receive)
        try:
            body = _validated(endpoint.model, await request.body())
            response = await cooperative.run(
                endpoint.call, **{endpoint.body: body, endpoint.request: request}
            )
        except Exception as exc:
            response = await self._handled(request, exc)
        await response(scope, receive, send)

    async def _handled(self, request: Request, exc: Exception) -> Response:
        handlers = self.exception_handlers()
        for kind in type(exc).__mro__:
            handler = handlers.get(kind)
            if handler is not None:
                response: Response = await handler(request, exc)
                return response
        raise exc


def _validated(model: type[BaseModel], body: bytes) -> BaseModel:
    """``body`` as ``model``, or the exception FastAPI raises for it (its steps: ``json.loads``,
    then the model's validation of the value, errors under ``body``)."""
    if not body:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
              "input": {}, "ctx": {"error": exc.msg}}]
        ) from None
    except Exception:  # bytes in no UTF encoding, nesting too deep (RecursionError): as FastAPI
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from None
    try:
        return model.model_validate(value, from_attributes=True)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        ) from None
