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
* What may wait long (the network, a remote database, a file lock another process holds)
  goes through :func:`blocking`; a local SQLite file's statements run inline (fast, and a
  thread hop would cost more than they do).
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio.to_thread
from greenlet import getcurrent, greenlet

T = TypeVar("T")


class _Request(greenlet):  # type: ignore[misc]
    """A greenlet running request work for :func:`run` (told apart by its class)."""


async def run(fn: Callable[..., T], /, **kwargs: Any) -> T:
    """``fn(**kwargs)`` on this thread; awaits what it :func:`wait`\\ s for meanwhile."""
    work = _Request(functools.partial(fn, **kwargs))
    work.gr_context = contextvars.copy_context()  # the request's context vars (its id)
    pending = work.switch()
    while not work.dead:
        try:
            value = await pending
        except BaseException as exc:  # raised where the greenlet waits
            pending = work.throw(exc)
        else:
            pending = work.switch(value)
    return pending  # type: ignore[no-any-return]


def active() -> bool:
    """Whether the caller runs in :func:`run` (and so must not block the loop)."""
    return isinstance(getcurrent(), _Request)


def wait(awaitable: Awaitable[T]) -> T:
    """From code running in :func:`run`: suspend until ``awaitable`` is done; its result."""
    current = getcurrent()
    if not isinstance(current, _Request):
        raise RuntimeError("wait() outside cooperative.run()")
    return current.parent.switch(awaitable)  # type: ignore[no-any-return]


def blocking(fn: Callable[..., T], /, *args: Any) -> T:
    """``fn(*args)``: in a worker thread when called from :func:`run`, else right here."""
    if not active():
        return fn(*args)
    return wait(anyio.to_thread.run_sync(functools.partial(fn, *args)))
