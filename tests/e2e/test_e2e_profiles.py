"""Receiver profiles end to end: node-oidc-provider accepts the attester's JWT in both PoP modes
(PoP header and combined DPoP) with each header/claim setting.

``test_e2e_devices.py`` runs the defaults (iss on, jku off, no certificate). Here:

* ``draft-08+``: iss off (the AS does not pin it), jku on, x5c on (a chain imported with
  ``attester keys csr`` / ``import-cert``), the signing key in a SoftHSM2 token and
  ``attester serve --workers 2`` (each worker process opens its own PKCS#11 sessions);
* ``draft-07``: iss on and pinned by the AS, jku off, x5c off although the key has a chain.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509

from tests.ca import LocalCa
from tests.e2e.e2e_support import DEFAULT_CLIENT_ID, DEFAULT_DPOP_CLIENT_ID
from tests.e2e.stack import Stack, running_stack
from tests.softhsm import SoftHsm

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Profile:
    name: str
    iss: bool
    jku: bool
    x5c: bool
    hsm: bool


PROFILES = [
    Profile("draft-08+", iss=False, jku=True, x5c=True, hsm=True),
    Profile("draft-07", iss=True, jku=False, x5c=False, hsm=False),
]


@pytest.fixture(scope="module", params=PROFILES, ids=[p.name for p in PROFILES])
def profiled(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Profile, Stack, LocalCa]]:
    profile: Profile = request.param
    settings: dict[str, Any] = {
        "include_iss": profile.iss,
        "include_jku": profile.jku,
        "include_x5c": profile.x5c,
    }
    serve_args: tuple[str, ...] = ()
    if profile.hsm:
        softhsm: SoftHsm = request.getfixturevalue("softhsm")
        settings["pkcs11"] = softhsm.settings()
        serve_args = ("--workers", "2")
    as_options = {} if profile.iss else {"attester_issuer": None}
    directory = tmp_path_factory.mktemp(f"e2e-profile-{profile.name}")
    with running_stack(
        directory, settings=settings, as_options=as_options, serve_args=serve_args
    ) as stack:
        ca = LocalCa.make()
        _certify_active_key(stack, ca, directory)
        yield profile, stack, ca


def _certify_active_key(stack: Stack, ca: LocalCa, directory: Any) -> None:
    """The operator's steps: CSR from the CLI, the CA signs it, import-cert."""
    listed = stack.attester.cli("keys", "list")
    assert listed.returncode == 0, listed.stderr
    (key,) = json.loads(listed.stdout)["keys"]
    csr = stack.attester.cli("keys", "csr", f"--kid={key['kid']}")
    assert csr.returncode == 0, csr.stderr
    chain = directory / "chain.pem"
    chain.write_bytes(ca.chain_pem(ca.sign_csr(x509.load_pem_x509_csr(csr.stdout.encode()))))
    imported = stack.attester.cli("keys", "import-cert", f"--kid={key['kid']}", str(chain))
    assert imported.returncode == 0, imported.stdout + imported.stderr


def _parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload = (
        json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        for part in token.split(".")[:2]
    )
    return header, payload


@pytest.mark.parametrize("client_id", [DEFAULT_CLIENT_ID, DEFAULT_DPOP_CLIENT_ID])
@pytest.mark.parametrize("platform", ["android", "ios"])
def test_profile_jwt_accepted_by_node_oidc_provider(
    profiled: tuple[Profile, Stack, LocalCa], platform: str, client_id: str
) -> None:
    profile, stack, ca = profiled
    device = stack.android(client_id) if platform == "android" else stack.ios(client_id)
    header, claims = _parts(device.register())

    assert ("iss" in claims) is profile.iss
    assert header.get("jku") == (stack.attester.jwks_uri if profile.jku else None)
    assert ("x5c" in header) is profile.x5c
    if profile.x5c:
        leaf, inter = (x509.load_der_x509_certificate(base64.b64decode(c)) for c in header["x5c"])
        leaf.verify_directly_issued_by(inter)
        inter.verify_directly_issued_by(ca.root)

    token = device.token()
    assert token["access_token"]
    assert token["token_type"] == ("DPoP" if client_id == DEFAULT_DPOP_CLIENT_ID else "Bearer")


def test_profile_hsm_key_is_in_token(profiled: tuple[Profile, Stack, LocalCa]) -> None:
    profile, stack, _ = profiled
    listed = stack.attester.cli("keys", "list")
    (key,) = json.loads(listed.stdout)["keys"]
    assert key["backend"] == ("pkcs11" if profile.hsm else "file")
    assert key["certificate_expires_at"] is not None
    assert not list((stack.attester.data_dir / "keys").glob(f"{key['kid']}.pem")) or not profile.hsm
