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
connection waits on a socket nobody accepts from. Without SO_REUSEPORT (not Linux or BSD)
the workers share the parent's socket, as plain uvicorn does.

Everything else (restarts of dead or hung workers, signals, SIGHUP) is uvicorn's own:
only the class of its worker processes is replaced.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess

REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEADDR and SO_REUSEPORT, not listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
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
            own.append(reuse_port_socket(host, port))
            shared.close()
        super().target(own)


def run(app: str, *, host: str, port: int, workers: int, **options: Any) -> None:
    """``uvicorn.run(app, factory=True, workers=workers, ...)`` with a socket per worker."""
    config = uvicorn.Config(app, factory=True, host=host, port=port, workers=workers, **options)
    if not REUSE_PORT:
        multiprocess.Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    parent = reuse_port_socket(host, port)
    multiprocess.Process = OwnSocketProcess  # type: ignore[misc]
    try:
        multiprocess.Multiprocess(config, sockets=[parent]).run()
    finally:
        multiprocess.Process = OwnSocketProcess.__mro__[1]  # type: ignore[misc]
        parent.close()
