"""Decoding integrity tokens: locally with the publisher's keys, and through Google's endpoint.

Local tokens are encrypted and signed in the test with keys generated there. Google's
OAuth token endpoint and decodeIntegrityToken are loopback stand-ins (Google is offline
here) that check the service-account JWT grant the way Google does.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from attester.errors import ProblemError
from attester.play_integrity import GoogleDecoder, LocalDecoder, load_service_account, read_secret
from attester.settings import ConfigError

from .play_integrity_stand_in import GoogleStandIn, LocalKeys, make_service_account, verdict_payload
from .synth import DEFAULT_PACKAGE, DEFAULT_SIGNER

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def keys() -> LocalKeys:
    return LocalKeys()


@pytest.fixture
def local(keys: LocalKeys) -> LocalDecoder:
    return LocalDecoder.from_base64(keys.decryption_b64.encode(), keys.verification_b64.encode())


def _payload() -> dict[str, object]:
    return verdict_payload(
        binding="b" * 43,
        package=DEFAULT_PACKAGE,
        signer=DEFAULT_SIGNER,
        now=NOW,
        request_type="classic",
    )


# -- local decode --------------------------------------------------------------------


def test_local_decoder_genuine_token_returns_payload(keys: LocalKeys, local: LocalDecoder) -> None:
    payload = _payload()
    assert local.decode(keys.token(payload), package_name=DEFAULT_PACKAGE) == payload


def test_local_decoder_repr_hides_keys(keys: LocalKeys, local: LocalDecoder) -> None:
    text = repr(local)
    assert keys.decryption_b64 not in text and "aes" not in text.lower()
    assert "decryption_key=" not in text


def test_local_decoder_other_aes_key_token_invalid(keys: LocalKeys, local: LocalDecoder) -> None:
    token = keys.token(_payload(), aes=b"\x00" * 32)
    with pytest.raises(ProblemError) as info:
        local.decode(token, package_name=DEFAULT_PACKAGE)
    assert info.value.code == "integrity_token_invalid"


def test_local_decoder_other_signing_key_token_invalid(
    keys: LocalKeys, local: LocalDecoder
) -> None:
    token = keys.token(_payload(), signing=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ProblemError) as info:
        local.decode(token, package_name=DEFAULT_PACKAGE)
    assert info.value.code == "integrity_token_invalid"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c.d.e", "x" * 20000])
def test_local_decoder_garbage_token_malformed(local: LocalDecoder, token: str) -> None:
    with pytest.raises(ProblemError) as info:
        local.decode(token, package_name=DEFAULT_PACKAGE)
    assert info.value.code == "integrity_token_malformed"


def test_local_decoder_other_algorithms_malformed(keys: LocalKeys, local: LocalDecoder) -> None:
    from jwcrypto import jwe, jwk

    enc_key = jwk.JWK(kty="oct", k=base64.urlsafe_b64encode(keys.aes[:16]).rstrip(b"=").decode())
    envelope = jwe.JWE(b"x", protected=json.dumps({"alg": "A128KW", "enc": "A128GCM"}))
    envelope.add_recipient(enc_key)
    with pytest.raises(ProblemError) as info:
        local.decode(envelope.serialize(compact=True), package_name=DEFAULT_PACKAGE)
    assert info.value.code == "integrity_token_malformed"


def test_local_decoder_wrong_key_material_config_error(keys: LocalKeys) -> None:
    with pytest.raises(ConfigError):
        LocalDecoder.from_base64(base64.b64encode(b"short"), keys.verification_b64.encode())
    with pytest.raises(ConfigError):
        LocalDecoder.from_base64(keys.decryption_b64.encode(), b"bm90IGEga2V5")


def test_read_secret_env_and_file_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"file-secret")
    assert read_secret(file=path, env=None, what="x") == b"file-secret"
    monkeypatch.setenv("PI_TEST_KEY", "env-secret")
    assert read_secret(file=None, env="PI_TEST_KEY", what="x") == b"env-secret"
    with pytest.raises(ConfigError) as info:
        read_secret(file=None, env="PI_TEST_UNSET", what="x")
    assert "env-secret" not in str(info.value)


# -- Google-server decode ------------------------------------------------------------


@pytest.fixture
def google() -> Iterator[GoogleStandIn]:
    info, key = make_service_account()
    stand_in = GoogleStandIn(info, key.public_key())
    yield stand_in
    stand_in.close()


def _decoder(google: GoogleStandIn, **info_changes: object) -> GoogleDecoder:
    info = {**google.service_account, **info_changes}
    return GoogleDecoder(info, api_url=google.base_url, token_uri=google.token_uri, timeout=5)


def test_google_decoder_genuine_token_one_grant_then_cached(google: GoogleStandIn) -> None:
    google.verdicts["tok-1"] = _payload()
    google.verdicts["tok-2"] = _payload()
    decoder = _decoder(google)
    assert decoder.decode("tok-1", package_name=DEFAULT_PACKAGE) == google.verdicts["tok-1"]
    assert decoder.decode("tok-2", package_name=DEFAULT_PACKAGE) == google.verdicts["tok-2"]
    # the access token is refreshed once and reused: one grant, two decodes
    assert (google.token_requests, google.decode_requests) == (1, 2)
    assert google.grant_errors == []
    assert google.decoded_packages == [DEFAULT_PACKAGE, DEFAULT_PACKAGE]


def test_google_decoder_uses_token_uri_setting_not_key_file(google: GoogleStandIn) -> None:
    decoder = _decoder(google, token_uri="https://oauth2.googleapis.com/token")
    google.verdicts["tok"] = _payload()
    decoder.decode("tok", package_name=DEFAULT_PACKAGE)
    assert google.token_requests == 1


def test_google_decoder_grant_signed_by_other_key_unavailable(google: GoogleStandIn) -> None:
    other, _ = make_service_account()
    decoder = _decoder(google, private_key=other["private_key"])
    with pytest.raises(ProblemError) as info:
        decoder.decode("tok", package_name=DEFAULT_PACKAGE)
    assert info.value.code == "integrity_decode_unavailable"
    assert google.grant_errors == ["signature"]
    assert google.decode_requests == 0


def test_google_stand_in_wrong_audience_and_scope_refused(google: GoogleStandIn) -> None:
    # the stand-in must refuse what Google refuses, or the tests above prove nothing
    import httpx
    from google.oauth2 import service_account

    from attester.play_integrity import HttpxTransport

    wrong_aud = service_account.Credentials.from_service_account_info(
        {**google.service_account, "token_uri": google.token_uri},
        scopes=["https://www.googleapis.com/auth/playintegrity"],
    )  # google-auth's default aud is Google's own URL, not this endpoint
    wrong_scope = service_account.Credentials.from_service_account_info(
        {**google.service_account, "token_uri": google.token_uri},
        scopes=["https://www.googleapis.com/auth/cloud-platform"],
        additional_claims={"aud": google.token_uri},
    )
    from google.auth.exceptions import RefreshError

    with httpx.Client() as client:
        for credentials in (wrong_aud, wrong_scope):
            with pytest.raises(RefreshError):
                credentials.refresh(HttpxTransport(client))
    assert google.grant_errors == ["aud", "scope"]


def test_google_decoder_unknown_token_invalid(google: GoogleStandIn) -> None:
    with pytest.raises(ProblemError) as info:
        _decoder(google).decode("not-issued", package_name=DEFAULT_PACKAGE)
    assert info.value.code == "integrity_token_invalid"


def test_google_decoder_server_error_unavailable(google: GoogleStandIn) -> None:
    google.decode_status = 503
    with pytest.raises(ProblemError) as info:
        _decoder(google).decode("tok", package_name=DEFAULT_PACKAGE)
    assert info.value.code == "integrity_decode_unavailable"


def test_google_decoder_unreachable_unavailable(google: GoogleStandIn) -> None:
    decoder = GoogleDecoder(
        google.service_account,
        api_url="http://127.0.0.1:9",
        token_uri="http://127.0.0.1:9/token",
        timeout=2,
    )
    with pytest.raises(ProblemError) as info:
        decoder.decode("tok", package_name=DEFAULT_PACKAGE)
    assert info.value.code == "integrity_decode_unavailable"


def test_google_decoder_repr_hides_key(google: GoogleStandIn) -> None:
    assert "PRIVATE" not in repr(_decoder(google))


def test_load_service_account_not_a_key_config_error() -> None:
    with pytest.raises(ConfigError):
        load_service_account(b"{}")
    with pytest.raises(ConfigError):
        load_service_account(b"not json")


def test_google_decoder_hanging_token_endpoint_times_out_unavailable(google: GoogleStandIn) -> None:
    import time

    google.delay = 3.0
    decoder = GoogleDecoder(
        google.service_account, api_url=google.base_url, token_uri=google.token_uri, timeout=0.5
    )
    started = time.monotonic()
    with pytest.raises(ProblemError) as info:
        decoder.decode("tok", package_name=DEFAULT_PACKAGE)
    assert info.value.code == "integrity_decode_unavailable"
    # google-auth retries a failed grant a few times; each attempt is bounded by the timeout
    assert time.monotonic() - started < 15
