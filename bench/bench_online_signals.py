"""What each online signal costs a registration: outbound requests and added latency.

    python bench/bench_online_signals.py [--count N]

Runs the attester in-process (uvicorn on loopback, SQLite) with the loopback stand-ins the
tests use for Google (OAuth token endpoint + decodeIntegrityToken) and Apple (receipt
endpoint), and registers N devices one after another per configuration:

- Android: Key Attestation only; + Play Integrity decoded by Google; + Play Integrity
  decoded locally (classic request, the publisher's keys).
- iOS: App Attest only; + the fraud-metric receipt exchange at registration.

It prints, per configuration, the outbound requests per registration (first and steady
state) and the median / p95 server latency, and the difference to the baseline. Loopback
stand-ins answer in well under a millisecond, so the added latency is our own cost
(JWT grant signing, HTTP client, JWE/JWS, PKCS#7 checks); add Google's and Apple's real
round trips (tens to hundreds of milliseconds) on top in production. Only the registration
POST is timed; the stand-ins run in this process (their work shares the GIL), and receipts
and tokens are made before the POST. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attester.settings import load_settings
from tests.android.play_integrity_stand_in import GoogleStandIn, LocalKeys, make_service_account
from tests.android.status_server import StatusServer
from tests.android.synth import make_root
from tests.android.test_play_integrity_http import Harness
from tests.apple.receipt_synth import AppleReceiptStandIn, make_receipt_pki
from tests.apple.synth import make_test_root
from tests.apple.test_apple_fraud_metric_http import KEY_ID, FraudHarness
from tests.apple.test_apple_http import TEAM_ID
from tests.support import MutableClock


def _settings_factory(work: Path) -> Callable[..., Any]:
    counter = [0]

    def make(**overrides: Any) -> Any:
        counter[0] += 1
        overrides.setdefault("data_dir", work / f"data-{counter[0]}")
        overrides.setdefault("issuer", "https://attester.test")
        overrides.setdefault("log_level", "warning")
        # every registration comes from one loopback address: per-IP limits would refuse them
        overrides.setdefault("rate_limits", {"enabled": False})
        return load_settings(**overrides)

    return make


def _timed(http: Any, register: Callable[[], Any], count: int) -> list[float]:
    """Time only the registration POST (building device evidence is the client's work)."""
    times: list[float] = []
    post = http.post

    def timed_post(url: str, **kwargs: Any) -> Any:
        started = time.perf_counter()
        response = post(url, **kwargs)
        if url.endswith("/attestations"):
            times.append((time.perf_counter() - started) * 1000)
        return response

    http.post = timed_post
    try:
        for _ in range(count):
            response = register()
            status = (
                response[0].status_code if isinstance(response, tuple) else response.status_code
            )
            if status != 200:
                raise SystemExit(f"registration failed: {status}")
    finally:
        http.post = post
    return times


def _row(name: str, times: list[float], requests: str, baseline: list[float] | None) -> None:
    median = statistics.median(times)
    p95 = sorted(times)[int(len(times) * 0.95) - 1]
    added = f"{median - statistics.median(baseline):+7.2f} ms" if baseline else "      -   "
    print(f"{name:44s} {requests:>26s}   median {median:7.2f} ms  p95 {p95:7.2f} ms  added {added}")


def android(work: Path, count: int) -> None:
    make = _settings_factory(work)
    root = make_root()
    root_file = work / "android-root.pem"
    root_file.write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    status = StatusServer()
    status.body = b'{"entries": {}}'
    info, key = make_service_account()
    google = GoogleStandIn(info, key.public_key())
    keys = LocalKeys()
    baseline: list[float] | None = None
    try:
        for name, config, token in (
            ("Android: Key Attestation only", None, None),
            ("Android: + Play Integrity, Google decode", {}, "google"),
            (
                "Android: + Play Integrity, local decode",
                {"decode": "local", "request_type": "classic"},
                "local",
            ),
        ):
            harness = Harness(
                make, root, root_file, status, google, keys, MutableClock(), work / name[:12]
            )
            (work / name[:12]).mkdir(exist_ok=True)
            harness.start(config)
            try:
                h = harness
                maker: Callable[[], Any] = (
                    h.google_token
                    if token == "google"
                    else h.local_token
                    if token == "local"
                    else (lambda: None)
                )
                before = google.token_requests + google.decode_requests
                harness.register(maker())  # first registration: cold token cache
                first = google.token_requests + google.decode_requests - before
                before = google.token_requests + google.decode_requests
                times = _timed(h.http, lambda h=h, maker=maker: h.register(maker()), count)
                steady = (google.token_requests + google.decode_requests - before) / count
                requests = f"{first} first, {steady:.2f} each after"
                _row(name, times, requests, baseline)
                baseline = baseline or times
            finally:
                harness.close()
    finally:
        google.close()
        status.close()


def apple(work: Path, count: int) -> None:
    make = _settings_factory(work)
    synth_root = make_test_root()
    pki = make_receipt_pki()
    publisher = ec.generate_private_key(ec.SECP256R1())
    server = AppleReceiptStandIn(team_id=TEAM_ID, key_id=KEY_ID, public_key=publisher.public_key())
    baseline: list[float] | None = None
    try:
        for name, exchange in (
            ("iOS: App Attest only", False),
            ("iOS: + fraud metric exchange at registration", True),
        ):
            folder = work / ("apple-" + str(exchange))
            folder.mkdir()
            harness = FraudHarness(make, folder, MutableClock(), synth_root, pki, publisher, server)
            harness.start(exchange_at_registration=exchange)
            try:
                before = server.requests
                assert harness.apple is not None
                times = _timed(harness.apple.http, lambda h=harness: h.register(risk=1), count)
                per = (server.requests - before) / count
                _row(name, times, f"{per:.2f} each", baseline)
                baseline = baseline or times
            finally:
                harness.close()
    finally:
        server.close()


def isolated(count: int) -> None:
    """Each signal's own step, called directly many times (no registration around it)."""
    from datetime import UTC, datetime, timedelta

    from attester.apple_fraud import ReceiptExchanger
    from attester.play_integrity import GoogleDecoder, LocalDecoder
    from keys.signer import FileSigner
    from platform_verifiers.anchors import load_anchor
    from platform_verifiers.android.play_integrity import (
        PlayIntegrityPolicy,
        verify_integrity_payload,
    )
    from platform_verifiers.apple import verify_receipt
    from tests.android.play_integrity_stand_in import verdict_payload
    from tests.android.synth import DEFAULT_PACKAGE, DEFAULT_SIGNER
    from tests.apple.receipt_synth import make_receipt

    now = datetime.now(UTC)
    payload = verdict_payload(
        binding="b" * 43, package=DEFAULT_PACKAGE, signer=DEFAULT_SIGNER, now=now
    )
    policy = PlayIntegrityPolicy()

    def check(p: Any) -> None:
        verify_integrity_payload(
            p,
            request_type="standard",
            expected_binding="b" * 43,
            package_names=frozenset({DEFAULT_PACKAGE}),
            signer_digests=frozenset({DEFAULT_SIGNER}),
            policy=policy,
            now=now,
        )

    def run(name: str, step: Callable[[], Any], requests: str) -> None:
        times = []
        for _ in range(count):
            started = time.perf_counter()
            step()
            times.append((time.perf_counter() - started) * 1000)
        print(
            f"{name:44s} {requests:>26s}   median {statistics.median(times):7.2f} ms  "
            f"p95 {sorted(times)[int(len(times) * 0.95) - 1]:7.2f} ms"
        )

    info, key = make_service_account()
    google = GoogleStandIn(info, key.public_key())
    google.verdicts["tok"] = payload
    try:
        decoder = GoogleDecoder(
            info, api_url=google.base_url, token_uri=google.token_uri, timeout=5
        )
        started = time.perf_counter()
        check(decoder.decode("tok", package_name=DEFAULT_PACKAGE))
        print(
            f"{'PI Google: first call (JWT grant + decode)':44s} {google.token_requests + google.decode_requests:>26d}"
            f"   once   {(time.perf_counter() - started) * 1000:7.2f} ms"
        )
        run(
            "PI Google: decode + verdict check (cached)",
            lambda: check(decoder.decode("tok", package_name=DEFAULT_PACKAGE)),
            "1",
        )
    finally:
        google.close()
    keys = LocalKeys()
    local = LocalDecoder.from_base64(keys.decryption_b64.encode(), keys.verification_b64.encode())
    classic = verdict_payload(
        binding="b" * 43,
        package=DEFAULT_PACKAGE,
        signer=DEFAULT_SIGNER,
        now=now,
        request_type="classic",
    )
    token = keys.token(classic)
    run(
        "PI local: JWE + JWS + verdict check",
        lambda: local.decode(token, package_name=DEFAULT_PACKAGE),
        "0",
    )

    pki = make_receipt_pki()
    device = ec.generate_private_key(ec.SECP256R1())
    point = device.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    receipt = make_receipt(
        pki, app_id="TEAM123456.com.example.wallet", public_key=device.public_key(), created=now
    )
    publisher = ec.generate_private_key(ec.SECP256R1())
    server = AppleReceiptStandIn(team_id=TEAM_ID, key_id=KEY_ID, public_key=publisher.public_key())
    server.answer = lambda r: (200, receipt)
    anchors = (load_anchor("bench", pki.root_pem, source="bench"),)
    try:
        exchanger = ReceiptExchanger(
            url=server.url, team_id=TEAM_ID, signer=FileSigner(KEY_ID, publisher), timeout=5
        )

        def exchange() -> None:
            fresh = exchanger.exchange(receipt, now=now)
            assert fresh is not None
            verify_receipt(
                fresh,
                anchors=anchors,
                app_id="TEAM123456.com.example.wallet",
                public_key=point,
                now=now + timedelta(seconds=1),
                receipt_type="RECEIPT",
            )

        run("Apple: JWT + exchange + PKCS#7 verification", exchange, "1")
    finally:
        server.close()


def main() -> None:
    import logging

    logging.getLogger("attester").setLevel(logging.ERROR)  # the test-root warnings
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=60)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="attester-bench-online-"))
    print(f"{args.count} sequential registrations per configuration, loopback stand-ins, SQLite\n")
    print(f"{'configuration':44s} {'outbound requests/registration':>26s}")
    android(work, args.count)
    apple(work, args.count)
    print(f"\neach signal's own step, {args.count * 5} calls, same stand-ins")
    isolated(args.count * 5)


if __name__ == "__main__":
    main()
