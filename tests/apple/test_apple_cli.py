"""``attester verify apple`` / ``apple-assertion``: JSON output and exit statuses 0/1/2."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from attester.verify_cli.apple import main

from .vectors import VECTORS_DIR, load_manifest_entries

KAYAK = "apple/webauthn4j_kayak_ios14_0_1_attestation.b64"
ASSERTION = "apple/veehaitch_ios_14_2_assertion.b64"


def _entry(path: str) -> dict[str, Any]:
    for kind in ("apple_appattest_attestation", "apple_appattest_assertion"):
        for entry in load_manifest_entries(kind):
            if entry["path"] == path:
                return entry
    pytest.skip(f"real App Attest vectors not found at {VECTORS_DIR}")


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any] | None]:
    status = main(argv)
    out = capsys.readouterr().out
    return status, (json.loads(out) if out.strip() else None)


def _attest_argv(entry: dict[str, Any], file: Path, **changes: str) -> list[str]:
    expected = entry["expected"]
    args = {
        "--attestation": str(file),
        "--key-id": expected["key_id_b64"],
        "--client-data-hash": expected["client_data_hash_hex"],
        "--app-id": expected["app_id"],
        "--environment": expected["environment"],
        "--at": expected["now"],
    }
    args.update(changes)
    return ["apple", *[item for pair in args.items() for item in pair]]


def test_cli_apple_real_sample_url_safe_with_whitespace_exits_0_with_facts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = _entry(KAYAK)
    raw = base64.b64decode((VECTORS_DIR / entry["path"]).read_text())
    text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    file = tmp_path / "att.b64"
    file.write_text(wrapped + "\n")
    key_id_url = base64.urlsafe_b64encode(base64.b64decode(entry["expected"]["key_id_b64"]))
    status, out = _run(capsys, _attest_argv(entry, file, **{"--key-id": key_id_url.decode()}))
    assert status == 0
    assert out is not None
    assert out["verdict"] == "pass"
    assert out["key_id"] == entry["expected"]["key_id_b64"]
    assert out["environment"] == "production"
    assert out["aaguid"] == "appattest"
    assert out["counter"] == 0
    assert out["receipt_length"] == entry["expected"]["receipt_bytes"]
    assert out["certificates"][1]["subject"] == entry["details"]["intermediate"]


def test_cli_apple_wrong_environment_exits_1_with_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = _entry(KAYAK)
    status, out = _run(
        capsys,
        _attest_argv(entry, VECTORS_DIR / entry["path"], **{"--environment": "development"}),
    )
    assert status == 1
    assert out is not None
    assert out == {**out, "verdict": "fail", "code": "environment_mismatch"}


def test_cli_apple_expired_at_exits_1_certificate_expired(
    capsys: pytest.CaptureFixture[str],
) -> None:
    entry = _entry(KAYAK)
    argv = _attest_argv(entry, VECTORS_DIR / entry["path"], **{"--at": "2030-01-01T00:00:00Z"})
    status, out = _run(capsys, argv)
    assert status == 1
    assert out is not None and out["code"] == "certificate_expired"


@pytest.mark.parametrize(
    "changes",
    [
        {"--client-data-hash": "not-hex"},
        {"--key-id": "***"},
        {"--at": "2020-09-28T00:00:01"},  # no time zone
        {"--at": "yesterday"},
        {"--attestation": "/nonexistent/file.b64"},
        {"--environment": "staging"},
    ],
)
def test_cli_apple_bad_usage_exits_2(
    changes: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    entry = _entry(KAYAK)
    status, out = _run(capsys, _attest_argv(entry, VECTORS_DIR / entry["path"], **changes))
    assert status == 2
    assert out is None


def test_cli_apple_missing_argument_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["apple", "--environment", "production"]) == 2


def _assertion_argv(entry: dict[str, Any], tmp_path: Path, **changes: str) -> list[str]:
    expected = entry["expected"]
    pem = tmp_path / "key.pem"
    pem.write_text(expected["public_key_pem"])
    args = {
        "--assertion": str(VECTORS_DIR / entry["path"]),
        "--public-key": str(pem),
        "--client-data-hash": expected["client_data_hash_hex"],
        "--app-id": expected["app_id"],
        "--previous-counter": str(expected["previous_counter"]),
    }
    args.update(changes)
    return ["apple-assertion", *[item for pair in args.items() for item in pair]]


def test_cli_apple_assertion_real_sample_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = _entry(ASSERTION)
    status, out = _run(capsys, _assertion_argv(entry, tmp_path))
    assert status == 0
    assert out is not None
    assert out["verdict"] == "pass" and out["counter"] == 1


def test_cli_apple_assertion_replay_exits_1_counter_not_increasing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = _entry(ASSERTION)
    status, out = _run(capsys, _assertion_argv(entry, tmp_path, **{"--previous-counter": "1"}))
    assert status == 1
    assert out is not None and out["code"] == "counter_not_increasing"


def test_cli_apple_assertion_unreadable_key_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = _entry(ASSERTION)
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    status, out = _run(capsys, _assertion_argv(entry, tmp_path, **{"--public-key": str(bad)}))
    assert status == 2
    assert out is None
