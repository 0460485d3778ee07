"""Regressions found in review: every one got past a real challenge into the verifiers."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.codec.der import encoder as der_encoder
from pyasn1.type import univ
from pyasn1_modules import rfc5280

from attester.admin import Admin
from attester.app import create_app
from attester.errors import ProblemError
from attester.keyproof import parse_instance_jwk
from attester.settings import ConfigError, load_settings
from tests.android.status_server import StatusServer
from tests.android.synth import DEFAULT_PACKAGE, DEFAULT_SIGNER, TestRoot, make_chain, make_root
from tests.support import LiveServer, MutableClock, live_server, make_key_proof

ISSUER = "https://attester.test"


def _duplicate_last_extension(der: bytes, signer: ec.EllipticCurvePrivateKey) -> bytes:
    cert, _ = der_decoder.decode(der, asn1Spec=rfc5280.Certificate())
    tbs = cert["tbsCertificate"]
    extensions = tbs["extensions"]
    extensions.append(extensions[len(extensions) - 1])
    tbs_der = der_encoder.encode(tbs)
    cert["tbsCertificate"] = tbs
    cert["signature"] = univ.BitString.fromOctetString(signer.sign(tbs_der, ec.ECDSA(hashes.SHA256())))
    return bytes(der_encoder.encode(cert))


@pytest.fixture
def stack(make_settings: Any, tmp_path: Path, clock: MutableClock) -> Iterator[tuple[LiveServer, TestRoot, StatusServer]]:
    root = make_root()
    root_file = tmp_path / "root.pem"
    root_file.write_bytes(root.certificate.public_bytes(serialization.Encoding.PEM))
    status = StatusServer()
    status.body = b'{"entries": {}}'
    settings = make_settings(
        apps=[{"client_id": "c", "android": {"package_names": [DEFAULT_PACKAGE], "signing_cert_sha256": [DEFAULT_SIGNER.hex()]}}],
        android={"revocation_url": status.url, "test_root_files": [root_file]},
    )
    with live_server(create_app(settings, clock=clock)) as live:
        yield live, root, status
    status.close()


def _signed_proof(key: ec.EllipticCurvePrivateKey, claims: dict[str, Any]) -> str:
    signing = jwk.JWK.from_pem(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return make_key_proof(signing, challenge=claims.pop("challenge"), aud=ISSUER, iat=claims.pop("iat", None), claims=claims)


def _register(http: httpx.Client, root: TestRoot, *, chain_fn: Any = None, proof_claims: dict[str, Any] | None = None, **chain_args: Any) -> httpx.Response:
    challenge = http.post("/v1/challenge").json()["challenge"]
    synth = make_chain(challenge=base64.urlsafe_b64decode(challenge + "="), root=root, **chain_args)
    chain = chain_fn(synth) if chain_fn else synth.chain
    claims = {"challenge": challenge, **(proof_claims or {})}
    return http.post(
        "/v1/android/attestations",
        json={
            "certificate_chain": [base64.b64encode(c).decode() for c in chain],
            "challenge": challenge,
            "key_proof": _signed_proof(synth.leaf_key, claims),
        },
    )


def test_review_android_duplicate_extension_is_4xx_not_500(stack: Any) -> None:
    live, root, _ = stack
    with httpx.Client(base_url=live.url) as http:
        response = _register(
            http, root, chain_fn=lambda s: [_duplicate_last_extension(s.chain[0], s.intermediate_keys[0]), *s.chain[1:]]
        )
    assert 400 <= response.status_code < 500, response.text


def test_review_key_proof_huge_iat_is_malformed(stack: Any) -> None:
    live, root, _ = stack
    with httpx.Client(base_url=live.url) as http:
        response = _register(http, root, proof_claims={"iat": 10**400})
    assert response.status_code == 400 and response.json()["code"] == "key_proof_malformed"


def test_review_key_proof_surrogate_challenge_is_mismatch(stack: Any) -> None:
    live, root, _ = stack
    with httpx.Client(base_url=live.url) as http:
        challenge = http.post("/v1/challenge").json()["challenge"]
        synth = make_chain(challenge=base64.urlsafe_b64decode(challenge + "="), root=root)
        signing = jwk.JWK.from_pem(synth.leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        proof = make_key_proof(signing, challenge="\ud800", aud=ISSUER)
        response = http.post(
            "/v1/android/attestations",
            json={"certificate_chain": [base64.b64encode(c).decode() for c in synth.chain], "challenge": challenge, "key_proof": proof},
        )
    assert response.status_code == 401 and response.json()["code"] == "key_proof_challenge_mismatch"


def test_review_key_proof_deeply_nested_header_is_malformed(stack: Any) -> None:
    live, _, _ = stack
    header = base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).rstrip(b"=").decode()
    from datetime import UTC, datetime, timedelta

    from attester.keyproof import verify_key_proof

    with pytest.raises(ProblemError) as info:
        verify_key_proof(
            f"{header}.e30.AAAA", jwk={}, challenge="c", audience=ISSUER,
            now=datetime.now(UTC), max_age=timedelta(seconds=60), skew=timedelta(seconds=60),
        )
    assert info.value.code == "key_proof_malformed"


def test_review_policy_violation_does_not_reveal_registry(stack: Any) -> None:
    live, root, _ = stack
    with httpx.Client(base_url=live.url) as http:
        response = _register(http, root, package_name="com.evil.app")
    body = response.json()
    assert body["code"] == "policy_violation" and body["rule"] == "package_name"
    assert "seen" not in body and "required" not in body
    assert DEFAULT_PACKAGE not in response.text and "com.evil.app" not in response.text


def test_review_revoked_instance_cannot_re_register(stack: Any) -> None:
    live, root, _ = stack
    service = live.server.config.app.state.service  # type: ignore[attr-defined]
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    with httpx.Client(base_url=live.url) as http:
        first = _register(http, root, leaf_key=leaf_key)
        assert first.status_code == 200, first.text
        record = service.store.instance_by_thumbprint(first.json()["key_thumbprint"])
        # the audited operator path (status-list bits, audit row), the only way to revoke
        Admin.of(service).change_status(record.id, "revoke", actor="test", reason="stolen")
        again = _register(http, root, leaf_key=leaf_key)
    assert again.status_code == 403 and again.json()["code"] == "instance_revoked"


def test_review_suspended_instance_re_register_suspended(stack: Any) -> None:
    live, root, _ = stack
    service = live.server.config.app.state.service  # type: ignore[attr-defined]
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    with httpx.Client(base_url=live.url) as http:
        first = _register(http, root, leaf_key=leaf_key)
        assert first.status_code == 200, first.text
        record = service.store.instance_by_thumbprint(first.json()["key_thumbprint"])
        Admin.of(service).change_status(record.id, "suspend", actor="test", reason="check")
        again = _register(http, root, leaf_key=leaf_key)
    assert again.status_code == 403 and again.json()["code"] == "instance_suspended"


def test_review_store_has_no_unaudited_status_change() -> None:
    # an instance's status changes only with its status-list bits and an audit record
    from attester.storage import Store

    assert not hasattr(Store, "set_status")


def test_review_instance_jwk_non_canonical_rejected() -> None:
    key = jwk.JWK.generate(kty="EC", crv="P-256").export_public(as_dict=True)
    parse_instance_jwk(key)
    for bad in (key["x"][:10] + "!.*" + key["x"][10:], key["x"] + "=", " " + key["x"]):
        with pytest.raises(ProblemError) as info:
            parse_instance_jwk({**key, "x": bad})
        assert info.value.code == "jwk_malformed"


def test_review_apple_duplicate_extension_is_malformed() -> None:
    import hashlib
    from datetime import UTC, datetime

    import cbor2

    from platform_verifiers.apple import verify_attestation
    from platform_verifiers.errors import VerificationError
    from tests.apple.synth import make_attestation, make_test_root

    root = make_test_root()
    client_data_hash = hashlib.sha256(b"client data").digest()
    obj, key_id, _ = make_attestation(root_key=root.key, root_cert=root.cert, client_data_hash=client_data_hash,
                                      app_id="ABCDE12345.com.example", environment="production")
    decoded = cbor2.loads(obj)
    forger = ec.generate_private_key(ec.SECP256R1())
    decoded["attStmt"]["x5c"][1] = _duplicate_last_extension(decoded["attStmt"]["x5c"][1], forger)
    with pytest.raises(VerificationError) as info:
        verify_attestation(attestation_object=cbor2.dumps(decoded), key_id=key_id, client_data_hash=client_data_hash,
                           app_ids=["ABCDE12345.com.example"], environment="production", anchors=[root.anchor],
                           now=datetime.now(UTC))
    assert info.value.code in {"chain_untrusted", "attestation_malformed", "chain_signature_invalid"}


def test_review_apple_deeply_nested_client_data_is_400(make_settings: Any, clock: MutableClock) -> None:
    with live_server(create_app(make_settings(), clock=clock)) as live, httpx.Client(base_url=live.url) as http:
        challenge = http.post("/v1/challenge").json()["challenge"]
        client_data = base64.urlsafe_b64encode(b"[" * 1500 + b"]" * 1500).rstrip(b"=").decode()
        response = http.post(
            "/v1/apple/attestations",
            json={"key_id": base64.b64encode(b"k" * 32).decode(), "attestation_object": "AAAA",
                  "client_data": client_data, "key_proof": "a.b.c", "challenge": challenge},
        )
    assert response.status_code == 400 and response.json()["code"] == "client_data_malformed"


def test_review_iat_granularity_longer_than_lifetime_refused() -> None:
    with pytest.raises(ConfigError, match="iat_granularity"):
        load_settings(iat_granularity=3600, attestation_lifetime=600)


def test_review_key_prepublish_delay_must_cover_clock_skew() -> None:
    with pytest.raises(ConfigError, match="clock_skew"):
        load_settings(jwks_max_age=300, clock_skew=60, key_prepublish_delay=300)
    assert load_settings(jwks_max_age=300, clock_skew=60).prepublish_delay.total_seconds() == 360


def test_review_android_renewal_refused_once_root_untrusted(
    stack: Any, make_settings: Any, clock: MutableClock, tmp_path: Path
) -> None:
    live, root, status = stack
    with httpx.Client(base_url=live.url) as http:
        challenge = http.post("/v1/challenge").json()["challenge"]
        synth = make_chain(challenge=base64.urlsafe_b64decode(challenge + "="), root=root)
        registered = http.post("/v1/android/attestations", json={
            "certificate_chain": [base64.b64encode(c).decode() for c in synth.chain], "challenge": challenge,
            "key_proof": _signed_proof(synth.leaf_key, {"challenge": challenge})}).json()
    # the operator turns the test root off; the same database and keys
    settings = make_settings(
        apps=[{"client_id": "c", "android": {"package_names": [DEFAULT_PACKAGE], "signing_cert_sha256": [DEFAULT_SIGNER.hex()]}}],
        android={"revocation_url": status.url},
    )
    with live_server(create_app(settings, clock=clock)) as other, httpx.Client(base_url=other.url) as http:
        challenge = http.post("/v1/challenge").json()["challenge"]
        response = http.post("/v1/attestations/renew", json={
            "key_thumbprint": registered["key_thumbprint"], "challenge": challenge,
            "key_proof": _signed_proof(synth.leaf_key, {"challenge": challenge})})
    assert response.status_code == 403 and response.json()["code"] == "chain_untrusted"
    assert json.loads(json.dumps(registered))["key_thumbprint"]
