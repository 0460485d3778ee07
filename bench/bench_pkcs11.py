"""PKCS#11 benchmark: prints figures, asserts nothing.

    python bench/bench_pkcs11.py [--seconds S] [--threads N]

Needs SoftHSM2 (Debian package softhsm2); makes a throw-away token in a temp SOFTHSM2_CONF.
Measures, on this machine:
  1. ES256 signatures/s with a file key (FileSigner) for comparison;
  2. ES256 signatures/s with a SoftHSM2 key (Pkcs11Signer), one thread;
  3. the same with N threads sharing one process's session pool (calls are serialised);
  4. full issuance (claims + JSON + base64url + token signature) per second with the HSM key.
A hardware HSM is slower per signature and adds a network or bus round trip; several worker
processes scale (each has its own sessions), threads within a process do not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attester.issuance import AttestationIssuer
from attester.settings import AppConfig
from keys.pkcs11 import Pkcs11Config, Pkcs11Token
from keys.store import KeyStore
from tests.softhsm import TOKENS, skip_reason, softhsm
from tests.support import new_instance_key, public_jwk


def rate(fn: Callable[[], object], seconds: float, threads: int = 1) -> float:
    count = [0] * threads
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            fn()
            count[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(count) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    reason = skip_reason()
    if reason:
        print(reason)
        return 1
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp, softhsm(Path(tmp) / "hsm") as hsm:
        file_store = KeyStore(Path(tmp) / "file-keys", retention=timedelta(days=1))
        file_store.ensure_initialised(now)
        token = Pkcs11Token(
            Pkcs11Config(
                module=hsm.module,
                pin=TOKENS["attester"],
                token_label="attester",
                pool_size=args.threads,
            )
        )
        hsm_store = KeyStore(Path(tmp) / "hsm-keys", retention=timedelta(days=1), token=token)
        hsm_store.ensure_initialised(now)
        data = b"x" * 400  # about the size of a Client Attestation signing input
        file_signer, hsm_signer = file_store.active_signer(now), hsm_store.active_signer(now)
        issuer = AttestationIssuer(
            key_store=hsm_store, issuer="https://a.test", include_iss=True, default_lifetime=3600
        )
        app, instance = AppConfig(client_id="c"), public_jwk(new_instance_key())
        print(
            f"file key, 1 thread:        {rate(lambda: file_signer.sign(data), args.seconds):8.0f} signatures/s"
        )
        print(
            f"SoftHSM2 key, 1 thread:    {rate(lambda: hsm_signer.sign(data), args.seconds):8.0f} signatures/s"
        )
        print(
            f"SoftHSM2 key, {args.threads} threads:   "
            f"{rate(lambda: hsm_signer.sign(data), args.seconds, args.threads):8.0f} signatures/s"
        )
        print(
            f"issuance with SoftHSM2 key: {rate(lambda: issuer.issue(app=app, instance_jwk=instance, now=now), args.seconds):7.0f} JWTs/s"
        )
        token.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
