"""The ``attester`` command: serve (one and several workers), keys rotate and list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support import free_port, wait_until_healthy

ATTESTER = [sys.executable, "-m", "attester.cli"]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ATTESTER, *args], capture_output=True, text=True, timeout=60, env=env, check=False)


@contextmanager
def serving(data_dir: Path, *extra: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [*ATTESTER, "serve", "--port", str(port), "--data-dir", str(data_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, output=lambda: proc.stderr.read()[-2000:])  # type: ignore[union-attr]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_cli_serve_defaults_create_private_state(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data) as url:
        assert httpx.get(url + "/.well-known/jwks.json").json()["keys"]
        assert httpx.post(url + "/v1/challenge").status_code == 200
    assert (data / "attester.db").exists()
    assert oct((data / "challenge.key").stat().st_mode & 0o777) == "0o600"
    assert all(p.stat().st_mode & 0o077 == 0 for p in (data / "keys").iterdir())


def test_cli_serve_logs_json_lines(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*ATTESTER, "serve", "--port", str(port), "--data-dir", str(tmp_path / "d")],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc)
        httpx.get(url + "/healthz", headers={"X-Request-ID": "cli-7"}, timeout=5)
    finally:
        time.sleep(0.3)
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == "cli-7" and line.get("status") == 200 for line in lines)
    assert all(line.startswith("{") for line in err.splitlines() if line.strip())


def test_cli_serve_several_workers_share_state(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--workers", "2") as url, httpx.Client(base_url=url) as http:
        jwks = {http.get("/.well-known/jwks.json").text for _ in range(10)}
        assert len(jwks) == 1  # every worker publishes the same keys


def test_cli_keys_rotate_seen_by_running_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data) as url:
        first = httpx.get(url + "/.well-known/jwks.json")
        rotated = _run("keys", "rotate", "--data-dir", str(data))
        assert rotated.returncode == 0, rotated.stderr
        kid = json.loads(rotated.stdout)["kid"]
        second = httpx.get(url + "/.well-known/jwks.json")
        assert kid in {k["kid"] for k in second.json()["keys"]}
        assert second.headers["etag"] != first.headers["etag"]
    listing = json.loads(_run("keys", "list", "--data-dir", str(data)).stdout)["keys"]
    assert sorted(k["state"] for k in listing) == ["active", "next"]
    again = _run("keys", "rotate", "--data-dir", str(data))
    assert again.returncode == 1 and "already waiting" in again.stderr


def test_cli_rotate_delay_below_max_age_is_usage_error(tmp_path: Path) -> None:
    result = _run("keys", "rotate", "--data-dir", str(tmp_path), "--delay", "5")
    assert result.returncode == 2 and "jwks_max_age" in result.stderr


def test_cli_invalid_configuration_exits_2_naming_field(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("attestation_lifetime = 999999\n")
    result = _run("serve", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "attestation_lifetime" in result.stderr


def test_cli_invalid_environment_exits_2_naming_field(tmp_path: Path) -> None:
    env = {**os.environ, "ATTESTER_CHALLENGE_LIFETIME": "forever"}
    result = _run("keys", "list", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 2 and "challenge_lifetime" in result.stderr


def test_cli_bad_usage_exits_2() -> None:
    assert _run("frobnicate").returncode == 2
