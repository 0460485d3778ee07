"""Token Status List benchmark: prints figures, asserts nothing.

    python bench/bench_status_list.py [--seconds S] [--connections N]

Measures on this machine:
  1. encoding a list (pack + zlib + base64url) of ``status_list.size`` entries with 1 % set;
  2. re-signing it (what a status change costs, once per list and replica);
  3. GET /statuslists/0 over HTTP (the cached signed bytes) against `attester serve` with one
     worker, from the loopback load generator of bench_foundation.py, next to the JWKS figure.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attester.service import build_service
from attester.settings import load_settings
from attester.status_list import encode_statuses
from bench.bench_foundation import http_rate, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()

    settings = load_settings(data_dir=Path(tempfile.mkdtemp(prefix="attester-bench-")))
    size = settings.status_list.size
    rng = random.Random(1)
    statuses = {rng.randrange(size): rng.choice([1, 2]) for _ in range(size // 100)}
    encode = rate(lambda: encode_statuses(statuses, size=size), args.seconds)
    lst = encode_statuses(statuses, size=size)
    service = build_service(settings)
    lists = service.status_lists

    def resign() -> None:
        lists.invalidate([0])
        lists.token(0)

    sign = rate(resign, args.seconds)
    started = time.perf_counter()
    token = lists.token(0)
    fresh = time.perf_counter() - started
    assert token is not None
    print(f"encode {size} entries, 1 % set   {encode:10.0f} /s   (lst {len(lst)} chars)")
    print(f"re-sign empty list (DB + encode + ES256) {sign:8.0f} /s")
    print(f"cached token lookup                {1 / max(fresh, 1e-9):10.0f} /s   ({len(token.token)} bytes, empty list)")
    served = http_rate("/statuslists/0", args.seconds, args.connections)
    print(f"GET /statuslists/0 (1 worker)      {served:10.0f} req/s ({args.connections} keep-alive connections)")
    jwks = http_rate("/.well-known/jwks.json", args.seconds, args.connections)
    print(f"GET /.well-known/jwks.json (same)  {jwks:10.0f} req/s")


if __name__ == "__main__":
    main()
