"""``serve --workers N``: the workers share one listening socket and take connections in turn,
the one holding fewest taking the next (workers.py), so a burst of keep-alive connections is
spread evenly, a dead worker does not stall new connections, and a busy or hung one holding
fewest delays a connection by ``DEFER`` at most."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import uvloop

from attester import workers
from attester.workers import _BEAT, _CELLS, _LISTENING, DEFER, STALE, Acceptor, Board
from tests.test_cli import ATTESTER, serving

linux_proc = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="/proc (Linux)")


# -- the board and the accept loop, in this process ---------------------------------------
def _live(board: Board, slot: int, count: int) -> None:
    """``slot``'s worker listens, its loop ran just now, and it holds ``count``."""
    board.listening(slot, True)
    board.beat(slot)
    board.publish(slot, count)


def test_slots_are_handed_out_once_and_given_back_cleared() -> None:
    board = Board(slots=2)
    first, second = board.take(), board.take()
    assert {first, second} == {0, 1}
    assert board.take() is None  # every slot held
    _live(board, second, 0)
    mine = first
    _live(board, mine, 1)
    assert not board.holds_fewest(mine)
    board.give_back(second)  # its worker exited: its count no longer counts
    assert board.holds_fewest(mine)
    assert board.take() == second


def test_only_a_listening_worker_whose_loop_runs_is_waited_for() -> None:
    board = Board(slots=3)
    mine, other, third = board.take(), board.take(), board.take()
    _live(board, mine, 2)
    _live(board, other, 1)
    _live(board, third, 5)
    assert not board.holds_fewest(mine)
    board.listening(other, False)  # it is letting a connection go itself, or out of fds
    assert board.holds_fewest(mine)
    board.listening(other, True)
    board._cells[_CELLS * other + _BEAT] -= int(1.1 * STALE * 1e9)  # its loop last ran then
    assert board.holds_fewest(mine)
    _live(board, other, 2)
    assert board.holds_fewest(mine) and board.holds_fewest(other)  # ties: both may take it
    assert not board.holds_fewest(third)


def _keep_beating(board: Board, slot: int) -> None:
    """On the running loop: ``slot``'s worker's loop runs (its beat stays fresh)."""
    board.beat(slot)
    asyncio.get_running_loop().call_later(0.01, _keep_beating, board, slot)


class _Served(asyncio.Protocol):
    made: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _Served.made.append(time.monotonic())
        transport.write(b"hi")  # type: ignore[attr-defined]


def _accept_through(board: Board, slot: int | None, held: int, *, connect: int = 1,
                    keep_alive: int | None = None) -> list[float]:
    """Run an Acceptor on a fresh socket in this process (on uvloop, as in a worker), its
    worker holding ``held`` connections, the loop of slot ``keep_alive`` beating meanwhile;
    return how long each of ``connect`` connections waited to be taken."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def main() -> list[float]:
        if keep_alive is not None:
            _keep_beating(board, keep_alive)
        _Served.made = []
        connections = {object() for _ in range(held)}
        acceptor = Acceptor(listener, _Served, ssl=None, board=board, slot=slot,
                            connections=connections)
        waited = []
        for _ in range(connect):
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
            waited.append(_Served.made[-1] - started)
            writer.close()
        acceptor.close()
        await acceptor.wait_closed()
        if slot is not None:
            assert not board._cells[_CELLS * slot + _LISTENING]  # closed: not listening
        return waited

    try:
        return uvloop.run(main())
    finally:
        listener.close()


def test_the_worker_holding_fewest_takes_a_connection_at_once() -> None:
    board = Board(slots=2)
    mine, other = board.take(), board.take()
    _live(board, other, 5)
    waited = _accept_through(board, mine, held=2, connect=3, keep_alive=other)
    assert max(waited) < DEFER / 2, waited


def test_a_busier_worker_takes_a_connection_nobody_else_took_after_defer() -> None:
    """The worker holding fewest (here one that listens and whose loop runs, but never
    accepts) delays a connection by DEFER, not forever."""
    board = Board(slots=2)
    mine, other = board.take(), board.take()
    _live(board, other, 0)
    waited = _accept_through(board, mine, held=1, connect=3, keep_alive=other)
    assert all(DEFER <= w < DEFER + 0.5 for w in waited), waited


def test_connections_left_waiting_past_defer_are_all_taken_at_once() -> None:
    board = Board(slots=2)
    mine, other = board.take(), board.take()
    _live(board, other, 0)  # listens, its loop runs, never accepts
    listener = socket.create_server(("127.0.0.1", 0))

    async def main() -> list[float]:
        _keep_beating(board, other)
        _Served.made = []
        acceptor = Acceptor(listener, _Served, ssl=None, board=board, slot=mine,
                            connections={object()})
        started = time.monotonic()
        opened = [await asyncio.open_connection(*listener.getsockname()[:2]) for _ in range(3)]
        for reader, _ in opened:
            assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
        acceptor.close()
        return [made - started for made in _Served.made]

    try:
        waited = uvloop.run(main())
    finally:
        listener.close()
    # together, once the first has waited DEFER (one by one, each would wait DEFER again)
    assert len(waited) == 3 and DEFER <= min(waited), waited
    assert max(waited) - min(waited) < DEFER / 2, waited


def test_a_worker_leaving_a_connection_to_another_is_still_waited_for() -> None:
    """It looks again every RECHECK: once it holds fewest, the others wait for it (had it
    stopped counting, the other would take every connection meanwhile: 7 / 1 of 8)."""
    board = Board(slots=2)
    mine, other = board.take(), board.take()
    _live(board, other, 0)
    listener = socket.create_server(("127.0.0.1", 0))

    async def main() -> float:
        acceptor = Acceptor(listener, _Served, ssl=None, board=board, slot=mine,
                            connections={object()})
        started = time.monotonic()
        reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        await asyncio.sleep(0.02)  # left for the other, which holds fewer
        board.beat(other)
        board.publish(other, 5)  # now this one holds fewer ...
        assert not board.holds_fewest(other)  # ... and the other leaves it to this one
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
        writer.close()
        acceptor.close()
        return time.monotonic() - started

    try:
        assert uvloop.run(main()) < DEFER * 0.8
    finally:
        listener.close()


def test_a_worker_whose_loop_stopped_running_is_not_waited_for() -> None:
    board = Board(slots=2)
    mine, other = board.take(), board.take()
    _live(board, other, 0)
    board._cells[_CELLS * other + _BEAT] -= int(1.1 * STALE * 1e9)  # killed or hung
    waited = _accept_through(board, mine, held=1, connect=2)
    assert max(waited) < DEFER / 2, waited


class _OutOfDescriptorsOnce:
    """A listening socket whose first accept() fails as a process out of descriptors does."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.failed = sock, False

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def accept(self) -> tuple[socket.socket, object]:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EMFILE, "Too many open files")
        return self.sock.accept()


def test_a_worker_out_of_descriptors_pauses_then_takes_turns_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It stops listening for the pause (nobody waits for it), then goes on: also when, back,
    it finds a connection waiting and another worker holding fewer (it raised there, and
    never accepted again)."""
    monkeypatch.setattr(workers, "OUT_OF_DESCRIPTORS_PAUSE", 1.0)
    board = Board(slots=2)
    mine, other = board.take(), board.take()
    _live(board, other, 0)
    listener = socket.create_server(("127.0.0.1", 0))
    errors: list[object] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        _keep_beating(board, other)
        held: set[object] = set()
        sock = _OutOfDescriptorsOnce(listener)
        acceptor = Acceptor(sock, _Served, ssl=None,  # type: ignore[arg-type]
                            board=board, slot=mine, connections=held)
        reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        while not sock.failed:
            await asyncio.sleep(0.005)
        assert not board._cells[_CELLS * mine + _LISTENING]  # paused: not waited for
        held.update((object(), object()))
        acceptor.publish()  # back, it holds more than the other: it waits, then takes it
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
        assert board._cells[_CELLS * mine + _LISTENING]
        writer.close()
        acceptor.close()

    try:
        uvloop.run(main())
    finally:
        listener.close()
    assert not errors, errors


def test_without_a_slot_a_worker_accepts_without_turns() -> None:
    board = Board(slots=1)
    other = board.take()
    _live(board, other, 0)
    waited = _accept_through(board, None, held=9, keep_alive=other)
    assert waited[0] < DEFER / 2


# -- serve --workers 2 ------------------------------------------------------------------
def _listening_pids(port: int) -> list[int]:
    """Pids holding ``port``'s listening socket: the supervisor and its workers."""
    listening = _inodes(port, state="0A")
    return [pid for pid in _pids() if _socket_inodes(pid) & listening]


def _workers(port: int) -> list[int]:
    pids = _listening_pids(port)
    return [pid for pid in pids if _ppid(pid) in pids]


def _wait_for_workers(port: int, count: int, *, but: int | None = None) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = _workers(port)
        if len(workers) == count and but not in workers:
            return workers
        time.sleep(0.1)
    return _workers(port)


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _socket_inodes(pid: int) -> set[str]:
    try:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    except OSError:
        return set()
    return {link[8:-1] for link in links if link.startswith("socket:[")}


def _inodes(port: int, *, state: str) -> set[str]:
    """Inodes of IPv4 TCP sockets with local port ``port`` in ``state`` (0A listen, 01 established)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state:
            out.add(fields[9])
    return out


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    return sock


def _answered_in(port: int) -> float:
    """Seconds for one request on a new connection, closed after it."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    return time.monotonic() - started


def _held(port: int, workers: list[int]) -> list[int]:
    established = _inodes(port, state="01")
    return [len(_socket_inodes(pid) & established) for pid in workers]


def _until_both_serve(port: int, workers: list[int]) -> None:
    """Open connections until each worker has answered on one (a worker's first request
    is slow: imports, caches), so the measure below sees two ready workers."""
    opened = []
    deadline = time.monotonic() + 30
    while min(_held(port, workers)) == 0 and time.monotonic() < deadline:
        opened.append(_connect(port))
        time.sleep(0.05)
    for sock in opened:
        sock.close()
    while sum(_held(port, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)


@linux_proc
def test_keep_alive_connections_are_spread_evenly_over_workers(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--workers", "2") as url:
        port = int(url.rsplit(":", 1)[1])
        workers = _wait_for_workers(port, 2)
        assert len(workers) == 2
        assert len(_inodes(port, state="0A")) == 1  # one socket, the supervisor's, shared
        _until_both_serve(port, workers)
        connections = []
        for _ in range(16):  # one after another, as a proxy opens its pool; kept open
            connections.append(_connect(port))
            time.sleep(0.01)
        held = _held(port, workers)
        for sock in connections:
            sock.close()
    assert sum(held) == 16
    # by count: 8 / 8 (a socket per worker, by a hash of the addresses, gave 7 / 1 of 8)
    assert max(held) - min(held) <= 2, held


@linux_proc
def test_a_burst_of_connections_is_spread_over_workers(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--workers", "2") as url:
        port = int(url.rsplit(":", 1)[1])
        workers = _wait_for_workers(port, 2)
        _until_both_serve(port, workers)
        connections = [socket.create_connection(("127.0.0.1", port), timeout=10)
                       for _ in range(16)]  # all opened before any is answered
        for sock in connections:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for sock in connections:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        held = _held(port, workers)
        for sock in connections:
            sock.close()
    assert sum(held) == 16
    assert max(held) - min(held) <= 4, held  # uvicorn's accept: 1 / 15 to 4 / 12


@linux_proc
def test_clients_opening_connections_together_are_not_held_back(tmp_path: Path) -> None:
    """Four clients, each a new connection per request: a worker lets a connection go only
    to one that listens, so two workers never wait for each other (they did, 0.1 s a
    connection, before the listening flag)."""
    from concurrent.futures import ThreadPoolExecutor

    with serving(tmp_path / "data", "--workers", "2") as url:
        port = int(url.rsplit(":", 1)[1])
        _until_both_serve(port, _wait_for_workers(port, 2))

        def client(_: int) -> list[float]:
            return [_answered_in(port) for _ in range(40)]

        with ThreadPoolExecutor(4) as pool:
            times = sorted(t for each in pool.map(client, range(4)) for t in each)
    assert times[len(times) // 2] < DEFER / 4, times[len(times) // 2]


@linux_proc
def test_a_killed_worker_does_not_stall_new_connections(tmp_path: Path) -> None:
    """The killed worker held fewer connections than the other and its slot still says it
    listens: it is waited for until its loop has not run for STALE, then passed over, and
    its replacement takes turns again."""
    with serving(tmp_path / "data", "--workers", "2") as url:
        port = int(url.rsplit(":", 1)[1])
        workers = _wait_for_workers(port, 2)
        _until_both_serve(port, workers)
        kept = _connect(port)  # on one worker, which now holds more than the other
        (holder,) = [pid for pid, n in zip(workers, _held(port, workers)) if n]
        (idle,) = [pid for pid in workers if pid != holder]
        os.kill(idle, signal.SIGKILL)
        first = _answered_in(port)
        later = sorted(_answered_in(port) for _ in range(20))
        assert first < DEFER + 0.4
        assert later[len(later) // 2] < DEFER / 2, later  # passed over, not waited for
        kept.close()
        workers = _wait_for_workers(port, 2, but=idle)
        assert len(workers) == 2 and idle not in workers
        _until_both_serve(port, workers)
        both = [_connect(port), _connect(port)]  # one each: the replacement takes turns
        assert sorted(_held(port, workers)) == [1, 1]
        for sock in both:
            sock.close()


def test_a_port_already_served_fails_at_start(tmp_path: Path) -> None:
    """A second (or stale) ``serve`` on the same port exits as uvicorn does (status 3)
    instead of sharing it."""
    with serving(tmp_path / "a", "--workers", "2") as url:
        port = url.rsplit(":", 1)[1]
        second = subprocess.run(
            [*ATTESTER, "serve", "--port", port, "--data-dir", str(tmp_path / "b"), "--workers", "2"],
            capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 3, second.stderr[-2000:]
        assert httpx.get(url + "/healthz").status_code == 200


@linux_proc
def test_shared_socket_option_keeps_uvicorns_accept(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--workers", "2", "--shared-socket") as url:
        port = int(url.rsplit(":", 1)[1])
        assert len(_inodes(port, state="0A")) == 1
        for _ in range(10):
            assert httpx.get(url + "/healthz").status_code == 200


def test_a_worker_keeps_its_start_up_heap_out_of_the_collector(tmp_path: Path) -> None:
    """``serve --workers N``'s app factory freezes what start-up built (app.py,
    freeze_startup_heap): full collections then skip the ~150k objects that live as long as
    the worker."""
    script = (
        "import gc\nfrom attester.app import app_from_environment\n"
        "assert gc.get_freeze_count() == 0\napp_from_environment()\nprint(gc.get_freeze_count())\n"
    )
    env = {**os.environ, "ATTESTER_DATA_DIR": str(tmp_path)}
    env.pop("ATTESTER_CONFIG", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert int(out.stdout.split()[-1]) > 10_000
