"""``attester verify play-integrity``: JSON output and exit codes 0 / 1 / 2, both decode modes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from attester.cli import main as attester_main
from attester.verify_cli.play_integrity import main

from .play_integrity_stand_in import GoogleStandIn, LocalKeys, make_service_account, verdict_payload
from .synth import DEFAULT_PACKAGE, DEFAULT_SIGNER

AT = "2026-06-01T12:00:30+00:00"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BINDING = "B" * 43


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Any]:
    keys = LocalKeys()
    (tmp_path / "dec").write_text(keys.decryption_b64)
    (tmp_path / "ver").write_text(keys.verification_b64)
    return {
        "keys": keys,
        "dec": str(tmp_path / "dec"),
        "ver": str(tmp_path / "ver"),
        "dir": tmp_path,
    }


def _token_file(files: dict[str, Any], token: str) -> str:
    path = files["dir"] / "token.txt"
    path.write_text(token)
    return str(path)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["play-integrity", *argv])
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip() else {})


def _payload(**kw: Any) -> dict[str, Any]:
    return verdict_payload(
        binding=BINDING,
        package=DEFAULT_PACKAGE,
        signer=DEFAULT_SIGNER,
        now=NOW,
        request_type="classic",
        **kw,
    )


def test_cli_pi_local_genuine_passes(
    capsys: pytest.CaptureFixture[str], files: dict[str, Any]
) -> None:
    token = _token_file(files, files["keys"].token(_payload()))
    code, out = _run(
        capsys,
        "--token",
        token,
        "--package-name",
        DEFAULT_PACKAGE,
        "--decryption-key",
        files["dec"],
        "--verification-key",
        files["ver"],
        "--nonce",
        BINDING,
        "--signing-cert-sha256",
        DEFAULT_SIGNER.hex(),
        "--at",
        AT,
    )
    assert code == 0 and out["verdict"] == "pass"
    assert out["binding"] == BINDING and out["request_type"] == "classic"
    assert out["device_recognition_verdict"] == ["MEETS_BASIC_INTEGRITY", "MEETS_DEVICE_INTEGRITY"]


def test_cli_pi_local_wrong_nonce_fails_code(
    capsys: pytest.CaptureFixture[str], files: dict[str, Any]
) -> None:
    token = _token_file(files, files["keys"].token(_payload()))
    code, out = _run(
        capsys,
        "--token",
        token,
        "--package-name",
        DEFAULT_PACKAGE,
        "--decryption-key",
        files["dec"],
        "--verification-key",
        files["ver"],
        "--nonce",
        "other",
        "--at",
        AT,
    )
    assert code == 1 and out == {**out, "verdict": "fail", "code": "integrity_binding_mismatch"}


def test_cli_pi_local_undecryptable_fails_code(
    capsys: pytest.CaptureFixture[str], files: dict[str, Any]
) -> None:
    token = _token_file(files, files["keys"].token(_payload(), aes=b"\x01" * 32))
    code, out = _run(
        capsys,
        "--token",
        token,
        "--package-name",
        DEFAULT_PACKAGE,
        "--decryption-key",
        files["dec"],
        "--verification-key",
        files["ver"],
        "--at",
        AT,
    )
    assert (code, out["code"]) == (1, "integrity_token_invalid")


def test_cli_pi_local_policy_fails_rule(
    capsys: pytest.CaptureFixture[str], files: dict[str, Any]
) -> None:
    token = _token_file(files, files["keys"].token(_payload(licensing="UNLICENSED")))
    code, out = _run(
        capsys,
        "--token",
        token,
        "--package-name",
        DEFAULT_PACKAGE,
        "--decryption-key",
        files["dec"],
        "--verification-key",
        files["ver"],
        "--at",
        AT,
    )
    assert (code, out["code"], out["detail"]["rule"]) == (1, "policy_violation", "pi_licensing")


@pytest.mark.parametrize(
    "argv",
    [
        [],  # neither mode
        ["--decryption-key", "X"],  # half of local
        [
            "--service-account",
            "S",
            "--decryption-key",
            "X",
            "--verification-key",
            "Y",
        ],  # both modes
        ["--decryption-key", "/nonexistent", "--verification-key", "/nonexistent"],
        ["--decryption-key", "D", "--verification-key", "V", "--request-type", "standard"],
    ],
    ids=["none", "half", "both", "missing-files", "local-standard"],
)
def test_cli_pi_bad_usage_exit_2(
    capsys: pytest.CaptureFixture[str], files: dict[str, Any], argv: list[str]
) -> None:
    token = _token_file(files, "x")
    argv = [files["dec"] if a == "D" else files["ver"] if a == "V" else a for a in argv]
    code, out = _run(capsys, "--token", token, "--package-name", DEFAULT_PACKAGE, *argv)
    assert code == 2 and out == {}


def test_cli_pi_google_decode_through_stand_in(
    capsys: pytest.CaptureFixture[str], files: dict[str, Any]
) -> None:
    info, key = make_service_account()
    google = GoogleStandIn(info, key.public_key())
    try:
        google.verdicts["tok"] = verdict_payload(
            binding=BINDING, package=DEFAULT_PACKAGE, signer=DEFAULT_SIGNER, now=NOW
        )
        sa = files["dir"] / "sa.json"
        sa.write_text(json.dumps(info))
        config = files["dir"] / "config.toml"
        config.write_text(
            f'[android]\nplay_integrity_url = "{google.base_url}"\n'
            f'play_integrity_token_uri = "{google.token_uri}"\n'
        )
        token = _token_file(files, "tok")
        code, out = _run(
            capsys,
            "--token",
            token,
            "--package-name",
            DEFAULT_PACKAGE,
            "--service-account",
            str(sa),
            "--config",
            str(config),
            "--request-hash",
            BINDING,
            "--at",
            AT,
        )
        assert code == 0 and out["request_type"] == "standard", out
        assert (google.token_requests, google.decode_requests) == (1, 1)
        code, out = _run(
            capsys,
            "--token",
            _token_file(files, "unknown"),
            "--package-name",
            DEFAULT_PACKAGE,
            "--service-account",
            str(sa),
            "--config",
            str(config),
            "--at",
            AT,
        )
        assert (code, out["code"]) == (1, "integrity_token_invalid")
    finally:
        google.close()


def test_cli_pi_registered_in_attester_verify(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        attester_main(["verify", "play-integrity", "--help"])
    assert info.value.code == 0
    assert "--service-account" in capsys.readouterr().out


@pytest.fixture(autouse=True)
def _no_env_leak(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("ATTESTER_CONFIG", raising=False)
    yield
