"""``attester`` command line: serve, keys, verify.

Exit status: 0 success, 1 a refused operation or a failed verification, 2 bad usage or
invalid configuration.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from attester.settings import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides: dict[str, Any] = dict(extra)
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    return load_settings(Path(args.config) if args.config else None, **overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from attester import logs
    from attester.app import create_app

    settings = _settings(args)
    logs.configure(settings.log_level)
    if args.workers > 1:
        # workers are separate processes: hand them the same configuration by environment
        os.environ["ATTESTER_DATA_DIR"] = str(settings.data_dir.resolve())
        if args.config:
            os.environ["ATTESTER_CONFIG"] = str(Path(args.config).resolve())
        from attester.service import build_service

        build_service(settings).store.dispose()  # migrate and create keys once, up front
        uvicorn.run(
            "attester.app:app_from_environment",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_config=None,
            access_log=False,
        )
    else:
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,
        )
    return 0


def _key_store(args: argparse.Namespace) -> tuple[Settings, Any]:
    from attester.signing_keys import build_key_store

    settings = _settings(args)
    return settings, build_key_store(settings)


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from keys.store import KeyStoreError

    settings, store = _key_store(args)
    now = datetime.now(UTC)
    delay = settings.prepublish_delay
    if args.delay is not None:
        if args.delay < settings.min_prepublish_delay:
            print(
                "error: --delay must be at least jwks_max_age + clock_skew "
                f"({settings.min_prepublish_delay} s)",
                file=sys.stderr,
            )
            return 2
        delay = timedelta(seconds=args.delay)
    try:
        store.ensure_initialised(now)
        record = store.rotate(now, delay=delay)
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "kid": record.kid,
                "state": "next",
                "backend": record.backend,
                "activates_at": record.activates_at.isoformat(),
            }
        )
    )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from keys.certs import chain_expiry
    from keys.store import KeyState, KeyStoreError

    settings, store = _key_store(args)
    now = datetime.now(UTC)
    try:
        store.reload(force=True)
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    warn_within = timedelta(days=settings.certificate_expiry_warning_days)
    rows = []
    for s in store.statuses(now):
        chain = store.chain(s.record.kid)
        expires = chain_expiry(chain) if chain else None
        rows.append(
            {
                "kid": s.record.kid,
                "state": s.state.value,
                "alg": s.record.alg,
                "backend": s.record.backend,
                "created_at": s.record.created_at.isoformat(),
                "activates_at": s.record.activates_at.isoformat(),
                "published_until": s.published_until.isoformat() if s.published_until else None,
                "certificate_expires_at": expires.isoformat() if expires else None,
            }
        )
        # only keys that sign now or will: a retired key's certificate no longer matters
        if expires is not None and s.state in (KeyState.NEXT, KeyState.ACTIVE):
            if expires <= now:
                print(f"warning: the certificate of key {s.record.kid} has expired", file=sys.stderr)
            elif expires - now <= warn_within:
                days = (expires - now).days
                print(
                    f"warning: the certificate of key {s.record.kid} expires in {days} days "
                    f"({expires.isoformat()}); import a renewed one (attester keys import-cert)",
                    file=sys.stderr,
                )
    print(json.dumps({"keys": rows}, indent=2))
    return 0


def cmd_keys_csr(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from keys.certs import build_csr
    from keys.store import KeyStoreError

    settings, store = _key_store(args)
    try:
        subject = x509.Name.from_rfc4514_string(args.subject or _default_subject(settings))
    except ValueError as exc:
        print(f"error: --subject is not an RFC 4514 name: {exc}", file=sys.stderr)
        return 2
    try:
        store.reload(force=True)
        csr = build_csr(store.signer(args.kid), subject)
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    pem = csr.public_bytes(serialization.Encoding.PEM)
    if args.out:
        Path(args.out).write_bytes(pem)
    else:
        sys.stdout.write(pem.decode("ascii"))
    return 0


def _default_subject(settings: Settings) -> str:
    from urllib.parse import urlsplit

    host = urlsplit(settings.issuer).hostname or "client-attester"
    return f"CN={host}"


def cmd_keys_import_cert(args: argparse.Namespace) -> int:
    from keys.certs import CertificateError, chain_expiry
    from keys.store import KeyStoreError

    _, store = _key_store(args)
    try:
        pem = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        certs = store.import_certificate(args.kid, pem, datetime.now(UTC))
    except CertificateError as exc:
        print(json.dumps({"error": exc.code, "message": str(exc)}))
        return 1
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "kid": args.kid,
                "certificates": len(certs),
                "certificate_expires_at": chain_expiry(certs).isoformat(),
            }
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attester", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="TOML configuration file (default: the packaged example)")
        p.add_argument("--data-dir", help="directory for the SQLite file, keys and secrets")

    serve = sub.add_parser("serve", help="run the HTTP service")
    common(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="manage the signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    rotate = keys_sub.add_parser("rotate", help="create the next signing key")
    common(rotate)
    rotate.add_argument("--delay", type=int, help="seconds before it signs (>= jwks_max_age + clock_skew)")
    rotate.set_defaults(func=cmd_keys_rotate)
    listing = keys_sub.add_parser("list", help="show the keys and their states")
    common(listing)
    listing.set_defaults(func=cmd_keys_list)
    csr = keys_sub.add_parser("csr", help="write a PKCS#10 request signed by a key")
    common(csr)
    csr.add_argument("--kid", required=True, help="the key; write --kid=K (a kid may start with -)")
    csr.add_argument("--subject", help="RFC 4514 subject (default CN=<issuer host>)")
    csr.add_argument("--out", help="output file (default: standard output)")
    csr.set_defaults(func=cmd_keys_csr)
    imp = keys_sub.add_parser("import-cert", help="store a key's certificate chain (for x5c)")
    common(imp)
    imp.add_argument("--kid", required=True, help="the key; write --kid=K (a kid may start with -)")
    imp.add_argument("file", help="PEM chain, leaf first, without the trust anchor")
    imp.set_defaults(func=cmd_keys_import_cert)

    verify = sub.add_parser("verify", help="verify platform evidence offline (debugging)")
    verify_sub = verify.add_subparsers(dest="platform", required=True)
    for name in ("attester.verify_cli.android", "attester.verify_cli.apple"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(verify_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from keys.pkcs11 import Pkcs11Error

    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except Pkcs11Error as exc:  # the token configuration is wrong: module, token, slot, PIN
        print(f"error: {exc.code}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
