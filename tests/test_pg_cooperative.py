"""PostgreSQL round trips that suspend a request (attester/storage/pg_connection.py): a
request's reads and the batches it leads run on the event loop's thread, the loop serves
others while the server answers, connecting waits in a thread, and a cancelled request
still finishes what it started. Real PostgreSQL on loopback."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from attester import cooperative
from attester.storage import Redemption, create_store
from attester.storage import pg_connection
from tests.test_group_commit import NOW, _register


async def _ticking(work: Any) -> tuple[Any, int]:
    """Await ``work`` while a ticker counts 10 ms ticks: (its result, the ticks)."""
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    try:
        return await work, ticks
    finally:
        stop.set()
        await ticking


def _sleep_on_the_server(store: Any, seconds: float) -> int:
    """A statement the server takes ``seconds`` to answer; the thread that waited for it."""
    with store.engine.connect() as connection:
        connection.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
    return threading.get_ident()


def test_a_requests_reads_wait_on_the_loop_thread_and_let_it_serve(postgres_database_url: str) -> None:
    """Two requests' reads of 0.3 s each, at once: both on the loop's thread (no thread
    hop), overlapping (the loop was not blocked by the first), the ticker ticking."""
    store = create_store(postgres_database_url)

    async def main() -> tuple[int, list[int], float, int]:
        start = time.monotonic()
        reads = asyncio.gather(*(
            cooperative.run(store._outside, fn=lambda: _sleep_on_the_server(store, 0.3))
            for _ in range(2)
        ))
        threads, ticks = await _ticking(reads)
        return threading.get_ident(), list(threads), time.monotonic() - start, ticks

    try:
        loop_thread, threads, took, ticks = asyncio.run(main())
    finally:
        store.dispose()
    assert threads == [loop_thread, loop_thread]
    assert took < 0.55  # together, not one after the other
    assert ticks >= 15


def test_a_read_outside_a_database_io_section_blocks_as_before(postgres_database_url: str) -> None:
    """The cooperative connection suspends only inside a section that asked for it: the same
    statement run plainly from a request waits in psycopg's blocking wait."""
    store = create_store(postgres_database_url)

    async def main() -> int:
        _, ticks = await _ticking(cooperative.run(_sleep_on_the_server, store=store, seconds=0.3))
        return ticks

    try:
        ticks = asyncio.run(main())
    finally:
        store.dispose()
    assert ticks <= 2  # the loop waited with the statement


def test_a_batch_led_by_a_request_runs_on_the_loop_thread_and_lets_it_serve(
    postgres_database_url: str,
) -> None:
    store = create_store(postgres_database_url)
    seen: list[int] = []

    def slow_unit(connection: Any) -> str:
        seen.append(threading.get_ident())
        connection.execute(text("SELECT pg_sleep(0.3)"))
        return "written"

    async def main() -> tuple[int, str, int]:
        result, ticks = await _ticking(cooperative.run(store.writes.run, work=slow_unit))
        return threading.get_ident(), result, ticks

    try:
        loop_thread, result, ticks = asyncio.run(main())
    finally:
        store.dispose()
    assert result == "written" and seen == [loop_thread]
    assert ticks >= 15


def test_a_cancelled_leader_still_commits_its_batch(postgres_database_url: str) -> None:
    """The request leading a batch is cancelled (a worker shutting down) while the batch
    waits for the server: the batch is written to the end, the requests that shared it get
    their records, the leader's own write is stored too, and the leader raises the
    cancellation."""
    store = create_store(postgres_database_url)
    redemption = Redemption("c" * 64, NOW + timedelta(minutes=5))

    def slow_unit(connection: Any) -> None:
        connection.execute(text("SELECT pg_sleep(0.3)"))
        connection.execute(
            text("INSERT INTO redeemed_challenges (digest, expires_at) VALUES (:d, :e)"),
            {"d": redemption.digest, "e": redemption.expires_at},
        )

    async def main() -> tuple[BaseException | None, list[Any]]:
        leader = asyncio.create_task(cooperative.run(store.writes.run, work=slow_unit))
        others = [asyncio.create_task(cooperative.run(_register, store=store, n=n)) for n in range(3)]
        await asyncio.sleep(0.1)  # the batch (the leader's unit and the three) is written
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
    """Cancelled while the server answers its read: the round trip ends first, so the
    connection goes back to the pool in a clean state and the next read is answered."""
    store = create_store(postgres_database_url, pool_size=1)

    async def main() -> None:
        read = asyncio.create_task(
            cooperative.run(store._outside, fn=lambda: _sleep_on_the_server(store, 0.3))
        )
        await asyncio.sleep(0.05)
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        assert not await cooperative.run(store.challenge_redeemed, digest="d" * 64)

    try:
        asyncio.run(main())
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
        return threading.get_ident(), await cooperative.run(store.challenge_redeemed, digest="d" * 64)

    try:
        loop_thread, redeemed = asyncio.run(main())
        assert not redeemed
        assert len(connected) == 1 and connected[0] != loop_thread
        assert not store.challenge_redeemed("d" * 64)  # outside a request: right here
        assert len(connected) == 1  # (the pooled one)
    finally:
        store.dispose()


def test_a_lost_connection_in_a_requests_read_is_replaced(postgres_database_url: str) -> None:
    """The server ended the pooled connections (a restart): a request's read raises
    SQLAlchemy's error with the connection invalidated (503 storage_unavailable), and the
    next request's read is answered on a new one."""
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
