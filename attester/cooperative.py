"""Request work on the event loop's own thread, suspended where it would wait.

Why: a worker process runs Python one thread at a time (the GIL). With registrations in
thread-pool threads, the group commit's leader (storage/group_commit.py) re-takes the GIL
after every database call while other request threads verify evidence, and each re-take
waited for one of them to yield: measured under load on two workers, a bare GIL re-take
(``time.sleep(0)``) in the leader took 1-2.7 ms at the median and 6-17 ms at the 90th
percentile, and a batch held SQLite's writer lock (which bounds every worker's writes) for
10-20 ms against 0.9 ms alone. In-process, sixteen threads registering through the same
code did 270-360 registrations a second where one thread verifying and issuing did ~900.

So the JSON routes (json_routes.py) run their endpoint here instead: in a greenlet on the
event loop's thread, the same synchronous code, one request's Python at a time and no
other thread to wait for. Where that code would wait (the group commit, a network call, a
database on another host) it calls :func:`wait` or :func:`blocking`: the greenlet is
suspended, the loop serves other requests, and it resumes where it was once the wait is
over. Outside such a greenlet (a thread, a test, the CLI) both simply block as before.

Rules for code that runs here (each of the places that wait says which it follows):

* Never suspend while holding a ``threading`` lock: another greenlet of the same thread
  wanting it would block the loop for good. Take such locks around work that does not wait,
  or do the whole locked step in a thread (:func:`blocking`).
* What may wait long (the network, a file lock another process holds) goes through
  :func:`blocking`, or :func:`finish` where a cancelled request must still wait for it;
  a local SQLite file's reads run inline (fast, and a thread hop would cost more than
  they do), and the group commit's SQLite batch runs inline but fails at once rather
  than wait for a lock (storage/group_commit.py). PostgreSQL's round trips suspend the
  request inside a :func:`database_io` section (storage/pg_connection.py).
* While holding what other requests wait for (a batch holds the database's write lock),
  be :func:`pinned`: nothing suspends there (:func:`blocking` raises :class:`WouldSuspend`,
  and the section is done again where it may wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio.to_thread
from greenlet import GreenletExit, getcurrent, greenlet

T = TypeVar("T")

log = logging.getLogger("attester")


class _Request(greenlet):  # type: ignore[misc]
    """A greenlet running request work for :func:`run` (told apart by its class)."""

    pinned = 0  # inside pinned(): nothing suspends
    database_io = 0  # inside database_io(): a cancellation waits for the section's end
    cancelled: BaseException | None = None  # such a cancellation, raised at that end
    turn_started = 0.0  # time.monotonic() when the loop last handed it the thread


async def run(fn: Callable[..., T], /, **kwargs: Any) -> T:
    """``fn(**kwargs)`` on this thread; awaits what it :func:`wait`\\ s for meanwhile."""
    work = _Request(functools.partial(fn, **kwargs))
    work.gr_context = contextvars.copy_context()  # the request's context vars (its id)
    work.turn_started = time.monotonic()
    pending = work.switch()
    while not work.dead:
        try:
            value = await pending
        except BaseException as exc:  # raised where the greenlet waits
            work.turn_started = time.monotonic()
            pending = work.throw(exc)
        else:
            work.turn_started = time.monotonic()
            pending = work.switch(value)
    return pending  # type: ignore[no-any-return]


def turn_started() -> float:
    """When (``time.monotonic()``) the request running here last got the loop's thread,
    since it started or last resumed; 0.0 outside :func:`run`. Code that could go on
    without suspending reads it to give the loop its turn in time (pg_connection.py)."""
    current = getcurrent()
    return current.turn_started if isinstance(current, _Request) else 0.0


def active() -> bool:
    """Whether the caller runs in :func:`run`, may suspend, and so must not block the loop."""
    current = getcurrent()
    return isinstance(current, _Request) and not current.pinned


@contextlib.contextmanager
def pinned() -> Iterator[None]:
    """A section that must not be suspended (it holds what other requests would wait
    for: the group commit's batch holds the database's write lock): :func:`blocking` and
    :func:`finish` raise :class:`WouldSuspend` in it, and :func:`active` is False."""
    current = getcurrent()
    if not isinstance(current, _Request):
        yield
        return
    current.pinned += 1
    try:
        yield
    finally:
        current.pinned -= 1


def _refuse_if_pinned() -> None:
    current = getcurrent()
    if isinstance(current, _Request) and current.pinned:
        raise WouldSuspend


def wait(awaitable: Awaitable[T]) -> T:
    """From code running in :func:`run`: suspend until ``awaitable`` is done; its result.

    In a :func:`database_io` section, a cancellation of the request does not interrupt
    the wait: ``awaitable`` is waited for to the end and the cancellation is raised when
    the section ends."""
    current = getcurrent()
    if not isinstance(current, _Request):
        raise RuntimeError("wait() outside cooperative.run()")
    if not current.database_io:
        return current.parent.switch(awaitable)  # type: ignore[no-any-return]
    task = asyncio.ensure_future(awaitable)
    while True:
        try:
            return current.parent.switch(asyncio.shield(task))  # type: ignore[no-any-return]
        except GreenletExit:
            raise  # the greenlet is being discarded (its loop is gone): nothing to wait for
        except BaseException as exc:
            if task.done() and not task.cancelled() and task.exception() is exc:
                raise  # the awaited work's own error
            current.cancelled = exc  # the request's: raised at the section's end
            if task.done():
                return task.result()


def in_database_io() -> bool:
    """Whether the caller runs in a :func:`database_io` section (and not :func:`pinned`)."""
    current = getcurrent()
    return isinstance(current, _Request) and bool(current.database_io) and not current.pinned


@contextlib.contextmanager
def database_io() -> Iterator[None]:
    """A section of request work whose database round trips suspend the request, where the
    driver's connection is cooperative (storage/store.py: PostgreSQL's), instead of waiting
    in a thread: no hand-off to a thread and back for each read or batch.

    A cancellation of the request (a worker shutting down) arriving meanwhile does not
    interrupt the section: every wait in it runs to its end (a round trip left half done
    would leave the connection unusable, and a group commit's batch holds other requests'
    writes) and the cancellation is raised when the section ends. (Not when the loop itself
    is shut down, ``asyncio.run`` cancelling every task, the round trip's own among them:
    SQLAlchemy then discards the connection.) Outside :func:`run`, and in a :func:`pinned`
    section, it changes nothing. The rules above hold in it: the code it runs must hold no
    ``threading`` lock of its own across a database call. (psycopg holds its connection's
    lock through each round trip, suspended too: no other request can want that lock, as a
    pooled connection is checked out to one request at a time.)"""
    current = getcurrent()
    if not isinstance(current, _Request):
        yield
        return
    current.database_io += 1
    try:
        yield
    finally:
        current.database_io -= 1
        cancelled = current.cancelled if not current.database_io else None
        if cancelled is not None:
            current.cancelled = None
            raise cancelled


class WouldSuspend(BaseException):
    """:func:`blocking` or :func:`finish` called in a :func:`pinned` section: whoever pinned
    it catches this and does the work again where it may wait (a BaseException, so that
    the ``except Exception`` of the code in between does not take it for the work's own)."""


def blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``: in a worker thread when called from :func:`run`, else right
    here; :class:`WouldSuspend` in a :func:`pinned` section."""
    _refuse_if_pinned()
    if not active():
        return fn(*args, **kwargs)
    return wait(anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs)))


def finish(
    fn: Callable[..., T], /, *args: Any, undo: Callable[[T], object] | None = None, **kwargs: Any
) -> T:
    """:func:`blocking`, for work that must not be left half done: if the request is
    cancelled meanwhile (a worker shutting down), it still waits for ``fn`` to return,
    calls ``undo`` with what it returned (to give back a lock it took), then raises the
    cancellation. What ``fn`` raised meanwhile is logged: the cancellation is what the
    request raises, and nobody else would see it."""
    _refuse_if_pinned()
    if not active():
        return fn(*args, **kwargs)
    work = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)  # as anyio's
    done = asyncio.get_running_loop().run_in_executor(None, work)
    try:
        return wait(asyncio.shield(done))
    except BaseException as exc:
        if done.done() and not done.cancelled() and done.exception() is exc:
            raise  # the work's own error, no cancellation: the caller's to handle
        while not done.done():
            try:
                wait(asyncio.shield(done))
            except BaseException:  # cancelled again: still wait for the thread
                continue
        if not done.cancelled():
            failed = done.exception()
            if failed is not None:
                log.error("work that outlived its request's cancellation failed", exc_info=failed)
            elif undo is not None:
                undo(done.result())
        raise
