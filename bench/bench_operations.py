"""Per-request cost of the metrics middleware and the rate limits, measured with wrk.

Runs `attester serve` on loopback with metrics and rate limits on (the defaults) and off,
with 1 and 2 workers, and prints req/s of ``GET /.well-known/jwks.json`` (metrics only: GETs
are not rate limited) and of ``POST /v1/challenge`` (metrics and the per-IP limit, set high
enough that nothing is refused). Configurations alternate and each is run ``--rounds``
times; the best round is printed (the machine is shared, the best is the least disturbed).

    python bench/bench_operations.py [--seconds 5] [--rounds 3] [--connections 64]

Needs Debian's ``wrk`` (``apt-get install wrk``). Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import free_port, wait_until_healthy

POST_SCRIPT = 'wrk.method = "POST"\nwrk.headers["Content-Length"] = "0"\n'
CONFIGS = {
    "on": {"ATTESTER_RATE_LIMITS__CHALLENGE_PER_IP": "100000000/minute"},
    "off": {"ATTESTER_METRICS__ENABLED": "false", "ATTESTER_RATE_LIMITS__ENABLED": "false"},
}


def wrk(url: str, *, seconds: int, connections: int, script: Path | None) -> float:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script is not None:
        command[1:1] = ["-s", str(script)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise RuntimeError(f"{non_2xx.group(1)} refused responses: the figures would be wrong")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def measure(config: str, workers: int, args: argparse.Namespace, script: Path) -> dict[str, float]:
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    env = {**os.environ, **CONFIGS[config], "ATTESTER_LOG_LEVEL": "warning"}
    server = subprocess.Popen(
        [sys.executable, "-m", "attester.cli", "serve", "--port", str(port), "--data-dir", str(data),
         "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, server)
        wrk(base + "/.well-known/jwks.json", seconds=1, connections=args.connections, script=None)
        return {
            "jwks": wrk(base + "/.well-known/jwks.json", seconds=args.seconds, connections=args.connections, script=None),
            "challenge": wrk(base + "/v1/challenge", seconds=args.seconds, connections=args.connections, script=script),
        }
    finally:
        server.terminate()
        server.wait(timeout=20)
        shutil.rmtree(data, ignore_errors=True)


def per_call_costs(n: int = 20000) -> dict[str, float]:
    """Microseconds per call of the two additions, in process (steadier than wrk on a
    shared machine): the metrics middleware's observe, and one per-IP limit check."""
    from attester.app import create_app
    from attester.settings import load_settings

    data = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    app = create_app(
        load_settings(
            data_dir=data,
            android={"revocation_url": "http://127.0.0.1:9/"},
            rate_limits={"challenge_per_ip": "100000000/minute"},
        )
    )
    service = app.state.service
    scope = {"type": "http", "method": "GET", "path": "/.well-known/jwks.json"}
    service.metrics.observe_request(scope, 200, 0.001)
    started = time.perf_counter()
    for _ in range(n):
        service.metrics.observe_request(scope, 200, 0.001)
    observe = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    for _ in range(n):
        service.rate_limits.hit("challenge", "ip", "192.0.2.1")
    hit = (time.perf_counter() - started) / n * 1e6
    service.store.dispose()
    shutil.rmtree(data, ignore_errors=True)
    return {"observe_request": observe, "rate_limit_check": hit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(POST_SCRIPT)
    best: dict[tuple[int, str], dict[str, float]] = {}
    for _ in range(args.rounds):
        for workers in args.workers:
            for config in CONFIGS:
                result = measure(config, workers, args, script)
                kept = best.setdefault((workers, config), result)
                for k, v in result.items():
                    kept[k] = max(kept[k], v)
    costs = per_call_costs()
    print("in process, per request: " + ", ".join(f"{k} {v:.1f} us" for k, v in costs.items()))
    print(f"wrk -t2 -c{args.connections} -d{args.seconds}s on loopback, best of {args.rounds} rounds (req/s)")
    print(f"{'workers':>7} {'endpoint':<26} {'metrics+limits on':>18} {'off':>10} {'overhead':>9}")
    for workers in args.workers:
        for endpoint, label in (("jwks", "GET /.well-known/jwks.json"), ("challenge", "POST /v1/challenge")):
            on, off = best[(workers, "on")][endpoint], best[(workers, "off")][endpoint]
            print(f"{workers:>7} {label:<26} {on:>18.0f} {off:>10.0f} {100 * (off - on) / off:>8.1f}%")


if __name__ == "__main__":
    main()
