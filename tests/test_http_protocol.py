"""The HTTP layer's own limits (attester/http_protocol.py), over raw sockets to a real
uvicorn on loopback: a request head's size and time, a body's time, and the parser's
refusals, each answered as problem+json (or a closed connection) before any route."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from attester import http_protocol
from tests.support import LiveServer, live_server

GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"


@pytest.fixture
def address(server: LiveServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


@pytest.fixture
def connect(address: tuple[str, int]) -> Iterator[type[socket.socket]]:
    opened: list[socket.socket] = []

    def make() -> socket.socket:
        sock = socket.create_connection(address, timeout=10)
        opened.append(sock)
        return sock

    yield make  # type: ignore[misc]
    for sock in opened:
        sock.close()


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or 10 s pass)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _one_answer(sock: socket.socket) -> bytes:
    """One response (its head and its Content-Length's body) off a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    assert len(body) == length  # nothing more was sent
    return head + b"\r\n\r\n" + body


def _problem(answer: bytes, status: int, code: str) -> dict[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert b"content-type: application/problem+json" in head.lower()
    problem = json.loads(body)
    assert problem["code"] == code and problem["status"] == status
    return problem


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before it was all sent: the answer is what counts


def test_a_head_over_the_limit_in_one_read_is_431_and_logged(
    connect: type[socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    sock = connect()
    with caplog.at_level("INFO", logger="attester.http"):
        _send(sock, GET + b"X-Big: " + b"a" * (http_protocol.MAX_HEAD_BYTES + 1) + b"\r\n\r\n")
        _problem(_answer(sock), 431, "request_headers_too_large")
    logged = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "rejected"]
    assert [fields.get("code") for fields in logged] == ["request_headers_too_large"]


def test_a_head_that_never_ends_is_refused_once_past_the_limit(
    connect: type[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a header value sent without its end, in many reads: the server refuses it before it has
    # read 1 MiB. Counted where the server reads, not where the client writes: the kernel's
    # buffers (up to tcp_rmem's 32 MiB here) take what a server starved of CPU has not read yet
    read: dict[int, int] = {}
    data_received = http_protocol.GuardedHttpToolsProtocol.data_received

    def counted(self: http_protocol.GuardedHttpToolsProtocol, data: bytes) -> None:
        read[id(self)] = read.get(id(self), 0) + len(data)
        data_received(self, data)

    monkeypatch.setattr(http_protocol.GuardedHttpToolsProtocol, "data_received", counted)
    sock = connect()
    sock.sendall(GET + b"X-Big: ")
    sent = 0
    try:
        while sent < 16 * 1024 * 1024:
            sock.sendall(b"a" * 16384)
            sent += 16384
    except (BrokenPipeError, ConnectionResetError):
        pass
    _problem(_answer(sock), 431, "request_headers_too_large")
    assert len(read) == 1 and 0 < max(read.values()) < 1024 * 1024


def test_too_many_headers_is_431(connect: type[socket.socket]) -> None:
    sock = connect()
    many = b"".join(b"X-%d: 1\r\n" % n for n in range(http_protocol.MAX_HEADERS + 1))
    _send(sock, GET + many + b"\r\n")
    _problem(_answer(sock), 431, "request_headers_too_large")


def test_a_head_at_the_limit_is_served(connect: type[socket.socket]) -> None:
    sock = connect()
    headers = b"".join(b"X-%d: %s\r\n" % (n, b"a" * 200) for n in range(90))
    sock.sendall(GET + headers + b"Connection: close\r\n\r\n")
    assert _answer(sock).startswith(b"HTTP/1.1 200 ")


def test_a_malformed_request_is_400_problem_json(connect: type[socket.socket]) -> None:
    for bad in (
        b"POST /v1/challenge HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"NOT HTTP\r\n\r\n",
    ):
        sock = connect()
        _send(sock, bad)
        _problem(_answer(sock), 400, "http_request_malformed")


def test_a_slow_head_is_408_and_a_silent_connection_closed(
    connect: type[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_protocol, "HEAD_SECONDS", 0.3)
    silent, slow = connect(), connect()
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHo")
    started = time.monotonic()
    _problem(_answer(slow), 408, "request_timeout")
    assert _answer(silent) == b""  # closed without a word
    assert time.monotonic() - started < 5


def test_a_slow_body_closes_the_connection(
    connect: type[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_protocol, "BODY_SECONDS", 0.3)
    sock = connect()
    sock.sendall(b"POST /v1/challenge HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{")
    started = time.monotonic()
    assert b"200 OK" not in _answer(sock)
    assert time.monotonic() - started < 5


def test_keep_alive_and_pipelined_requests_are_served_past_the_timers(
    connect: type[socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_protocol, "HEAD_SECONDS", 0.5)
    sock = connect()
    for _ in range(3):  # a request, then a pause under the head timer, again
        sock.sendall(GET + b"\r\n")
        assert _one_answer(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.3)
    sock.sendall((GET + b"\r\n") * 3 + GET + b"Connection: close\r\n\r\n")
    time.sleep(0.8)  # past the head timer: the pipelined requests were all in
    assert _answer(sock).count(b"HTTP/1.1 200 ") == 4


async def _slow_echo(scope: dict, receive: Any, send: Any) -> None:  # type: ignore[type-arg]
    """A bare ASGI app: ``/slow`` answers after 1.5 s; every answer names the request's body."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if message["type"] == "http.disconnect" or not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(1.5)
    out = b"%s %s %d" % (scope["method"].encode(), scope["path"].encode(), len(body))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(out)).encode())]})
    await send({"type": "http.response.body", "body": out})


@pytest.fixture
def slow(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    monkeypatch.setattr(http_protocol, "BODY_SECONDS", 0.5)
    monkeypatch.setattr(http_protocol, "HEAD_SECONDS", 0.5)
    with live_server(_slow_echo) as live:
        host, port = live.url.removeprefix("http://").split(":")
        yield host, int(port)


def test_a_pipelined_body_is_timed_from_when_it_is_read(slow: tuple[str, int]) -> None:
    # behind a request answered after the body timer's time, a pipelined POST whose body
    # follows its head: uvicorn reads that body only once the first answer is out, and the
    # timer, started at the head, closed the connection under both (found in review)
    sock = socket.create_connection(slow, timeout=10)
    sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    sock.sendall(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\n")
    time.sleep(0.1)
    sock.sendall(b"hello")
    answer = _answer(sock)
    sock.close()
    assert b"GET /slow 0" in answer and b"POST /p 5" in answer, answer


def test_a_pipelined_head_left_unfinished_gets_its_408(slow: tuple[str, int]) -> None:
    # a head begun while the request ahead was answered was closed without a word: uvicorn's
    # keep-alive timer, and a head timer that forgot the head had begun (found in review)
    sock = socket.create_connection(slow, timeout=10)
    sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    sock.sendall(b"GET /b HTTP/1.1\r\nHo")
    answer = _answer(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and b"GET /slow 0" in answer
    _problem(answer[answer.index(b"HTTP/1.1 408"):], 408, "request_timeout")
