"""Configuration: TOML plus environment; invalid values stop start-up naming the field."""

from __future__ import annotations

import json

from pathlib import Path

import pytest

from attester.settings import ConfigError, load_settings

APP = """
[[apps]]
client_id = "c1"
[apps.android]
package_names = ["com.example"]
signing_cert_sha256 = ["AA:{digest}"]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_settings_example_registry_loads_with_secure_defaults() -> None:
    settings = load_settings()
    (app,) = settings.apps
    assert app.android is not None and app.android.min_security_level == "tee"
    assert app.android.require_verified_boot and app.android.require_device_locked
    assert settings.android.allow_software_root is False and settings.android.allow_stale_revocation is False
    assert settings.attestation_lifetime == 3600 and settings.include_iss


def test_settings_toml_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, 'issuer = "https://a.example"\njwks_max_age = 120\n' + APP.format(digest="bb" * 31))
    monkeypatch.setenv("ATTESTER_JWKS_MAX_AGE", "60")
    monkeypatch.setenv("ATTESTER_ANDROID__REVOCATION_URL", "http://127.0.0.1:9/status")
    settings = load_settings(path)
    assert settings.issuer == "https://a.example" and settings.jwks_max_age == 60
    assert settings.android.revocation_url == "http://127.0.0.1:9/status"
    assert settings.apps[0].android.signing_cert_sha256 == ("aa" + "bb" * 31,)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("attestation_lifetime = 90000", "attestation_lifetime"),
        ('issuer = "ftp://x"', "issuer"),
        ("jwks_max_age = 600\nkey_prepublish_delay = 60", "key_prepublish_delay"),
        ("unknown_knob = 1", "unknown_knob"),
        (APP.format(digest="zz"), "apps.0.android.signing_cert_sha256"),
        ('[[apps]]\nclient_id = "a"\nclaims = { sub = "x" }', "apps.0.claims"),
        ('[[apps]]\nclient_id = "a"\n[[apps]]\nclient_id = "a"', "client_id"),
        ('[[apps]]\nclient_id = "a"\n[apps.apple]\nteam_id = "bad"\nbundle_id = "b"', "apps.0.apple.team_id"),
    ],
)
def test_settings_invalid_names_field(tmp_path: Path, text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, text))
    assert field in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://android.googleapis.com/attestation/status",  # anyone on the path could answer
        "status",  # no scheme: it failed at the first fetch, as "unavailable"
        "https://[::1/status",  # raised InvalidURL (a 500) at every registration
        "https://a.example:port/x",
        "https://a.example/\x00",
        "ftp://a.example/x",
        "https:///x",
    ],
)
@pytest.mark.parametrize(
    "field",
    ["android.revocation_url", "android.play_integrity_url", "android.play_integrity_token_uri",
     "apple.receipt_url", "apple.receipt_url_development"],
)
def test_settings_outbound_urls_are_https_or_loopback(
    tmp_path: Path, field: str, url: str
) -> None:
    section, name = field.split(".")
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, f"[{section}]\n{name} = {json.dumps(url)}"))
    assert field in str(info.value)
    for fine in ("https://a.example/x", "http://127.0.0.1:9/x", "http://[::1]:9/x",
                 "http://localhost:9/x"):
        settings = load_settings(_write(tmp_path, f"[{section}]\n{name} = {json.dumps(fine)}"))
        assert getattr(getattr(settings, section), name) == fine


def test_settings_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_settings_toml_syntax_error_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_settings(_write(tmp_path, "issuer = "))
