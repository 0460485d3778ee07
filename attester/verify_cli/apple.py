"""``attester verify apple`` and ``attester verify apple-assertion``: check App Attest evidence.

Contract (issue 4; same as the Android command): print one JSON object with ``verdict``
(``pass``/``fail``), ``code`` on failure and the parsed facts on success; exit 0 on pass,
1 on fail, 2 on bad usage. Verification itself is ``platform_verifiers.apple``; this module
only reads files, decodes arguments and reads the wall clock when ``--at`` is not given.

Spec: https://developer.apple.com/documentation/devicecheck/validating-apps-that-connect-to-your-server
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from platform_verifiers.apple import (
    apple_app_attest_roots,
    verify_assertion,
    verify_attestation,
)
from platform_verifiers.errors import VerificationError

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A command-line input could not be read or decoded (exit status 2)."""


def _b64decode_any(text: str, *, what: str) -> bytes:
    """Decode base64 in the standard or URL-safe alphabet, ignoring whitespace and padding."""
    compact = "".join(text.split()).rstrip("=")
    compact = compact.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UsageError(f"{what} is not valid base64") from exc


def _read_b64_file(path: str, *, what: str) -> bytes:
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} file {path!r}") from exc
    return _b64decode_any(text, what=what)


def _hex(text: str, *, what: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not hex") from exc


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise UsageError("--at is not an ISO 8601 instant") from exc
    if value.tzinfo is None:
        raise UsageError("--at needs a time zone (e.g. 2024-01-01T00:00:00Z)")
    return value


def _emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, default=str))


def _fail(error: VerificationError) -> int:
    _emit({"verdict": "fail", "code": error.code, "message": error.message, "detail": error.detail})
    return EXIT_FAIL


def _usage(message: str) -> int:
    print(f"attester verify: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _certificate_facts(der: bytes) -> dict[str, str]:
    cert = x509.load_der_x509_certificate(der)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": hashlib.sha256(der).hexdigest(),
    }


def run_attestation(args: argparse.Namespace) -> int:
    """Verify one attestation object; see the module docstring for the output contract."""
    try:
        attestation_object = _read_b64_file(args.attestation, what="attestation")
        key_id = _b64decode_any(args.key_id, what="--key-id")
        client_data_hash = _hex(args.client_data_hash, what="--client-data-hash")
        now = _instant(args.at) if args.at else datetime.now(UTC)
    except UsageError as exc:
        return _usage(str(exc))
    try:
        result = verify_attestation(
            attestation_object=attestation_object,
            key_id=key_id,
            client_data_hash=client_data_hash,
            app_ids=[args.app_id],
            environment=args.environment,
            anchors=apple_app_attest_roots(),
            now=now,
        )
    except VerificationError as exc:
        return _fail(exc)
    auth_data = result.auth_data
    _emit(
        {
            "verdict": "pass",
            "key_id": base64.b64encode(result.key_id).decode(),
            "app_id": result.app_id,
            "environment": result.environment,
            "aaguid": (auth_data.aaguid or b"").rstrip(b"\x00").decode("ascii", "replace"),
            "aaguid_hex": (auth_data.aaguid or b"").hex(),
            "counter": result.counter,
            "public_key_pem": serialization.load_der_public_key(result.public_key_der)
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode(),
            "receipt_length": len(result.receipt),
            "auth_data_length": len(auth_data.raw),
            "auth_data_extensions_length": len(auth_data.extensions),
            "verified_at": now.isoformat(),
            "certificates": [_certificate_facts(der) for der in result.x5c],
        }
    )
    return EXIT_PASS


def _load_public_key_file(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read public key file {path!r}") from exc
    try:
        key = (
            serialization.load_pem_public_key(data)
            if b"-----BEGIN" in data
            else serialization.load_der_public_key(data)
        )
    except (ValueError, TypeError) as exc:
        raise UsageError("--public-key is not a PEM or DER public key") from exc
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def run_assertion(args: argparse.Namespace) -> int:
    """Verify one assertion; see the module docstring for the output contract."""
    try:
        assertion = _read_b64_file(args.assertion, what="assertion")
        public_key = _load_public_key_file(args.public_key)
        client_data_hash = _hex(args.client_data_hash, what="--client-data-hash")
    except UsageError as exc:
        return _usage(str(exc))
    if args.previous_counter < 0:
        return _usage("--previous-counter must not be negative")
    try:
        result = verify_assertion(
            assertion=assertion,
            public_key=public_key,
            client_data_hash=client_data_hash,
            app_ids=[args.app_id],
            previous_counter=args.previous_counter,
        )
    except ValueError as exc:  # a key that is not P-256: the caller's input, not evidence
        return _usage(str(exc))
    except VerificationError as exc:
        return _fail(exc)
    _emit(
        {
            "verdict": "pass",
            "app_id": result.app_id,
            "counter": result.counter,
            "previous_counter": args.previous_counter,
            "auth_data_length": len(result.auth_data.raw),
            "auth_data_extensions_length": len(result.auth_data.extensions),
        }
    )
    return EXIT_PASS


def register(subparsers: Any) -> None:
    """Add the ``apple`` and ``apple-assertion`` sub-commands to ``attester verify``.

    ``subparsers`` is what ``ArgumentParser.add_subparsers()`` returned; each sub-command
    sets ``func(args) -> int`` (the exit status).
    """
    attest = subparsers.add_parser(
        "apple",
        help="verify an App Attest attestation object",
        description="Verify an Apple App Attest attestation object against Apple's root.",
    )
    attest.add_argument(
        "--attestation",
        required=True,
        metavar="FILE",
        help="file holding base64 (standard or URL-safe) of the CBOR object",
    )
    attest.add_argument(
        "--key-id", required=True, metavar="KEYID", help="key identifier, base64 in either alphabet"
    )
    attest.add_argument(
        "--client-data-hash",
        required=True,
        metavar="HEX",
        help="clientDataHash the app passed to attestKey, in hex",
    )
    attest.add_argument("--app-id", required=True, metavar="TEAMID.bundle.id")
    attest.add_argument("--environment", required=True, choices=("development", "production"))
    attest.add_argument("--at", metavar="ISO8601", help="verify as of this instant (default: now)")
    attest.set_defaults(func=run_attestation)

    assertion = subparsers.add_parser(
        "apple-assertion",
        help="verify an App Attest assertion",
        description="Verify an Apple App Attest assertion with a stored public key.",
    )
    assertion.add_argument(
        "--assertion",
        required=True,
        metavar="FILE",
        help="file holding base64 (standard or URL-safe) of the CBOR assertion",
    )
    assertion.add_argument(
        "--public-key",
        required=True,
        metavar="PEMFILE",
        help="the attested App Attest public key (PEM or DER)",
    )
    assertion.add_argument(
        "--client-data-hash",
        required=True,
        metavar="HEX",
        help="SHA-256 of the client data, in hex",
    )
    assertion.add_argument("--app-id", required=True, metavar="TEAMID.bundle.id")
    assertion.add_argument("--previous-counter", required=True, type=int, metavar="N")
    assertion.set_defaults(func=run_assertion)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (tests): ``main(["apple", "--attestation", ...])``."""
    parser = argparse.ArgumentParser(prog="attester verify")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
