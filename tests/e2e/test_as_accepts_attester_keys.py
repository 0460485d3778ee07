"""Bridge until the full device flows land: a Client Attestation JWT made by the attester's own
issuance code and keys, verified by node-oidc-provider through the attester's live
``/.well-known/jwks.json``, in both PoP modes. Only the platform evidence step is skipped."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from attester.app import create_app
from attester.reference_client import AsClient, AsError, InstanceKey
from tests.e2e.e2e_support import StartAs
from tests.support import live_server


def test_attester_issued_attestation_accepted_both_modes(
    make_settings: Any, start_as: StartAs
) -> None:
    settings = make_settings(
        apps=[{"client_id": "attested-app"}, {"client_id": "attested-app-dpop"}]
    )
    app = create_app(settings)
    try:
        with live_server(app) as attester, httpx.Client(timeout=10) as http:
            running = start_as(
                f"{attester.url}/.well-known/jwks.json", attester_issuer=settings.issuer
            )
            service = app.state.service
            for client_id, combined in (("attested-app", False), ("attested-app-dpop", True)):
                instance = InstanceKey.generate()
                issued = service.issuer.issue(
                    app=settings.app(client_id),
                    instance_jwk=instance.public_jwk,
                    now=datetime.now(UTC),
                )
                client = AsClient(running.issuer, http)
                try:
                    token = client.request_token(issued.jwt, instance, combined=combined)
                except AsError as exc:
                    raise AssertionError(f"{exc}; AS log: {running.events}") from exc
                assert token["token_type"] == ("DPoP" if combined else "Bearer")
    finally:
        app.state.service.store.dispose()
