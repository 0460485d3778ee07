"""Request work on the event loop's thread (attester/cooperative.py) and the group commit's
side of it: requests suspended at their writes are written together, a thread's and a
greenlet's writes share batches, and what waits long waits in a thread, not on the loop."""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import logging
import os
import threading
import time
from typing import Any

import pytest

from attester import cooperative
from attester.storage import create_store
from attester.storage.group_commit import GroupCommit
from tests.test_group_commit import _register

REQUEST = contextvars.ContextVar("request", default="none")


def test_run_returns_the_result_on_the_loop_thread_and_marks_itself_active() -> None:
    seen: dict[str, Any] = {}

    def work(x: int) -> int:
        seen["active"], seen["thread"] = cooperative.active(), threading.get_ident()
        return x * 2

    async def main() -> int:
        seen["loop"] = threading.get_ident()
        return await cooperative.run(work, x=21)

    assert asyncio.run(main()) == 42
    assert seen["active"] and seen["thread"] == seen["loop"]
    assert not cooperative.active()


def test_exceptions_come_out_of_run_with_their_type() -> None:
    def work() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        asyncio.run(cooperative.run(work))


def test_wait_suspends_one_request_while_another_runs() -> None:
    """The first request waits for an event only the second sets: without suspension (a
    blocked loop) the second could never run."""
    order: list[str] = []

    async def main() -> None:
        event = asyncio.Event()

        def first() -> None:
            order.append("first waits")
            cooperative.wait(event.wait())
            order.append("first resumed")

        def second() -> None:
            order.append("second sets")
            event.set()

        await asyncio.gather(cooperative.run(first), cooperative.run(second))

    asyncio.run(main())
    assert order == ["first waits", "second sets", "first resumed"]


def test_an_awaitable_that_fails_raises_where_the_request_waits() -> None:
    async def fails() -> None:
        raise ValueError("refused")

    def work() -> str:
        try:
            cooperative.wait(fails())
        except ValueError as exc:
            return f"caught {exc}"
        return "not raised"

    assert asyncio.run(cooperative.run(work)) == "caught refused"


def test_blocking_runs_in_a_thread_only_from_a_request() -> None:
    assert cooperative.blocking(threading.get_ident) == threading.get_ident()

    async def main() -> tuple[int, int]:
        return threading.get_ident(), await cooperative.run(
            lambda: cooperative.blocking(threading.get_ident)
        )

    loop_thread, worker = asyncio.run(main())
    assert worker != loop_thread


def test_the_request_sees_the_context_it_was_started_in() -> None:
    async def main() -> str:
        REQUEST.set("r-1")
        return await cooperative.run(REQUEST.get)

    assert asyncio.run(main()) == "r-1"


def test_wait_outside_a_request_is_refused() -> None:
    pending = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="outside"):
        cooperative.wait(pending)
    pending.close()


# -- the group commit -------------------------------------------------------------------
def test_requests_on_the_loop_are_written_together(database_url: str) -> None:
    """Twelve registrations started at once on one loop: each suspends at its write, the
    first lets the others reach theirs, and far fewer transactions than writes commit."""
    store = create_store(database_url)

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(cooperative.run(_register, store=store, n=n) for n in range(12))
        )

    records = asyncio.run(main())
    assert len({record.id for record in records}) == 12
    assert store.writes.units == 12 and store.writes.commits <= 3
    for n, record in enumerate(records):
        assert store.instance_by_thumbprint(f"t{n:042d}").id == record.id
    store.dispose()


def test_a_thread_and_requests_on_the_loop_share_the_queue(database_url: str) -> None:
    store = create_store(database_url)
    results: dict[str, Any] = {}

    def from_thread() -> None:
        results["thread"] = _register(store, 100)

    async def main() -> list[Any]:
        thread = threading.Thread(target=from_thread)
        thread.start()
        records = await asyncio.gather(
            *(cooperative.run(_register, store=store, n=n) for n in range(6))
        )
        await asyncio.to_thread(thread.join, 30)
        return records

    records = asyncio.run(main())
    assert len({r.id for r in [*records, results["thread"]]}) == 7
    assert store.writes.units == 7
    store.dispose()


async def _writes_held_up(store: Any, count: int, release: Any) -> list[Any]:
    """Start ``count`` registrations on the loop while something holds them up; check that
    they wait and that the loop serves meanwhile (a ticker ticks); ``release()``; their records."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    writes = asyncio.gather(*(cooperative.run(_register, store=store, n=n) for n in range(count)))
    await asyncio.sleep(0.3)
    assert not writes.done()  # held up...
    assert ticks >= 10  # ...while the loop served
    release()
    records = await asyncio.wait_for(writes, 30)
    stop.set()
    await ticking
    return list(records)


def test_the_writer_lock_held_elsewhere_does_not_stop_the_loop(tmp_path: Any) -> None:
    """Another process's write (here: the lock file locked through a second descriptor)
    makes the writes wait in a thread; the loop goes on serving meanwhile, and they commit
    once the lock is free."""
    store = create_store(f"sqlite:///{tmp_path / 'a.db'}")
    lock_path = str(tmp_path / "a.db") + "-writer.lock"
    other = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(other, fcntl.LOCK_EX)

    async def main() -> list[Any]:
        return await _writes_held_up(store, 4, lambda: fcntl.flock(other, fcntl.LOCK_UN))

    started = time.monotonic()
    records = asyncio.run(main())
    os.close(other)
    assert len(records) == 4 and time.monotonic() - started < 30
    assert store.writes.units == 4
    store.dispose()


def test_pinned_sections_refuse_to_suspend() -> None:
    """In a pinned section (a batch holding the write lock) work that would wait raises
    WouldSuspend, a BaseException: an ``except Exception`` on the way does not take it."""

    def work() -> tuple[bool, str]:
        with cooperative.pinned():
            active = cooperative.active()
            try:
                cooperative.blocking(threading.get_ident)
            except Exception:
                return active, "taken for the work's own error"
            except cooperative.WouldSuspend:
                return active, "refused"
        return active, "ran"

    assert asyncio.run(cooperative.run(work)) == (False, "refused")
    with cooperative.pinned():  # outside a request: nothing to refuse
        assert cooperative.blocking(threading.get_ident) == threading.get_ident()


def test_finish_outlives_a_cancellation_and_undoes_what_it_did() -> None:
    """A request cancelled while its thread works (a worker shutting down) still waits for
    the thread, hands its result to ``undo`` (a lock to give back), then is cancelled."""
    events: list[str] = []

    def slow() -> str:
        time.sleep(0.3)
        events.append("thread done")
        return "lock"

    def work() -> None:
        cooperative.finish(slow, undo=lambda taken: events.append(f"undo {taken}"))
        events.append("not reached")

    _cancel_while_it_works(work)
    assert events == ["thread done", "undo lock"]


def _cancel_while_it_works(work: Any) -> None:
    """Run ``work`` as a request, cancel it 50 ms in; the request raises the cancellation."""

    async def main() -> None:
        task = asyncio.create_task(cooperative.run(work))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_finish_logs_what_the_work_raised_after_the_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The work fails after its request was cancelled: the request raises the cancellation,
    and the work's error is logged (it was dropped), with nothing to undo."""
    events: list[str] = []

    def slow() -> str:
        time.sleep(0.3)
        raise OSError("the disk went away")

    def work() -> None:
        cooperative.finish(slow, undo=lambda taken: events.append(f"undo {taken}"))

    with caplog.at_level(logging.ERROR, logger="attester"):
        _cancel_while_it_works(work)
    assert events == []
    assert "outlived its request's cancellation failed" in caplog.text
    assert "the disk went away" in caplog.text


def test_finish_without_a_cancellation_raises_the_works_error_and_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def failing() -> str:
        raise OSError("the disk went away")

    def work() -> None:
        cooperative.finish(failing, undo=lambda taken: pytest.fail("nothing to undo"))

    with caplog.at_level(logging.ERROR, logger="attester"), pytest.raises(OSError):
        asyncio.run(cooperative.run(work))
    assert caplog.text == ""


def test_a_batch_meeting_sqlite_locked_by_another_writer_waits_in_a_thread(tmp_path: Any) -> None:
    """A writer outside the group commit (an admin action, the CLI) holds SQLite's write
    lock: the batch's statements fail at once on the loop (no busy handler sleeping there),
    the batch is written again in a thread once the lock is free, and the loop serves on."""
    import sqlite3

    path = tmp_path / "a.db"
    store = create_store(f"sqlite:///{path}")
    outside = sqlite3.connect(path, isolation_level=None)
    outside.execute("BEGIN IMMEDIATE")

    async def main() -> list[Any]:
        return await _writes_held_up(store, 3, lambda: outside.execute("ROLLBACK"))

    records = asyncio.run(main())
    assert len({r.id for r in records}) == 3
    with store.engine.connect() as connection:  # the loop's connection got its timeout back
        (timeout,) = connection.connection.driver_connection.execute("PRAGMA busy_timeout").fetchone()
    assert timeout == 30000
    outside.close()
    store.dispose()


@pytest.mark.parametrize("cooperative_io", [True, False])
def test_a_unit_that_starts_another_is_refused_wherever_units_run(
    postgres_database_url: str, cooperative_io: bool
) -> None:
    """A request's PostgreSQL units run on the loop (cooperative connections) or, for an
    engine without them, in a worker thread: a unit that starts another write gets the
    RuntimeError in both (it would wait for itself for ever)."""
    store = create_store(postgres_database_url)
    writes = GroupCommit(store.engine, cooperative_io=cooperative_io)

    def nested() -> None:
        writes.run(lambda _connection: writes.run(lambda _inner: None))

    async def main() -> None:
        await asyncio.wait_for(cooperative.run(nested), 20)

    with pytest.raises(RuntimeError, match="started another"):
        asyncio.run(main())
    store.dispose()


def test_a_unit_that_would_wait_in_a_batch_on_the_loop_is_written_from_a_thread(tmp_path: Any) -> None:
    """A unit of a batch written on the loop that needs to wait (an HSM signing again) may
    not suspend there: the batch is rolled back and written again in a thread, once."""
    store = create_store(f"sqlite:///{tmp_path / 'a.db'}")
    runs: list[int] = []

    def unit(connection: Any) -> int:
        runs.append(threading.get_ident())
        connection.exec_driver_sql(
            "INSERT INTO redeemed_challenges (digest, expires_at) VALUES ('d', '2030-01-01 00:00:00.000000')"
        )
        return cooperative.blocking(threading.get_ident)

    async def main() -> tuple[int, int]:
        return threading.get_ident(), await cooperative.run(store.writes.run, work=unit)

    loop_thread, signer_thread = asyncio.run(main())
    assert runs[0] == loop_thread and len(runs) == 2 and runs[1] != loop_thread
    assert signer_thread == runs[1]  # in the thread, the waiting work runs right there
    assert store.challenge_redeemed("d")
    with store.engine.connect() as connection:  # written once, not twice
        assert connection.exec_driver_sql("SELECT count(*) FROM redeemed_challenges").scalar() == 1
    store.dispose()


def test_a_full_pool_makes_requests_check_out_in_a_thread(tmp_path: Any) -> None:
    """Every pooled connection out (threads waiting for SQLite, say): a request's read and
    its batch's connection are checked out in a thread; the loop serves on meanwhile."""
    store = create_store(f"sqlite:///{tmp_path / 'a.db'}", pool_size=2)
    held = [store.engine.connect(), store.engine.connect()]

    def release() -> None:
        for connection in held:
            connection.close()

    async def main() -> list[Any]:
        return await _writes_held_up(store, 2, release)

    assert len({r.id for r in asyncio.run(main())}) == 2
    store.dispose()


def test_a_cancellation_in_a_database_io_section_waits_for_the_sections_end() -> None:
    """Cancelled while it waits in a database_io section (a round trip, a batch for other
    requests): the wait runs to its end, the section's rest runs, and the cancellation is
    raised when the section ends; nothing after it runs."""
    events: list[str] = []

    def work() -> None:
        with cooperative.database_io():
            assert cooperative.in_database_io()
            cooperative.wait(asyncio.sleep(0.3))
            events.append("waited to the end")
            cooperative.wait(asyncio.sleep(0.01))  # a wait after the cancellation: not cut
            events.append("section done")
        events.append("not reached")

    _cancel_while_it_works(work)
    assert events == ["waited to the end", "section done"]


def test_a_database_io_section_without_a_cancellation_returns_and_raises_as_usual() -> None:
    async def fails() -> None:
        raise ValueError("refused")

    def work() -> str:
        with cooperative.database_io():
            with pytest.raises(ValueError, match="refused"):
                cooperative.wait(fails())
            return str(cooperative.wait(asyncio.sleep(0, result="slept")))

    assert asyncio.run(cooperative.run(work)) == "slept"
    assert not cooperative.in_database_io()


def test_database_io_is_only_a_requests_and_not_where_it_is_pinned() -> None:
    with cooperative.database_io():  # a thread, the CLI: nothing to suspend
        outside = cooperative.in_database_io()

    def work() -> tuple[bool, bool]:
        with cooperative.database_io():
            inside = cooperative.in_database_io()
            with cooperative.pinned():
                return inside, cooperative.in_database_io()

    assert not outside
    assert asyncio.run(cooperative.run(work)) == (True, False)


def test_a_request_discarded_in_a_database_io_section_ends_there() -> None:
    """GreenletExit (the greenlet discarded: its loop went away) is not a cancellation to
    hold: the request ends at once instead of waiting on, never to be resumed."""
    from greenlet import GreenletExit

    def work() -> None:
        with cooperative.database_io():
            cooperative.wait(asyncio.sleep(10))

    async def main() -> bool:
        request = cooperative._Request(work)
        pending = request.switch()  # suspended in the section's wait
        request.throw(GreenletExit)  # what greenlet does to one garbage-collected
        pending.cancel()
        return bool(request.dead)

    assert asyncio.run(main())
