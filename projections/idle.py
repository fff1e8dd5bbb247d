"""Idle threads leave Redis: nothing per thread lives there forever.

A thread quiet for longer than ``idle`` whose every event PostgreSQL holds (``threads.last_seq =
max_seq``, not fenced) loses its ``heads`` and ``projected`` entries (``journal/lua/evict.lua``,
which checks that no append came in since). The tenant's ``evicted`` flag tells the append
script that a thread without a head may have a history: the client then reads the head from
PostgreSQL and passes it back as a floor, so the next seq continues the thread (as after a tail
loss, but asked for, not repaired). Once every thread of a tenant is evicted, its stream is
trimmed of every entry the projector has acknowledged: an idle tenant's Redis memory is its
empty stream, consumer group and flag. Idempotency keys expire by themselves
(``JOURNAL_IDEMPOTENCY_TTL``, by default the same 7 days as the default idle time).

Safe while agents append and projectors run, and re-runnable at any time (cron or ``--loop``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from journal import keys, logs
from journal.redis_store import connect, script_source, translate
from journal.settings import Settings
from projections import db, tables

log = logs.get_logger("projections.idle")
GROUP = "projector"
CHUNK = 500

_t = tables.threads
CANDIDATES_SQL = tables.compiled(
    sa.select(_t.c.tenant_id, _t.c.thread_id, _t.c.last_seq)
    .where((_t.c.updated_at <= sa.func.now() - sa.bindparam("idle", type_=sa.Interval))
           & (_t.c.last_seq == _t.c.max_seq) & sa.not_(_t.c.fenced)
           & (sa.bindparam("all_tenants", type_=sa.Boolean)
              | (_t.c.tenant_id == sa.any_(sa.bindparam("tenants", type_=ARRAY(sa.Text))))))
    .order_by(_t.c.tenant_id, _t.c.thread_id))


@dataclass(frozen=True, slots=True)
class Evicted:
    """What one pass did for one tenant."""

    tenant: str
    threads: int
    entries_trimmed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evict_idle(settings: Settings, idle: timedelta, tenants: Sequence[str] = ()) -> list[Evicted]:
    """Drop the Redis entries of threads idle for ``idle`` or longer (of ``tenants``, or of all)."""
    for t in tenants:
        keys.validate_id(t, "tenant")
    with db.connect(settings) as conn:
        rows = conn.execute(CANDIDATES_SQL, {"idle": idle, "all_tenants": not tenants,
                                             "tenants": list(tenants)}).fetchall()
        conn.rollback()
    by_tenant: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for tenant, thread, seq in rows:
        by_tenant[tenant].append((thread, int(seq)))
    assert settings.redis_url
    r = connect(settings.redis_url)
    script = r.register_script(script_source("evict"))
    out = []
    try:
        for tenant, threads in by_tenant.items():
            dropped = 0
            for start in range(0, len(threads), CHUNK):
                args = [v for pair in threads[start:start + CHUNK] for v in pair]
                dropped += int(script(keys=[keys.heads(tenant), keys.projected(tenant), keys.evicted(tenant)],
                                      args=args))
            trimmed = _trim_if_idle(r, tenant) if dropped else 0
            out.append(Evicted(tenant, dropped, trimmed))
            log.info("threads_evicted", tenant=tenant, threads=dropped, entries_trimmed=trimmed)
    except redis.RedisError as e:
        raise translate(e, "evicting idle threads") from e
    finally:
        r.close()
    return out


def _trim_if_idle(r: redis.Redis, tenant: str) -> int:
    """With no thread left in ``heads``, trim every entry the projector delivered and acknowledged (and drop
    the ``projected`` feed)."""
    if r.hlen(keys.heads(tenant)):
        return 0
    # Only wakes clients waiting for durability 'projected' (none wait on a tenant with no thread in Redis).
    r.delete(keys.projected_feed(tenant))
    stream = keys.stream(tenant)
    group = next((g for g in r.xinfo_groups(stream) if g["name"] in (GROUP, GROUP.encode())), None)
    if group is None or int(group["pending"]):
        return 0
    delivered = group["last-delivered-id"]
    ms, seq = (delivered.decode() if isinstance(delivered, bytes) else str(delivered)).split("-")
    # Entries above the last delivered id are kept whatever arrives meanwhile; those at or below it
    # were all acknowledged when pending was 0, and an acknowledged entry never becomes pending again.
    return int(r.xtrim(stream, minid=f"{ms}-{int(seq) + 1}", approximate=False))
