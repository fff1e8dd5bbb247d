"""The projector's maintenance: trimming streams, and noticing and repairing a Redis that lost its tail.

Run every few seconds by the worker, between batches (never inside a batch's transaction).
Trimming keeps every entry not yet committed plus a hot window. Tail loss is seen by comparing
the committed mark in Redis with ``journal.offsets`` in PostgreSQL; the repair raises the tenant's
Lua heads to what PostgreSQL holds, so no seq is ever issued twice, and restores its fences.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

import redis
import sqlalchemy as sa

from journal import keys
from projections import metrics, tables
from projections.discovery import Discovery
from projections.links import Links
from projections.store import stream_position

_o, _t = tables.offsets, tables.threads
#: Committed stream times older than the grace period (younger marks may still be on their way).
SETTLED_OFFSETS_SQL = tables.compiled(
    sa.select(_o.c.tenant_id, _o.c.stream_ms)
    .where(_o.c.updated_at <= sa.func.now() - sa.bindparam("grace", type_=sa.Interval)))
#: A tenant's threads with the highest seq PostgreSQL holds for each, and their fences.
THREAD_TOPS_SQL = tables.compiled(
    sa.select(_t.c.thread_id, sa.func.greatest(_t.c.last_seq, _t.c.max_seq), _t.c.fenced, _t.c.fence_reason)
    .where(_t.c.tenant_id == sa.bindparam("tenant")))
#: A tenant's committed stream time.
TENANT_OFFSET_SQL = tables.compiled(sa.select(_o.c.stream_ms).where(_o.c.tenant_id == sa.bindparam("tenant")))


class Maintenance:
    def __init__(self, links: Links, discovery: Discovery, *, group: str, hot_window: int,
                 tail_check_grace_ms: int, log: Any) -> None:
        self.links = links
        self.discovery = discovery
        self.group = group
        self.hot_window = hot_window
        self.tail_check_grace_ms = tail_check_grace_ms
        self.log = log

    def observe_lag(self) -> None:
        metrics.observe_lag(self.links.redis, self.discovery.tenants, self.group)

    def trim(self) -> None:
        """XTRIM MINID below the oldest entry not yet committed, keeping ``hot_window`` entries."""
        tenants = sorted(self.discovery.tenants)
        pipe = self.links.redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.xlen(keys.stream(tenant))
        lengths = pipe.execute(raise_on_error=False)
        for tenant, length in zip(tenants, lengths, strict=True):
            if isinstance(length, Exception) or int(length) <= self.hot_window:
                continue  # nothing to trim: skip the per-stream round trips
            with contextlib.suppress(redis.ResponseError):  # a tenant's key changed under us: its tenant only
                self._trim_one(tenant)

    def _trim_one(self, tenant: str) -> None:
        """Trim one stream, if it holds more than the hot window below what is committed."""
        stream = keys.stream(tenant)
        groups = self.links.redis.xinfo_groups(stream)
        summary = self.links.redis.xpending(stream, self.group)
        group = next((g for g in groups if g["name"] in (self.group, self.group.encode())), None)
        if group is None:
            return
        delivered = group["last-delivered-id"]
        safe = delivered.decode() if isinstance(delivered, bytes) else str(delivered)
        if summary and summary.get("pending"):
            low = summary["min"]
            low = low.decode() if isinstance(low, bytes) else str(low)
            safe = min(safe, low, key=stream_position)
        elif safe == "0-0":
            return
        # Keep the hot window: the oldest id to keep is hot_window entries before `safe`.
        window: Any = self.links.redis.xrevrange(stream, max=safe, min="-", count=self.hot_window + 1)
        if len(window) <= self.hot_window:
            return
        keep_from = window[-2][0] if len(window) >= 2 else window[-1][0]
        self.links.redis.xtrim(stream, minid=keep_from.decode(), approximate=False)

    def check_tail(self) -> None:
        """Detect that Redis lost its tail, and repair the heads of the tenants concerned.

        After each commit the worker raises ``projected[COMMITTED_MARK]`` to the committed stream
        time. A server restored from an older AOF/RDB, or a fresh one, has an older mark (or none)
        than ``journal.offsets`` in PostgreSQL, even after new appends. Offsets younger than
        ``tail_check_grace_ms`` are skipped: their mark may still be on its way from another worker.
        """
        with self.links.pg.transaction():
            committed = {t: ms for t, ms in self.links.pg.execute(
                SETTLED_OFFSETS_SQL, {"grace": timedelta(milliseconds=self.tail_check_grace_ms)})}
        if not committed:
            return
        tenants = sorted(committed)
        pipe = self.links.redis.pipeline(transaction=False)
        for t in tenants:
            pipe.hget(keys.projected(t), keys.COMMITTED_MARK)
        for t, mark in zip(tenants, pipe.execute(raise_on_error=False), strict=True):
            try:
                behind = int(mark or 0) < committed[t]
            except (TypeError, ValueError):  # not a number: the tenant's user wrote it (its own key)
                behind = True
            if behind:
                self.repair_heads(t, committed[t])
        self.discovery.add_trusted(tenants)

    def repair_heads(self, tenant: str, committed_ms: int | None = None) -> int:
        """Raise the tenant's Lua heads to at least what PostgreSQL holds, and restore its fences."""
        with self.links.pg.transaction():
            rows = self.links.pg.execute(THREAD_TOPS_SQL, {"tenant": tenant}).fetchall()
            if committed_ms is None:
                found = self.links.pg.execute(TENANT_OFFSET_SQL, {"tenant": tenant}).fetchone()
                committed_ms = found[0] if found else 0
        raised = 0
        script = self.links.script("raise_heads")
        try:
            for i in range(0, len(rows), 500):
                args: list[Any] = []
                for thread, seq, _, _ in rows[i : i + 500]:
                    args += [thread, seq]
                raised += int(script(keys=[keys.heads(tenant)], args=args))
            fenced = {thread: reason or "fenced in PostgreSQL" for thread, _, is_fenced, reason in rows if is_fenced}
            if fenced:
                self.links.redis.hset(keys.fences(tenant), mapping=fenced)
            script(keys=[keys.projected(tenant)], args=[keys.COMMITTED_MARK, committed_ms])
        except redis.ResponseError as e:
            # The tenant's user can write non-numbers into its own heads or marks, on which the script fails:
            # its own appends then fail too; other tenants' repairs go on.
            self.log.error("head_repair_refused", tenant=tenant, error=str(e)[:500])
            return 0
        # Raised heads mean Redis really had lost its tail; none raised was a harmless false alarm
        # (a mark overtaken by another worker's commit).
        (self.log.error if raised else self.log.info)(
            "redis_lost_tail_heads_restored", tenant=tenant, threads=len(rows), raised=raised, fenced=len(fenced))
        metrics.TAIL_REPAIRS.inc()
        return raised
