"""``serve --workers N``: uvicorn's supervisor, each worker listening on its own socket.

uvicorn binds one socket in the parent and every worker accepts from it. Whichever
worker's event loop wakes first accepts every connection waiting (asyncio and uvloop
accept in a loop), so a burst of keep-alive connections, as from a reverse proxy or a
load generator, lands mostly on one worker and stays there: 7 of 8 connections on one of
two workers in bench/bench_all.py, which then served at one core's speed.

Here every worker binds its own listening socket to the address with SO_REUSEPORT, and
the kernel spreads new connections over them by a hash of the connection's addresses.
The parent's socket (bound with SO_REUSEPORT too, never listening) keeps the port
reserved and tells the workers which address ``--port 0`` got; a socket that does not
listen takes no connections. A worker that dies takes its socket with it, so no
connection waits on a socket nobody accepts from. Before that, the port is bound once
without SO_REUSEPORT, so that a port already served (a second ``attester serve``, a stale
one) fails at start as with uvicorn instead of being shared with it silently. (Linux lets
that probe bind while no socket on the port listens yet: a second server started in the
second before the first one's workers listen, or while all of them are down, is not
detected.)

Only on Linux: macOS and FreeBSD accept SO_REUSEPORT without spreading connections (FreeBSD
needs SO_REUSEPORT_LB), so there, and with ``serve --shared-socket``, the workers share
the parent's socket as plain uvicorn's do. What a socket per worker costs (RUNBOOK.md):
connections still in a worker's accept queue when it exits are reset (unless the kernel
migrates them: ``net.ipv4.tcp_migrate_req = 1``), and a worker whose event loop hangs
keeps receiving its share of new connections.

Everything else (restarts of dead or hung workers, signals, SIGHUP) is uvicorn's own:
only the class of its worker processes is replaced.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess

REUSE_PORT = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
#: uvicorn's exit status for a server that could not start (its supervisor stops on it)
STARTUP_FAILURE = 3

log = logging.getLogger(__name__)


def _tcp_socket(host: str) -> socket.socket:
    """A TCP socket of ``host``'s family (an IPv6 literal has a colon, as uvicorn decides)."""
    return socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEADDR and SO_REUSEPORT, not listening."""
    sock = _tcp_socket(host)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class OwnSocketProcess(multiprocess.Process):
    """A uvicorn worker that listens on a socket of its own (runs in the worker)."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover
        own = []
        for shared in sockets or []:
            host, port = shared.getsockname()[:2]
            try:
                own.append(reuse_port_socket(host, port))
            except OSError as exc:  # uvicorn's supervisor stops on this status, not retries
                log.error("worker cannot listen on %s:%s: %s", host, port, exc)
                sys.exit(STARTUP_FAILURE)
            shared.close()
        super().target(own)


def run(app: str, *, host: str, port: int, workers: int, reuse_port: bool = True, **options: Any) -> None:
    """``uvicorn.run(app, factory=True, workers=workers, ...)`` with a socket per worker."""
    config = uvicorn.Config(app, factory=True, host=host, port=port, workers=workers, **options)
    parent = _parent_socket(host, port) if reuse_port and REUSE_PORT else None
    if parent is None:
        multiprocess.Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    multiprocess.Process = OwnSocketProcess  # type: ignore[misc]
    try:
        multiprocess.Multiprocess(config, sockets=[parent]).run()
    finally:
        multiprocess.Process = OwnSocketProcess.__mro__[1]  # type: ignore[misc]
        parent.close()


def _parent_socket(host: str, port: int) -> socket.socket | None:
    """The parent's SO_REUSEPORT socket, once the port proved free; None to share one."""
    probe = _tcp_socket(host)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))  # no SO_REUSEPORT: fails if anyone serves the port already
        port = probe.getsockname()[1]
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", host, port, exc)
        sys.exit(STARTUP_FAILURE)
    finally:
        probe.close()
    try:
        return reuse_port_socket(host, port)
    except OSError as exc:  # SO_REUSEPORT refused at run time: share one socket instead
        log.warning("SO_REUSEPORT unavailable (%s): the workers share one socket", exc)
        return None
