"""PostgreSQL round trips that suspend a request (attester/storage/pg_connection.py): a
request's reads and the batches it leads run on the event loop's thread, the loop serves
others while the server answers, connecting waits in a thread, and a cancelled request
still finishes what it started. Real PostgreSQL on loopback; the last tests, of the steps
taken without suspending, need no server (a socket pair stands for its connection)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from psycopg import waiting
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from attester import cooperative
from attester.storage import Redemption, create_store
from attester.storage import pg_connection
from attester.storage import store as store_module
from tests.test_group_commit import NOW, _register
from tests.test_storage import _backend_pid


async def _ticking(work: Any) -> tuple[Any, float]:
    """Await ``work`` while a ticker sleeps 10 ms at a time: (its result, the longest the
    loop went without running the ticker, in seconds)."""
    longest = 0.0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal longest
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.monotonic()
            longest, last = max(longest, now - last), now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # the ticker starts before the work
    try:
        result = await work
    finally:
        stop.set()
        await ticking  # (its last look included)
    return result, longest


def _pooled(store: Any, count: int) -> Any:
    """``store`` with ``count`` connections open in its pool (none to open in the test)."""
    held = [store.engine.connect() for _ in range(count)]
    for connection in held:
        connection.close()
    return store


def _sleep_on_the_server(store: Any, seconds: float) -> int:
    """A statement the server takes ``seconds`` to answer; the thread that waited for it."""
    with store.engine.connect() as connection:
        connection.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
    return threading.get_ident()


def test_a_requests_reads_wait_on_the_loop_thread_and_let_it_serve(
    postgres_database_url: str,
) -> None:
    """Two requests' reads of 0.3 s each, at once: both on the loop's thread (no thread
    hop), overlapping (the loop was not blocked by the first), the ticker ticking."""
    store = _pooled(create_store(postgres_database_url), 2)

    async def main() -> tuple[int, list[int], float, float]:
        start = time.monotonic()
        reads = asyncio.gather(*(
            cooperative.run(store._outside, fn=lambda: _sleep_on_the_server(store, 0.3))
            for _ in range(2)
        ))
        threads, longest = await _ticking(reads)
        return threading.get_ident(), list(threads), time.monotonic() - start, longest

    try:
        loop_thread, threads, took, longest = asyncio.run(main())
    finally:
        store.dispose()
    assert threads == [loop_thread, loop_thread]
    assert took < 0.58  # together (one after the other: 0.6 s at least)
    assert longest < 0.25  # the loop ran on while the server slept


def test_a_read_outside_a_database_io_section_blocks_as_before(postgres_database_url: str) -> None:
    """The cooperative connection suspends only inside a section that asked for it: the same
    statement run plainly from a request waits in psycopg's blocking wait."""
    store = create_store(postgres_database_url)

    async def main() -> float:
        _, longest = await _ticking(cooperative.run(_sleep_on_the_server, store=store, seconds=0.3))
        return longest

    try:
        longest = asyncio.run(main())
    finally:
        store.dispose()
    assert longest >= 0.29  # the loop waited with the statement


def test_a_batch_led_by_a_request_runs_on_the_loop_thread_and_lets_it_serve(
    postgres_database_url: str,
) -> None:
    store = create_store(postgres_database_url)
    seen: list[int] = []

    def slow_unit(connection: Any) -> str:
        seen.append(threading.get_ident())
        connection.execute(text("SELECT pg_sleep(0.3)"))
        return "written"

    async def main() -> tuple[int, str, float]:
        result, longest = await _ticking(cooperative.run(store.writes.run, work=slow_unit))
        return threading.get_ident(), result, longest

    try:
        loop_thread, result, longest = asyncio.run(main())
    finally:
        store.dispose()
    assert result == "written" and seen == [loop_thread]
    assert longest < 0.25  # the loop ran on while the batch waited for the server


def test_a_cancelled_leader_still_commits_its_batch(postgres_database_url: str) -> None:
    """The request leading a batch is cancelled (a worker shutting down) while the batch
    waits for the server: the batch is written to the end, the requests that shared it get
    their records, the leader's own write is stored too, and the leader raises the
    cancellation."""
    store = create_store(postgres_database_url)
    redemption = Redemption("c" * 64, NOW + timedelta(minutes=5))

    started: list[bool] = []

    def slow_unit(connection: Any) -> None:
        started.append(True)
        connection.execute(text("SELECT pg_sleep(0.3)"))
        connection.execute(
            text("INSERT INTO redeemed_challenges (digest, expires_at) VALUES (:d, :e)"),
            {"d": redemption.digest, "e": redemption.expires_at},
        )

    async def main() -> tuple[BaseException | None, list[Any]]:
        leader = asyncio.create_task(cooperative.run(store.writes.run, work=slow_unit))
        others = [
            asyncio.create_task(cooperative.run(_register, store=store, n=n)) for n in range(3)
        ]
        while not started:  # the batch (the leader's unit and the three) is being written
            await asyncio.sleep(0.005)
        leader.cancel()
        records = await asyncio.wait_for(asyncio.gather(*others), 20)
        outcome = (await asyncio.gather(leader, return_exceptions=True))[0]
        return outcome, list(records)

    try:
        outcome, records = asyncio.run(main())
        assert isinstance(outcome, asyncio.CancelledError)
        assert len({record.id for record in records}) == 3
        assert store.writes.commits == 1 and store.writes.units == 4  # one batch, all of it
        assert store.challenge_redeemed(redemption.digest)  # the leader's own write, stored
    finally:
        store.dispose()


def test_a_cancelled_read_gives_its_connection_back_usable(postgres_database_url: str) -> None:
    """Cancelled while the server answers its read: the round trip ends first (the
    statement ran to its end), so the same connection goes back to the pool in a clean
    state, not invalidated, and the next read is answered on it."""
    store = _pooled(create_store(postgres_database_url, pool_size=1), 1)
    pid = _backend_pid(store)
    invalidated: list[object] = []
    event.listen(store.engine, "invalidate", lambda *args: invalidated.append(args))
    finished: list[float] = []

    def read() -> None:
        _sleep_on_the_server(store, 0.3)
        finished.append(time.monotonic())

    async def main() -> float:
        task = asyncio.create_task(cooperative.run(store._outside, fn=read))
        await asyncio.sleep(0.05)
        cancelled_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await cooperative.run(store.challenge_redeemed, digest="d" * 64)
        return cancelled_at

    try:
        cancelled_at = asyncio.run(main())
        assert finished and finished[0] > cancelled_at  # the read ended after the cancel
        assert invalidated == [] and _backend_pid(store) == pid
        assert store.engine.pool.checkedout() == 0
    finally:
        store.dispose()


def test_connecting_inside_a_database_io_section_waits_in_a_thread(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool opens a connection for a request's read (here: the first after the pool was
    emptied): psycopg's connect, which waits in its own loop, runs in a worker thread."""
    store = create_store(postgres_database_url)
    store.engine.dispose()  # no pooled connection left
    connected: list[int] = []
    original = pg_connection.CooperativeConnection.connect

    def recording(*args: Any, **kwargs: Any) -> Any:
        connected.append(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(pg_connection.CooperativeConnection, "connect", recording)

    async def main() -> tuple[int, bool]:
        redeemed = await cooperative.run(store.challenge_redeemed, digest="d" * 64)
        return threading.get_ident(), redeemed

    try:
        loop_thread, redeemed = asyncio.run(main())
        assert not redeemed
        assert len(connected) == 1 and connected[0] != loop_thread
        assert not store.challenge_redeemed("d" * 64)  # outside a request: right here
        assert len(connected) == 1  # (the pooled one)
    finally:
        store.dispose()


def test_a_lost_connection_in_a_requests_read_is_replaced(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server ended the pooled connections (a restart) while they were in use a moment
    ago (no ping: store.py, IDLE_PING_AFTER): a request's read raises SQLAlchemy's error
    with the connection invalidated (503 storage_unavailable), and the next request's read
    is answered on a new one."""
    monkeypatch.setattr(store_module, "IDLE_PING_AFTER", float("inf"))  # however slow the test
    store = create_store(postgres_database_url, pool_size=2)
    other = create_store(postgres_database_url, migrate=False)

    async def read() -> bool:
        return await cooperative.run(store.challenge_redeemed, digest="e" * 64)

    try:
        raw = store.engine.raw_connection()
        pid = int(raw.driver_connection.info.backend_pid)  # type: ignore[union-attr]
        raw.close()
        with other.engine.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as lost:
            asyncio.run(read())
        assert lost.value.connection_invalidated
        assert asyncio.run(read()) is False
    finally:
        other.dispose()
        store.dispose()


# -- steps whose socket is ready are taken without suspending ---------------------------
def _steps(*wanted: int) -> Any:
    """A psycopg-style generator asking for ``wanted`` in turn: the readiness it was given
    for each."""
    given = []
    for want in wanted:
        given.append((yield want))
    return given


def _in_request(monkeypatch: pytest.MonkeyPatch, fileno: int, gen: Any, *, later: Any = None) -> Any:
    """``gen`` waited for by a cooperative connection on ``fileno`` in a request's
    database_io section (``later`` called on the loop 50 ms in): (what it returned, the
    number of times the request suspended). ``gen`` may instead be a function of the
    connection that waits itself."""
    suspended = []
    real_wait = cooperative.wait

    def counted(awaitable: Any) -> Any:
        suspended.append(awaitable)
        return real_wait(awaitable)

    monkeypatch.setattr(pg_connection.cooperative, "wait", counted)
    # no server: in a database_io section the wait reads only the connection's socket
    connection = SimpleNamespace(pgconn=SimpleNamespace(socket=fileno))

    def work() -> Any:
        with cooperative.database_io():
            if callable(gen):
                return gen(connection)
            return pg_connection.CooperativeConnection.wait(connection, gen)  # type: ignore[arg-type]

    async def main() -> Any:
        if later is not None:
            asyncio.get_running_loop().call_later(0.05, later)
        return await cooperative.run(work)

    return asyncio.run(main()), len(suspended)


def test_a_ready_socket_is_used_without_suspending(monkeypatch: pytest.MonkeyPatch) -> None:
    """A send (the socket writable) and a read whose answer is there already: both steps
    are taken at once, with the readiness the poll saw; the request never suspends."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.send(b"answer")
        given, suspended = _in_request(
            monkeypatch, ours.fileno(), _steps(waiting.WAIT_W, waiting.WAIT_R, waiting.WAIT_RW)
        )
    assert given == [waiting.READY_W, waiting.READY_R, waiting.READY_RW]
    assert suspended == 0


def test_a_step_that_must_wait_for_the_server_suspends_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read with nothing to read yet: the request suspends (the loop runs the answer's
    write 50 ms later) and the step resumes with the socket readable."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        given, suspended = _in_request(
            monkeypatch, ours.fileno(), _steps(waiting.WAIT_W, waiting.WAIT_R),
            later=lambda: theirs.send(b"answer"),
        )
    assert given == [waiting.READY_W, waiting.READY_R]
    assert suspended == 1


def test_steps_ready_for_longer_than_the_inline_time_let_the_loop_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past INLINE_SECONDS of ready steps (a large result read, say) the request suspends,
    so that the loop serves the others, and the steps go on as before."""
    monkeypatch.setattr(pg_connection, "INLINE_SECONDS", 0.0)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        given, suspended = _in_request(
            monkeypatch, ours.fileno(), _steps(waiting.WAIT_W, waiting.WAIT_W)
        )
    assert given == [waiting.READY_W, waiting.READY_W]
    assert suspended == 1


def test_the_inline_time_counts_from_the_requests_turn_not_from_each_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many waits in a row (a pipeline's statements, each one wait) share one turn: once
    INLINE_SECONDS have passed since the request got the loop's thread, its next ready
    wait suspends; resumed, it has a new turn and takes the next one at once."""
    monkeypatch.setattr(pg_connection, "INLINE_SECONDS", 0.05)
    ours, theirs = socket.socketpair()
    with ours, theirs:

        def three_waits(connection: Any) -> list[Any]:
            first = pg_connection.CooperativeConnection.wait(connection, _steps(waiting.WAIT_W))
            time.sleep(0.06)  # the request's own work, past the inline time
            second = pg_connection.CooperativeConnection.wait(connection, _steps(waiting.WAIT_W))
            third = pg_connection.CooperativeConnection.wait(connection, _steps(waiting.WAIT_W))
            return [first, second, third]

        given, suspended = _in_request(monkeypatch, ours.fileno(), three_waits)
    assert given == [[waiting.READY_W]] * 3
    assert suspended == 1  # the second only
