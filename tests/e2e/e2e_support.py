"""Helpers for the end-to-end tests: run node-oidc-provider, serve a JWKS, mint attestations.

Kept apart from conftest.py so that test modules can import them (``from tests.e2e.e2e_support import ...``).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from jwcrypto import jwk, jwt

from tests.support import wait_until_healthy

AS_DIR = Path(__file__).resolve().parent / "as"
SERVER = AS_DIR / "server.mjs"
READY_PREFIX = "AS ready "
START_TIMEOUT_S = 20.0

DEFAULT_CLIENT_ID = "attested-app"
DEFAULT_DPOP_CLIENT_ID = "attested-app-dpop"


def skip_reason() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed (e2e tests need Node 20+)"
    if not (AS_DIR / "node_modules" / "oidc-provider").is_dir():
        return "tests/e2e/as/node_modules is missing: run `npm ci --prefix tests/e2e/as`"
    return None


@dataclass
class RunningAs:
    """A running node-oidc-provider process and what it logged."""

    issuer: str
    client_id: str
    dpop_client_id: str
    process: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def last_event(self) -> dict[str, Any]:
        """The last rejection the AS logged (error, error_detail, client_id)."""
        deadline = time.monotonic() + 2.0
        while not self.events and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.events[-1]

    def details_since(self, count: int) -> list[str]:
        """``error_detail`` of the events logged after the first ``count`` ones."""
        time.sleep(0.05)  # the log line can trail the HTTP answer by a moment
        return [str(event.get("error_detail")) for event in self.events[count:]]


@contextmanager
def run_as(
    jwks_uri: str,
    *,
    client_id: str = DEFAULT_CLIENT_ID,
    dpop_client_id: str = DEFAULT_DPOP_CLIENT_ID,
    attester_issuer: str | None = None,
    jwks_cooldown_ms: int | None = None,
    jwks_cache_max_age_ms: int | None = None,
) -> Iterator[RunningAs]:
    """Start server.mjs on a free loopback port (the OS picks it), wait for its ready line."""
    env = {
        **os.environ,
        "ATTESTER_JWKS_URI": jwks_uri,
        "AS_CLIENT_ID": client_id,
        "AS_DPOP_CLIENT_ID": dpop_client_id,
        "AS_HOST": "127.0.0.1",
        "AS_PORT": "0",
    }
    if attester_issuer is not None:
        env["ATTESTER_ISSUER"] = attester_issuer
    if jwks_cooldown_ms is not None:
        env["AS_JWKS_COOLDOWN_MS"] = str(jwks_cooldown_ms)
    if jwks_cache_max_age_ms is not None:
        env["AS_JWKS_CACHE_MAX_AGE_MS"] = str(jwks_cache_max_age_ms)
    process = subprocess.Popen(
        ["node", str(SERVER)],
        cwd=AS_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ready: queue.Queue[str] = queue.Queue()
    running = RunningAs("", client_id, dpop_client_id, process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            running.output.append(line)
            if line.startswith(READY_PREFIX):
                ready.put(line[len(READY_PREFIX) :])
            elif line.startswith("{"):
                try:
                    running.events.append(json.loads(line))
                except ValueError:
                    pass

    reader = threading.Thread(target=read, name="as-stdout", daemon=True)
    reader.start()
    try:
        try:
            running.issuer = ready.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(
                "node-oidc-provider did not start:\n" + "\n".join(running.output)
            ) from None
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        reader.join(timeout=2)


StartAs = Callable[..., RunningAs]
"""Type of the ``start_as`` fixtures: ``start_as(jwks_uri, **run_as options) -> RunningAs``."""


class JwksServer:
    """A loopback HTTP server serving a JWKS document that a test can change, counting fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                outer.fetches += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.base_url}/.well-known/jwks.json"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def mint_attestation(
    signing_key: jwk.JWK,
    *,
    kid: str,
    sub: str,
    cnf_jwk: Mapping[str, str],
    iat: datetime,
    exp: datetime,
    iss: str | None = None,
    typ: str = "oauth-client-attestation+jwt",
) -> str:
    """A Client Attestation JWT as the attester issues it (DESIGN.md, "Issuance")."""
    claims: dict[str, Any] = {
        "sub": sub,
        "iat": int(iat.timestamp()),
        "exp": int(exp.timestamp()),
        "cnf": {"jwk": dict(cnf_jwk)},
    }
    if iss is not None:
        claims["iss"] = iss
    token = jwt.JWT(header={"alg": "ES256", "typ": typ, "kid": kid}, claims=claims)
    token.make_signed_token(signing_key)
    return str(token.serialize())


# -- the real attester, as a subprocess -----------------------------------------------------
ATTESTER_CLI = [sys.executable, "-m", "attester.cli"]


def toml_value(value: Any) -> str:
    """A TOML value for str, bool, int, float, Path, lists and inline tables (enough for our config)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, Path | str):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string here
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):  # an inline table, e.g. an entry of admin.tokens
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def write_config(path: Path, settings: Mapping[str, Any]) -> Path:
    """Write attester settings as TOML: top-level scalars, ``android``/``apple`` tables and an
    ``apps`` array whose entries may hold ``android``/``apple`` sub-tables."""
    lines: list[str] = []
    tables = {k: v for k, v in settings.items() if isinstance(v, Mapping)}
    apps = settings.get("apps", [])
    for name, value in settings.items():
        if name != "apps" and name not in tables:
            lines.append(f"{name} = {toml_value(value)}")
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    for app in apps:
        lines.append("\n[[apps]]")
        subs = {k: v for k, v in app.items() if isinstance(v, Mapping)}
        lines += [f"{k} = {toml_value(v)}" for k, v in app.items() if k not in subs]
        for name, table in subs.items():
            lines.append(f"[apps.{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class RunningAttester:
    """``attester serve`` running as a subprocess, with the JSON lines it logged."""

    url: str
    config: Path
    data_dir: Path
    process: subprocess.Popen[str]
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def jwks_uri(self) -> str:
        return f"{self.url}/.well-known/jwks.json"

    def requests_to(self, path: str) -> int:
        """How many requests for ``path`` the attester has logged so far."""
        return sum(1 for e in list(self.log) if e.get("msg") == "request" and e.get("path") == path)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``attester <args> --config <config> --data-dir <data_dir>``."""
        return subprocess.run(
            [*ATTESTER_CLI, *args, "--config", str(self.config), "--data-dir", str(self.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def active_key(self) -> tuple[jwk.JWK, str]:
        """The private key the attester signs with now, read from its key directory, and its kid."""
        records = json.loads((self.data_dir / "keys" / "keys.json").read_text())["keys"]
        now = datetime.now().astimezone()
        started = [r for r in records if datetime.fromisoformat(r["activates_at"]) <= now]
        kid = str(max(started, key=lambda r: r["activates_at"])["kid"])
        pem = (self.data_dir / "keys" / f"{kid}.pem").read_bytes()
        return jwk.JWK.from_pem(pem), kid


@contextmanager
def run_attester(
    config: Path, data_dir: Path, port: int, *, extra_args: tuple[str, ...] = ()
) -> Iterator[RunningAttester]:
    """Start ``attester serve`` on ``port`` (the issuer in ``config`` names it) and wait for
    ``/healthz``; stop it at the end. ``extra_args`` go to ``serve`` (e.g. ``--workers 2``)."""
    process = subprocess.Popen(
        [
            *ATTESTER_CLI,
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            *extra_args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = RunningAttester(f"http://127.0.0.1:{port}", config, data_dir, process)
    lines: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if line.startswith("{"):
                try:
                    running.log.append(json.loads(line))
                except ValueError:
                    pass

    reader = threading.Thread(target=read, name="attester-stderr", daemon=True)
    reader.start()
    try:
        wait_until_healthy(
            running.url, process, timeout=START_TIMEOUT_S, output=lambda: "".join(lines[-30:])
        )
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        reader.join(timeout=2)
