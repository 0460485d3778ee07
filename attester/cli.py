"""``attester`` command line: serve, keys, instances, apps, purge, admin, verify.

Exit status: 0 success, 1 a refused operation or a failed verification, 2 bad usage or
invalid configuration.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from attester.http_protocol import GuardedHttpToolsProtocol
from attester.settings import ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides: dict[str, Any] = dict(extra)
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    return load_settings(Path(args.config) if args.config else None, **overrides)


# httptools (llhttp, Node's parser, in C) and uvloop (libuv): with them uvicorn answers a
# cached JWKS about twice as fast as with h11 and asyncio's loop (bench/bench_all.py).
# uvicorn's httptools protocol bounds neither a request head's size nor its time: ours
# does (attester/http_protocol.py).
SERVER_OPTIONS: dict[str, Any] = {"http": GuardedHttpToolsProtocol, "loop": "uvloop"}


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from attester import logs
    from attester.app import create_app, freeze_startup_heap
    from attester.metrics import MULTIPROC_ENV
    from attester.service import build_service

    settings = _settings(args)
    logs.configure(settings.log_level)
    # one worker: the admin API shares the service (and its status-list cache) in-process
    service = build_service(settings) if args.workers == 1 else None
    if settings.admin.enabled and settings.admin.port is not None:
        _serve_admin_in_background(service or build_service(settings))
    if args.workers > 1:
        # workers are separate processes: hand them the same configuration by environment
        os.environ["ATTESTER_DATA_DIR"] = str(settings.data_dir.resolve())
        # our own temporary metrics directory is removed at exit, an operator's is kept
        created = settings.metrics.enabled and not os.environ.get(MULTIPROC_ENV)
        if settings.metrics.enabled:
            os.environ[MULTIPROC_ENV] = str(_fresh_metrics_dir())
        if args.config:
            os.environ["ATTESTER_CONFIG"] = str(Path(args.config).resolve())
        build_service(settings).store.dispose()  # migrate and create keys once, up front
        try:
            from attester import workers

            workers.run(  # uvicorn's supervisor, the workers taking connections in turn
                "attester.app:app_from_environment",
                host=args.host,
                port=args.port,
                workers=args.workers,
                take_turns=not args.shared_socket,
                log_config=None,
                access_log=False,
                # the client address is the peer; X-Forwarded-For only via trusted_proxies
                proxy_headers=False,
                **SERVER_OPTIONS,
            )
        finally:
            if created:
                import shutil

                shutil.rmtree(os.environ[MULTIPROC_ENV], ignore_errors=True)
    else:
        app = create_app(settings, service=service)
        freeze_startup_heap()
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,
            # the client address is the peer; X-Forwarded-For only via trusted_proxies
            proxy_headers=False,
            **SERVER_OPTIONS,
        )
    return 0


def _serve_admin_in_background(service: Any) -> None:
    """The admin API on its own address, in a thread of this process (see RUNBOOK.md)."""
    import threading

    import uvicorn

    from attester.app import create_admin_app

    settings = service.settings
    app = create_admin_app(service)
    config = uvicorn.Config(
        app, host=settings.admin.host, port=settings.admin.port or 0, log_config=None,
        access_log=False, http=GuardedHttpToolsProtocol,
    )
    threading.Thread(target=uvicorn.Server(config).run, name="admin-api", daemon=True).start()


def _admin(args: argparse.Namespace) -> Any:
    from attester.admin import Admin
    from attester.service import build_service

    return Admin.of(build_service(_settings(args)))


def _cli_actor() -> str:
    import getpass

    try:
        return "cli:" + getpass.getuser()
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _print_problem(exc: Any) -> int:
    print(json.dumps(exc.body()), file=sys.stderr)
    return 1


def cmd_instances(args: argparse.Namespace) -> int:
    from attester.errors import ProblemError

    admin = _admin(args)
    try:
        if args.instances_command == "list":
            result: Any = admin.list_instances(
                client_id=args.client_id,
                platform=args.platform,
                key_thumbprint=args.key_thumbprint,
                status=args.status,
                after=args.after,
                limit=args.limit,
            )
            result = {"instances": result}
        elif args.instances_command == "show":
            result = admin.show_instance(args.id)
        else:
            result = admin.change_status(
                args.id, args.instances_command, actor=_cli_actor(), reason=args.reason
            )
    except ProblemError as exc:
        return _print_problem(exc)
    finally:
        admin.service.store.dispose()
    print(json.dumps(result, indent=2))
    return 0


def cmd_apps_list(args: argparse.Namespace) -> int:

    admin = _admin(args)
    try:
        print(json.dumps({"apps": admin.apps()}, indent=2))
    finally:
        admin.service.store.dispose()
    return 0


def cmd_apps_check(args: argparse.Namespace) -> int:
    """Validate a registry/configuration file offline; ConfigError exits 2 with the field."""
    from attester.app import validate_platform_rules

    settings = load_settings(Path(args.file))
    validate_platform_rules(settings)  # the same rules as start-up and apps/reload
    print(json.dumps({"valid": True, "apps": [a.client_id for a in settings.apps]}))
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from attester.service import build_service

    service = build_service(_settings(args))
    try:
        print(json.dumps({"deleted": service.purge(actor=_cli_actor())}))
    finally:
        service.store.dispose()
    return 0


def cmd_admin_token(args: argparse.Namespace) -> int:
    from attester.admin import new_token

    token, digest = new_token()
    print(json.dumps({"name": args.name, "token": token, "sha256": digest}))
    return 0

def _fresh_metrics_dir() -> Path:
    """An empty directory for prometheus-client's multiprocess files (one set per run).

    Workers write their counters there and a scrape on any worker sums them. It must be
    private to this host and this run: left-over files would be counted again, and a
    directory shared with another replica would mix both. So by default it is a new
    temporary directory; an operator's own ``PROMETHEUS_MULTIPROC_DIR`` is emptied first.
    """
    from attester.metrics import MULTIPROC_ENV

    configured = os.environ.get(MULTIPROC_ENV)
    if not configured:
        return Path(tempfile.mkdtemp(prefix="attester-metrics-"))
    directory = Path(configured)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for leftover in directory.glob("*.db"):
        leftover.unlink()
    return directory


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
    result = {
        "kid": record.kid,
        "state": "next",
        "backend": record.backend,
        "activates_at": record.activates_at.isoformat(),
    }
    _audit_cli(settings, "keys.rotate", target=record.kid, after=result)
    print(json.dumps(result))
    return 0


def _audit_cli(settings: Settings, action: str, *, target: str, after: Any) -> None:
    """The audit record of a CLI action that does not go through :class:`Admin`."""
    from attester.storage import create_store
    from attester.storage.admin import AdminStore

    store = create_store(settings.resolved_database_url)
    try:
        AdminStore(store.engine).audit(
            actor=_cli_actor(), action=action, target=target, now=datetime.now(UTC), after=after
        )
    finally:
        store.dispose()


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
    from attester.admin import key_statuses_json

    warn_within = timedelta(days=settings.certificate_expiry_warning_days)
    # the longest JWT lifetime of any app: an active key's chain must cover it to be sent
    lifetime = timedelta(
        seconds=max(
            [settings.attestation_lifetime]
            + [a.attestation_lifetime for a in settings.apps if a.attestation_lifetime]
        )
    )
    rows = key_statuses_json(store, now)
    for s in store.statuses(now):
        # only keys that sign now or will: a retired key's certificate no longer matters
        chain = store.chain(s.record.kid)
        if (
            chain
            and s.state is KeyState.ACTIVE
            and store.x5c_valid(s.record.kid, now, now + lifetime) is None
        ):
            print(
                f"warning: the certificate chain of key {s.record.kid} does not cover a JWT "
                "issued now: JWTs are sent without x5c (README, Certificates for signing keys)",
                file=sys.stderr,
            )
        expires = chain_expiry(chain) if chain else None
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
    serve.add_argument(
        "--shared-socket",
        action="store_true",
        help="with --workers: each worker accepts whatever it can (uvicorn's way) instead of "
        "the one holding fewest connections taking the next (see RUNBOOK.md)",
    )
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

    instances = sub.add_parser("instances", help="list, show, revoke, suspend, reinstate instances")
    inst_sub = instances.add_subparsers(dest="instances_command", required=True)
    inst_list = inst_sub.add_parser("list", help="instances matching the filters")
    common(inst_list)
    inst_list.add_argument("--client-id")
    inst_list.add_argument("--platform", choices=["android", "apple"])
    inst_list.add_argument("--key-thumbprint")
    inst_list.add_argument("--status", choices=["active", "suspended", "revoked"])
    inst_list.add_argument("--after", help="page: instance ids greater than this")
    inst_list.add_argument("--limit", type=int, default=100)
    inst_list.set_defaults(func=cmd_instances)
    inst_show = inst_sub.add_parser("show", help="one instance and its status-list entries")
    common(inst_show)
    inst_show.add_argument("id")
    inst_show.set_defaults(func=cmd_instances)
    for action in ("revoke", "suspend", "reinstate"):
        change = inst_sub.add_parser(action, help=f"{action} an instance (audited)")
        common(change)
        change.add_argument("id")
        change.add_argument("--reason", required=True)
        change.set_defaults(func=cmd_instances)

    apps = sub.add_parser("apps", help="the app registry")
    apps_sub = apps.add_subparsers(dest="apps_command", required=True)
    apps_list = apps_sub.add_parser("list", help="apps with their effective policy")
    common(apps_list)
    apps_list.set_defaults(func=cmd_apps_list)
    apps_check = apps_sub.add_parser("check", help="validate a configuration file offline")
    apps_check.add_argument("file")
    apps_check.set_defaults(func=cmd_apps_check)

    purge = sub.add_parser("purge", help="delete expired challenges, attestation rows, old audit")
    common(purge)
    purge.set_defaults(func=cmd_purge)

    admin = sub.add_parser("admin", help="admin API helpers")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    token = admin_sub.add_parser("token", help="make an admin bearer token and its SHA-256")
    token.add_argument("--name", default="operator")
    token.set_defaults(func=cmd_admin_token)

    verify = sub.add_parser("verify", help="verify platform evidence offline (debugging)")
    verify_sub = verify.add_subparsers(dest="platform", required=True)
    for name in (
        "attester.verify_cli.android",
        "attester.verify_cli.apple",
        "attester.verify_cli.play_integrity",
    ):
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
