"""The fast paths of issue 12 keep behaviour: cached key state, precomputed header, cached documents."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from jwcrypto import jwk, jwt

from attester.android_integrity import IntegrityGate
from attester.challenges import Challenge
from attester.documents import Document, etag_matches
from attester.errors import ProblemError
from attester.platforms import VerifiedInstance
from attester.service import AttesterService
from attester.settings import AndroidAppConfig, AppConfig, Settings
from keys.store import KeyStore
from tests.support import LiveServer, MutableClock, new_instance_key, public_jwk

T0 = datetime(2026, 11, 1, tzinfo=UTC)
DELAY = timedelta(seconds=360)


def _segment(token: str, index: int) -> dict:  # type: ignore[type-arg]
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


def test_key_store_active_cache_follows_activation_both_ways(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys", retention=timedelta(hours=25))
    store.ensure_initialised(T0)
    old = store.active_signer(T0).kid
    new = store.rotate(T0, delay=DELAY).kid
    assert store.active_signer(T0 + DELAY - timedelta(microseconds=1)).kid == old
    assert store.active_signer(T0 + DELAY).kid == new
    # asking about an earlier instant again must not be answered from the later cache
    assert store.active_signer(T0).kid == old
    assert store.active_signer(T0 + DELAY * 2).kid == new


def test_key_store_rotation_by_other_process_invalidates_cached_signer(tmp_path: Path) -> None:
    serving = KeyStore(tmp_path / "keys", retention=timedelta(hours=25))
    serving.ensure_initialised(T0)
    old = serving.active_signer(T0 + DELAY).kid  # cached until the next key change: none yet
    other = KeyStore(tmp_path / "keys", retention=timedelta(hours=25))
    other.reload(force=True)
    new = other.rotate(T0, delay=DELAY).kid
    serving.reload()  # what issuance does on every call (one stat)
    assert {serving.active_signer(T0).kid, serving.active_signer(T0 + DELAY).kid} == {old, new}
    assert serving.active_signer(T0 + DELAY).kid == new


def test_issuance_non_ascii_static_claim_round_trips(service: AttesterService, clock: MutableClock) -> None:
    app = AppConfig(client_id="client-1", claims={"wallet_name": "Wället ✓", "n": 1})
    issued = service.issuer.issue(app=app, instance_jwk=public_jwk(new_instance_key()), now=clock())
    keyset = jwk.JWKSet.from_json(service.jwks().body)
    parsed = jwt.JWT(jwt=issued.jwt, key=keyset, check_claims=False, expected_type="JWS")
    claims = json.loads(parsed.claims)
    assert claims["wallet_name"] == "Wället ✓" and claims["n"] == 1


def test_issuance_header_follows_rotation(service: AttesterService, clock: MutableClock) -> None:
    app = AppConfig(client_id="client-1")
    instance = public_jwk(new_instance_key())
    first = service.issuer.issue(app=app, instance_jwk=instance, now=clock())
    new = service.key_store.rotate(clock(), delay=service.settings.prepublish_delay).kid
    clock.advance(service.settings.prepublish_delay.total_seconds())
    second = service.issuer.issue(app=app, instance_jwk=instance, now=clock())
    assert _segment(first.jwt, 0)["kid"] == first.kid != new
    assert _segment(second.jwt, 0) == {"alg": "ES256", "typ": "oauth-client-attestation+jwt", "kid": new}


def test_documents_etag_star_and_list_match() -> None:
    doc = Document.of(b"{}", media_type="application/json", cache_control="public, max-age=1")
    assert etag_matches(f'"x", {doc.etag}', doc.etag)
    assert etag_matches("*", doc.etag)
    assert not etag_matches('"x"', doc.etag)


def test_http_metadata_cached_with_etag_and_304(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        first = http.get("/.well-known/client-attester")
        assert first.status_code == 200 and first.headers["content-type"] == "application/json"
        assert first.json()["jwks_uri"].endswith("/.well-known/jwks.json")
        again = http.get("/.well-known/client-attester", headers={"If-None-Match": first.headers["etag"]})
        assert again.status_code == 304 and again.content == b""


def test_http_jwks_post_method_not_allowed(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        response = http.post("/.well-known/jwks.json")
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "method_not_allowed"
    assert response.headers["x-request-id"]


def test_http_jwks_after_rotation_new_etag(server: LiveServer) -> None:
    with httpx.Client(base_url=server.url) as http:
        first = http.get("/.well-known/jwks.json")
        app_service: AttesterService = server.server.config.app.state.service  # type: ignore[attr-defined]
        kid = app_service.key_store.rotate(app_service.clock(), delay=app_service.settings.prepublish_delay).kid
        second = http.get("/.well-known/jwks.json", headers={"If-None-Match": first.headers["etag"]})
    assert second.status_code == 200 and second.headers["etag"] != first.headers["etag"]
    assert kid in {k["kid"] for k in second.json()["keys"]}


def test_android_top_certificate_equal_to_an_anchor_decoded_as_itself() -> None:
    """decode_chain takes a top certificate that is byte for byte a trust anchor from the
    anchor's once-decoded form: the same facts as decoding it; one byte off, decoded anew."""
    from platform_verifiers.android import google_hardware_roots
    from platform_verifiers.android.certs import decode_certificate
    from platform_verifiers.android.chain import decode_chain
    from tests.android.conftest import load_chain

    chain = load_chain("android/warden_roboto_nokia_x10_keymaster4.pem")
    anchors = google_hardware_roots()
    assert any(chain[-1] == a.der for a in anchors)
    with_anchors = decode_chain(chain, None, anchors)
    assert with_anchors == tuple(decode_certificate(der, i) for i, der in enumerate(chain))
    assert decode_chain(chain, None, anchors)[-1] is with_anchors[-1]  # decoded once
    altered = bytearray(chain[-1])
    altered[-1] ^= 1  # a signature byte: still decodable, no longer the anchor
    decoded = decode_chain([*chain[:-1], bytes(altered)], None, anchors)
    assert decoded[-1].der == bytes(altered) and decoded[-1] is not with_anchors[-1]


def test_android_registration_without_play_integrity_has_no_online_step(settings: Settings) -> None:
    # the service runs an online step in a thread (~120 us a hop): none when nothing is checked
    app = AppConfig(
        client_id="client-1",
        android=AndroidAppConfig(package_names=("com.example",), signing_cert_sha256=("00" * 32,)),
    )
    gate = IntegrityGate(settings)
    verified = VerifiedInstance(platform="android", app=app, instance_jwk={})
    challenge = Challenge(text="c", raw=b"c", issued_at=T0)
    kwargs = {
        "attested_packages": ("com.example",),
        "challenge": challenge,
        "key_thumbprint": "t",
        "now": T0,
    }
    assert gate.deferred(verified, token=None, **kwargs) is verified
    # a token for an app without Play Integrity is refused, still after the key proof
    step = gate.deferred(verified, token="a.b.c", **kwargs).online
    assert step is not None
    with pytest.raises(ProblemError) as refused:
        step()
    assert refused.value.code == "integrity_not_configured"
