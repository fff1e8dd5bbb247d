"""Per-tenant retention, applied by ``agent-journal maintain``: abandon, archive, delete idle threads.

The policy is a TOML file named by ``JOURNAL_RETENTION_FILE`` (``Settings.retention_file``); with
none, every tenant gets the default (abandon after 7 days, nothing archived or deleted)::

    [default]
    abandon_after = "7d"       # active or paused threads idle this long get an `abandon` event
    archive_after = "30d"      # terminal threads idle this long go to the S3 archive
    delete_after = "off"       # terminal threads idle this long are deleted ("off": never)

    [tenant.acme]              # any field left out comes from [default]
    abandon_after = "14d"
    delete_after = "365d"

"Idle" is ``threads.updated_at``: the last time the projector wrote the thread. A span is
``45s``, ``90m``, ``12h``, ``7d`` or ``2w``; ``"off"`` disables the step.

* **Abandon** appends an ``abandon`` event (``{"idle_days": …, "reason": …}``) through the normal
  append path, with ``expected_seq`` = the head PostgreSQL holds: the chain and seq rules hold, the
  replay shows it, and an agent that appended meanwhile wins (the conflict is counted, nothing is
  written). Its idempotency key (``abandon:{seq}``) makes a re-run after a crash write nothing new.
  Any later event of the agent makes the thread active again (``journal.lifecycle``).
* **Archive** runs the archiver (``projections.archive``, as ``agent-journal archive``) over the
  terminal threads idle past ``archive_after``; without object storage (``JOURNAL_S3_URL``) it only
  counts them (``archive_due``).
* **Delete** removes a terminal thread (completed, failed, abandoned) idle past ``delete_after``
  from every PostgreSQL table, once ``maintain`` has evicted it from Redis (its head is gone, so a
  new append starts a new history at seq 1), the thread held meanwhile (``journal/lua/hold.lua``: an
  append waits for the delete rather than restore the old head from rows being deleted). Its blobs
  stay in S3 (they are shared by content), and so
  do the segments of an archived thread (its stub in ``journal.archives`` goes): removing those
  objects is left to the bucket's lifecycle rules or ``purge-tenant``.

Every step is idempotent and safe to run from cron while agents append and projectors run.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from journal import keys, logs
from journal.client import JournalClient
from journal.errors import ConfigError, ConflictError, InvalidQuery, ThreadFenced
from journal.events import ABANDON
from journal.redis_store import connect, script_source, translate
from journal.settings import Settings
from journal.timespec import parse_span
from projections import db, tables
from projections.archive import Archiver, candidates

log = logs.get_logger("projections.retention")

_t = tables.threads
TERMINAL = ("completed", "failed", "abandoned")
LIVE = ("active", "paused")
_FIELDS = ("abandon_after", "archive_after", "delete_after")


@dataclass(frozen=True, slots=True)
class Policy:
    """How long a tenant's threads may stay idle before each step (None: never)."""

    abandon_after: timedelta | None = timedelta(days=7)
    archive_after: timedelta | None = None
    delete_after: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Retention:
    """The default policy and the per-tenant overrides."""

    default: Policy = field(default_factory=Policy)
    tenants: Mapping[str, Policy] = field(default_factory=dict)

    def of(self, tenant: str) -> Policy:
        return self.tenants.get(tenant, self.default)

    @classmethod
    def load(cls, path: Path | None) -> Retention:
        """The policy of ``path`` (``JOURNAL_RETENTION_FILE``), or the built-in default when None."""
        if path is None:
            return cls()
        try:
            doc = tomllib.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"JOURNAL_RETENTION_FILE={path}: cannot read it ({e.strerror or e}); fix the path or "
                              "unset the variable for the default policy (abandon after 7d)") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"JOURNAL_RETENTION_FILE={path} is not valid TOML: {e}") from e
        unknown = sorted(set(doc) - {"default", "tenant"})
        if unknown:
            raise ConfigError(f"{path}: unknown table(s) {unknown}; use [default] and [tenant.<id>]")
        default = _policy(Policy(), doc.get("default", {}), f"{path} [default]")
        per_tenant = doc.get("tenant", {})
        if not isinstance(per_tenant, dict):
            raise ConfigError(f"{path}: 'tenant' must be tables such as [tenant.acme]")
        tenants = {}
        for tenant, body in per_tenant.items():
            keys.validate_id(tenant, "tenant")
            tenants[tenant] = _policy(default, body, f"{path} [tenant.{tenant}]")
        return cls(default, tenants)


def _policy(base: Policy, body: Any, where: str) -> Policy:
    if not isinstance(body, dict):
        raise ConfigError(f"{where} must be a table of {', '.join(_FIELDS)}")
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; the fields are {', '.join(_FIELDS)}")
    changes: dict[str, timedelta | None] = {}
    for name, value in body.items():
        if value == "off":
            changes[name] = None
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {name} = {value!r} must be a quoted span such as \"7d\", or \"off\"")
        try:
            changes[name] = parse_span(value)
        except InvalidQuery as e:
            raise ConfigError(f"{where}: {name}: {e}, or \"off\"") from e
    return replace(base, **changes)


@dataclass(slots=True)
class RetentionReport:
    """What one ``maintain`` pass did for one tenant."""

    tenant: str
    abandoned: int = 0
    #: Threads appended to since PostgreSQL's head (by the agent, or an abandon not yet projected) or fenced.
    skipped: int = 0
    #: Threads due for the archive; ``archived`` of them moved to S3 (none without ``JOURNAL_S3_URL``).
    archive_due: int = 0
    archived: int = 0
    archive_failed: int = 0
    deleted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_idle = _t.c.updated_at <= sa.func.now() - sa.bindparam("idle", type_=sa.Interval)
_in_statuses = _t.c.status == sa.any_(sa.bindparam("statuses", type_=ARRAY(sa.Text)))
_of_tenant = _t.c.tenant_id == sa.bindparam("tenant")
#: Threads past the abandon limit: not terminal, every stored event chained, not fenced.
ABANDON_DUE_SQL = tables.compiled(
    sa.select(_t.c.thread_id, _t.c.last_seq)
    .where(_of_tenant, _idle, _in_statuses, _t.c.last_seq == _t.c.max_seq, sa.not_(_t.c.fenced))
    .order_by(_t.c.thread_id))
#: Terminal threads idle past a limit (archive, delete).
TERMINAL_DUE_SQL = tables.compiled(
    sa.select(_t.c.thread_id).where(_of_tenant, _idle, _in_statuses, sa.not_(_t.c.fenced))
    .order_by(_t.c.thread_id))
#: Every tenant with threads.
TENANTS_SQL = tables.compiled(sa.select(_t.c.tenant_id).distinct().order_by(_t.c.tenant_id))
#: Lock a thread's row and check, under the lock, that it is still terminal and idle (a delete's guard).
LOCK_DELETABLE_SQL = tables.compiled(
    sa.select(_t.c.thread_id).where(_of_tenant, _t.c.thread_id == sa.bindparam("thread"), _idle,
                                    _in_statuses).with_for_update())
#: A thread's rows, table by table (children before the ``threads`` row).
DELETE_THREAD_SQL = [
    tables.compiled(sa.delete(t).where(t.c.tenant_id == sa.bindparam("tenant"),
                                       t.c.thread_id == sa.bindparam("thread")))
    for t in (tables.events, tables.snapshots, tables.snapshot_chunks, tables.dead_letters, tables.conflicts,
              tables.rebuild_snapshots, tables.rebuild_threads, tables.archives, tables.threads)
]


def apply_retention(settings: Settings, tenants: Sequence[str] = (), retention: Retention | None = None,
                    ) -> list[RetentionReport]:
    """One pass of the policy over ``tenants`` (every tenant with threads if none); see the module docstring."""
    for t in tenants:
        keys.validate_id(t, "tenant")
    retention = retention or Retention.load(settings.retention_file)
    with db.connect(settings) as conn:
        selected = list(tenants) or [r[0] for r in conn.execute(TENANTS_SQL)]
        conn.rollback()
    out = []
    with JournalClient.from_settings(settings) as client:
        for tenant in selected:
            policy = retention.of(tenant)
            report = RetentionReport(tenant)
            if policy.abandon_after is not None:
                _abandon(settings, client, tenant, policy.abandon_after, report)
            if policy.archive_after is not None:
                _archive(settings, tenant, policy.archive_after, report)
            if policy.delete_after is not None:
                report.deleted = _delete(settings, tenant, policy.delete_after)
            out.append(report)
    return out


def _due(settings: Settings, statement: str, tenant: str, idle: timedelta, statuses: tuple[str, ...]) -> list[Any]:
    with db.connect(settings) as conn:
        rows = conn.execute(statement, {"tenant": tenant, "idle": idle, "statuses": list(statuses)}).fetchall()
        conn.rollback()
    return rows


def _abandon(settings: Settings, client: JournalClient, tenant: str, idle: timedelta,
             report: RetentionReport) -> None:
    days = idle.total_seconds() / 86400
    payload = {"idle_days": int(days) if days == int(days) else round(days, 3),
               "reason": f"no activity for {_span(idle)} or more (retention policy)"}
    for thread, seq in _due(settings, ABANDON_DUE_SQL, tenant, idle, LIVE):
        if client.head(tenant, thread) > seq:
            # Appended since PostgreSQL's head: by the agent, or this abandon written by an earlier pass and
            # not yet projected (the idempotency key would return it without writing; it is not counted again).
            report.skipped += 1
            continue
        try:
            client.append(tenant, thread, ABANDON, payload, expected_seq=int(seq), idempotency_key=f"abandon:{seq}",
                          actor={"agent_id": "agent-journal-maintain"})
        except (ConflictError, ThreadFenced) as e:
            report.skipped += 1  # the agent came back first, or the thread waits for an operator
            log.info("abandon_skipped", tenant=tenant, thread=thread, reason=str(e))
            continue
        report.abandoned += 1
    if report.abandoned:
        log.info("threads_abandoned", tenant=tenant, threads=report.abandoned)


def _archive(settings: Settings, tenant: str, idle: timedelta, report: RetentionReport) -> None:
    todo = candidates(settings, idle, TERMINAL, (tenant,))
    report.archive_due = len(todo)
    if not todo:
        return
    if not settings.s3_url:
        log.warning("archive_skipped_no_object_storage", tenant=tenant, threads=len(todo))
        return
    done = Archiver(settings).run(todo)
    report.archive_failed = len(done.failed)
    report.archived = len(done.threads) - report.archive_failed
    for t in done.failed:
        log.error("archive_failed", tenant=tenant, thread=t.thread, error=t.error)


def _release_stale_holds(r: Any, hold: Any, tenant: str) -> None:
    """Release the holds a crashed run left (older than :data:`STALE_HOLD`): their threads take appends again."""
    cutoff = (time.time() - STALE_HOLD.total_seconds()) * 1000
    for thread, reason in r.hgetall(keys.fences(tenant)).items():
        text = reason.decode(errors="replace")
        if not text.startswith(HOLD_PREFIX):
            continue
        since = text[len(HOLD_PREFIX):].split(":", 1)[0]
        if since.isdigit() and int(since) < cutoff:
            hold(keys=[keys.heads(tenant), keys.fences(tenant)], args=["release", thread, reason])
            log.warning("stale_hold_released", tenant=tenant, thread=thread.decode(errors="replace"), hold=text)


def _span(idle: timedelta) -> str:
    s = int(idle.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size and s % size == 0:
            return f"{s // size}{unit}"
    return f"{s}s"


#: The reason a thread is held while retention deletes it (``hold.lua``): the append script answers
#: "held" and the client waits. Followed by the hold's time (ms) and words for `status`.
HOLD_PREFIX = "hold:retention:"
#: A hold older than this was left by a crashed run: the next run releases it.
STALE_HOLD = timedelta(minutes=10)


def _delete(settings: Settings, tenant: str, idle: timedelta) -> int:
    assert settings.redis_url
    r = connect(settings.redis_url)
    hold = r.register_script(script_source("hold"))
    heads, fences = keys.heads(tenant), keys.fences(tenant)
    deleted = 0
    try:
        _release_stale_holds(r, hold, tenant)
        due = [row[0] for row in _due(settings, TERMINAL_DUE_SQL, tenant, idle, TERMINAL)]
        if not due:
            return 0
        with db.connect(settings) as conn:
            for thread in due:
                # Only a thread Redis no longer holds a head for (``maintain`` evicted it), and held while its rows
                # go: an append meanwhile waits (the script answers "held"), then finds no head here and none in
                # PostgreSQL and starts a new history at seq 1. Without the hold, an append restoring the old head
                # from PostgreSQL just before the delete would write above a hole.
                reason = f"{HOLD_PREFIX}{int(time.time() * 1000)}: retention is deleting this thread's expired history"
                if not hold(keys=[heads, fences], args=["hold", thread, reason]):
                    continue
                try:
                    if conn.execute(LOCK_DELETABLE_SQL, {"tenant": tenant, "thread": thread, "idle": idle,
                                                              "statuses": list(TERMINAL)}).fetchone():
                        for statement in DELETE_THREAD_SQL:
                            conn.execute(statement, {"tenant": tenant, "thread": thread})
                        deleted += 1
                    conn.commit()
                finally:
                    hold(keys=[heads, fences], args=["release", thread, reason])
    except redis.RedisError as e:
        raise translate(e, f"holding {tenant}'s expired threads for deletion") from e
    finally:
        r.close()
    if deleted:
        log.info("threads_deleted", tenant=tenant, threads=deleted)
    return deleted
