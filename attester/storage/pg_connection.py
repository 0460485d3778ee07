"""PostgreSQL connections whose round trips suspend a request instead of a thread's wait.

A request on the event loop (cooperative.py) that reads or writes PostgreSQL handed the
work to a worker thread and back: per registration, the replay read and a share of the
group commit's batch. Under load that hand-off was a large part of a worker's time (the
wake-up of a thread, and of the loop, on two busy cores; py-spy put the thread hops at
~13% of the GIL-held samples). psycopg's connection runs every round trip as a generator
and a waiting function; this connection's waiting function, inside a
:func:`cooperative.database_io` section, is psycopg's own asyncio one awaited from the
request's greenlet: the request is suspended on the socket and the loop serves others
meanwhile. Anywhere else (a thread, the CLI, a request outside such a section) it is
psycopg's blocking wait, as before.

Each wait suspended the request at its first step that asked for the socket, even when the
socket was ready for it already (a pipeline asks whether it may write before each statement
it sends; an answer may have arrived): psycopg's asyncio wait takes such steps at once, but
only once it runs, after the suspension. Those steps are now taken here (a zero-timeout
poll says the socket is ready), for at most INLINE_SECONDS from when the request last got
the loop's turn, and the request suspends only for a step that has to wait for the server.
Measured in one process (20,000 waits on a socket pair whose other end had written): ~15 us
of CPU through the loop with uvloop (~23 us with asyncio's own loop), against ~2.5 us for
psycopg's blocking wait, the send and receive included. A batch of four registrations run
from a request suspended two times fewer (six, now four).

Connecting (DNS, TCP, TLS, authentication: psycopg waits for those in its own loop) is
done in a worker thread when asked for inside such a section, so the loop never waits for
a server that does not answer.
"""

from __future__ import annotations

import select
import time
from typing import Any

import psycopg
from psycopg import waiting
from psycopg.abc import PQGen, RV
from psycopg.waiting import READY_NONE, READY_R, READY_W, WAIT_R, WAIT_W

from attester import cooperative

# how long after getting the loop's turn a request may go on taking ready steps (a pipeline
# of many statements, a large result read): then it suspends and the loop serves the others
# (psycopg's asyncio waits give the loop a turn after 5 ms busy, too)
INLINE_SECONDS = 0.005


class CooperativeConnection(psycopg.Connection[Any]):
    """psycopg's connection; inside :func:`cooperative.database_io`, its waits suspend."""

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        if not cooperative.in_database_io():
            return super().wait(gen, interval, timeout)
        # what needs no wait (setting autocommit, say), or whose socket is ready now, is
        # done without suspending, within INLINE_SECONDS of the request's turn
        try:
            wanted = next(gen)
            fileno = self.pgconn.socket
            until = cooperative.turn_started() + INLINE_SECONDS
            while time.monotonic() < until and (ready := ready_now(fileno, wanted)):
                wanted = gen.send(ready)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        # (a connection the server closed polls readable: libpq raises its error above; a
        # descriptor closed here polls as not ready, and psycopg's wait says it is closed)
        return cooperative.wait(
            waiting.wait_async(_resumed(wanted, gen), fileno, interval=interval, timeout=timeout)
        )


def ready_now(fileno: int, wanted: int) -> int:
    """What of ``wanted`` (psycopg's ``WAIT_R``/``WAIT_W`` bits) ``fileno`` is ready for
    now, as psycopg's ``READY_*`` bits: ``READY_NONE`` if it would have to wait."""
    poll = select.poll()
    poll.register(fileno, (select.POLLIN if wanted & WAIT_R else 0)
                  | (select.POLLOUT if wanted & WAIT_W else 0))
    ready = READY_NONE
    for _, events in poll.poll(0):
        if events & select.POLLIN:
            ready |= READY_R
        if events & select.POLLOUT:
            ready |= READY_W
    return ready


def _resumed(first: Any, gen: PQGen[RV]) -> PQGen[RV]:
    """``gen``, whose first step was taken already (it asked for ``first``)."""
    ready = yield first
    while True:
        try:
            wanted = gen.send(ready)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        ready = yield wanted


def connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> CooperativeConnection:
    """SQLAlchemy's ``do_connect`` hook: a :class:`CooperativeConnection`, made in a worker
    thread when a request's :func:`cooperative.database_io` section asks for it (the pool
    opens one: a first use, or after a lost connection)."""
    if cooperative.in_database_io():  # (a cancellation waits for it: database_io)
        return cooperative.blocking(CooperativeConnection.connect, *cargs, **cparams)
    return CooperativeConnection.connect(*cargs, **cparams)
