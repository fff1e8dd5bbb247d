"""Projector commands for `agent-journal`: migrate, project, unfence, and the status hook."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from journal.embedded import resolve
from journal.settings import Settings

console = Console()


def _settings(args: argparse.Namespace) -> Settings:
    return resolve(Settings.from_env(data_dir=args.data_dir))


def _cmd_migrate(args: argparse.Namespace) -> int:
    from projections import db

    settings = _settings(args)
    db.migrate(settings, args.revision)
    console.print(f"schema at {args.revision}")
    return 0


def _cmd_project(args: argparse.Namespace) -> int:
    from prometheus_client import start_http_server

    from projections import db
    from projections.worker import Projector, WorkerOptions, tune_gc

    settings = _settings(args)
    if args.metrics_port:
        settings = settings.with_(metrics_port=args.metrics_port)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr="127.0.0.1")
    if not args.no_migrate:
        db.migrate(settings)
    worker = Projector(settings, WorkerOptions(batch_size=args.batch_size, claim_idle_ms=args.claim_idle_ms))
    worker.install_signal_handlers()
    tune_gc()
    worker.run()
    return 0


def _cmd_unfence(args: argparse.Namespace) -> int:
    from journal import keys
    from journal.redis_store import connect
    from projections import db

    settings = _settings(args)
    with db.connect(settings) as conn:
        conn.execute("UPDATE journal.threads SET fenced = false, fence_reason = NULL WHERE tenant_id = %s AND "
                     "thread_id = %s", (args.tenant, args.thread))
        n = conn.execute("UPDATE journal.conflicts SET resolved_at = now(), resolution = %s WHERE tenant_id = %s "
                         "AND thread_id = %s AND resolved_at IS NULL", (args.note, args.tenant, args.thread)).rowcount
    assert settings.redis_url
    connect(settings.redis_url).hdel(keys.fences(args.tenant), args.thread)
    console.print(f"{args.tenant}/{args.thread} unfenced; {n} conflict(s) marked resolved")
    return 0


def _cmd_tenant(args: argparse.Namespace) -> int:
    """Provision (or rotate, or revoke) a tenant's Redis ACL user and PostgreSQL reader role together."""
    from journal import acl
    from journal.redis_store import connect
    from projections import db

    settings = _settings(args)
    assert settings.redis_url and settings.database_url
    admin = connect(settings.redis_url)
    if args.action == "revoke":
        gone_redis = acl.revoke_tenant_user(admin, args.tenant)
        gone_pg = db.revoke_tenant_reader(settings, args.tenant)
        console.print(f"tenant {args.tenant}: Redis user {'revoked' if gone_redis else 'absent'}, "
                      f"PostgreSQL reader {'revoked' if gone_pg else 'absent'}")
        return 0
    if args.action == "rotate":
        redis_creds = acl.rotate_tenant_user(admin, args.tenant, kill_connections=True)
    else:
        redis_creds = acl.create_tenant_user(admin, args.tenant)
    reader = db.create_tenant_reader(settings, args.tenant)
    console.print(f"credentials for tenant {args.tenant} (shown once; store them in your secret manager):")
    print(f"JOURNAL_REDIS_URL={redis_creds.redis_url(settings.redis_url)}")
    print(f"JOURNAL_READER_DATABASE_URL={reader.database_url(settings.database_url)}")
    return 0


def status_table(settings: Settings) -> Table | None:
    """Projector lag per tenant, for `agent-journal status`."""
    from journal import keys
    from journal.redis_store import connect
    from projections.metrics import measure_lag

    if not settings.redis_url:
        return None
    try:
        r = connect(settings.redis_url)
        tenants = {m.decode() for m in r.smembers(keys.TENANT_REGISTRY)}
        lags = measure_lag(r, tenants)
    except Exception as e:  # status must print what it can
        console.print(f"[yellow]lag unavailable: {e}[/]")
        return None
    table = Table(title="projector lag per tenant")
    for col in ("tenant", "stream length", "not delivered", "pending", "oldest unprojected (s)"):
        table.add_column(col, justify="right" if col != "tenant" else "left")
    for lag in sorted(lags, key=lambda x: -(x.undelivered + x.pending))[:50]:
        table.add_row(lag.tenant, str(lag.length), str(lag.undelivered), str(lag.pending), f"{lag.seconds:.1f}")
    return table


def register(sub: Any) -> None:
    p = sub.add_parser("migrate", help="create or upgrade the PostgreSQL schema (Alembic)")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("project", help="run a projector worker (Redis streams → PostgreSQL) until SIGTERM")
    p.add_argument("--batch-size", type=int, default=5000, help="entries per PostgreSQL transaction")
    p.add_argument("--claim-idle-ms", type=int, default=30_000,
                   help="claim entries pending this long on a dead worker (default 30000)")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--no-migrate", action="store_true", help="do not run migrations at start")
    p.set_defaults(func=_cmd_project)

    p = sub.add_parser("tenant", help="tenant-scoped credentials: a Redis ACL user and a PostgreSQL reader role")
    p.add_argument("action", choices=("create", "rotate", "revoke"))
    p.add_argument("tenant")
    p.set_defaults(func=_cmd_tenant)

    p = sub.add_parser("unfence", help="resolve a thread fenced after a sequence conflict")
    p.add_argument("tenant")
    p.add_argument("thread")
    p.add_argument("--note", default="resolved by operator", help="resolution recorded on the conflicts")
    p.set_defaults(func=_cmd_unfence)



