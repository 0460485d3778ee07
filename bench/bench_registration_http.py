"""Registrations per second over HTTP on loopback: prints figures, asserts nothing.

    python bench/bench_registration_http.py [--count N] [--clients C] [--workers W]

Starts `attester serve` (SQLite, synchronous=FULL) with a synthetic Android test root
trusted through the test setting and Google's status list served from loopback. The load
generator (this process) first fetches N challenges and builds N device chains that embed
them (not timed), then posts the N registrations from C client threads and reports
registrations per second. Every device has its own intermediates, so the server's cache of
verified intermediates never helps: this is the worst case. Real fleets share intermediates.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from keys.jwks import b64url
from tests.android.status_server import StatusServer
from tests.android.synth import DEFAULT_PACKAGE, DEFAULT_SIGNER, make_chain, make_root
from tests.support import free_port, wait_until_healthy

ISSUER = "http://127.0.0.1"



# The load comes from one loopback address: limits so high they never refuse, so the figures
# include the cost of checking them (as in production) without measuring 429s.
BENCH_RATE_LIMITS = (
    "[rate_limits]\n"
    + "".join(
        f'{name} = "100000000/minute"\n'
        for name in (
            "challenge_per_ip",
            "registration_per_ip",
            "renewal_per_ip",
            "registration_per_app",
            "renewal_per_app",
        )
    )
)


def write_bench_config(
    work: Path, *, issuer: str, status_url: str, root: Any, database_url: str | None = None
) -> Path:
    """The benchmarks' configuration: one Android app, a synthetic test root trusted through
    ``test_root_files``, a loopback revocation list, limits that never refuse."""
    (work / "root.pem").write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    db = f'database_url = "{database_url}"\n' if database_url else ""
    path = work / "config.toml"
    path.write_text(
        f'issuer = "{issuer}"\nlog_level = "warning"\n{db}'
        f'[android]\nrevocation_url = "{status_url}"\ntest_root_files = ["{work / "root.pem"}"]\n'
        f'[[apps]]\nclient_id = "bench"\n[apps.android]\npackage_names = ["{DEFAULT_PACKAGE}"]\n'
        f'signing_cert_sha256 = ["{DEFAULT_SIGNER.hex()}"]\n'
        + BENCH_RATE_LIMITS
    )
    return path


def key_proof(key: ec.EllipticCurvePrivateKey, challenge: str, aud: str) -> str:
    header = b64url(json.dumps({"alg": "ES256", "typ": "key-proof+jwt"}).encode())
    payload = b64url(json.dumps({"challenge": challenge, "aud": aud, "iat": int(time.time())}).encode())
    r, s = decode_dss_signature(key.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256())))
    return f"{header}.{payload}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="attester-bench-"))
    root = make_root()
    status = StatusServer()
    status.body = b'{"entries": {}}'
    port = free_port()
    issuer = f"{ISSUER}:{port}"
    write_bench_config(work, issuer=issuer, status_url=status.url, root=root)
    server = subprocess.Popen(
        [sys.executable, "-m", "attester.cli", "serve", "--config", str(work / "config.toml"),
         "--data-dir", str(work / "data"), "--port", str(port), "--workers", str(args.workers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy(),
    )
    try:
        wait_until_healthy(issuer, server)
        with httpx.Client(base_url=issuer, timeout=30) as http:
            started = time.perf_counter()
            bodies = []
            for _ in range(args.count):
                challenge = http.post("/v1/challenge").json()["challenge"]
                chain = make_chain(challenge=base64.urlsafe_b64decode(challenge + "="), root=root)
                bodies.append({
                    "certificate_chain": [base64.b64encode(c).decode() for c in chain.chain],
                    "challenge": challenge,
                    "key_proof": key_proof(chain.leaf_key, challenge, issuer),
                })
            prepared = time.perf_counter() - started

        def post(body: dict[str, object]) -> int:
            return CLIENT.post("/v1/android/attestations", json=body).status_code

        global CLIENT
        CLIENT = httpx.Client(base_url=issuer, timeout=30, limits=httpx.Limits(max_connections=args.clients))
        post(bodies.pop())  # warm-up
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            statuses = list(pool.map(post, bodies))
        elapsed = time.perf_counter() - started
        CLIENT.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
        status.close()
    ok = statuses.count(200)
    print(f"prepared {args.count} device chains in {prepared:.1f} s (not counted)")
    print(
        f"Android registrations over HTTP: {ok / elapsed:8.1f} /s "
        f"({ok}/{len(statuses)} accepted, {args.clients} client threads, {args.workers} worker(s), SQLite)"
    )


CLIENT: httpx.Client

if __name__ == "__main__":
    main()
