"""Shared test helpers: an injectable clock, a live loopback server, key proofs, PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import uvicorn
from jwcrypto import jwk, jws

from attester.http_protocol import GuardedHttpToolsProtocol

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"

# scripts/test.sh (and so CI) sets this: a real server or data set that cannot be used is a
# failure there, never a silent skip
REQUIRE_ALL = os.environ.get("ATTESTER_TESTS_REQUIRE_ALL") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose real server or data cannot be used here; fail under scripts/test.sh."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (ATTESTER_TESTS_REQUIRE_ALL=1)", pytrace=False)
    pytest.skip(reason)


class MutableClock:
    """The service's injected clock, moved by the tests (nothing is monkey-patched)."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class LiveServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread


@contextmanager
def live_server(app: Any) -> Iterator[LiveServer]:
    """Run ``app`` with uvicorn on a free loopback port in a thread."""
    # as `attester serve`: uvicorn must not rewrite the client address from X-Forwarded-For
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, access_log=False, proxy_headers=False,
        http=GuardedHttpToolsProtocol,  # as `attester serve` (attester/cli.py)
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", server, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def new_instance_key() -> jwk.JWK:
    return jwk.JWK.generate(kty="EC", crv="P-256")


def public_jwk(key: jwk.JWK) -> dict[str, str]:
    data: dict[str, str] = key.export_public(as_dict=True)
    return data


def make_key_proof(
    key: jwk.JWK,
    *,
    challenge: str,
    aud: str,
    iat: int | None = None,
    alg: str = "ES256",
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
) -> str:
    """A key proof made with jwcrypto (an implementation independent of the service's)."""
    payload = {"challenge": challenge, "aud": aud, "iat": int(time.time()) if iat is None else iat}
    payload.update(claims or {})
    token = jws.JWS(json.dumps(payload).encode())
    protected = {"alg": alg, "typ": "key-proof+jwt", **(header or {})}
    token.add_signature(key, alg=alg, protected=json.dumps(protected))
    return str(token.serialize(compact=True))


def wait_until_healthy(
    url: str,
    process: subprocess.Popen[Any],
    *,
    timeout: float = 30.0,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Poll ``url``/healthz until it answers 200; fail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("attester serve did not become ready:\n" + output())
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- PostgreSQL ---------------------------------------------------------------------------
def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return candidates[0].parent if candidates else None


@contextmanager
def postgres_server() -> Iterator[str | None]:
    """Start a throw-away PostgreSQL cluster on loopback; yield its URL or None (with why)."""
    url = os.environ.get("ATTESTER_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    bindir = _pg_bin()
    if bindir is None:
        yield None
        return
    root = Path(tempfile.mkdtemp(prefix="attester-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: use the account its Debian package creates
        if shutil.which("runuser") is None:
            yield None
            return
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        os.chmod(root, 0o700)
    port = free_port()
    try:
        subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "attester", "-A", "trust"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *as_user,
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "log"),
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off",
                "-w",
                "-t",
                "180",
                "start",
            ],
            check=True,
            capture_output=True,
        )
    except (subprocess.CalledProcessError, OSError, KeyError):
        shutil.rmtree(root, ignore_errors=True)
        yield None
        return
    try:
        yield f"postgresql://attester@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)
