"""``attester verify play-integrity``: decode and check one Play Integrity token.

Same contract as the other verify commands: one JSON object with ``verdict``
(``pass``/``fail``), ``code`` on failure and the verdict's facts on success; exit 0 on pass,
1 on fail, 2 on bad usage. Decoding is local (``--decryption-key`` and
``--verification-key``, files holding the base64 keys from the Play Console: keys are not
taken on the command line, where ``ps`` would show them) or by Google
(``--service-account FILE``; URLs from the configuration's ``android.play_integrity_url``
and ``android.play_integrity_token_uri``). Checks: ``platform_verifiers.android.play_integrity``
with the strict default policy; ``--request-hash`` / ``--nonce`` and
``--signing-cert-sha256`` are checked only when given.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from attester.errors import ProblemError
from attester.play_integrity import (
    GoogleDecoder,
    IntegrityDecoder,
    LocalDecoder,
    load_service_account,
    read_secret,
)
from attester.settings import ConfigError, load_settings
from platform_verifiers.android.play_integrity import (
    PlayIntegrityPolicy,
    RequestType,
    verify_integrity_payload,
)
from platform_verifiers.errors import VerificationError

EXIT_PASS, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _usage(message: str) -> int:
    print(f"attester verify: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _emit(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, default=str))


def _decoder(args: argparse.Namespace) -> IntegrityDecoder:
    if args.service_account:
        settings = load_settings(Path(args.config) if args.config else None)
        info = load_service_account(
            read_secret(file=Path(args.service_account), env=None, what="--service-account")
        )
        return GoogleDecoder(
            info,
            api_url=settings.android.play_integrity_url,
            token_uri=settings.android.play_integrity_token_uri,
            timeout=settings.android.play_integrity_timeout,
        )
    return LocalDecoder.from_base64(
        read_secret(file=Path(args.decryption_key), env=None, what="--decryption-key"),
        read_secret(file=Path(args.verification_key), env=None, what="--verification-key"),
    )


def run(args: argparse.Namespace) -> int:
    """Decode and verify; see the module docstring for the output contract."""
    local = args.decryption_key or args.verification_key
    if bool(args.service_account) == bool(local):
        return _usage("give --service-account, or --decryption-key and --verification-key")
    if local and not (args.decryption_key and args.verification_key):
        return _usage("local decoding needs both --decryption-key and --verification-key")
    request_type: RequestType = args.request_type or (
        "standard" if args.service_account else "classic"
    )
    if local and request_type != "classic":
        return _usage("local decoding is only possible for classic requests")
    try:
        token = Path(args.token).read_text(encoding="ascii").strip()
        now = datetime.fromisoformat(args.at) if args.at else datetime.now(UTC)
        if now.tzinfo is None:
            return _usage("--at needs a time zone")
        digests = (
            frozenset(bytes.fromhex(d.replace(":", "")) for d in args.signing_cert_sha256)
            if args.signing_cert_sha256
            else None
        )
        decoder = _decoder(args)
    except (OSError, UnicodeDecodeError) as exc:
        return _usage(f"cannot read --token: {type(exc).__name__}")
    except ValueError as exc:
        return _usage(str(exc))
    except ConfigError as exc:
        return _usage(str(exc))
    try:
        payload = decoder.decode(token, package_name=args.package_name)
        verdict = verify_integrity_payload(
            payload,
            request_type=request_type,
            expected_binding=args.request_hash or args.nonce,
            package_names=frozenset({args.package_name}),
            signer_digests=digests,
            policy=PlayIntegrityPolicy(max_token_age=timedelta(seconds=args.max_age)),
            now=now,
        )
    except ProblemError as exc:
        _emit({"verdict": "fail", "code": exc.code, "message": exc.title})
        return EXIT_FAIL
    except VerificationError as exc:
        _emit({"verdict": "fail", "code": exc.code, "message": exc.message, "detail": exc.detail})
        return EXIT_FAIL
    _emit(
        {
            "verdict": "pass",
            "request_type": verdict.request_type,
            "package_name": verdict.package_name,
            "binding": verdict.binding,
            "timestamp": verdict.timestamp.isoformat(),
            "app_recognition_verdict": verdict.app_recognition_verdict,
            "device_recognition_verdict": list(verdict.device_recognition_verdict),
            "app_licensing_verdict": verdict.app_licensing_verdict,
            "device_activity_level": verdict.device_activity_level,
            "verified_at": now.isoformat(),
        }
    )
    return EXIT_PASS


def register(subparsers: Any) -> None:
    """Add ``play-integrity`` to ``attester verify``."""
    p = subparsers.add_parser(
        "play-integrity",
        help="decode and verify a Play Integrity token",
        description="Decode (locally or by Google) and verify a Play Integrity token.",
    )
    p.add_argument(
        "--token", required=True, metavar="FILE", help="file holding the integrity token"
    )
    p.add_argument("--package-name", required=True)
    p.add_argument(
        "--decryption-key", metavar="FILE", help="base64 AES-256 decryption key (classic)"
    )
    p.add_argument(
        "--verification-key", metavar="FILE", help="base64 DER EC verification key (classic)"
    )
    p.add_argument(
        "--service-account", metavar="FILE", help="service-account JSON key (Google decode)"
    )
    p.add_argument("--config", help="TOML configuration for the Google URLs (default: packaged)")
    p.add_argument("--request-type", choices=("standard", "classic"))
    binding = p.add_mutually_exclusive_group()
    binding.add_argument("--request-hash", help="expected requestHash (standard requests)")
    binding.add_argument("--nonce", help="expected nonce (classic requests)")
    p.add_argument("--signing-cert-sha256", action="append", metavar="HEX")
    p.add_argument("--max-age", type=int, default=300, metavar="SECONDS")
    p.add_argument("--at", metavar="ISO8601", help="verify as of this instant (default: now)")
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point (tests): ``main(["play-integrity", "--token", ...])``."""
    parser = argparse.ArgumentParser(prog="attester verify")
    register(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
