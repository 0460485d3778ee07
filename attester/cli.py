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
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from attester.settings import MAX_ATTESTATION_LIFETIME, ConfigError, Settings, load_settings


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides: dict[str, Any] = dict(extra)
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    return load_settings(Path(args.config) if args.config else None, **overrides)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from attester import logs
    from attester.app import create_app
    from attester.metrics import MULTIPROC_ENV

    settings = _settings(args)
    logs.configure(settings.log_level)
    if args.workers > 1:
        # workers are separate processes: hand them the same configuration by environment
        os.environ["ATTESTER_DATA_DIR"] = str(settings.data_dir.resolve())
        # our own temporary metrics directory is removed at exit, an operator's is kept
        created = settings.metrics.enabled and not os.environ.get(MULTIPROC_ENV)
        if settings.metrics.enabled:
            os.environ[MULTIPROC_ENV] = str(_fresh_metrics_dir())
        if args.config:
            os.environ["ATTESTER_CONFIG"] = str(Path(args.config).resolve())
        from attester.service import build_service

        build_service(settings).store.dispose()  # migrate and create keys once, up front
        try:
            uvicorn.run(
                "attester.app:app_from_environment",
                factory=True,
                host=args.host,
                port=args.port,
                workers=args.workers,
                log_config=None,
                access_log=False,
                # the client address is the peer; X-Forwarded-For only via trusted_proxies
                proxy_headers=False,
            )
        finally:
            if created:
                import shutil

                shutil.rmtree(os.environ[MULTIPROC_ENV], ignore_errors=True)
    else:
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            log_config=None,
            access_log=False,
            # the client address is the peer; X-Forwarded-For only via trusted_proxies
            proxy_headers=False,
        )
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
    from keys.store import KeyStore

    settings = _settings(args)
    retention = timedelta(seconds=MAX_ATTESTATION_LIFETIME + settings.clock_skew)
    return settings, KeyStore(settings.resolved_key_dir, retention=retention)


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
            {"kid": record.kid, "state": "next", "activates_at": record.activates_at.isoformat()}
        )
    )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from keys.store import KeyStoreError

    _, store = _key_store(args)
    now = datetime.now(UTC)
    try:
        store.reload(force=True)
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = [
        {
            "kid": s.record.kid,
            "state": s.state.value,
            "alg": s.record.alg,
            "created_at": s.record.created_at.isoformat(),
            "activates_at": s.record.activates_at.isoformat(),
            "published_until": s.published_until.isoformat() if s.published_until else None,
        }
        for s in store.statuses(now)
    ]
    print(json.dumps({"keys": rows}, indent=2))
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
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
