"""``attester verify android``: contract, exit codes, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attester.verify_cli.android import main

from .conftest import require_vectors

TEGU = "android/ka_tegu_sdk37_TEE_TRUSTED_CONF.pem"
TEGU_AT = "2026-07-01T21:56:06Z"
PIXEL = "android/pywebauthn_pixel8a_android_key.pem"
PIXEL_AT = "2025-01-16T18:54:10Z"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object]]:
    code = main(list(argv))
    return code, json.loads(capsys.readouterr().out)


def test_cli_real_chain_at_recorded_time_passes(capsys: pytest.CaptureFixture[str]) -> None:
    chain = str(require_vectors() / TEGU)
    code, out = _run(capsys, "--chain", chain, "--at", TEGU_AT)
    assert code == 0 and out["verdict"] == "pass"
    kd = out["key_description"]
    assert isinstance(kd, dict)
    assert kd["attestation_version"] == 500
    assert kd["package_names"] == ["com.google.android.attestation"]
    assert kd["verified_boot_state"] == "UNVERIFIED"
    assert kd["os_patch_level"] == 202608


def test_cli_device_locked_flag_unlocked_fails_rule(capsys: pytest.CaptureFixture[str]) -> None:
    chain = str(require_vectors() / TEGU)
    code, out = _run(capsys, "--chain", chain, "--at", TEGU_AT, "--require-device-locked")
    assert code == 1
    assert out == {
        "verdict": "fail",
        "code": "policy_violation",
        "message": "policy rule 'device_locked' not met",
        "rule": "device_locked",
        "seen": False,
        "required": True,
    }


def test_cli_all_flags_locked_pixel_passes(capsys: pytest.CaptureFixture[str]) -> None:
    chain = str(require_vectors() / PIXEL)
    first = _run(capsys, "--chain", chain, "--at", PIXEL_AT)[1]
    kd = first["key_description"]
    assert isinstance(kd, dict)
    # Shared UID: gsf and gms both hold the key, so both must be allowed.
    packages = [arg for name in kd["package_names"] for arg in ("--package", name)]  # type: ignore[attr-defined]
    base = [
        "--chain", chain, "--at", PIXEL_AT,
        "--challenge-hex", str(kd["challenge_hex"]),
        "--signer-digest", str(kd["signer_digests"][0]),  # type: ignore[index]
        "--min-security-level", "tee",
        "--require-verified-boot", "--require-device-locked",
    ]  # fmt: skip
    code, out = _run(capsys, *base, *packages)
    assert (code, out["verdict"]) == (0, "pass")
    code, out = _run(capsys, *base, *packages[:2])
    assert (code, out["rule"]) == (1, "package_name")


def test_cli_wrong_challenge_fails_code(capsys: pytest.CaptureFixture[str]) -> None:
    chain = str(require_vectors() / PIXEL)
    code, out = _run(capsys, "--chain", chain, "--at", PIXEL_AT, "--challenge-hex", "00")
    assert (code, out["code"]) == (1, "challenge_mismatch")


def test_cli_rkp_chain_later_fails_expired(capsys: pytest.CaptureFixture[str]) -> None:
    chain = str(require_vectors() / PIXEL)
    code, out = _run(capsys, "--chain", chain, "--at", "2025-02-03T10:35:27Z")
    assert (code, out["code"]) == (1, "certificate_expired")


def test_cli_software_root_needs_flag(capsys: pytest.CaptureFixture[str]) -> None:
    chain = str(require_vectors() / "android/warden_android_emulator_ec_software.pem")
    at = "2023-04-17T15:10:01Z"
    assert _run(capsys, "--chain", chain, "--at", at)[1]["code"] == "chain_untrusted"
    code, out = _run(capsys, "--chain", chain, "--at", at, "--allow-software-root")
    assert (code, out.get("rule")) == (1, "security_level")
    args = (
        "--chain",
        chain,
        "--at",
        at,
        "--allow-software-root",
        "--min-security-level",
        "software",
    )
    assert _run(capsys, *args)[0] == 0


def test_cli_revocation_list_revoked_serial_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    chain = str(require_vectors() / PIXEL)
    serial = _run(capsys, "--chain", chain, "--at", PIXEL_AT)[1]["chain_serials"][1]  # type: ignore[index]
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"entries": {serial: {"status": "SUSPENDED"}}}))
    code, out = _run(capsys, "--chain", chain, "--at", PIXEL_AT, "--revocation-list", str(status))
    assert (code, out["code"]) == (1, "certificate_revoked")


def test_cli_garbage_file_fails_certificate_malformed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    garbage = tmp_path / "chain.pem"
    garbage.write_bytes(b"hello")
    code, out = _run(capsys, "--chain", str(garbage))
    assert (code, out["code"]) == (1, "certificate_malformed")


def test_cli_missing_file_exits_usage(tmp_path: Path) -> None:
    assert main(["--chain", str(tmp_path / "absent.pem")]) == 2


def test_cli_bad_usage_exits_2_via_subprocess() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "attester.verify_cli.android", "--min-security-level", "high"],
        check=False,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 2 and run.stdout == ""


def test_cli_subprocess_pass_exit_0() -> None:
    chain = str(require_vectors() / TEGU)
    run = subprocess.run(
        [sys.executable, "-m", "attester.verify_cli.android", "--chain", chain, "--at", TEGU_AT],
        check=False,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0 and json.loads(run.stdout)["verdict"] == "pass"


@pytest.mark.parametrize(
    ("vector", "at", "expected"),
    [
        (TEGU, TEGU_AT, ("rkp", "rkp_only_anchor")),
        (PIXEL, PIXEL_AT, ("rkp", "droid_ca2_under_root")),
        ("android/ka_sony_xperia10iii_sdk33_TEE_EC.pem", "2026-06-04T00:00:00Z", ("factory", "serial_number_under_root")),
    ],
    ids=["ec-root", "droid-ca2", "factory"],
)
def test_cli_real_chain_reports_provisioning_and_rule(
    capsys: pytest.CaptureFixture[str], vector: str, at: str, expected: tuple[str, str]
) -> None:
    code, out = _run(capsys, "--chain", str(require_vectors() / vector), "--at", at)
    assert code == 0, out
    assert (out["provisioning"], out["provisioning_rule"]) == expected


def test_cli_software_chain_is_unknown_and_dated(capsys: pytest.CaptureFixture[str]) -> None:
    chain = str(require_vectors() / "android/warden_android_emulator_ec_software.pem")
    args = ("--chain", chain, "--allow-software-root", "--min-security-level", "software")
    code, out = _run(capsys, *args, "--at", "2023-04-17T15:10:01Z")
    assert code == 0, out
    assert (out["provisioning"], out["provisioning_rule"]) == ("unknown", "no_rule_matched")
    code, out = _run(capsys, *args, "--at", "2090-01-01T00:00:00Z")
    assert (code, out["code"]) == (1, "certificate_expired")
