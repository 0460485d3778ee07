"""Foundation benchmark: prints figures, asserts nothing.

    python bench/bench_foundation.py [--seconds S] [--connections N]

Measures, in one run on this machine:
  1. ES256 signature alone (the crypto bound of issuance);
  2. full issuance (claims + JSON + base64url + sign);
  3. key-proof verification (parse + ECDSA verify + claim checks);
  4. JWKS requests per second over HTTP from a loopback load generator running in a
     separate process (raw keep-alive HTTP/1.1 on asyncio sockets, so the generator is
     not the bottleneck), against `attester serve` with one worker.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attester.keyproof import verify_key_proof
from attester.service import build_service
from attester.settings import load_settings
from tests.support import (
    free_port,
    make_key_proof,
    new_instance_key,
    public_jwk,
    wait_until_healthy,
)


def rate(fn: Callable[[], object], seconds: float) -> float:
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            fn()
        n += 50
    return n / elapsed


async def _client(host: str, port: int, path: str, deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    done = 0
    while time.perf_counter() < deadline:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length:
            await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head[:40])
        done += 1
    counts.append(done)
    writer.close()


def _load(port: int, path: str, seconds: float, connections: int, out: multiprocessing.Queue[float]) -> None:
    async def main() -> float:
        counts: list[int] = []
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(_client("127.0.0.1", port, path, deadline, counts) for _ in range(connections)))
        return sum(counts) / (time.perf_counter() - start)

    out.put(asyncio.run(main()))


def http_rate(path: str, seconds: float, connections: int) -> float:
    data = Path(tempfile.mkdtemp(prefix="attester-bench-"))
    port = free_port()
    env = {**os.environ, "ATTESTER_LOG_LEVEL": "warning"}
    server = subprocess.Popen(
        [sys.executable, "-m", "attester.cli", "serve", "--port", str(port), "--data-dir", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", server)
        queue: multiprocessing.Queue[float] = multiprocessing.Queue()
        proc = multiprocessing.Process(target=_load, args=(port, path, seconds, connections, queue))
        proc.start()
        result = queue.get(timeout=seconds + 60)
        proc.join()
        return result
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    settings = load_settings(data_dir=Path(tempfile.mkdtemp(prefix="attester-bench-")))
    service = build_service(settings)
    app = settings.apps[0]
    now = datetime.now(UTC)
    signer = service.key_store.active_signer(now)
    instance = new_instance_key()
    jwk = public_jwk(instance)
    signing_input = b"eyJhbGciOiJFUzI1NiJ9." + b"x" * 300

    sign = rate(lambda: signer.sign(signing_input), args.seconds)
    issue = rate(lambda: service.issuer.issue(app=app, instance_jwk=jwk, now=now), args.seconds)
    proof = make_key_proof(instance, challenge="c" * 55, aud=settings.issuer, iat=int(now.timestamp()))
    verify = rate(
        lambda: verify_key_proof(
            proof,
            jwk=jwk,
            challenge="c" * 55,
            audience=settings.issuer,
            now=now,
            max_age=timedelta(seconds=300),
            skew=timedelta(seconds=60),
        ),
        args.seconds,
    )
    print(f"ES256 sign alone           {sign:10.0f} /s")
    print(f"full issuance              {issue:10.0f} /s   ({issue / sign:.2f} of sign alone)")
    print(f"key-proof verification     {verify:10.0f} /s")
    jwks = http_rate("/.well-known/jwks.json", args.seconds, args.connections)
    print(f"JWKS over HTTP (1 worker)  {jwks:10.0f} req/s ({args.connections} keep-alive connections)")


if __name__ == "__main__":
    main()
