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

Connecting (DNS, TCP, TLS, authentication: psycopg waits for those in its own loop) is
done in a worker thread when asked for inside such a section, so the loop never waits for
a server that does not answer.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import waiting
from psycopg.abc import PQGen, RV

from attester import cooperative


class CooperativeConnection(psycopg.Connection[Any]):
    """psycopg's connection; inside :func:`cooperative.database_io`, its waits suspend."""

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        if not cooperative.in_database_io():
            return super().wait(gen, interval, timeout)
        try:  # what needs no wait (setting autocommit, say) is done without suspending
            first = next(gen)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        return cooperative.wait(
            waiting.wait_async(
                _resumed(first, gen), self.pgconn.socket, interval=interval, timeout=timeout
            )
        )


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
