"""``serve --workers N``: each worker listens on its own SO_REUSEPORT socket (workers.py), so
a burst of keep-alive connections is spread over the workers, and a dead worker's socket
takes no connections."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from attester.workers import REUSE_PORT
from tests.test_cli import serving

pytestmark = pytest.mark.skipif(not REUSE_PORT or not Path("/proc/net/tcp").exists(),
                                reason="SO_REUSEPORT and /proc (Linux)")


def _workers(port: int) -> list[int]:
    """Pids of the processes listening on ``port``'s sockets (the workers, not the parent)."""
    listening = _inodes(port, state="0A")
    return [pid for pid in _pids() if _socket_inodes(pid) & listening]


def _wait_for_workers(port: int, count: int) -> list[int]:
    deadline = time.monotonic() + 30
    while len(workers := _workers(port)) != count and time.monotonic() < deadline:
        time.sleep(0.1)
    return workers


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


def test_keep_alive_connections_spread_over_workers(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--workers", "2") as url:
        port = int(url.rsplit(":", 1)[1])
        workers = _wait_for_workers(port, 2)
        assert len(workers) == 2  # each its own listening socket; the parent's does not listen
        connections = [_connect(port) for _ in range(16)]  # opened in a burst, kept open
        established = _inodes(port, state="01")
        held = [len(_socket_inodes(pid) & established) for pid in workers]
        for sock in connections:
            sock.close()
    assert sum(held) == 16
    # by the kernel's hash; with one shared socket one worker took 7 of 8 (workers.py)
    assert min(held) >= 2, held


def test_a_dead_workers_socket_takes_no_connections(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--workers", "2") as url:
        port = int(url.rsplit(":", 1)[1])
        first, _ = _wait_for_workers(port, 2)
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        # until uvicorn replaces it (and after), every new connection is answered
        for _ in range(30):
            assert httpx.get(url + "/healthz", timeout=5).status_code == 200
        workers = _wait_for_workers(port, 2)
        assert len(workers) == 2 and first not in workers


def test_a_port_already_served_fails_at_start(tmp_path: Path) -> None:
    """A second (or stale) ``serve`` on the same port must not join the first one's
    SO_REUSEPORT group and take part of its traffic: it exits as uvicorn does (status 3)."""
    import subprocess

    from tests.test_cli import ATTESTER

    with serving(tmp_path / "a", "--workers", "2") as url:
        port = url.rsplit(":", 1)[1]
        second = subprocess.run(
            [*ATTESTER, "serve", "--port", port, "--data-dir", str(tmp_path / "b"), "--workers", "2"],
            capture_output=True, text=True, timeout=60,
        )
        assert second.returncode == 3, second.stderr[-2000:]
        assert httpx.get(url + "/healthz").status_code == 200


def test_shared_socket_option_keeps_one_listening_socket(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--workers", "2", "--shared-socket") as url:
        port = int(url.rsplit(":", 1)[1])
        assert len(_inodes(port, state="0A")) == 1  # one socket, held by parent and workers
        for _ in range(10):
            assert httpx.get(url + "/healthz").status_code == 200


def test_a_worker_keeps_its_start_up_heap_out_of_the_collector(tmp_path: Path) -> None:
    """``serve --workers N``'s app factory freezes what start-up built (app.py,
    freeze_startup_heap): full collections then skip the ~150k objects that live as long as
    the worker."""
    import subprocess
    import sys

    script = (
        "import gc\nfrom attester.app import app_from_environment\n"
        "assert gc.get_freeze_count() == 0\napp_from_environment()\nprint(gc.get_freeze_count())\n"
    )
    env = {**os.environ, "ATTESTER_DATA_DIR": str(tmp_path)}
    env.pop("ATTESTER_CONFIG", None)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert int(out.stdout.split()[-1]) > 10_000
