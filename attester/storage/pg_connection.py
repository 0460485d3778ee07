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

Each round trip suspended the request before its first step, even where that step needed
no wait (a send, the socket writable): psycopg's asyncio wait takes such steps at once,
but only once it runs, after the suspension. The steps whose socket is ready now (a
zero-timeout poll) are taken here, and the request suspends only where it has to wait for
the server. A suspension goes through the loop (a task, a shield, two greenlet switches):
~15 us of CPU each with uvloop here (~23 us with asyncio's own loop), against ~2.5 us for
a blocking wait. A batch of four registrations suspended six times; now four.

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

# the longest a request's round trips run without suspending while the socket stays ready
# (a large result read, say): then the loop serves the others (psycopg's own waits do so
# after 5 ms)
INLINE_SECONDS = 0.005


class CooperativeConnection(psycopg.Connection[Any]):
    """psycopg's connection; inside :func:`cooperative.database_io`, its waits suspend."""

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        if not cooperative.in_database_io():
            return super().wait(gen, interval, timeout)
        # what needs no wait (setting autocommit, say), or whose socket is ready now, is
        # done without suspending
        try:
            wanted = next(gen)
            fileno = self.pgconn.socket
            until = time.monotonic() + INLINE_SECONDS
            while (ready := ready_now(fileno, wanted)) and time.monotonic() < until:
                wanted = gen.send(ready)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        # (a closed socket polls as not ready: psycopg's wait then says it is closed)
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
