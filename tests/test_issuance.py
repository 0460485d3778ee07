"""The Client Attestation JWT, checked with jwcrypto against the published JWKS."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from jwcrypto import jwk, jwt

from attester.service import AttesterService, build_service
from attester.settings import AppConfig
from tests.support import MutableClock, new_instance_key, public_jwk


def _app(**kw) -> AppConfig:  # type: ignore[no-untyped-def]
    return AppConfig(client_id="client-1", claims={"wallet_name": "W"}, **kw)


def _decode(service: AttesterService, token: str) -> tuple[dict, dict]:  # type: ignore[type-arg]
    keyset = jwk.JWKSet.from_json(service.jwks().body)
    parsed = jwt.JWT(jwt=token, key=keyset, check_claims=False, expected_type="JWS")
    return json.loads(parsed.header), json.loads(parsed.claims)


def test_issuance_header_and_claims_follow_the_draft(service: AttesterService, clock: MutableClock) -> None:
    key = new_instance_key()
    issued = service.issuer.issue(app=_app(), instance_jwk=public_jwk(key), now=clock())
    header, claims = _decode(service, issued.jwt)
    assert header == {"alg": "ES256", "typ": "oauth-client-attestation+jwt", "kid": issued.kid}
    assert claims["sub"] == "client-1" and claims["iss"] == service.settings.issuer
    assert claims["exp"] - claims["iat"] == 3600 and claims["iat"] == int(clock().timestamp())
    assert claims["cnf"] == {"jwk": {k: public_jwk(key)[k] for k in ("kty", "crv", "x", "y")}}
    assert claims["wallet_name"] == "W"
    assert "jti" not in claims  # no per-token identifier beyond cnf


def test_issuance_reference_is_the_signatures_r_and_unique(
    service: AttesterService, clock: MutableClock
) -> None:
    """The stored row's key: the signature's r (base64url), distinct for equal claims."""
    import base64

    jwk_ = public_jwk(new_instance_key())
    first, second = (service.issuer.issue(app=_app(), instance_jwk=jwk_, now=clock()) for _ in range(2))
    assert first.jwt.rsplit(".", 1)[0] == second.jwt.rsplit(".", 1)[0]  # same header and claims
    assert first.reference != second.reference
    for issued in (first, second):
        signature = base64.urlsafe_b64decode(issued.jwt.rsplit(".", 1)[1] + "==")
        r = base64.urlsafe_b64encode(signature[:32]).rstrip(b"=").decode()
        assert len(issued.reference) == 43 and issued.reference[:42] == r[:42]


def test_issuance_private_members_never_reach_cnf(service: AttesterService, clock: MutableClock) -> None:
    private = new_instance_key().export_private(as_dict=True)
    issued = service.issuer.issue(app=_app(), instance_jwk=private, now=clock())
    assert "d" not in _decode(service, issued.jwt)[1]["cnf"]["jwk"]


def test_issuance_lifetime_per_app_and_capped(service: AttesterService, clock: MutableClock) -> None:
    jwk_ = public_jwk(new_instance_key())
    short = service.issuer.issue(app=_app(attestation_lifetime=600), instance_jwk=jwk_, now=clock())
    claims = _decode(service, short.jwt)[1]
    assert claims["exp"] - claims["iat"] == 600
    with pytest.raises(ValueError):
        _app(attestation_lifetime=24 * 3600 + 1)


def test_issuance_iss_can_be_turned_off(make_settings, clock: MutableClock) -> None:  # type: ignore[no-untyped-def]
    svc = build_service(make_settings(include_iss=False), clock=clock)
    issued = svc.issuer.issue(app=_app(), instance_jwk=public_jwk(new_instance_key()), now=clock())
    assert "iss" not in _decode(svc, issued.jwt)[1]


def test_issuance_iat_coarsened_when_configured(make_settings, clock: MutableClock) -> None:  # type: ignore[no-untyped-def]
    svc = build_service(make_settings(iat_granularity=300), clock=clock)
    issued = svc.issuer.issue(app=_app(), instance_jwk=public_jwk(new_instance_key()), now=clock())
    assert _decode(svc, issued.jwt)[1]["iat"] % 300 == 0


def test_issuance_x5c_header_when_chain_configured(service: AttesterService, clock: MutableClock) -> None:
    signer = service.key_store.active_signer(clock())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attester test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attester")]))
        .issuer_name(name)
        .public_key(signer.public_key())
        .serial_number(x509.random_serial_number())
        # valid from before the test clock's instant: a chain not yet valid at iat is not sent
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )
    (service.key_store.directory / f"{signer.kid}.x5c.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
    )
    service.key_store.reload(force=True)
    issued = service.issuer.issue(app=_app(), instance_jwk=public_jwk(new_instance_key()), now=clock())
    header = _decode(service, issued.jwt)[0]
    assert len(header["x5c"]) == 1
    assert x509.load_der_x509_certificate(__import__("base64").b64decode(header["x5c"][0])) == cert


def test_issuance_after_rotation_uses_new_key_once_active(service: AttesterService, clock: MutableClock) -> None:
    old = service.key_store.active_signer(clock()).kid
    new = service.key_store.rotate(clock(), delay=service.settings.prepublish_delay).kid
    jwk_ = public_jwk(new_instance_key())
    assert service.issuer.issue(app=_app(), instance_jwk=jwk_, now=clock()).kid == old
    clock.advance(service.settings.prepublish_delay.total_seconds())
    issued = service.issuer.issue(app=_app(), instance_jwk=jwk_, now=clock())
    assert issued.kid == new
    _decode(service, issued.jwt)  # verifiable with the JWKS published now


@pytest.mark.parametrize("include_iss", [True, False])
@pytest.mark.parametrize(
    "static", [{}, {"wallet_name": "W \u00e9\"\\", "n": 3, "flag": True}]
)
@pytest.mark.parametrize("status", [None, {"status_list": {"idx": 7, "uri": "https://a.test/statuslists/0"}}])
def test_issuance_claims_json_same_bytes_as_claims_dict(
    make_settings, clock: MutableClock, include_iss: bool, static: dict, status: dict | None  # type: ignore[no-untyped-def, type-arg]
) -> None:
    import orjson

    svc = build_service(make_settings(iat_granularity=60), clock=clock)
    try:
        app = AppConfig(client_id="client-1", claims=static, include_iss=include_iss)
        jwk_ = new_instance_key().export_private(as_dict=True)  # private members are dropped
        for _ in range(2):  # the second one from the per-app prefix
            expected = orjson.dumps(svc.issuer.claims(app=app, instance_jwk=jwk_, now=clock(), status=status))
            iat = int(clock().timestamp()) // 60 * 60
            assert svc.issuer.claims_json(app=app, instance_jwk=jwk_, iat=iat, status=status) == expected
        other = AppConfig(client_id="client-2", claims={"x": 1})  # another app: its own prefix
        got = json.loads(svc.issuer.claims_json(app=other, instance_jwk=jwk_, iat=5))
        assert got["sub"] == "client-2" and got["x"] == 1 and "wallet_name" not in got
        issued = svc.issuer.issue(app=app, instance_jwk=jwk_, now=clock(), status=status)
        claims = _decode(svc, issued.jwt)[1]
        assert claims == json.loads(expected)
        assert issued.issued_at.timestamp() == claims["iat"] and issued.expires_at.timestamp() == claims["exp"]
    finally:
        svc.store.dispose()
