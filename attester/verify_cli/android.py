"""``attester verify android``: check a device's Key Attestation chain from a PEM file.

For publishers debugging a device. Contract (issue 3):

    attester verify android --chain FILE.pem [--challenge-hex HEX] [--at ISO8601]
        [--package NAME]... [--signer-digest HEX]... [--min-security-level software|tee|strongbox]
        [--require-verified-boot] [--require-device-locked] [--revocation-list FILE.json]
        [--allow-software-root]

Prints one JSON object. Exit 0 pass, 1 fail, 2 bad usage. A file that is missing or
unreadable is bad usage (2); a file that is read but holds garbage is a ``fail`` with
a code (1), because the evidence itself is what is wrong. Checks whose flag is absent
are not applied (challenge, package, signer, boot, lock); chain, roots, revocation
(when a list is given) and the minimum level (default tee) always are.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from platform_verifiers.android import (
    AndroidAttestation,
    AndroidPolicy,
    AuthorizationList,
    KeyDescription,
    SecurityLevel,
    aosp_software_roots,
    google_hardware_roots,
    parse_status_list,
    verify_android_attestation,
)
from platform_verifiers.android.pem import pem_certificates
from platform_verifiers.errors import PolicyViolation, VerificationError

_LEVELS = {
    "software": SecurityLevel.SOFTWARE,
    "tee": SecurityLevel.TRUSTED_ENVIRONMENT,
    "strongbox": SecurityLevel.STRONG_BOX,
}
EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _hex(value: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not hex: {value!r}") from exc


def _instant(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 instant: {value!r}") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def register(subparsers: Any) -> None:
    """Add the ``android`` sub-command to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "android",
        help="verify an Android Key Attestation certificate chain",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--chain", required=True, type=Path, help="PEM file, leaf first")
    parser.add_argument("--challenge-hex", type=_hex, help="expected attestationChallenge")
    parser.add_argument("--at", type=_instant, help="verification time (default: now)")
    parser.add_argument("--package", action="append", help="allowed package name (repeatable)")
    parser.add_argument(
        "--signer-digest", action="append", type=_hex, help="allowed signing cert SHA-256"
    )
    parser.add_argument("--min-security-level", choices=sorted(_LEVELS), default="tee")
    parser.add_argument("--require-verified-boot", action="store_true")
    parser.add_argument("--require-device-locked", action="store_true")
    parser.add_argument("--revocation-list", type=Path, help="status list JSON file")
    parser.add_argument(
        "--allow-software-root",
        action="store_true",
        help="also trust the AOSP software roots (testing only: their keys are public)",
    )
    parser.set_defaults(func=run)


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if hasattr(value, "name") and hasattr(value, "value"):  # enums
        return value.name
    if hasattr(value, "__dataclass_fields__"):
        return {k: _json_value(getattr(value, k)) for k in value.__dataclass_fields__}
    return value


def _authorizations(auth: AuthorizationList) -> dict[str, Any]:
    # Only what is present: absent tags are None/False and would drown the output.
    out = {}
    for name in auth.__dataclass_fields__:
        value = getattr(auth, name)
        if value is not None and value is not False and value != ():
            out[name] = _json_value(value)
    return out


def describe(kd: KeyDescription) -> dict[str, Any]:
    """The KeyDescription as JSON-friendly data (bytes as hex, enums by name)."""
    app = kd.authorization("attestation_application_id")
    rot = kd.hardware_enforced.root_of_trust
    return {
        "attestation_version": kd.attestation_version,
        "attestation_security_level": kd.attestation_security_level.name,
        "keymint_version": kd.keymint_version,
        "keymint_security_level": kd.keymint_security_level.name,
        "challenge_hex": kd.attestation_challenge.hex(),
        "package_names": list(app.package_names) if app else [],
        "signer_digests": [d.hex() for d in app.signature_digests] if app else [],
        "verified_boot_state": rot.verified_boot_state.name if rot else None,
        "device_locked": rot.device_locked if rot else None,
        "verified_boot_key": rot.verified_boot_key.hex() if rot else None,
        "os_version": kd.hardware_enforced.os_version,
        "os_patch_level": kd.hardware_enforced.os_patch_level,
        "vendor_patch_level": kd.hardware_enforced.vendor_patch_level,
        "boot_patch_level": kd.hardware_enforced.boot_patch_level,
        "unknown_tags": list(kd.unknown_tags),
        "software_enforced": _authorizations(kd.software_enforced),
        "hardware_enforced": _authorizations(kd.hardware_enforced),
    }


def _success(result: AndroidAttestation) -> dict[str, Any]:
    return {
        "verdict": "pass",
        "root_anchor": result.root_anchor,
        "provisioning": result.provisioning.value,
        # which rule of platform_verifiers.android.provisioning decided the class
        "provisioning_rule": result.provisioning_rule.value,
        "security_level": result.security_level.name,
        "chain_serials": list(result.chain_serials),
        "key_description": describe(result.key_description),
    }


def _failure(error: VerificationError) -> dict[str, Any]:
    out: dict[str, Any] = {"verdict": "fail", "code": error.code, "message": error.message}
    if isinstance(error, PolicyViolation):
        out.update(rule=error.rule, seen=error.seen, required=error.required)
    else:
        out["detail"] = {k: _json_value(v) for k, v in error.detail.items()}
    return out


def _emit(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2, default=str))


def run(args: argparse.Namespace) -> int:
    """Execute ``attester verify android``; returns the exit code."""
    now = args.at or datetime.now(UTC)
    try:
        chain_bytes = args.chain.read_bytes()
        status_bytes = args.revocation_list.read_bytes() if args.revocation_list else None
    except OSError as exc:
        print(
            f"attester verify android: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr
        )
        return EXIT_USAGE
    policy = AndroidPolicy(
        min_security_level=_LEVELS[args.min_security_level],
        package_names=frozenset(args.package) if args.package else None,
        signer_digests=frozenset(args.signer_digest) if args.signer_digest else None,
        require_verified_boot=args.require_verified_boot,
        require_device_locked=args.require_device_locked,
        # Debugging tool: key type, origin and purpose are shown, not enforced.
        require_generated_origin=False,
        require_sign_purpose=False,
        require_ec_p256=False,
    )
    anchors = google_hardware_roots()
    if args.allow_software_root:
        anchors = (*anchors, *aosp_software_roots())
    try:
        try:
            chain = pem_certificates(chain_bytes)
        except ValueError:
            chain = [chain_bytes] if chain_bytes[:1] == b"\x30" else []
            if not chain:
                raise VerificationError(
                    "certificate_malformed", "the chain file holds no certificate"
                ) from None
        revocation = parse_status_list(status_bytes, now) if status_bytes is not None else None
        result = verify_android_attestation(
            chain=chain,
            challenge=args.challenge_hex,
            policy=policy,
            anchors=anchors,
            revocation=revocation,
            now=now,
        )
    except VerificationError as error:
        _emit(_failure(error))
        return EXIT_FAIL
    _emit(_success(result))
    return EXIT_PASS


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry for tests: ``python -m attester.verify_cli.android ...``."""
    parser = argparse.ArgumentParser(prog="attester verify")
    subparsers = parser.add_subparsers(dest="platform", required=True)
    register(subparsers)
    args = parser.parse_args(["android", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
