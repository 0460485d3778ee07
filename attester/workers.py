"""``serve --workers N``: uvicorn's supervisor, the workers taking connections in turn by count.

uvicorn binds one socket in the parent and every worker accepts from it. Whichever
worker's event loop wakes first accepts every connection waiting (asyncio and uvloop
accept in a loop), so a burst of keep-alive connections, as from a reverse proxy or a
load generator, lands mostly on one worker and stays there: 7 of 8 connections on one of
two workers in bench/bench_all.py, which then served at one core's speed. A socket per
worker with SO_REUSEPORT (the previous way here) spreads them by a hash of the addresses,
not by load: 8 connections landed 7 / 1, 6 / 2 and 5 / 3 in the benchmark's runs.

Here the workers share the parent's listening socket and each accepts from it with its own
accept loop (:class:`Acceptor`, in place of the asyncio server uvicorn would create): one
connection at a time, and only while it holds no more open connections than every other
live worker. The counts are in memory the supervisor shares with its workers
(:class:`Board`): a worker claims a slot when it starts serving, writes its count there
whenever uvicorn adds or drops a connection, and frees the slot when it stops. Every worker
is woken for a new connection; those holding more than another let it wait, and the one
holding fewest takes it, so N connections land N / workers each (one more on some while
two accept at the same instant).

Failing safe: the one holding fewest may be busy (a fresh worker's first requests, a long
request), hung, or killed before it could free its slot. A worker holding more takes a
connection nobody took within ``DEFER`` seconds; a slot whose process is gone is freed by
the first worker that finds it so; and each worker's event loop writes the time on the
board every ``BEAT`` seconds, so one whose loop has not run for ``STALE`` seconds is not
waited for at all. Unlike a socket per worker, a connection in the queue when a worker
exits is taken by another (the queue is the shared socket's), a hung worker takes no new
connections, and it works wherever uvicorn does, not only on Linux. ``serve
--shared-socket`` goes back to uvicorn's own accept.

Everything else (restarts of dead or hung workers, signals, SIGHUP, graceful shutdown) is
uvicorn's own: only the class of its worker processes and their server's start-up are
replaced.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import os
import socket
import sys
import time
from typing import Any, Callable

import uvicorn
from uvicorn.supervisors import multiprocess

#: uvicorn's exit status for a server that could not start (its supervisor stops on it)
STARTUP_FAILURE = 3
#: seconds a connection waits for the worker holding fewest before a busier one takes it:
#: longer than a worker is busy between two polls of its event loop under load (a few ms
#: of requests run back to back; tens of ms for a fresh worker's first requests), short
#: next to a keep-alive connection's life
DEFER = 0.1
#: a worker's event loop writes the time on the board this often ...
BEAT = 0.1
#: ... and one that has not for this long (hung, or stopped in a debugger) is not waited for
STALE = 1.0
#: seconds without accepting after the process ran out of descriptors (asyncio's delay)
OUT_OF_DESCRIPTORS_PAUSE = 1.0
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

log = logging.getLogger(__name__)


class Board:
    """Each worker's open connections, in memory shared by the supervisor and its workers.

    A slot is three cells: the worker's pid (0 for a free slot), its count, and when its
    event loop last ran (``time.monotonic_ns()``, one clock for every process). There are
    more slots than workers, since a replacement can start before its predecessor's slot is
    found free; a worker that finds none free accepts without taking turns.
    """

    def __init__(self, slots: int) -> None:
        context = multiprocessing.get_context("spawn")  # uvicorn's workers are spawned
        self._cells = context.RawArray("q", 3 * slots)
        self._lock = context.Lock()
        self.slots = slots

    def claim(self, pid: int) -> int | None:
        with self._lock:
            for slot in range(self.slots):
                owner = self._cells[3 * slot]
                if owner == 0 or not _alive(owner):
                    self._cells[3 * slot + 1] = 0
                    self._cells[3 * slot + 2] = time.monotonic_ns()
                    self._cells[3 * slot] = pid
                    return slot
        return None

    def release(self, slot: int, pid: int) -> None:
        with self._lock:
            if self._cells[3 * slot] == pid:
                self._cells[3 * slot] = 0
                self._cells[3 * slot + 1] = 0

    def publish(self, slot: int, count: int) -> None:
        self._cells[3 * slot + 1] = count

    def beat(self, slot: int) -> None:
        self._cells[3 * slot + 2] = time.monotonic_ns()

    def holds_fewest(self, slot: int) -> bool:
        """Whether no other live, responsive worker holds fewer connections than ``slot``'s."""
        cells = self._cells
        mine = cells[3 * slot + 1]
        for other in range(self.slots):
            owner = cells[3 * other]
            if other == slot or owner == 0 or cells[3 * other + 1] >= mine:
                continue
            if not _alive(owner):
                self.release(other, owner)  # killed before it could free its slot
            elif time.monotonic_ns() - cells[3 * other + 2] <= STALE * 1e9:
                return False
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a pid reused by another user's process
        return True
    return True


class _CountedConnections(set):  # type: ignore[type-arg]
    """uvicorn's set of open connections, which tells the board each time it changes."""

    def __init__(self, changed: Callable[[], None]) -> None:
        super().__init__()
        self._changed = changed

    def add(self, item: Any) -> None:
        super().add(item)
        self._changed()

    def discard(self, item: Any) -> None:
        super().discard(item)
        self._changed()


class Acceptor:
    """Accepts from the shared socket one connection at a time while this worker holds fewest.

    Stands in for the ``asyncio.Server`` uvicorn keeps in ``Server.servers``: uvicorn's
    shutdown calls ``close()`` (no more accepting; the slot is freed, so the others stop
    counting this worker) and ``wait_closed()``.
    """

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol],
                 *, ssl: Any, board: Board, slot: int | None, connections: set[Any]) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._factory = protocol_factory
        self._ssl = ssl
        self._board = board
        self._slot = slot
        self._pid = os.getpid()
        self._connections = connections
        self._handshakes: set[asyncio.Task[None]] = set()  # accepted, not yet uvicorn's
        self._timer: asyncio.TimerHandle | None = None
        self._beating: asyncio.TimerHandle | None = None
        self._closed = False
        sock.setblocking(False)
        self.publish()
        self._beat()
        self._loop.add_reader(sock.fileno(), self._ready)

    def _beat(self) -> None:
        if self._slot is not None:
            self._board.beat(self._slot)
            self._beating = self._loop.call_later(BEAT, self._beat)

    def publish(self) -> None:
        if self._slot is not None:
            self._board.publish(self._slot, len(self._connections) + len(self._handshakes))

    def _ready(self) -> None:
        if self._slot is None or self._board.holds_fewest(self._slot):
            self._accept()
        else:  # the worker holding fewest takes it, unless it is still waiting after DEFER
            self._pause(DEFER, overdue=True)

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up
        except OSError as exc:
            if exc.errno not in _OUT_OF_RESOURCES:
                raise  # to the loop's exception handler, as asyncio's own accept does
            log.error("cannot accept a connection (%s): pausing %.0f s", exc, OUT_OF_DESCRIPTORS_PAUSE)
            self._pause(OUT_OF_DESCRIPTORS_PAUSE, overdue=False)
            return
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvicorn's own servers
        task = self._loop.create_task(self._serve(conn))
        self._handshakes.add(task)
        self.publish()

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except Exception as exc:  # a TLS handshake that failed, a peer already gone
            log.debug("connection not served: %r", exc)
            conn.close()
        finally:
            self._handshakes.discard(asyncio.current_task())  # type: ignore[arg-type]
            self.publish()

    def _pause(self, seconds: float, *, overdue: bool) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._timer = self._loop.call_later(seconds, self._resume, overdue)

    def _resume(self, overdue: bool) -> None:
        self._timer = None
        if self._closed:
            return
        self._loop.add_reader(self._sock.fileno(), self._ready)
        if overdue:
            self._accept()  # a connection still waiting after DEFER: nobody else took it

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for timer in (self._timer, self._beating):
            if timer is not None:
                timer.cancel()
        self._loop.remove_reader(self._sock.fileno())
        if self._slot is not None:
            self._board.release(self._slot, self._pid)

    async def wait_closed(self) -> None:
        if self._handshakes:
            await asyncio.wait(list(self._handshakes))


class TakingTurnsServer(uvicorn.Server):
    """uvicorn's server whose start-up accepts through :class:`Acceptor` (runs in a worker)."""

    def __init__(self, config: uvicorn.Config, board: Board) -> None:
        super().__init__(config)
        self.board = board

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # as uvicorn.Server.startup with explicit sockets, but our accept loop for its server
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config
        state = self.server_state

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=state, app_state=self.lifespan.state,
            )

        slot = self.board.claim(os.getpid())
        if slot is None:
            log.warning("no free slot on the connection board: this worker accepts without turns")
        acceptors: list[Acceptor] = []
        state.connections = _CountedConnections(lambda: [a.publish() for a in acceptors])
        for sock in sockets or []:
            acceptors.append(Acceptor(sock, create_protocol, ssl=config.ssl, board=self.board,
                                      slot=slot, connections=state.connections))
        self.servers = acceptors  # type: ignore[assignment]
        self.started = True


class TakingTurnsProcess(multiprocess.Process):
    """A uvicorn worker whose server is a :class:`TakingTurnsServer` on the shared board."""

    board: Board  # set on the class by run(), pickled with the process when it is spawned

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self._board = self.board

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = TakingTurnsServer(self.config, self._board)
        return self._server


def run(app: str, *, host: str, port: int, workers: int, take_turns: bool = True,
        **options: Any) -> None:
    """``uvicorn.run(app, factory=True, workers=workers, ...)``, the workers taking turns."""
    config = uvicorn.Config(app, factory=True, host=host, port=port, workers=workers, **options)
    sock = config.bind_socket()  # exits with STARTUP_FAILURE if the port is taken
    if not take_turns:
        multiprocess.Multiprocess(config, sockets=[sock]).run()
        return
    sock.listen(config.backlog)  # connections queue here until a worker takes them
    TakingTurnsProcess.board = Board(slots=2 * workers + 8)
    multiprocess.Process = TakingTurnsProcess  # type: ignore[misc]
    try:
        multiprocess.Multiprocess(config, sockets=[sock]).run()
    finally:
        multiprocess.Process = TakingTurnsProcess.__mro__[1]  # type: ignore[misc]
        sock.close()
