"""Group commit: the write transactions of concurrent requests committed together.

A registration or renewal is one small transaction; its commit (an fsync) and, on
SQLite, the wait for the database's single write lock cost more than its statements.
Requests that arrive while a transaction is being written queue here; the first of them
becomes the *leader*, runs every queued unit in one transaction and commits once; each
caller gets its own result (or its own exception) only after that commit, so nothing is
answered that a crash could lose. No thread of our own: the leader is a request thread.

A unit that raises is taken out: the transaction is rolled back and the others run again
without it (a failed statement leaves a PostgreSQL transaction unusable, and savepoints
need a workaround on Python's SQLite driver). Units must therefore be re-runnable: no side
effects outside the connection except results they overwrite. A database error (not an
integrity error, which is the unit's own: a duplicate key) fails the whole batch, except a
PostgreSQL deadlock or serialisation failure: then each unit runs again alone, so one
request's conflict (two batches replaying one request) cannot fail the others. A unit that
waited past ``queue_timeout`` for its turn fails (:class:`StorageBusy`) without running.

Units of one kind that can be written together (their work's class has ``run_many``, as a
registration's has: see store.py) are written so, one of them alone included: one statement
per table for all of them instead of a few per unit, run by the driver's cursor for each row
(driver_sql.py; on PostgreSQL sent in one psycopg pipeline). Each statement was a round
trip for PostgreSQL and, for SQLite, a release and re-take of the GIL while the write lock
is held; with request threads verifying evidence beside it, re-taking the GIL was most of
the lock's hold time (0.1-0.2 ms a statement against 0.01-0.03 ms alone), and the lock's
hold time bounded the registrations of all workers together (now the batch is written on
the event loop's thread, with no other thread running Python: below). ``run_many`` covers
only the plain case; anything else it meets (a duplicate key, any exception but the
database's own) raises, the transaction is rolled back and each unit of the batch runs
alone, as above, so that the exceptions and the fall-backs are the unit's own code's,
written once. (Such units run first in their transaction: the units of a batch are
concurrent requests, so any order is one they could have arrived in; of a registration and
a burn of the same challenge, either may be the one that finds it used.)

On a SQLite file, writers of every process queue on an OS file lock beside the database
(``<db>-writer.lock``) instead of polling SQLite's busy handler, which sleeps 1, 2, 5,
10 ... ms between tries: with two workers, most of a registration's time was that sleep.
Writers that do not come through here (the CLI, admin actions) still meet SQLite's
``busy_timeout``.

Callers are threads or requests running on the event loop's thread (cooperative.py). A
request is suspended where a thread would wait (for the leader, or, leading, for another
process's writer lock, which a worker thread waits for); before it leads it lets the
other requests ready on the loop reach their own writes, which then join its batch. A
request that leads writes a SQLite batch right on the loop's thread: with no other thread
of the process running Python, the driver's GIL releases cost nothing (in threads, each
re-take waited for a verifying thread to yield: cooperative.py has the figures). A
PostgreSQL batch is written there too, in a :func:`cooperative.database_io` section: each
round trip suspends the leader and the loop serves others meanwhile (pg_connection.py);
a cancelled leader still writes its batch to the end. (On an engine without those
connections, a batch is written in a worker thread: its round trips could wait long.)
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from greenlet import getcurrent
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

from attester import cooperative

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: at most this many units per transaction (a long batch delays its first caller)
MAX_BATCH = 32
#: a unit that waited this long for its turn fails instead of running (SQLite's busy timeout:
#: a write has never waited longer than that for the database before)
QUEUE_TIMEOUT = 30.0


class _Unit(Generic[T]):
    __slots__ = ("work", "done", "result", "error", "queued_at")

    def __init__(self, work: Callable[[Connection], T]) -> None:
        self.work = work
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.queued_at = time.monotonic()


class StorageBusy(Exception):
    """A write waited longer than ``queue_timeout`` for its turn (the database stays locked
    or unreachable, and the batches before it each waited their own timeout)."""


#: SQLSTATEs of a transaction PostgreSQL aborted because of a concurrent one (deadlock,
#: serialisation failure): retrying its units separately can succeed
_CONFLICTS = frozenset({"40P01", "40001"})


def _conflict(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _CONFLICTS


#: SQLite's messages for a database that is there but cannot be used now
_SQLITE_OUTAGES = (
    "database is locked",
    "database table is locked",
    "unable to open database file",
    "disk i/o error",
    "database or disk is full",
)
#: PostgreSQL SQLSTATE classes of the same kind: connection exception, transaction rollback
#: (deadlock, serialisation), insufficient resources, operator intervention (shutdown,
#: cancelled statement)
_PG_OUTAGE_CLASSES = ("08", "40", "53", "57")


def storage_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unavailable for now (answer 503, retry), as
    opposed to a fault of ours (no such table, a corrupt file: 500)."""
    if isinstance(exc, StorageBusy | PoolTimeout):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if hasattr(exc.orig, "sqlstate"):  # psycopg
        sqlstate = exc.orig.sqlstate
        # None: no server answered (refused, unresolvable, a connection limit, a database
        # that is not there: psycopg sets no SQLSTATE on a failed connect)
        return sqlstate is None or str(sqlstate)[:2] in _PG_OUTAGE_CLASSES
    message = str(exc.orig).lower()
    return any(message.startswith(outage) for outage in _SQLITE_OUTAGES)


def _detached(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for another request thread to raise, caused by ``exc``: one object
    raised in several threads gets their frames spliced into one traceback (the log of a
    failed batch showed every follower's frames in each). ``exc`` if it cannot be copied."""
    try:
        clone = copy.copy(exc)
    except Exception:
        return exc
    if type(clone) is not type(exc):
        return exc
    clone.__cause__ = exc
    return clone


class Unbatch(Exception):
    """Raised by a ``run_many`` for units it does not cover: each of them runs alone."""


class _UnitFailed(Exception):
    def __init__(self, index: int) -> None:
        self.index = index


class GroupCommit:
    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = MAX_BATCH,
        queue_timeout: float = QUEUE_TIMEOUT,
        cooperative_io: bool = False,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.queue_timeout = queue_timeout
        self._cond = threading.Condition()
        self._queue: list[_Unit[Any]] = []
        self._leading = False
        self._leader: object = None  # the thread's or greenlet's greenlet that leads
        self._running: object = None  # and where its units run (a thread, for PostgreSQL)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._lock_path = _writer_lock_path(engine)
        # a SQLite database's statements are local and short: a leader that is a request
        # greenlet runs them on the event loop's thread (cooperative.py says why)
        self._inline = engine.dialect.name == "sqlite"
        # a PostgreSQL batch led by a request greenlet runs on the loop's thread too, its
        # round trips suspending the leader (pg_connection.py); else in a thread
        self._cooperative_io = cooperative_io
        self._lock_fd: int | None = None
        self._lock_pid = 0
        #: transactions committed and units in them, batches written one unit at a time after
        #: a run_many did not fit (for the benchmark and the tests)
        self.commits = 0
        self.units = 0
        self.unbatched = 0

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a write transaction (perhaps with others'); its result once committed."""
        unit: _Unit[T] = _Unit(work)
        me = getcurrent()  # a thread, or a request greenlet of the event loop's thread
        if me is self._leader or me is self._running:
            raise RuntimeError("a unit of work started another (it would wait for itself)")
        with self._cond:
            self._queue.append(unit)
            while self._leading and not unit.done:
                self._wait()
            lead = not unit.done
            if lead:
                self._leading = True
                self._leader = me
        if lead:
            try:
                if cooperative.active() and not (self._inline or self._cooperative_io):
                    # a database on another host: its round trips wait in a thread (and a
                    # cancelled request still waits for it: one leader at a time)
                    cooperative.finish(self._lead, unit)
                else:
                    if cooperative.active():
                        # the requests ready on the loop reach their writes first: they
                        # queue behind this one and are written in its batch
                        cooperative.wait(asyncio.sleep(0))
                    if self._cooperative_io:
                        # suspended on each round trip; a cancelled request still leads
                        # its batch to the end (database_io)
                        with cooperative.database_io():
                            self._lead(unit)
                    else:
                        self._lead(unit)
            finally:
                with self._cond:
                    if unit in self._queue:  # the lock could not be taken
                        self._queue.remove(unit)
                    self._leading = False
                    self._leader = None
                    self._wake()
        if unit.error is not None:
            raise unit.error
        return unit.result  # type: ignore[no-any-return]

    def _wait(self) -> None:
        """Wait (``self._cond`` held) until :meth:`_wake`; a request greenlet is suspended
        meanwhile, without the lock (cooperative.py: never suspend holding one)."""
        if not cooperative.active():
            self._cond.wait()
            return
        loop = asyncio.get_running_loop()
        woken = loop.create_future()
        self._waiters.append((loop, woken))
        self._cond.release()
        try:
            cooperative.wait(woken)
        finally:
            self._cond.acquire()

    def _wake(self) -> None:
        """Wake every waiter (``self._cond`` held): threads and suspended greenlets."""
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, woken in waiters:
            with contextlib.suppress(RuntimeError):  # its loop closed: nobody waits there now
                loop.call_soon_threadsafe(_resolve, woken)

    def _lead(self, own: _Unit[Any]) -> None:
        self._running = getcurrent()  # where the units run (a thread, for a remote database)
        try:
            self._lead_batch(own)
        finally:
            self._running = None

    def _lead_batch(self, own: _Unit[Any]) -> None:
        # the connection first: waiting for one (a full pool) must not hold the writer lock,
        # which every process's writes wait for; a database that cannot be reached fails
        # what queued at once, as a failed transaction does
        try:
            if cooperative.active() and pool_exhausted(self.engine):
                connection = cooperative.blocking(self.engine.connect)
            else:
                connection = self.engine.connect()
        except Exception as exc:
            self._fail(self._take(own), exc, own=own)
            return
        # the batch is taken once the writer lock is ours: what queued while another process
        # wrote commits with it
        with connection, self._writer_lock():
            batch = self._take(own)
            if own.done:  # our own write expired: answer now, another thread leads
                with self._cond:
                    self._queue[:0] = batch
                    self._wake()
            elif self._inline and cooperative.active():  # a request on the loop: SQLite
                self._commit_inline(connection, batch, own=own)
            else:
                self._commit(connection, batch, own=own)

    def _commit_inline(
        self, connection: Connection, batch: list[_Unit[Any]], *, own: _Unit[Any]
    ) -> None:
        """Write ``batch`` on the event loop's thread, unsuspended (it holds the writer lock
        and, once it writes, SQLite's), failing at once rather than waiting in SQLite's busy
        handler: a writer outside the group commit (an admin action, the CLI, a purge, a
        database-backed rate limit) may hold SQLite's lock. On any failure before its commit,
        and when a unit would wait (an HSM signing again: cooperative.WouldSuspend), the
        batch is written again in a thread, as a thread's would be (its units are
        re-runnable), and the loop goes on meanwhile."""
        if not batch:
            return
        committed = False
        try:
            with cooperative.pinned(), _busy_fails_at_once(connection):
                self._together(connection, batch)
                committed = True
        except (Exception, cooperative.WouldSuspend):
            if not committed:
                _roll_back_driver(connection)
                cooperative.finish(self._commit_in_thread, connection, batch, own)
                return
            # stored; only the busy timeout could not be given back: not to the pool so
            log.warning("a connection lost its busy timeout: discarded", exc_info=True)
            connection.invalidate()
        except BaseException as exc:  # nothing of the batch is stored
            self._fail(batch, exc, own=own)
            raise
        for unit in batch:
            unit.done = True

    def _commit_in_thread(
        self, connection: Connection, batch: list[_Unit[Any]], own: _Unit[Any]
    ) -> None:
        # the units run in this thread now: the check that a unit starts no other looks here
        running, self._running = self._running, getcurrent()
        try:
            self._commit(connection, batch, own=own)
        finally:
            self._running = running

    def _take(self, own: _Unit[Any]) -> list[_Unit[Any]]:
        """The next batch: the oldest queued units, the leader's own among them. Units that
        waited past ``queue_timeout`` fail with :class:`StorageBusy` instead (so that, while
        the database stays locked, waits do not add up batch after batch)."""
        expired = time.monotonic() - self.queue_timeout
        with self._cond:
            batch = self._queue[: self.max_batch]
            if own not in batch:
                batch[-1:] = [own]
            for unit in batch:
                self._queue.remove(unit)
            late = [unit for unit in batch if unit.queued_at < expired]
            for unit in late:
                unit.error = StorageBusy("the database is busy: the write waited too long")
                unit.done = True
            if late:
                self._wake()  # answered now, not after the batch
            return [unit for unit in batch if unit not in late]

    def _commit(self, connection: Connection, batch: list[_Unit[Any]], *, own: _Unit[Any]) -> None:
        if not batch:
            return
        try:
            try:
                self._together(connection, batch)
            except Exception as exc:
                if not _conflict(exc) or len(batch) == 1:
                    raise
                # PostgreSQL aborted the transaction for a concurrent one's sake (a deadlock
                # between two batches that replay the same request, a serialisation
                # failure): nothing of it was stored. Every unit runs again alone, so one
                # request's conflict cannot fail the requests that shared its batch. (Not
                # for other errors: a locked or lost database would make each unit wait
                # its own timeout in turn.)
                for unit in batch:
                    try:
                        self._together(connection, [unit])
                    except Exception as alone:
                        unit.error, unit.result = alone, None
        except BaseException as exc:  # nothing of the batch is stored
            # every unit gets the batch's failure, also one taken out before it: its error
            # may have come from a batch-mate's write that was then never committed
            self._fail(batch, exc, own=own)
            if not isinstance(exc, Exception):
                raise
        finally:
            for unit in batch:
                unit.done = True

    @staticmethod
    def _fail(batch: list[_Unit[Any]], exc: BaseException, *, own: _Unit[Any]) -> None:
        for unit in batch:
            unit.error, unit.result = (exc if unit is own else _detached(exc)), None
            unit.done = True

    def _together(self, connection: Connection, units: list[_Unit[Any]]) -> None:
        """Run ``units`` in one transaction and commit. A unit that raises is taken out
        (its ``error`` set) and the transaction run again without it; a database error,
        or a failed begin or commit, propagates with nothing stored."""
        pending = list(units)
        together = True  # units with ``run_many`` written together (until one does not fit)
        while pending:
            for unit in pending:
                unit.error = unit.result = None
            try:
                with connection.begin():
                    alone = self._run_many(connection, pending) if together else pending
                    for unit in alone:
                        try:
                            unit.result = unit.work(connection)
                        except DBAPIError as exc:
                            if not isinstance(exc, IntegrityError):
                                raise  # the database, not the unit
                            unit.error = exc
                            raise _UnitFailed(pending.index(unit)) from exc
                        except Exception as exc:
                            unit.error = exc
                            raise _UnitFailed(pending.index(unit)) from exc
            except _UnitFailed as failed:
                pending.pop(failed.index)
                continue
            except Unbatch:
                together = False
                self.unbatched += 1
                continue
            except BaseException:
                for unit in pending:
                    unit.result = None
                raise
            self.commits += 1
            self.units += len(pending)
            return

    @staticmethod
    def _run_many(connection: Connection, pending: list[_Unit[Any]]) -> list[_Unit[Any]]:
        """Write the units that can be written together (those of a kind with ``run_many``,
        one alone included: its plain case costs fewer statements, or round trips, than its
        own code's); the others, to run one by one. Raises :class:`Unbatch` when
        ``run_many`` raised anything but a database error (a duplicate key included)."""
        kinds: dict[type, list[_Unit[Any]]] = {}
        for unit in pending:
            if hasattr(type(unit.work), "run_many"):
                kinds.setdefault(type(unit.work), []).append(unit)
        alone = list(pending)
        for kind, units in kinds.items():
            try:
                results = kind.run_many(connection, [unit.work for unit in units])  # type: ignore[attr-defined]
            except DBAPIError as exc:
                if not isinstance(exc, IntegrityError):
                    raise  # the database, not the units
                raise Unbatch from exc
            except Unbatch:
                raise
            except Exception as exc:
                raise Unbatch from exc
            for unit, result in zip(units, results, strict=True):
                unit.result = result
                alone.remove(unit)
        return alone

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        fd = self._lock_file()
        if fd is None:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another process writes: wait (a request: in a thread)
            cooperative.finish(fcntl.flock, fd, fcntl.LOCK_EX, undo=lambda _: _unlock(fd))
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_file(self) -> int | None:
        if self._lock_path is None:
            return None
        if self._lock_fd is None or self._lock_pid != os.getpid():  # a forked worker opens its own
            try:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                self._lock_path = None  # a read-only directory: SQLite's busy handler alone
                return None
            self._lock_pid = os.getpid()
        return self._lock_fd

    def close(self) -> None:
        if self._lock_fd is not None and self._lock_pid == os.getpid():
            os.close(self._lock_fd)
        self._lock_fd = None


def _roll_back_driver(connection: Connection) -> None:
    """Roll back what a failed attempt left open in the driver: SQLite keeps its
    transaction when it refuses a COMMIT, and SQLAlchemy, which then counts it as ended,
    rolls nothing back, so the retry would write into it (and commit both)."""
    try:
        driver = connection.connection.driver_connection
        if driver is not None and driver.in_transaction:
            driver.rollback()
    except Exception:  # a broken connection: the retry gets a fresh one
        log.warning("could not roll back a failed batch's connection", exc_info=True)
        connection.invalidate()


def pool_exhausted(engine: Engine) -> bool:
    """Whether a checkout from ``engine``'s pool would wait (create_store keeps no overflow):
    a request on the event loop then checks out in a thread instead of blocking the loop."""
    pool = engine.pool
    return isinstance(pool, QueuePool) and pool.checkedout() >= pool.size()


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def _busy_fails_at_once(connection: Connection) -> Iterator[None]:
    """SQLite's busy timeout at 0 for a while: a locked database fails the statement at
    once instead of sleeping in its busy handler (on the event loop's thread)."""
    driver = connection.connection.driver_connection  # no SQLAlchemy transaction begins
    (timeout,) = driver.execute("PRAGMA busy_timeout").fetchone()
    driver.execute("PRAGMA busy_timeout = 0")
    try:
        yield
    finally:
        driver.execute(f"PRAGMA busy_timeout = {int(timeout)}")


def _resolve(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


def _writer_lock_path(engine: Engine) -> Path | None:
    """``<database>-writer.lock`` for a SQLite file; None for anything else."""
    if fcntl is None or engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database + "-writer.lock")
