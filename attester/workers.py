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
connection at a time, and only while no other worker that is listening holds fewer open
connections. The counts are in memory the supervisor shares with its workers
(:class:`Board`): the supervisor gives each worker a slot before starting it and clears
the slot once the worker has exited (it always joins a worker before replacing it), and
the worker writes there how many connections it holds whenever uvicorn adds or drops one,
whether it is listening, and, every ``BEAT`` seconds, that its event loop runs. Each slot
has one writer at a time, so there is no lock to be left held by a killed process. Every
worker is woken for a new connection; one that holds more than another leaves it and looks
again (on every turn of its event loop for ``SPIN`` seconds, then every ``RECHECK``), and
the one holding fewest takes it, so N connections land about N / workers each.

Failing safe: the worker holding fewest may be busy (a fresh worker's first requests, a
long request), out of descriptors, shutting down, hung or killed. One that is not listening
(out of descriptors, shutting down) is never waited for; one letting a connection go looks
again soon, so two workers that each wait for the other do so for ``RECHECK`` at most; one
whose loop has not run for ``STALE`` seconds (hung, killed, stopped in a debugger) is not
waited for; and a connection that still waits after ``DEFER`` seconds is taken by whoever
looks next, with every other one waiting then. A connection therefore waits at
most ``DEFER`` for a worker that can answer it. Unlike a socket per worker, connections in
the queue when a worker exits are taken by the others (the queue is the shared socket's),
and a hung worker takes no new ones. ``serve --shared-socket`` goes back to uvicorn's own
accept. Needs ``loop.add_reader`` (uvloop, or asyncio's selector loop): not Windows'
proactor loop.

Everything else (restarts of dead or hung workers, signals, SIGHUP, graceful shutdown) is
uvicorn's own: only the class of its worker processes and their server's start-up are
replaced.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import multiprocessing
import select
import socket
import sys
import time
from typing import Any, Callable

import uvicorn
from uvicorn.supervisors import multiprocess

#: uvicorn's exit status for a server that could not start (its supervisor stops on it)
STARTUP_FAILURE = 3
#: seconds a worker leaving a connection to another looks at the board on every turn of
#: its event loop, before it looks every RECHECK ...
SPIN = 0.0005
#: ... seconds between two looks at the board while another worker is to take a connection
RECHECK = 0.002
#: seconds a connection waits at most for the worker holding fewest: longer than a worker
#: is busy between two polls of its event loop under load (a few ms of requests run back to
#: back; tens of ms for a fresh worker's first requests), short next to a keep-alive
#: connection's life
DEFER = 0.1
#: a worker's event loop writes the time on the board this often ...
BEAT = 0.02
#: ... and one that has not for this long (hung, killed, stopped) is not waited for
STALE = 0.1
#: seconds without accepting after the process ran out of descriptors (asyncio's delay)
OUT_OF_DESCRIPTORS_PAUSE = 1.0
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# a slot's cells
_COUNT, _BEAT, _LISTENING, _CELLS = 0, 1, 2, 3

log = logging.getLogger(__name__)


class Board:
    """Each worker's open connections, in memory shared by the supervisor and its workers.

    A slot is three cells: the connections its worker holds, when its event loop last ran
    (``time.monotonic_ns()``, one clock for every process) and whether it is listening.
    The supervisor hands slots out (:meth:`take`, :meth:`give_back`: its own bookkeeping,
    not shared); a worker writes only its own slot and reads the others'.
    """

    def __init__(self, slots: int) -> None:
        context = multiprocessing.get_context("spawn")  # uvicorn's workers are spawned
        self._cells = context.RawArray("q", _CELLS * slots)
        self.slots = slots
        self._taken: set[int] = set()  # the supervisor's view; a worker's copy is unused

    def take(self) -> int | None:
        """A free slot for a worker about to start (in the supervisor); None if all are taken."""
        free = [slot for slot in range(self.slots) if slot not in self._taken]
        if not free:
            return None
        self._taken.add(free[0])
        self._clear(free[0])
        return free[0]

    def give_back(self, slot: int) -> None:
        """``slot``'s worker has exited (in the supervisor)."""
        self._clear(slot)
        self._taken.discard(slot)

    def _clear(self, slot: int) -> None:
        base = _CELLS * slot
        self._cells[base + _LISTENING] = 0
        self._cells[base + _COUNT] = 0
        self._cells[base + _BEAT] = 0

    def publish(self, slot: int, count: int) -> None:
        self._cells[_CELLS * slot + _COUNT] = count

    def listening(self, slot: int, on: bool) -> None:
        self._cells[_CELLS * slot + _LISTENING] = int(on)

    def beat(self, slot: int) -> None:
        self._cells[_CELLS * slot + _BEAT] = time.monotonic_ns()

    def holds_fewest(self, slot: int) -> bool:
        """Whether no other worker that listens, and whose loop runs, holds fewer
        connections than ``slot``'s."""
        cells = self._cells
        mine = cells[_CELLS * slot + _COUNT]
        fresh = time.monotonic_ns() - int(STALE * 1e9)
        for other in range(self.slots):
            base = _CELLS * other
            if (other != slot and cells[base + _LISTENING] and cells[base + _COUNT] < mine
                    and cells[base + _BEAT] >= fresh):
                return False
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

    def remove(self, item: Any) -> None:  # uvicorn's WebSocket protocols
        super().remove(item)
        self._changed()


class Acceptor:
    """Accepts from the shared socket, one connection at a time, while this worker holds
    fewest (see the module's text).

    Stands in for the ``asyncio.Server`` uvicorn keeps in ``Server.servers``: uvicorn's
    shutdown calls ``close()`` (no more accepting; the others stop waiting for this worker)
    and ``wait_closed()``.
    """

    def __init__(self, sock: socket.socket, protocol_factory: Callable[[], asyncio.Protocol],
                 *, ssl: Any, board: Board, slot: int | None, connections: set[Any]) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        self._factory = protocol_factory
        self._ssl = ssl
        self._board = board
        self._slot = slot
        self._connections = connections
        self._handshakes: set[asyncio.Task[None]] = set()  # accepted, not yet uvicorn's
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._waiting_since: float | None = None  # a connection was left for another worker
        self._timer: asyncio.TimerHandle | None = None
        self._beating: asyncio.TimerHandle | None = None
        self._closed = False
        sock.setblocking(False)
        self.publish()
        self._beat()
        self._listen()

    def publish(self) -> None:
        if self._slot is not None:
            self._board.publish(self._slot, len(self._connections) + len(self._handshakes))

    def _beat(self) -> None:
        if self._slot is not None:
            self._board.beat(self._slot)
            self._beating = self._loop.call_later(BEAT, self._beat)

    def _listen(self) -> None:
        self._loop.add_reader(self._fd, self._ready)
        if self._slot is not None:
            self._board.listening(self._slot, True)

    def _unlisten(self, *, for_good: bool) -> None:
        self._loop.remove_reader(self._fd)
        if for_good and self._slot is not None:  # not while it looks again every RECHECK
            self._board.listening(self._slot, False)

    def _my_turn(self) -> bool:
        return self._slot is None or self._board.holds_fewest(self._slot)

    def _ready(self) -> None:
        if self._my_turn():
            self._accept(drain=False)
        else:  # the one holding fewest is to take it: look again soon
            self._waiting_since = time.monotonic()
            self._pause(0, listening=True)

    def _resume(self) -> None:
        self._timer = None
        if self._closed:
            return
        since, self._waiting_since = self._waiting_since, None
        if not self._poll.poll(0):  # taken by another worker meanwhile
            self._listen()
            return
        now = time.monotonic()
        if since is None:  # back from the out-of-descriptors pause: as if it had just come
            since = now
        overdue = now - since >= DEFER
        if overdue or self._my_turn():
            self._listen()
            self._accept(drain=overdue)  # late: take every connection waiting
        else:  # at once while it has waited under SPIN (the other takes it in microseconds
            # when it listens), then every RECHECK (it is busy: no point spinning)
            self._waiting_since = since
            self._pause(0 if now - since < SPIN else RECHECK, listening=True)

    def _accept(self, *, drain: bool) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # another worker took it, or the client gave up
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise  # to the loop's exception handler, as asyncio's own accept does
                log.error("cannot accept a connection (%s): pausing %.0f s", exc,
                          OUT_OF_DESCRIPTORS_PAUSE)
                self._pause(OUT_OF_DESCRIPTORS_PAUSE, listening=False)
                return
            task = self._loop.create_task(self._serve(conn))
            self._handshakes.add(task)
            self.publish()
            if not drain:
                return

    async def _serve(self, conn: socket.socket) -> None:
        try:  # (uvloop and asyncio's transports set TCP_NODELAY themselves)
            transport, protocol = await self._loop.connect_accepted_socket(
                self._factory, conn, ssl=self._ssl
            )
            if self._closed:  # accepted as uvicorn began shutting down: missed by its loop
                getattr(protocol, "shutdown", transport.close)()  # (TLS: no shutdown())
        except Exception as exc:  # a TLS handshake that failed, a peer already gone
            log.debug("connection not served: %r", exc)
            conn.close()
        finally:
            self._handshakes.discard(asyncio.current_task())  # type: ignore[arg-type]
            self.publish()

    def _pause(self, seconds: float, *, listening: bool) -> None:
        self._unlisten(for_good=not listening)
        if seconds:
            self._timer = self._loop.call_later(seconds, self._resume)
        else:  # after the loop's next look at its sockets
            self._timer = self._loop.call_soon(self._resume)  # type: ignore[assignment]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for timer in (self._timer, self._beating):
            if timer is not None:
                timer.cancel()
        self._unlisten(for_good=True)

    async def wait_closed(self) -> None:
        if self._handshakes:
            await asyncio.wait(list(self._handshakes))


class TakingTurnsServer(uvicorn.Server):
    """uvicorn's server whose start-up accepts through :class:`Acceptor` (runs in a worker)."""

    def __init__(self, config: uvicorn.Config, board: Board, slot: int | None) -> None:
        super().__init__(config)
        self.board = board
        self.slot = slot

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

        if self.slot is None:
            log.warning("no free slot on the connection board: this worker accepts without turns")
        acceptors: list[Acceptor] = []
        state.connections = _CountedConnections(lambda: [a.publish() for a in acceptors])
        for sock in sockets or []:
            acceptors.append(Acceptor(sock, create_protocol, ssl=config.ssl, board=self.board,
                                      slot=self.slot, connections=state.connections))
        self.servers = acceptors  # type: ignore[assignment]
        self.started = True


class TakingTurnsProcess(multiprocess.Process):
    """A uvicorn worker whose server is a :class:`TakingTurnsServer` on the shared board.

    Constructed, started and joined in the supervisor (uvicorn joins every worker before it
    replaces it): the slot is taken here and given back once the worker has exited."""

    board: Board  # set on the class by run(); each process keeps it, pickled when spawned

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket]) -> None:
        self._board = self.board
        self._slot = self._board.take()  # before super(): the process pickles it when started
        super().__init__(config, sockets)

    def start(self) -> None:
        try:
            super().start()
        except BaseException:  # never started, so never joined: its slot is free again
            self._give_back()
            raise

    def join(self) -> None:
        super().join()
        self._give_back()

    def _give_back(self) -> None:
        if self._slot is not None:
            self._board.give_back(self._slot)
            self._slot = None

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = TakingTurnsServer(self.config, self._board, self._slot)
        return self._server


def run(app: str, *, host: str, port: int, workers: int, take_turns: bool = True,
        **options: Any) -> None:
    """``uvicorn.run(app, factory=True, workers=workers, ...)``, the workers taking turns."""
    config = uvicorn.Config(app, factory=True, host=host, port=port, workers=workers, **options)
    sock = config.bind_socket()  # exits with STARTUP_FAILURE if the port is taken
    if take_turns and not isinstance(getattr(multiprocess, "Process", None), type):
        log.warning("this uvicorn has no multiprocess.Process: the workers accept its own way")
        take_turns = False
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
