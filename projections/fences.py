"""Fences: a thread stops taking appends after a reused sequence number, until an operator releases it.

The projector sets a fence in both stores (``threads.fenced`` and the tenant's Redis ``fenced``
hash) when it records a conflict; :func:`unfence` clears both and marks the thread's open
conflicts resolved, after the operator inspected the two bodies in ``journal.conflicts``.
"""

from __future__ import annotations

import redis
import sqlalchemy as sa

from journal import keys
from journal.errors import NothingToDo
from journal.redis_store import connect, translate
from journal.settings import Settings
from projections import db, tables

_t, _c = tables.threads, tables.conflicts
_THREAD = (_t.c.tenant_id == sa.bindparam("tenant")) & (_t.c.thread_id == sa.bindparam("thread"))
FENCED_SQL = tables.compiled(sa.select(_t.c.fenced).where(_THREAD))
RELEASE_SQL = tables.compiled(sa.update(_t).where(_THREAD).values(fenced=sa.false(), fence_reason=sa.null()))
RESOLVE_SQL = tables.compiled(
    sa.update(_c).where((_c.c.tenant_id == sa.bindparam("tenant")) & (_c.c.thread_id == sa.bindparam("thread"))
                        & _c.c.resolved_at.is_(None))
    .values(resolved_at=sa.func.now(), resolution=sa.bindparam("note")))


def unfence(settings: Settings, tenant: str, thread: str, note: str) -> int:
    """Release a fenced thread in PostgreSQL and Redis; return how many open conflicts were marked resolved.

    ``NothingToDo`` if the thread is unknown or not fenced in either store.
    """
    keys.validate_id(tenant, "tenant")
    keys.validate_id(thread, "thread")
    assert settings.redis_url
    r = connect(settings.redis_url)
    try:
        try:
            fenced_in_redis = bool(r.hexists(keys.fences(tenant), thread))
        except redis.RedisError as e:
            raise translate(e, "reading the fence") from e
        params = {"tenant": tenant, "thread": thread, "note": note}
        with db.connect(settings) as conn:
            row = conn.execute(FENCED_SQL, params).fetchone()
            if row is None and not fenced_in_redis:
                raise NothingToDo(f"no thread {tenant}/{thread} in PostgreSQL and no fence in Redis; check the "
                                  f"names (`agent-journal verify {tenant}` lists the tenant's threads)")
            if not (row and row[0]) and not fenced_in_redis:
                raise NothingToDo(f"thread {tenant}/{thread} is not fenced; nothing to unfence")
            conn.execute(RELEASE_SQL, params)
            resolved = conn.execute(RESOLVE_SQL, params).rowcount
            conn.commit()
        try:
            r.hdel(keys.fences(tenant), thread)
        except redis.RedisError as e:
            raise translate(e, "removing the fence") from e
        return resolved
    finally:
        r.close()
