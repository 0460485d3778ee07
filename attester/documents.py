"""Published documents (JWKS, metadata, ...) served as cached bytes with a strong ETag.

These documents are fetched far more often than anything else (every AS refreshes the
JWKS), and their bytes only change on a key rotation. Routing them through FastAPI
(dependency resolution, a Response object per request) cost about four times the work of
answering from cached bytes, so this pure ASGI layer answers ``GET`` for the paths it
knows, before the router, with ``ETag`` / ``If-None-Match`` (RFC 9110 section 13.1.2)
and ``Cache-Control``; other methods on those paths get the 405 problem. Every other
request passes through untouched, and so does a ``GET`` whose source has no document
ready without I/O (it returns None): the router's route then does the slow part (e.g. the
status list's database version check, in a worker thread, never on the event loop).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Document:
    """Bytes to publish, their ETag and the response headers they go out with."""

    body: bytes
    etag: str
    media_type: str
    cache_control: str

    @classmethod
    def of(cls, body: bytes, *, media_type: str, cache_control: str) -> Document:
        return cls(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"', media_type, cache_control)

    def headers(self, *, with_body: bool) -> list[tuple[bytes, bytes]]:
        out = [(b"etag", self.etag.encode()), (b"cache-control", self.cache_control.encode())]
        if with_body:
            out += [
                (b"content-type", self.media_type.encode()),
                (b"content-length", str(len(self.body)).encode()),
            ]
        return out


#: path -> a callable returning the current document (it does its own caching), or None
#: when it has none ready without I/O: the request then goes on to the router
DocumentSource = Callable[[], Document | None]


def etag_matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match by weak comparison, ``*`` matching anything (RFC 9110 section 13.1.2):
    a cache or proxy that marked our tag weak (``W/``) still gets its 304."""
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag.removeprefix("W/") in tags


class CachedDocuments:
    """Pure ASGI middleware answering ``GET <path>`` from ``sources``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        sources: dict[str, DocumentSource],
        method_not_allowed: Callable[[], ASGIApp],
    ) -> None:
        self.app = app
        self.sources = sources
        self.method_not_allowed = method_not_allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        source = self.sources.get(scope["path"]) if scope["type"] == "http" else None
        if source is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "GET":
            await self.method_not_allowed()(scope, receive, send)
            return
        try:
            document = source()
        except Exception:  # noqa: BLE001 - e.g. no usable key: the route answers it as a problem
            document = None
        if document is None:  # not ready without I/O: the route does it off the event loop
            await self.app(scope, receive, send)
            return
        if_none_match = next((v for k, v in scope["headers"] if k == b"if-none-match"), None)
        if if_none_match is not None and etag_matches(if_none_match.decode("latin-1"), document.etag):
            await send({"type": "http.response.start", "status": 304, "headers": document.headers(with_body=False)})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 200, "headers": document.headers(with_body=True)})
        await send({"type": "http.response.body", "body": document.body})
