"""Apple's fraud metric over HTTP: receipt exchange at registration and renewal, the risk cap.

Apple's receipt endpoint is a loopback stand-in (``receipt_synth.AppleReceiptStandIn``)
that checks the publisher's ES256 JWT; the receipts it returns are signed under a test root
trusted only through ``apple.test_receipt_root_files``. Real SQLite, real uvicorn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attester.app import create_app
from attester.settings import ConfigError
from tests.support import MutableClock, live_server

from .receipt_synth import AppleReceiptStandIn, ReceiptPki, make_receipt, make_receipt_pki
from .synth import SynthRoot
from .test_apple_http import APP_ID, BUNDLE_ID, CLIENT_ID, TEAM_ID, Apple, Device

KEY_ID = "ABC123DEFG"


@pytest.fixture(scope="module")
def pki() -> ReceiptPki:
    return make_receipt_pki()


@pytest.fixture
def publisher_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def apple_server(publisher_key: ec.EllipticCurvePrivateKey) -> Iterator[AppleReceiptStandIn]:
    stand_in = AppleReceiptStandIn(
        team_id=TEAM_ID, key_id=KEY_ID, public_key=publisher_key.public_key()
    )
    yield stand_in
    stand_in.close()


class FraudHarness:
    def __init__(
        self,
        make_settings: Any,
        tmp_path: Path,
        clock: MutableClock,
        synth_root: SynthRoot,
        pki: ReceiptPki,
        publisher_key: ec.EllipticCurvePrivateKey,
        server: AppleReceiptStandIn,
    ) -> None:
        self.make_settings, self.tmp_path, self.clock, self.root = (
            make_settings,
            tmp_path,
            clock,
            synth_root,
        )
        self.pki, self.publisher_key, self.server = pki, publisher_key, server
        self._managers: list[Any] = []
        self.apple: Apple | None = None

    def start(self, **fraud: Any) -> Apple:
        root_pem = self.tmp_path / "attest-root.pem"
        root_pem.write_bytes(self.root.cert.public_bytes(serialization.Encoding.PEM))
        receipt_root = self.tmp_path / "receipt-root.pem"
        receipt_root.write_bytes(self.pki.root_pem)
        key_file = self.tmp_path / "AuthKey.p8"
        key_file.write_bytes(
            self.publisher_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        fraud.setdefault("key_id", KEY_ID)
        if "private_key_env" not in fraud:
            fraud.setdefault("private_key_file", str(key_file))
        settings = self.make_settings(
            apps=[
                {
                    "client_id": CLIENT_ID,
                    "apple": {
                        "team_id": TEAM_ID,
                        "bundle_id": BUNDLE_ID,
                        "environment": "production",
                        "fraud_metric": fraud,
                    },
                }
            ],
            apple={
                "test_root_files": [root_pem],
                "test_receipt_root_files": [receipt_root],
                "receipt_url": self.server.url,
            },
        )
        app = create_app(settings, clock=self.clock)
        manager = live_server(app)
        live = manager.__enter__()
        self._managers.append((manager, app))
        client = httpx.Client(base_url=live.url, timeout=30)
        self.apple = Apple(client, self.clock, self.root, app.state.service)
        return self.apple

    def close(self) -> None:
        for manager, app in self._managers:
            if self.apple:
                self.apple.http.close()
            manager.__exit__(None, None, None)
            app.state.service.store.dispose()

    def answer_with(self, device: Device, *, risk: int | None, status: int = 200) -> None:
        # built now, not when Apple is asked: the stand-in's own work stays out of timings
        receipt = make_receipt(
            self.pki,
            app_id=APP_ID,
            public_key=device.device_key.public_key(),
            created=self.clock.now,
            risk_metric=risk,
        )
        self.server.answer = lambda received: (status, receipt)

    def attest_receipt(self, device_key: ec.EllipticCurvePrivateKey, **kw: Any) -> bytes:
        """The ATTEST receipt a device's attestation object carries (under the test PKI)."""
        kw.setdefault("app_id", APP_ID)
        return make_receipt(
            kw.pop("pki", self.pki),
            public_key=kw.pop("public_key", device_key.public_key()),
            created=kw.pop("created", self.clock.now),
            receipt_type=kw.pop("receipt_type", "ATTEST"),
            risk_metric=None,
            **kw,
        )

    def registration(self, **receipt: Any) -> tuple[dict[str, Any], Device]:
        assert self.apple is not None
        self.sent_receipt = b""

        def make(device_key: ec.EllipticCurvePrivateKey) -> bytes:
            self.sent_receipt = self.attest_receipt(device_key, **receipt)
            return self.sent_receipt

        return self.apple.registration(receipt_for=make)

    def register(self, *, risk: int | None, status: int = 200) -> tuple[httpx.Response, Device]:
        assert self.apple is not None
        body, device = self.registration()
        self.answer_with(device, risk=risk, status=status)
        return self.apple.http.post("/v1/apple/attestations", json=body), device

    def instance(self, device: Device) -> Any:
        assert self.apple is not None
        return self.apple.service.store.instance_by_thumbprint(device.thumbprint)


@pytest.fixture
def harness(
    make_settings: Any,
    tmp_path: Path,
    clock: MutableClock,
    synth_root: SynthRoot,
    pki: ReceiptPki,
    publisher_key: ec.EllipticCurvePrivateKey,
    apple_server: AppleReceiptStandIn,
) -> Iterator[FraudHarness]:
    h = FraudHarness(make_settings, tmp_path, clock, synth_root, pki, publisher_key, apple_server)
    yield h
    h.close()


def _problem(response: httpx.Response, status: int, code: str, rule: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code
    if rule:
        assert response.json()["rule"] == rule


def test_fraud_http_registration_exchanges_and_stores_metric(
    harness: FraudHarness, apple_server: AppleReceiptStandIn
) -> None:
    harness.start()
    response, device = harness.register(risk=3)
    assert response.status_code == 200, response.text
    assert apple_server.requests == 1 and apple_server.auth_errors == []
    assert apple_server.received == [harness.sent_receipt]  # the attestation's receipt was sent
    record = harness.instance(device)
    assert record.apple_risk_metric == 3
    assert record.apple_receipt_refreshed_at == harness.clock.now
    assert record.apple_receipt != harness.sent_receipt


def test_fraud_http_cap_exceeded_at_registration_rule(harness: FraudHarness) -> None:
    harness.start(max_risk_metric=5)
    response, device = harness.register(risk=6)
    _problem(response, 403, "policy_violation", rule="apple_risk_metric")
    assert harness.instance(device) is None


def test_fraud_http_renewal_refreshes_when_due_and_caps(
    harness: FraudHarness, apple_server: AppleReceiptStandIn
) -> None:
    apple = harness.start(max_risk_metric=5, refresh_interval=3600)
    response, device = harness.register(risk=1)
    assert response.status_code == 200, response.text
    # within the refresh interval: the stored metric is used, Apple is not asked
    assert apple.renew(device, counter=1).status_code == 200
    assert apple_server.requests == 1
    stored = harness.instance(device).apple_receipt
    harness.clock.advance(3600)
    harness.answer_with(device, risk=9)
    _problem(apple.renew(device, counter=2), 403, "policy_violation", rule="apple_risk_metric")
    assert apple_server.requests == 2
    assert apple_server.received[-1] == stored  # the stored receipt is what is exchanged
    assert harness.instance(device).apple_receipt != stored
    assert harness.instance(device).apple_risk_metric == 9  # stored even when refused


def test_fraud_http_renewal_not_modified_keeps_metric(
    harness: FraudHarness, apple_server: AppleReceiptStandIn
) -> None:
    apple = harness.start(max_risk_metric=5, refresh_interval=60)
    _, device = harness.register(risk=2)
    harness.clock.advance(120)
    apple_server.answer = lambda receipt: (304, b"")
    assert apple.renew(device, counter=1).status_code == 200
    assert harness.instance(device).apple_risk_metric == 2


def test_fraud_http_apple_rejects_receipt_code(harness: FraudHarness) -> None:
    harness.start()
    response, _ = harness.register(risk=1, status=400)
    _problem(response, 403, "receipt_exchange_rejected")


def test_fraud_http_apple_down_unavailable(harness: FraudHarness) -> None:
    harness.start()
    response, _ = harness.register(risk=1, status=500)
    _problem(response, 503, "receipt_exchange_unavailable")


def test_fraud_http_wrong_publisher_key_unavailable(
    harness: FraudHarness, apple_server: AppleReceiptStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    monkeypatch.setenv(
        "APPLE_P8",
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )
    harness.start(private_key_env="APPLE_P8")
    response, _ = harness.register(risk=1)
    _problem(response, 503, "receipt_exchange_unavailable")
    assert apple_server.auth_errors == ["signature"]


def test_fraud_http_answer_for_other_key_rejected(harness: FraudHarness, pki: ReceiptPki) -> None:
    harness.start()
    body, _ = harness.registration() if harness.apple else (None, None)
    stranger = ec.generate_private_key(ec.SECP256R1())
    harness.server.answer = lambda r: (
        200,
        make_receipt(
            pki, app_id=APP_ID, public_key=stranger.public_key(), created=harness.clock.now
        ),
    )
    assert harness.apple is not None
    _problem(
        harness.apple.http.post("/v1/apple/attestations", json=body), 403, "receipt_key_mismatch"
    )


def test_fraud_http_answer_under_untrusted_root_rejected(harness: FraudHarness) -> None:
    harness.start()
    assert harness.apple is not None
    body, device = harness.registration()
    other = make_receipt_pki()
    harness.server.answer = lambda r: (
        200,
        make_receipt(
            other,
            app_id=APP_ID,
            public_key=device.device_key.public_key(),
            created=harness.clock.now,
        ),
    )
    _problem(harness.apple.http.post("/v1/apple/attestations", json=body), 403, "chain_untrusted")


def test_fraud_settings_missing_key_config_error(harness: FraudHarness) -> None:
    with pytest.raises(ConfigError):
        harness.start(private_key_env="APPLE_P8_UNSET")


def test_fraud_http_bad_key_proof_costs_no_apple_request(
    harness: FraudHarness, apple_server: AppleReceiptStandIn
) -> None:
    apple = harness.start()
    body, device = harness.registration()
    harness.answer_with(device, risk=1)
    response = apple.http.post("/v1/apple/attestations", json={**body, "key_proof": "a.b.c"})
    assert response.status_code in (400, 401) and response.json()["code"].startswith("key_proof_")
    assert apple_server.requests == 0


# -- review: the attestation's own receipt is verified locally before it is stored or sent ---
@pytest.mark.parametrize(
    ("receipt", "code"),
    [
        ({"fields": {6: b"ATTEST", 2: b"garbage" * 0}}, "receipt_app_id_mismatch"),
        ({"public_key": "stranger"}, "receipt_key_mismatch"),
        ({"receipt_type": "RECEIPT"}, "receipt_type_unexpected"),
        ({"pki": "other"}, "chain_untrusted"),
        ({"app_id": "OTHERTEAM.com.example.other"}, "receipt_app_id_mismatch"),
    ],
    ids=["empty-app-id", "other-key", "receipt-type", "other-root", "other-app"],
)
def test_fraud_http_attestation_receipt_invalid_refused_before_apple(
    harness: FraudHarness, apple_server: AppleReceiptStandIn, receipt: dict[str, Any], code: str
) -> None:
    apple = harness.start()
    if receipt.get("public_key") == "stranger":
        receipt["public_key"] = ec.generate_private_key(ec.SECP256R1()).public_key()
    if receipt.get("pki") == "other":
        receipt["pki"] = make_receipt_pki()
    body, device = harness.registration(**receipt)
    harness.answer_with(device, risk=1)
    _problem(apple.http.post("/v1/apple/attestations", json=body), 403, code)
    assert apple_server.requests == 0


def test_fraud_http_attestation_receipt_garbage_malformed(
    harness: FraudHarness, apple_server: AppleReceiptStandIn
) -> None:
    apple = harness.start()
    body, device = apple.registration()  # the synthetic attestation's placeholder receipt
    harness.answer_with(device, risk=1)
    _problem(apple.http.post("/v1/apple/attestations", json=body), 400, "receipt_malformed")
    assert apple_server.requests == 0
