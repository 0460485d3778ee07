"""Settings of the admin API, the Token Status List and the purge: secure defaults, refusals."""

from __future__ import annotations

from typing import Any

import pytest

from attester.settings import ConfigError


def test_settings_admin_off_and_status_list_on_by_default(make_settings: Any) -> None:
    settings = make_settings(apps=[{"client_id": "a"}])
    assert settings.admin.enabled is False and settings.admin.tokens == ()
    assert settings.apps[0].status_list is True
    assert settings.status_list.size >= 10_000 and settings.status_list.count == 1
    assert settings.purge_interval == 3600


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"admin": {"enabled": True}}, "admin"),
        ({"admin": {"tokens": [{"name": "a", "sha256": "A" * 64}]}}, "admin.tokens"),
        ({"admin": {"tokens": [{"name": "a b", "sha256": "0" * 64}]}}, "admin.tokens"),
        (
            {"admin": {"tokens": [{"name": "a", "sha256": "0" * 64}, {"name": "a", "sha256": "1" * 64}]}},
            "admin",
        ),
        ({"status_list": {"size": 9999}}, "status_list.size"),
        ({"status_list": {"ttl": 0}}, "status_list.ttl"),
        ({"status_list": {"count": 0}}, "status_list.count"),
    ],
)
def test_settings_admin_status_invalid_refused(make_settings: Any, overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_settings(**overrides)
    assert f"invalid configuration: {field}" in str(info.value)


def test_settings_status_claim_not_configurable_as_static(make_settings: Any) -> None:
    with pytest.raises(ConfigError):
        make_settings(apps=[{"client_id": "a", "claims": {"status": "x"}}])
