"""End to end: an operator revokes (or suspends) an instance through the admin API on its own
port, and node-oidc-provider, whose server.mjs reads the attester's Token Status List (a reader
written there from the draft), rejects the instance's Client Attestation JWT; other instances
keep working, and a reinstated one works again."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from attester.admin import new_token
from attester.reference_client import AsError
from tests.e2e.stack import Stack, running_stack
from tests.support import free_port

pytestmark = pytest.mark.e2e

TOKEN, DIGEST = new_token()
TTL = 1  # seconds the AS caches the list: the revocation reaches it after at most this


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    admin_port = free_port()
    settings = {
        "status_list": {"ttl": TTL},
        "admin": {"enabled": True, "port": admin_port, "tokens": [{"name": "e2e", "sha256": DIGEST}]},
    }
    with running_stack(tmp_path_factory.mktemp("e2e-status"), settings=settings) as running:
        yield running, f"http://127.0.0.1:{admin_port}/admin/v1"


def _admin(admin: str, method: str, path: str, **kw: object) -> httpx.Response:
    deadline = time.monotonic() + 10  # the admin server thread may start after /healthz
    while True:
        try:
            return httpx.request(method, admin + path, headers={"Authorization": f"Bearer {TOKEN}"}, **kw)  # type: ignore[arg-type]
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _instance_id(admin: str, thumbprint: str) -> str:
    found = _admin(admin, "GET", "/instances", params={"key_thumbprint": thumbprint}).json()
    return str(found["instances"][0]["id"])


def _refused(stack: Stack, device: object) -> str:
    seen = len(stack.as_.events)
    with pytest.raises(AsError) as info:
        device.token()  # type: ignore[attr-defined]
    assert info.value.error == "invalid_client"
    details = stack.as_.details_since(seen)
    return details[-1] if details else ""


@pytest.mark.parametrize("platform", ["android", "ios"])
def test_e2e_revoked_instance_rejected_by_status_checking_as(
    stack: tuple[Stack, str], platform: str
) -> None:
    running, admin = stack
    device = running.android() if platform == "android" else running.ios()
    bystander = running.android()
    device.register()
    bystander.register()
    assert device.token()["access_token"] and bystander.token()["access_token"]
    instance = _instance_id(admin, device.key.thumbprint)
    response = _admin(admin, "POST", f"/instances/{instance}/revoke", json={"reason": "stolen"})
    assert response.status_code == 200, response.text
    time.sleep(TTL + 0.5)
    assert _refused(running, device) == "Client Attestation status is invalid"
    assert bystander.token()["access_token"]  # other instances are untouched
    assert running.http.post(running.attester.url + "/v1/challenge").status_code == 200


def test_e2e_suspended_instance_rejected_then_reinstated(stack: tuple[Stack, str]) -> None:
    running, admin = stack
    device = running.android()
    device.register()
    assert device.token()["access_token"]
    instance = _instance_id(admin, device.key.thumbprint)
    assert _admin(admin, "POST", f"/instances/{instance}/suspend", json={"reason": "check"}).status_code == 200
    time.sleep(TTL + 0.5)
    assert _refused(running, device) == "Client Attestation status is suspended"
    assert _admin(admin, "POST", f"/instances/{instance}/reinstate", json={"reason": "ok"}).status_code == 200
    time.sleep(TTL + 0.5)
    assert device.token()["access_token"]


def test_e2e_admin_api_not_on_public_port(stack: tuple[Stack, str]) -> None:
    running, _ = stack
    response = running.http.get(
        running.attester.url + "/admin/v1/instances", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert response.status_code == 404
