"""Receiver profiles: iss, jku and x5c, service-wide and per app (README "Compatibility")."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwcrypto import jwk, jwt

from attester.issuance import HeaderOptions, compose_header
from attester.service import AttesterService, build_service
from attester.settings import AppConfig
from tests.support import MutableClock, new_instance_key, public_jwk


def _issue(
    svc: AttesterService, clock: MutableClock, **app: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    issued = svc.issuer.issue(
        app=AppConfig(client_id="client-1", **app),
        instance_jwk=public_jwk(new_instance_key()),
        now=clock(),
    )
    parsed = jwt.JWT(jwt=issued.jwt, key=jwk.JWKSet.from_json(svc.jwks().body), check_claims=False)
    return json.loads(parsed.header), json.loads(parsed.claims)


def _add_chain(
    svc: AttesterService, clock: MutableClock, *, days: float = 30, start_hours: float = -1
) -> None:
    signer = svc.key_store.active_signer(clock())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attester")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CA")]))
        .public_key(signer.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(hours=start_hours))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(ca_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    svc.key_store.import_certificate(signer.kid, pem, now + dt.timedelta(hours=start_hours))


@pytest.fixture
def svc(make_settings: Any, clock: MutableClock) -> Any:
    service = build_service(make_settings(), clock=clock)
    yield service
    service.store.dispose()


def test_profile_defaults_iss_on_jku_off_x5c_when_chain(
    svc: AttesterService, clock: MutableClock
) -> None:
    header, claims = _issue(svc, clock)
    assert claims["iss"] == svc.settings.issuer
    assert "jku" not in header and "x5c" not in header
    _add_chain(svc, clock)
    header, _ = _issue(svc, clock)
    assert len(header["x5c"]) == 1


@pytest.mark.parametrize(("app_value", "sent"), [(None, True), (False, False), (True, True)])
def test_profile_iss_per_app_overrides_global_on(
    svc: AttesterService, clock: MutableClock, app_value: bool | None, sent: bool
) -> None:
    assert ("iss" in _issue(svc, clock, include_iss=app_value)[1]) is sent


def test_profile_iss_per_app_on_when_global_off(make_settings: Any, clock: MutableClock) -> None:
    service = build_service(make_settings(include_iss=False), clock=clock)
    try:
        assert "iss" not in _issue(service, clock)[1]
        assert _issue(service, clock, include_iss=True)[1]["iss"] == service.settings.issuer
    finally:
        service.store.dispose()


def test_profile_jku_is_the_jwks_uri(make_settings: Any, clock: MutableClock) -> None:
    service = build_service(make_settings(include_jku=True), clock=clock)
    try:
        header, _ = _issue(service, clock)
        assert (
            header["jku"]
            == service.metadata()["jwks_uri"]
            == "https://attester.test/.well-known/jwks.json"
        )
        assert "jku" not in _issue(service, clock, include_jku=False)[0]
    finally:
        service.store.dispose()


def test_profile_x5c_off_per_app_with_chain_present(
    svc: AttesterService, clock: MutableClock
) -> None:
    _add_chain(svc, clock)
    assert "x5c" not in _issue(svc, clock, include_x5c=False)[0]
    assert "x5c" in _issue(svc, clock)[0]


def test_profile_x5c_off_globally_on_per_app(make_settings: Any, clock: MutableClock) -> None:
    service = build_service(make_settings(include_x5c=False), clock=clock)
    try:
        _add_chain(service, clock)
        assert "x5c" not in _issue(service, clock)[0]
        assert "x5c" in _issue(service, clock, include_x5c=True)[0]
    finally:
        service.store.dispose()


def test_profile_x5c_on_without_chain_sends_none(svc: AttesterService, clock: MutableClock) -> None:
    assert "x5c" not in _issue(svc, clock, include_x5c=True)[0]


def test_compose_header_depends_only_on_key_and_options() -> None:
    options = HeaderOptions(include_x5c=True, jku="https://a.test/.well-known/jwks.json")
    chain = (base64.b64encode(b"cert").decode(),)
    first = compose_header(kid="k1", alg="ES256", x5c=chain, options=options)
    assert first == compose_header(kid="k1", alg="ES256", x5c=chain, options=options)
    assert first == {
        "alg": "ES256",
        "typ": "oauth-client-attestation+jwt",
        "kid": "k1",
        "jku": "https://a.test/.well-known/jwks.json",
        "x5c": list(chain),
    }
    plain = compose_header(kid="k1", alg="ES256", x5c=chain, options=HeaderOptions(False, None))
    assert plain == {"alg": "ES256", "typ": "oauth-client-attestation+jwt", "kid": "k1"}


# -- review: an invalid chain is never sent (a receiver validating x5c would refuse it) -----
@pytest.mark.parametrize(
    ("days", "start_hours", "move", "sent"),
    [
        (30, -1, 0, True),  # valid for the JWT's whole hour
        (30, -1, 31 * 86400, False),  # expired
        (30, 2, 0, False),  # not yet valid
        (0.01, -1, 0, False),  # valid now, expires before the JWT does
    ],
)
def test_profile_x5c_chain_not_valid_for_jwt_lifetime_omitted(
    svc: AttesterService,
    clock: MutableClock,
    caplog: pytest.LogCaptureFixture,
    days: float,
    start_hours: float,
    move: int,
    sent: bool,
) -> None:
    _add_chain(svc, clock, days=days, start_hours=start_hours)
    clock.advance(move)
    with caplog.at_level("ERROR", logger="attester.keys"):
        header, _ = _issue(svc, clock)
    assert ("x5c" in header) is sent
    assert any("x5c omitted" in r.getMessage() for r in caplog.records) is not sent
