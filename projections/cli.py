"""Projector commands for `agent-journal`: migrate, project, tenant, unfence, archive, and the status hook."""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from journal import codec
from journal.cli import load_settings, non_negative_int, port_number, positive_int
from journal.errors import ConfigError, JournalError, NothingToDo
from journal.s3_tenants import S3Credentials, SeaweedAdmin
from journal.settings import Settings

console = Console()
#: Progress and notes go to stderr, so that stdout holds only what a script may capture.
notes = Console(stderr=True)


class TenantExists(JournalError):
    """``tenant create`` for a tenant that already has credentials."""


# -- migrate ---------------------------------------------------------------------------------------


def _revisions(settings: Settings) -> list[str]:
    """Revision ids, newest first (the history is linear)."""
    from alembic.script import ScriptDirectory

    from projections import db

    return [r.revision for r in ScriptDirectory.from_config(db.alembic_config(settings)).walk_revisions()]


def _current_revision(settings: Settings) -> str | None:
    import psycopg

    from projections import db, statements

    with db.connect(settings, role=None, autocommit=True) as conn:
        try:
            row = conn.execute(statements.CURRENT_REVISION).fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return str(row[0]) if row else None


def _cmd_migrate(args: argparse.Namespace) -> int:
    from projections import db

    if args.revision == "base":
        # alembic's `upgrade base` succeeds and changes nothing; saying "schema at base" would be false.
        raise ConfigError("--revision base would change nothing: migrate only upgrades. Give head (the default) "
                          "or a revision id; to remove the schema, drop it as the database owner.")
    settings = load_settings(args, need=("postgres",))
    known = _revisions(settings)
    target = known[0] if args.revision == "head" else args.revision
    if target not in known:
        raise ConfigError(f"unknown revision {args.revision!r}; give head or one of: {', '.join(known)}")
    before = _current_revision(settings)
    if before in known and known.index(target) > known.index(before):
        raise ConfigError(f"the schema is at {before}, past {target}: migrate only upgrades, so it would change "
                          "nothing. Give head or a newer revision.")
    db.migrate(settings, target)
    after = _current_revision(settings)
    if after == before:
        console.print(f"schema already at {after}; nothing to do")
    else:
        console.print(f"schema upgraded from {before or 'empty'} to {after}")
    return 0


# -- project ---------------------------------------------------------------------------------------


def _serve_metrics(port: int) -> None:
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr="127.0.0.1")
    except OSError as e:
        raise ConfigError(f"cannot serve metrics on 127.0.0.1:{port} ({e.strerror or e}: in use, or a privileged "
                          "port); choose another --metrics-port / JOURNAL_METRICS_PORT, or stop what listens "
                          "there") from e


def _cmd_project(args: argparse.Namespace) -> int:
    from projections import db
    from projections.worker import Projector, WorkerOptions, tune_gc

    settings = load_settings(args)
    port = args.metrics_port if args.metrics_port is not None else settings.metrics_port
    if not 0 <= port <= 65535:
        raise ConfigError(f"JOURNAL_METRICS_PORT={port} is out of range: give 1..65535 (or 0 for off)")
    if port:
        _serve_metrics(port)
    if not args.no_migrate:
        db.migrate(settings)
    worker = Projector(settings, WorkerOptions(batch_size=args.batch_size, claim_idle_ms=args.claim_idle_ms))
    worker.install_signal_handlers()
    tune_gc()
    worker.run()
    return 0


# -- unfence ---------------------------------------------------------------------------------------


def _cmd_unfence(args: argparse.Namespace) -> int:
    from projections.fences import unfence

    settings = load_settings(args, need=("redis", "postgres"))
    n = unfence(settings, args.tenant, args.thread, args.note)
    console.print(f"{args.tenant}/{args.thread} unfenced; {n} conflict(s) marked resolved")
    return 0


def _cmd_purge_tenant(args: argparse.Namespace) -> int:
    import json

    from journal.keys import validate_id
    from projections.purge import purge_tenant

    validate_id(args.tenant, "tenant")
    if args.confirm != args.tenant:
        raise ConfigError(f"purge-tenant deletes every trace of {args.tenant} in every tier and cannot be undone; "
                          f"repeat the tenant id to confirm: --confirm {args.tenant}")
    report = purge_tenant(load_settings(args, need=("redis", "postgres")), args.tenant)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        table = Table(title=f"purged tenant {args.tenant}" + ("" if report.removed_anything else " (nothing left)"))
        for col in ("tier", "removed"):
            table.add_column(col)
        table.add_row("redis", f"ACL user {'yes' if report.redis_user else 'no'}, {report.redis_keys} keys, "
                               f"registry entry {'yes' if report.registry else 'no'}")
        table.add_row("postgres", f"reader role {'yes' if report.reader_role else 'no'}, "
                                  + ", ".join(f"{n} {t}" for t, n in report.rows.items()))
        table.add_row("s3", f"{report.objects} objects, tenant key {'yes' if report.s3_identity else 'no'}")
        console.print(table)
    return 0


# -- inspection ------------------------------------------------------------------------------------


def _print_rows(args: argparse.Namespace, title: str, rows: list[Any], columns: tuple[str, ...]) -> None:
    import json

    if args.format == "json":
        print(json.dumps([r.to_dict() for r in rows], indent=2, default=codec.show_default, ensure_ascii=False))
        return
    table = Table(title=f"{title} ({len(rows)})")
    for col in columns:
        table.add_column(col)
    for r in rows:
        data = r.to_dict()
        table.add_row(*(_cell(data[c]) for c in columns))
    console.print(table)


def _cell(value: Any) -> str:
    import json

    if value is None:
        return "-"
    if isinstance(value, dict | list):
        text = json.dumps(value, default=codec.show_default, ensure_ascii=False)
        return text if len(text) <= 400 else text[:400] + "…"
    return str(value)


def _cmd_tenants(args: argparse.Namespace) -> int:
    from projections import inspect

    rows = inspect.tenants(load_settings(args, need=("postgres",)))
    _print_rows(args, "tenants", rows, ("tenant", "threads", "events", "fenced", "last_activity"))
    return 0


def _cmd_threads(args: argparse.Namespace) -> int:
    from journal.timespec import parse_span
    from projections import inspect

    idle = parse_span(args.idle) if args.idle else None
    status = tuple(s for s in (args.status or "").split(",") if s)
    rows = inspect.threads(load_settings(args, need=("postgres",)), args.tenant, status=status, idle=idle,
                           limit=args.limit)
    _print_rows(args, f"threads of {args.tenant}", rows,
                ("thread", "status", "node", "last_seq", "events", "updated_at", "fenced"))
    return 0


def _cmd_dead_letters(args: argparse.Namespace) -> int:
    from projections import inspect

    if args.retry is not None:
        from projections.retry import retry_dead_letter

        if args.tenant is None:
            raise ConfigError("--retry needs the tenant: agent-journal dead-letters TENANT --retry STREAM_ID")
        outcome = retry_dead_letter(load_settings(args, need=("postgres",)), args.tenant, args.retry)
        _print_rows(args, "dead letter retried", [outcome], ("tenant", "stream_id", "projected", "attempts", "reason"))
        return 0 if outcome.projected else 1
    rows = inspect.dead_letters(load_settings(args, need=("postgres",)), args.tenant, limit=args.limit)
    _print_rows(args, "dead letters", rows, ("tenant", "thread", "seq", "reason", "attempts", "last_seen"))
    return 0


def _cmd_conflicts(args: argparse.Namespace) -> int:
    from projections import inspect

    rows = inspect.conflicts(load_settings(args, need=("postgres",)), args.tenant, limit=args.limit)
    _print_rows(args, "conflicts (stored vs incoming)", rows,
                ("tenant", "thread", "seq", "detected_at", "resolved_at", "existing", "incoming"))
    return 0


def _cmd_maintain(args: argparse.Namespace) -> int:
    import json
    import time

    from journal.timespec import parse_span
    from projections.idle import evict_idle
    from projections.retention import Retention, apply_retention

    idle = parse_span(args.idle)
    settings = load_settings(args, need=("redis", "postgres"))
    retention = Retention.load(settings.retention_file)  # a bad policy file fails before anything is done
    tenants = tuple(args.tenant or ())
    while True:
        # Retention first: a thread abandoned now is active in Redis until projected, so not evicted in this pass.
        kept = [] if args.no_retention else apply_retention(settings, tenants, retention)
        done = evict_idle(settings, idle, tenants)
        if args.format == "json":
            print(json.dumps({"retention": [r.to_dict() for r in kept], "evicted": [d.to_dict() for d in done]},
                             indent=2))
        else:
            if not args.no_retention:
                _print_rows(args, "retention (JOURNAL_RETENTION_FILE)", kept,
                            ("tenant", "abandoned", "skipped", "archive_due", "archived", "archive_failed", "deleted"))
            _print_rows(args, f"threads idle {args.idle} or more, evicted from Redis", done,
                        ("tenant", "threads", "entries_trimmed"))
        if not args.loop:
            return 0
        time.sleep(args.loop)


# -- archive ---------------------------------------------------------------------------------------


def _cmd_archive(args: argparse.Namespace) -> int:
    import json

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from journal.keys import validate_id
    from journal.timespec import parse_span
    from projections.archive import Archiver, candidates, check_statuses

    idle = parse_span(args.idle)
    statuses = check_statuses(tuple(s.strip() for s in args.status.split(",")))
    tenants = tuple(validate_id(t, "tenant") for t in args.tenant or ())
    settings = load_settings(args, need=("postgres",) if args.dry_run else ("postgres", "s3"))
    todo = candidates(settings, idle, statuses, tenants)
    if args.dry_run:
        _print_rows(args, f"threads idle {args.idle} or more ({','.join(statuses)}) that archive would move", todo,
                    ("tenant", "thread", "from_seq", "to_seq", "events"))
        return 0
    archiver = Archiver(settings)
    total = sum(c.events for c in todo)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("events"),
                  TimeElapsedColumn(), console=notes, transient=True, disable=not notes.is_terminal) as bar:
        task = bar.add_task(f"archiving {len(todo)} thread(s)", total=total)

        def advance(events: int) -> None:
            bar.advance(task, events)

        report = archiver.run(todo, advance)
    summary = report.to_dict()
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        table = Table(title=f"archived {summary['threads']} thread(s), {summary['events']} events, "
                            f"{summary['stored_bytes']} bytes in S3, in {summary['seconds']} s")
        for col in ("tenant", "thread", "seqs", "segments", "bytes", "outcome"):
            table.add_column(col)
        for t in report.threads:
            table.add_row(t.tenant, t.thread, f"{t.from_seq}..{t.to_seq}", str(t.segments), str(t.stored_bytes),
                          t.manifest if t.error is None else f"[red]left in PostgreSQL: {t.error}")
        console.print(table)
    return 1 if report.failed else 0


# -- sweep-chunks ----------------------------------------------------------------------------------


def _cmd_sweep_chunks(args: argparse.Namespace) -> int:
    import json

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from journal.keys import validate_id
    from projections import db
    from projections.chunks import sweep_all

    tenant = validate_id(args.tenant, "tenant") if args.tenant else None
    settings = load_settings(args, need=("postgres",))
    with Progress(SpinnerColumn(), TextColumn("{task.description}: {task.completed} thread(s)"), TimeElapsedColumn(),
                  console=notes, transient=True, disable=not notes.is_terminal) as bar:
        task = bar.add_task("sweeping snapshot chunks", total=None)
        with db.connect(settings) as conn:
            report = sweep_all(conn, tenant, lambda n: bar.advance(task, n))
    summary = {"threads": report.threads, "chunks_deleted": report.chunks_deleted,
               "skipped": [list(k) for k in report.skipped]}
    if args.format == "json":
        print(json.dumps(summary, indent=2))
    else:
        console.print(f"swept {report.threads} thread(s) with chunks: {report.chunks_deleted} chunk(s) no snapshot "
                      f"names deleted")
        for t, th in report.skipped:
            console.print(f"[yellow]left as it was: {t}/{th} (a writer held it, or a snapshot of it is unreadable; "
                          "run again, or `agent-journal rebuild`)")
    return 0


# -- rebuild ---------------------------------------------------------------------------------------


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number above 0")
    return value


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from projections.rebuild import Progress as Step
    from projections.rebuild import RebuildOptions, rebuild

    options = RebuildOptions(tenants=tuple(args.tenant or ()), dry_run=args.dry_run, throttle=args.throttle,
                             chunk=args.chunk, restart=args.restart)
    settings = load_settings(args, need=("postgres",))
    if args.metrics_port:
        _serve_metrics(args.metrics_port)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]:>9,.0f} ev/s"), TimeRemainingColumn(), console=notes,
                   transient=False)
    task = bar.add_task("dry run" if args.dry_run else "rebuild", total=None, rate=0.0)

    def show(step: Step) -> None:
        bar.update(task, completed=step.done, total=step.total, rate=step.rate,
                   description=f"{'dry run' if args.dry_run else 'rebuild'} [{step.tenant}]")

    with bar:
        reports = rebuild(settings, options, on_progress=show)
    title = ("rows a rebuild would change (dry run; nothing written)" if args.dry_run
             else "rebuilt: rows changed by the swap")
    _print_rows(args, title, reports, ("tenant", "events", "threads", "threads_changed", "snapshots_added",
                                       "snapshots_removed", "chunks_swept", "swapped", "seconds"))
    return 0


# -- tenant ----------------------------------------------------------------------------------------


def export_lines(values: dict[str, str]) -> list[str]:
    """``export NAME=value`` lines that a POSIX shell reads back exactly (values quoted where needed)."""
    return [f"export {name}={shlex.quote(value)}" for name, value in values.items()]


def tenant_env(settings: Settings, redis_url: str, database_url: str, s3: S3Credentials | None = None
               ) -> dict[str, str]:
    """The variables an agent or auditor of one tenant exports: the names every part of the journal reads."""
    env = {"JOURNAL_REDIS_URL": redis_url, "JOURNAL_DATABASE_URL": database_url}
    if settings.s3_url:
        env |= {"JOURNAL_S3_URL": settings.s3_url, "JOURNAL_S3_BUCKET": settings.s3_bucket}
    if s3 is not None:
        env |= {"JOURNAL_S3_ACCESS_KEY": s3.access_key, "JOURNAL_S3_SECRET_KEY": s3.secret_key}
    return env


def write_env_file(path: Path, lines: list[str], *, force: bool) -> None:
    """Write ``lines`` to ``path`` readable by its owner only (it holds passwords)."""
    _check_env_target(path, force)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # O_CREAT's mode does not apply to a file that already existed
        f.write("\n".join(lines) + "\n")


@dataclass(frozen=True, slots=True)
class TenantAccess:
    """Where a tenant's credentials live and which of them exist."""

    settings: Settings
    admin: Any  # redis.Redis as the operator
    seaweed: SeaweedAdmin | None
    has_user: bool
    has_reader: bool
    has_s3: bool

    @property
    def held(self) -> list[str]:
        return [w for w, on in (("a Redis user", self.has_user), ("a PostgreSQL reader", self.has_reader),
                                ("an S3 key", self.has_s3)) if on]


def _tenant_access(args: argparse.Namespace) -> TenantAccess:
    from journal import acl
    from journal.redis_store import connect
    from projections import db

    settings = load_settings(args, need=("redis", "postgres"))
    assert settings.redis_url and settings.database_url
    if _current_revision(settings) is None:  # checked first: a half-made tenant is worse than none
        raise ConfigError("the database has no journal schema yet: run `agent-journal migrate` first")
    admin = connect(settings.redis_url)
    seaweed = SeaweedAdmin.for_settings(settings)
    return TenantAccess(settings, admin, seaweed, acl.tenant_user_exists(admin, args.tenant),
                        db.tenant_reader_exists(settings, args.tenant),
                        seaweed.tenant_exists(args.tenant) if seaweed else False)


def _cmd_tenant(args: argparse.Namespace) -> int:
    """Provision (or rotate, or revoke) a tenant's Redis ACL user, PostgreSQL reader and S3 key together."""
    from journal import keys

    keys.validate_id(args.tenant, "tenant")
    if args.env_file and args.action == "revoke":
        raise ConfigError("--env-file goes with create or rotate; revoke prints no credentials")
    if args.env_file:
        _check_env_target(args.env_file, args.force)  # before any credential changes
    access = _tenant_access(args)
    if args.action == "revoke":
        return _revoke(access, args.tenant)
    if args.action == "create" and access.held:
        raise TenantExists(f"tenant {args.tenant} already has {' and '.join(access.held)}: creating it again would "
                           "replace the password and break the agents using it. To issue new credentials on "
                           f"purpose, run `agent-journal tenant rotate {args.tenant}`.")
    if args.action == "rotate" and not access.held:
        raise NothingToDo(f"tenant {args.tenant} has no credentials to rotate; create them with "
                          f"`agent-journal tenant create {args.tenant}`")
    lines = export_lines(_issue(access, args.tenant))
    if args.env_file:
        write_env_file(args.env_file, lines, force=args.force)
        notes.print(f"credentials for tenant {args.tenant} written to {args.env_file} (mode 0600); "
                    f"use them with `. {args.env_file}`")
        return 0
    notes.print(f"credentials for tenant {args.tenant} (shown once; store them in your secret manager, or "
                f"`eval` this output):")
    print("\n".join(lines))
    return 0


def _issue(access: TenantAccess, tenant: str) -> dict[str, str]:
    """New credentials in every store (an existing Redis user gets a new password and loses its connections)."""
    from journal import acl
    from projections import db

    settings = access.settings
    assert settings.redis_url and settings.database_url
    if access.has_user:
        redis_creds = acl.rotate_tenant_user(access.admin, tenant, kill_connections=True)
    else:
        redis_creds = acl.create_tenant_user(access.admin, tenant)
    reader = db.create_tenant_reader(settings, tenant)
    s3 = _tenant_s3(settings, access.seaweed, tenant)
    return tenant_env(settings, redis_creds.redis_url(settings.redis_url), reader.database_url(settings.database_url),
                      s3)


def _revoke(access: TenantAccess, tenant: str) -> int:
    from journal import acl
    from projections import db

    gone_redis = acl.revoke_tenant_user(access.admin, tenant)
    gone_pg = db.revoke_tenant_reader(access.settings, tenant)
    gone_s3 = access.seaweed.revoke_tenant(tenant) if access.seaweed else False
    if not (gone_redis or gone_pg or gone_s3):
        raise NothingToDo(f"tenant {tenant} has no credentials to revoke (no Redis user, no PostgreSQL reader, "
                          "no S3 key); check the name")
    console.print(f"tenant {tenant}: Redis user {'revoked' if gone_redis else 'absent'}, PostgreSQL reader "
                  f"{'revoked' if gone_pg else 'absent'}"
                  + (f", S3 key {'revoked' if gone_s3 else 'absent'}" if access.seaweed else ""))
    return 0


def _tenant_s3(settings: Settings, seaweed: SeaweedAdmin | None, tenant: str) -> S3Credentials | None:
    """A key pair confined to ``{bucket}/{tenant}/`` on the embedded SeaweedFS; elsewhere None, and a note."""
    from journal.blobs import BlobStore

    if seaweed is None:
        if settings.s3_url:
            notes.print(f"note: {settings.s3_url} is not the embedded SeaweedFS, so no S3 key was made for "
                        f"{tenant}: issue one confined to {settings.s3_bucket}/{tenant}/ in that store's IAM and "
                        "export it as JOURNAL_S3_ACCESS_KEY / JOURNAL_S3_SECRET_KEY", markup=False, highlight=False)
        return None
    creds = seaweed.create_tenant(settings, tenant)
    # A tenant key may not create the bucket (nor even HEAD it): make sure it is there now, as the operator.
    BlobStore.from_settings(settings).ensure_bucket()
    return creds


def _check_env_target(path: Path, force: bool) -> None:
    """Refuse a bad ``--env-file`` before any credential changes."""
    if path.is_dir():
        raise ConfigError(f"--env-file {path} is a directory; give a file path")
    if not path.parent.is_dir():
        raise ConfigError(f"--env-file {path}: folder {path.parent} does not exist; create it or choose another path")
    if path.exists() and not force:
        raise ConfigError(f"--env-file {path} exists; pass --force to overwrite it, or choose another path")


# -- status ----------------------------------------------------------------------------------------


def status_table(settings: Settings) -> Table | None:
    """Projector lag per tenant, for `agent-journal status`."""
    from journal import keys
    from journal.redis_store import connect
    from projections.metrics import measure_lag

    if not settings.redis_url:
        return None
    try:
        r = connect(settings.redis_url)
        tenants = {m.decode() if isinstance(m, bytes) else m for m in r.smembers(keys.TENANT_REGISTRY)}
        lags = measure_lag(r, tenants)
    except Exception as e:  # status must print what it can
        notes.print(f"[yellow]lag unavailable: {e}[/]", markup=True, highlight=False)
        return None
    table = Table(title="projector lag per tenant")
    for col in ("tenant", "stream length", "not delivered", "pending", "oldest unprojected (s)"):
        table.add_column(col, justify="right" if col != "tenant" else "left")
    for lag in sorted(lags, key=lambda x: -(x.undelivered + x.pending))[:50]:
        table.add_row(lag.tenant, str(lag.length), str(lag.undelivered), str(lag.pending), f"{lag.seconds:.1f}")
    return table


def register(sub: Any) -> None:
    p = sub.add_parser("migrate", help="create or upgrade the PostgreSQL schema (Alembic); needs only PostgreSQL")
    p.add_argument("--revision", default="head", help="head (default) or a revision id; upgrades only")
    p.set_defaults(func=_cmd_migrate)

    p = sub.add_parser("project", help="run a projector worker (Redis streams → PostgreSQL) until SIGTERM")
    p.add_argument("--batch-size", type=positive_int, default=5000, help="entries per PostgreSQL transaction")
    p.add_argument("--claim-idle-ms", type=non_negative_int, default=30_000,
                   help="claim entries pending this long on a dead worker (default 30000)")
    p.add_argument("--metrics-port", type=port_number, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:PORT (default $JOURNAL_METRICS_PORT; 0 = off)")
    p.add_argument("--no-migrate", action="store_true", help="do not run migrations at start")
    p.set_defaults(func=_cmd_project)

    p = sub.add_parser("tenant", help="tenant-scoped credentials: a Redis ACL user and a PostgreSQL reader role")
    p.add_argument("action", choices=("create", "rotate", "revoke"))
    p.add_argument("tenant")
    p.add_argument("--env-file", type=Path, default=None,
                   help="write the export lines to this file (mode 0600) instead of printing them")
    p.add_argument("--force", action="store_true", help="overwrite an existing --env-file")
    p.set_defaults(func=_cmd_tenant)

    p = sub.add_parser("unfence", help="resolve a thread fenced after a sequence conflict")
    p.add_argument("tenant")
    p.add_argument("thread")
    p.add_argument("--note", default="resolved by operator", help="resolution recorded on the conflicts")
    p.set_defaults(func=_cmd_unfence)

    p = sub.add_parser("tenants", help="tenants PostgreSQL holds, with thread and event counts")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_tenants)

    p = sub.add_parser("threads", help="a tenant's threads, most recent first")
    p.add_argument("tenant")
    p.add_argument("--status", help="comma-separated: active,paused,completed,failed,abandoned")
    p.add_argument("--idle", help="only threads quiet for at least this long (7d, 12h, …)")
    p.add_argument("--limit", type=positive_int, default=1000)
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_threads)

    for name, func, what in (("dead-letters", _cmd_dead_letters, "entries the projector could not store"),
                             ("conflicts", _cmd_conflicts, "reused sequence numbers, both versions side by side")):
        p = sub.add_parser(name, help=what)
        p.add_argument("tenant", nargs="?", default=None)
        p.add_argument("--limit", type=positive_int, default=1000)
        p.add_argument("--format", choices=("table", "json"), default="table")
        p.set_defaults(func=func)
        if name == "dead-letters":
            p.add_argument("--retry", metavar="STREAM_ID", default=None,
                           help="project this dead letter again (after a fix): removed if it projects, else one "
                                "more attempt with the new reason (exit status 1)")

    p = sub.add_parser("maintain", help="apply the retention policy (abandon, archive, delete idle threads), then "
                                        "evict idle threads from Redis (they come back from PostgreSQL when used)")
    p.add_argument("--no-retention", action="store_true", help="only evict; skip the retention policy")
    p.add_argument("--idle", default="7d", help="evict threads quiet this long (default 7d)")
    p.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    p.add_argument("--loop", type=positive_int, default=None, metavar="SECONDS", help="run again every SECONDS")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_maintain)

    p = sub.add_parser("archive", help="move cold threads' history from PostgreSQL to S3 segments (re-runnable)")
    p.add_argument("--idle", default="30d", help="only threads quiet this long (default 30d)")
    p.add_argument("--tenant", action="append", help="only this tenant (repeatable)")
    p.add_argument("--status", default="completed,failed,abandoned",
                   help="comma-separated statuses to archive (default completed,failed,abandoned)")
    p.add_argument("--dry-run", action="store_true", help="list what would move; change nothing")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_archive)


    p = sub.add_parser("sweep-chunks", help="delete snapshot chunks no snapshot names any more (archive and rebuild "
                                            "sweep the threads they change; this sweeps every thread)")
    p.add_argument("--tenant", default=None, help="only this tenant (default every tenant)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_sweep_chunks)

    p = sub.add_parser("rebuild", help="rebuild threads rows and snapshots from the events, live (blue/green, "
                                       "swapped per tenant; resumes after a kill)")
    p.add_argument("--tenant", action="append", help="only this tenant (repeatable; default every tenant)")
    p.add_argument("--dry-run", action="store_true", help="fold and compare only: report per tenant what would change")
    p.add_argument("--throttle", type=positive_float, default=None, metavar="EV/S",
                   help="fold at most this many events per second, over all tenants")
    p.add_argument("--chunk", type=positive_int, default=2000, help="events per transaction and turn (default 2000)")
    p.add_argument("--restart", action="store_true",
                   help="discard what a killed rebuild left instead of resuming it (e.g. the reducer changed again)")
    p.add_argument("--metrics-port", type=port_number, default=None, help="serve Prometheus metrics on 127.0.0.1:PORT")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_rebuild)

    p = sub.add_parser("purge-tenant", help="delete every trace of a tenant in Redis, PostgreSQL and S3 (re-runnable)")
    p.add_argument("tenant")
    p.add_argument("--confirm", required=True, metavar="TENANT", help="the tenant id again, to confirm")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_purge_tenant)

