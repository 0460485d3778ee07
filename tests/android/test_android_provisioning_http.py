"""Issue 8 through HTTP: the class and its rule are stored; fail-closed codes reach callers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from attester.app import create_app
from attester.service import AttesterService, build_service
from tests.support import MutableClock, live_server

from .status_server import StatusServer
from .synth import DROID_CA2_NAME, TestRoot, factory_name, make_root
from .test_android_http import Device, _android_settings, _problem


@pytest.fixture
def stack(
    make_settings: Any, tmp_path: Path, clock: MutableClock
) -> Iterator[tuple[httpx.Client, TestRoot, AttesterService]]:
    root = make_root()
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    status = StatusServer()
    status.body = b'{"entries": {}}'
    settings = _android_settings(make_settings, root_file, status)
    service = build_service(settings, clock=clock)
    app = create_app(settings, clock=clock, service=service)
    with live_server(app) as live, httpx.Client(base_url=live.url, timeout=20) as http:
        yield http, root, service
    status.close()


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        (DROID_CA2_NAME, ("RKP", "droid_ca2_under_root")),
        (factory_name(), ("FACTORY", "serial_number_under_root")),
        (None, ("UNKNOWN", "no_rule_matched")),
    ],
    ids=["rkp", "factory", "unknown"],
)
def test_android_http_registration_stores_class_and_rule(
    stack: Any, clock: MutableClock, name: x509.Name | None, stored: tuple[str, str]
) -> None:
    http, root, service = stack
    response = Device(http, root, clock, under_root_name=name).register()
    assert response.status_code == 200, response.text
    instance = service.store.instance_by_thumbprint(response.json()["key_thumbprint"])
    assert instance is not None
    facts = instance.android_facts
    assert (facts["provisioning"], facts["provisioning_rule"]) == stored


def test_android_http_expired_rkp_intermediate_rejected_403(
    stack: Any, clock: MutableClock
) -> None:
    http, root, _ = stack
    now = datetime.now(UTC)
    window = (now - timedelta(days=40), now - timedelta(days=2))
    device = Device(http, root, clock, under_root_name=DROID_CA2_NAME, intermediate_validity=window)
    _problem(device.register(), 403, "certificate_expired")


def test_android_http_unknown_critical_extension_rejected_400(
    stack: Any, clock: MutableClock
) -> None:
    http, root, _ = stack
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.7"), b"\x05\x00")
    device = Device(http, root, clock, extra_extensions=[(1, ext, True)])
    _problem(device.register(), 400, "extension_critical_unknown")


def test_android_http_non_ca_issuer_on_rkp_chain_rejected_403(
    stack: Any, clock: MutableClock
) -> None:
    http, root, _ = stack
    device = Device(
        http, root, clock, under_root_name=DROID_CA2_NAME, intermediate_ca=[False, True]
    )
    _problem(device.register(), 403, "intermediate_not_ca")
