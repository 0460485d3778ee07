"""uvicorn's httptools protocol with the limits it lacks: a request head's size and time.

uvicorn's httptools protocol (the fast one: see cli.py) bounds neither: a header of
200 MiB sent without its end grew a worker by ~400 MB, and a connection that sends
nothing, or a head a byte at a time, or a body slower than its Content-Length, stayed
open for good (its keep-alive timer starts only after a response), so a client could hold
every descriptor of a worker (found in review). This protocol refuses, in the problem+json
form of every other refusal:

* a request head (request line and headers) over :data:`MAX_HEAD_BYTES`, or with more
  than :data:`MAX_HEADERS` headers: 431 ``request_headers_too_large``;
* a head not complete :data:`HEAD_SECONDS` after the connection opened, or after the last
  response on it: 408 ``request_timeout`` (a connection that sent nothing is just closed);
* a body not complete :data:`BODY_SECONDS` after its head: the connection is closed (the
  application is then told the client went away, as for any disconnect);
* what the parser refuses (a malformed request line, two Content-Lengths, ...): 400
  ``http_request_malformed``, where uvicorn answered ``text/plain``.

A head is counted twice: the bytes received while it is incomplete, so that one never
finished cannot grow past the limit by more than a read (uvloop reads 256 KiB at most),
and the URL and headers the parser hands over, so that one complete within one read is
measured exactly. Nothing here runs once a head is complete, except the body's timer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from attester.errors import PROBLEM_JSON, PROBLEM_TYPE_BASE, STATUS

#: the access log's logger: these refusals happen before a request reaches the application
log = logging.getLogger("attester.http")

#: request line and headers together (nginx's default buffers: 4 x 8 KiB)
MAX_HEAD_BYTES = 32 * 1024
MAX_HEADERS = 100
#: from the connection (or the last response on it) to the end of the next request's head
HEAD_SECONDS = 10.0
#: from the end of a request's head to the end of its body
BODY_SECONDS = 30.0

_TITLES = {
    "request_headers_too_large": "the request head exceeds the size limit",
    "request_timeout": "the request did not arrive in time",
    "http_request_malformed": "the request is not valid HTTP/1.1",
}


class _Refused(Exception):
    """Raised in a parser callback to stop the parser: the head is refused."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def problem_bytes(code: str, **detail: Any) -> bytes:
    """A whole HTTP/1.1 response: the problem for ``code``, then the connection closes."""
    status = STATUS[code]
    body = orjson.dumps(
        {"type": PROBLEM_TYPE_BASE + code, "title": _TITLES[code], "status": status,
         "code": code, **detail}
    )
    return b"".join(
        (
            STATUS_LINE[status],
            b"content-type: " + PROBLEM_JSON.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        )
    )


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with the limits of this module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_open = True  # waiting for (the rest of) a request head
        self._head_bytes = 0  # received while the head was incomplete, past its first read
        self._head_seen = 0  # the URL and headers the parser handed over
        self._headers = 0
        self._begun = False  # a message began in the read being parsed
        self._head_begun = False  # a message began and its head is not complete
        self._body_pending = False  # a pipelined request's body, timed once it is read
        self._received = False  # anything arrived since the head timer started
        self._timer: asyncio.TimerHandle | None = None

    # -- timers ------------------------------------------------------------------------
    def _arm(self, seconds: float, handler: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, handler)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_expired(self) -> None:
        self._timer = None
        if self.transport.is_closing() or not self._head_open:
            return
        if self._received:
            self._log("request_timeout")
            self.transport.write(problem_bytes("request_timeout", limit_seconds=HEAD_SECONDS))
        self.transport.close()

    def _body_expired(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()  # the application sees the client go away

    def _wait_for_head(self) -> None:
        # (a head may have begun meanwhile: then the client sent something, and gets its 408)
        self._head_open, self._head_bytes, self._received = True, 0, self._head_begun
        self._arm(HEAD_SECONDS, self._head_expired)

    # -- the protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        self._received = True
        self._begun = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__ if isinstance(exc.__context__, _Refused) else None
            self._refuse(refused.code if refused else "http_request_malformed")
            return
        if self._head_open and not self._begun:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse("request_headers_too_large")

    def _refuse(self, code: str) -> None:
        self._disarm()
        if not self.transport.is_closing():
            if code == "request_headers_too_large":
                detail = {"limit": MAX_HEAD_BYTES, "max_headers": MAX_HEADERS}
            else:
                detail = {}
            self._log(code)
            self.transport.write(problem_bytes(code, **detail))
            self.transport.close()

    @staticmethod
    def _log(code: str) -> None:
        # as the application's own "rejected" line (no client address: the access log has none)
        log.info("rejected", extra={"fields": {"code": code, "status": STATUS[code]}})

    def send_400_response(self, msg: str) -> None:
        self._refuse("http_request_malformed")

    # -- parser callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = self._head_begun = True
        self._head_open, self._head_seen, self._headers = True, 0, 0

    def on_url(self, url: bytes) -> None:
        self._head_seen += len(url)
        if self._head_seen > MAX_HEAD_BYTES:
            raise _Refused("request_headers_too_large")
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_seen += len(name) + len(value) + 4
        self._headers += 1
        if self._head_seen > MAX_HEAD_BYTES or self._headers > MAX_HEADERS:
            raise _Refused("request_headers_too_large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = self._head_begun = False
        if self.cycle is not None and not self.cycle.response_complete:
            # pipelined behind a request still being answered: uvicorn stops reading until
            # that answer is out, so its body is timed from then (on_response_complete); timed
            # from now, a slow first answer let the timer close both (found in review)
            self._body_pending = True
        else:
            self._arm(BODY_SECONDS, self._body_expired)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_pending = False
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        if self._body_pending:  # the pipelined request uvicorn starts now: read its body
            self._body_pending = False
            self._arm(BODY_SECONDS, self._body_expired)
        elif self.timeout_keep_alive_task is not None:  # no request pipelined behind this one
            if self._head_begun:  # the next head has begun: our 408, not a silent keep-alive close
                self._unset_keepalive_if_required()
            self._wait_for_head()
