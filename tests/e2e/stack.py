"""The whole chain on loopback: the real ``attester serve``, node-oidc-provider trusting its
``jwks_uri``, a stand-in for Google's revocation list, and simulated devices.

* Android device: a Key Attestation chain from a test root whose attested leaf key is the
  instance key (``InstanceKey.from_pem``); the chain is made after the challenge, as on a phone.
* iOS device: an App Attest attestation object from a test root, with a separate instance key
  (the Secure Enclave key) bound through ``client_data``; renewal with an assertion.

The test roots are trusted only through ``android.test_root_files`` and
``apple.test_root_files``. Two attester apps, one per AS client: the AS registers each client
with one authentication method, and the attestation's ``sub`` is the client_id.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from attester.reference_client import AsClient, AttesterClient, InstanceKey
from tests.android.status_server import StatusServer
from tests.android.synth import DEFAULT_SIGNER, TestRoot, make_chain, make_root
from tests.apple.synth import SynthRoot, make_assertion, make_attestation, make_test_root
from tests.e2e.e2e_support import (
    DEFAULT_CLIENT_ID,
    DEFAULT_DPOP_CLIENT_ID,
    RunningAs,
    RunningAttester,
    run_as,
    run_attester,
    write_config,
)
from tests.support import free_port

TEAM_ID = "TEAM123456"
# one Android package and one iOS bundle per attester app (= per AS client)
APPS: dict[str, str] = {
    DEFAULT_CLIENT_ID: "com.example.wallet",
    DEFAULT_DPOP_CLIENT_ID: "com.example.wallet.dpop",
}
COMBINED = {DEFAULT_CLIENT_ID: False, DEFAULT_DPOP_CLIENT_ID: True}


def _pem(certificate: Any) -> bytes:
    return bytes(certificate.public_bytes(serialization.Encoding.PEM))


@dataclass
class Stack:
    """Everything a test needs to drive devices through the attester to the AS."""

    attester: RunningAttester
    issuer: str  # the attester's issuer (= its URL)
    as_: RunningAs
    android_root: TestRoot
    apple_root: SynthRoot
    status: StatusServer
    http: httpx.Client

    def android(self, client_id: str = DEFAULT_CLIENT_ID) -> AndroidDevice:
        return AndroidDevice(self, client_id)

    def ios(self, client_id: str = DEFAULT_CLIENT_ID) -> AppleDevice:
        return AppleDevice(self, client_id)

    def as_client(self) -> AsClient:
        return AsClient(self.as_.issuer, self.http)


class Device:
    """An app instance: its instance key and its clients for the attester and the AS."""

    def __init__(self, stack: Stack, client_id: str, key: InstanceKey) -> None:
        self.stack = stack
        self.client_id = client_id
        self.package = APPS[client_id]
        self.key = key
        self.attester = AttesterClient(stack.attester.url, stack.http, key=key)
        self.as_client = stack.as_client()

    @property
    def attestation(self) -> str:
        assert self.attester.client_attestation is not None, "register first"
        return self.attester.client_attestation

    @property
    def request_count(self) -> int:
        """Requests sent so far, to the attester and to the AS."""
        return self.attester.request_count + self.as_client.request_count

    def proof(self, challenge: str) -> str:
        return self.attester.key_proof(challenge, self.stack.issuer)

    def register(self) -> str:
        """Register with platform evidence; returns (and keeps) the Client Attestation JWT."""
        raise NotImplementedError

    def renew(self) -> str:
        """Renew without new platform attestation; returns (and keeps) the new JWT."""
        raise NotImplementedError

    def token(self, *, attestation: str | None = None) -> dict[str, Any]:
        """A client_credentials token in this client's mode (PoP header or combined DPoP)."""
        return self.as_client.request_token(
            attestation or self.attestation, self.key, combined=COMBINED[self.client_id]
        )


class AndroidDevice(Device):
    def __init__(self, stack: Stack, client_id: str) -> None:
        # The Keystore key: generated with the attestation challenge; it is the instance key.
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        pem = self.leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        super().__init__(stack, client_id, InstanceKey.from_pem(pem))

    def register(self) -> str:
        challenge = self.attester.get_challenge()
        raw = base64.urlsafe_b64decode(challenge + "=" * (-len(challenge) % 4))
        chain = make_chain(
            challenge=raw,
            root=self.stack.android_root,
            leaf_key=self.leaf_key,
            package_name=self.package,
            signer_digest=DEFAULT_SIGNER,
        )
        self.attester.register_android(chain.chain, challenge, self.proof(challenge))
        return self.attestation

    def renew(self) -> str:
        challenge = self.attester.get_challenge()
        self.attester.renew(challenge, self.proof(challenge))
        return self.attestation


class AppleDevice(Device):
    def __init__(self, stack: Stack, client_id: str) -> None:
        super().__init__(stack, client_id, InstanceKey.generate())  # the Secure Enclave key
        self.app_id = f"{TEAM_ID}.{self.package}"
        self.app_attest_key: ec.EllipticCurvePrivateKey | None = None
        self.counter = 0

    def register(self) -> str:
        challenge = self.attester.get_challenge()
        client_data = self.attester.apple_client_data(challenge)
        obj, key_id, self.app_attest_key = make_attestation(
            root_key=self.stack.apple_root.key,
            root_cert=self.stack.apple_root.cert,
            client_data_hash=hashlib.sha256(client_data).digest(),
            app_id=self.app_id,
            environment="production",
        )
        self.attester.register_apple(key_id, obj, client_data, self.proof(challenge))
        return self.attestation

    def renew(self) -> str:
        assert self.app_attest_key is not None, "register first"
        challenge = self.attester.get_challenge()
        client_data = self.attester.apple_client_data(challenge)
        self.counter += 1
        assertion = make_assertion(
            self.app_attest_key,
            client_data_hash=hashlib.sha256(client_data).digest(),
            app_id=self.app_id,
            counter=self.counter,
        )
        self.attester.renew(
            challenge, self.proof(challenge), assertion=assertion, client_data=client_data
        )
        return self.attestation


def attester_settings(
    *, issuer: str, android_root: Path, apple_root: Path, revocation_url: str, **extra: Any
) -> dict[str, Any]:
    """Two apps (one per AS client), each with an Android and an iOS section."""
    apps = [
        {
            "client_id": client_id,
            "android": {
                "package_names": [package],
                "signing_cert_sha256": [DEFAULT_SIGNER.hex()],
            },
            "apple": {"team_id": TEAM_ID, "bundle_id": package, "environment": "production"},
        }
        for client_id, package in APPS.items()
    ]
    return {
        "issuer": issuer,
        **extra,
        "android": {"revocation_url": revocation_url, "test_root_files": [android_root]},
        "apple": {"test_root_files": [apple_root]},
        "apps": apps,
    }


@contextmanager
def running_stack(
    directory: Path,
    *,
    settings: Mapping[str, Any] | None = None,
    as_options: Mapping[str, Any] | None = None,
    serve_args: tuple[str, ...] = (),
) -> Iterator[Stack]:
    """Start the attester (``attester serve`` subprocess) and the AS trusting it.

    The AS pins the attester's ``iss`` unless ``as_options`` sets ``attester_issuer=None``
    (a draft -08+ receiver); ``serve_args`` are extra ``attester serve`` arguments.
    """
    android_root, apple_root = make_root(), make_test_root()
    android_pem = directory / "android-test-root.pem"
    android_pem.write_bytes(_pem(android_root.certificate))
    apple_pem = directory / "apple-test-root.pem"
    apple_pem.write_bytes(_pem(apple_root.cert))
    with ExitStack() as stack:
        status = StatusServer()
        stack.callback(status.close)
        status.body = b'{"entries": {}}'
        port = free_port()
        issuer = f"http://127.0.0.1:{port}"
        config = write_config(
            directory / "attester.toml",
            attester_settings(
                issuer=issuer,
                android_root=android_pem,
                apple_root=apple_pem,
                revocation_url=status.url,
                **(settings or {}),
            ),
        )
        attester = stack.enter_context(
            run_attester(config, directory / "data", port, extra_args=serve_args)
        )
        as_ = stack.enter_context(
            run_as(attester.jwks_uri, **{"attester_issuer": issuer, **(as_options or {})})
        )
        http = stack.enter_context(httpx.Client(timeout=10))
        yield Stack(attester, issuer, as_, android_root, apple_root, status, http)
