"""Re-project a dead letter (``agent-journal dead-letters T --retry ID``), e.g. after a reducer or projector fix.

Two kinds of dead letter, two retries:

* **A stream entry** (``stream_id`` is the entry's id): its fields are taken from the stream if
  Redis still holds the entry, else from the dead letter's copy (the msgpack of the fields the
  intake kept), checked by the projector's intake again and written by the projector's own batch
  (``store.write_batch``: chain, conflicts, snapshots as usual). Projected (or found already
  stored, or recorded as a conflict), the dead letter is removed.
* **A reducer failure** (``reducer:{thread}:{seq}``, written when a custom reducer raised while a
  snapshot was folded): the thread is folded again from the snapshot below that seq with the
  current ``JOURNAL_REDUCERS``; if it now passes, the due snapshots are written and the dead letter
  is removed.

Still refused, the dead letter stays with one more attempt and the new reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import msgpack
import psycopg
import redis
import sqlalchemy as sa

from journal import durable, keys
from journal.chain import key_bytes
from journal.errors import JournalError, NotFound
from journal.reducer import ReducerError, apply, load_registry
from journal.settings import Settings
from journal.state import empty
from projections import db, snapshots, statements, tables
from projections.intake import BODY_HEADROOM, Intake, storable_text
from projections.rebuild import snapshot_blobs
from projections.store import Item, write_batch

_d = tables.dead_letters
#: One dead letter, with what a retry needs.
DEAD_LETTER_SQL = tables.compiled(
    sa.select(_d.c.thread_id, _d.c.seq, _d.c.entry, _d.c.attempts)
    .where(_d.c.tenant_id == sa.bindparam("tenant"), _d.c.stream_id == sa.bindparam("sid")))
#: Remove a dead letter once its retry projected it.
DELETE_DEAD_LETTER_SQL = tables.compiled(
    sa.delete(_d).where(_d.c.tenant_id == sa.bindparam("tenant"), _d.c.stream_id == sa.bindparam("sid")))
#: The thread's verified head, up to which a reducer retry folds.
THREAD_HEAD_SQL = tables.compiled(
    sa.select(tables.threads.c.last_seq).where(tables.threads.c.tenant_id == sa.bindparam("tenant"),
                                               tables.threads.c.thread_id == sa.bindparam("thread")))

REDUCER_PREFIX = "reducer:"


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """What a retry did: projected (dead letter removed), or still refused with its attempts and reason."""

    tenant: str
    stream_id: str
    projected: bool
    attempts: int
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def retry_dead_letter(settings: Settings, tenant: str, stream_id: str) -> RetryOutcome:
    """Project the dead letter ``stream_id`` of ``tenant`` again (see the module docstring)."""
    keys.validate_id(tenant, "tenant")
    with db.connect(settings) as conn:
        row = conn.execute(DEAD_LETTER_SQL, {"tenant": tenant, "sid": stream_id}).fetchone()
        conn.rollback()
        if row is None:
            raise NotFound(f"tenant {tenant} has no dead letter {stream_id!r}; list them with "
                           f"`agent-journal dead-letters {tenant}`")
        thread, seq, entry, attempts = row
        if stream_id.startswith(REDUCER_PREFIX) and thread is not None and seq is not None:
            reason = _retry_fold(settings, conn, tenant, thread, int(seq))
        else:
            reason = _retry_entry(settings, conn, tenant, stream_id, None if entry is None else bytes(entry))
        if reason is None:
            conn.execute(DELETE_DEAD_LETTER_SQL, {"tenant": tenant, "sid": stream_id})
            conn.commit()
            return RetryOutcome(tenant, stream_id, True, int(attempts), None)
        reason = storable_text(reason)
        # The projector's own dead-letter write: one more attempt, the newest reason.
        conn.execute(statements.INSERT_DEAD_LETTER, (tenant, stream_id, thread, seq, reason, entry))
        conn.commit()
        return RetryOutcome(tenant, stream_id, False, int(attempts) + 1, reason)


def _retry_entry(settings: Settings, conn: psycopg.Connection, tenant: str, stream_id: str,
                 entry: bytes | None) -> str | None:
    """Admit and write the entry as the projector would; None if it is now stored, else why not."""
    fields = _stream_fields(settings, tenant, stream_id) or _kept_fields(entry)
    if fields is None:
        return ("the dead letter keeps no stream entry fields to project (only an event body, or nothing) and "
                "Redis no longer holds the entry")
    limit = settings.max_payload_bytes + BODY_HEADROOM
    try:
        ev, body = Intake(limit, limit).admit(tenant, stream_id, fields)
        item = Item.of(stream_id, ev, body)
    except (JournalError, KeyError, ValueError, TypeError, OverflowError, RecursionError) as e:
        return f"undecodable: {e}"
    try:
        write_batch(conn, [item], key=key_bytes(settings.hash_key), snapshot_every=settings.snapshot_every,
                    resolve=snapshot_blobs(settings), registry=load_registry(settings.reducers))
    except psycopg.OperationalError:
        raise
    except psycopg.Error as e:
        return f"PostgreSQL refused it again: {e}"
    return None


def _stream_fields(settings: Settings, tenant: str, stream_id: str) -> dict[bytes, Any] | None:
    if not settings.redis_url:
        return None
    try:
        r = redis.Redis.from_url(settings.redis_url)
        try:
            found: Any = r.xrange(keys.stream(tenant), stream_id, stream_id)
        finally:
            r.close()
    except (redis.RedisError, ValueError):
        return None  # not a stream id, or Redis away: the dead letter's own copy is used
    if not found:
        return None
    fields: dict[Any, Any] = found[0][1]
    return {k if isinstance(k, bytes) else k.encode(): v for k, v in fields.items()}


def _kept_fields(entry: bytes | None) -> dict[bytes, Any] | None:
    """The stream fields the intake kept (msgpack of the entry's fields), or None if it kept something else."""
    if entry is None:
        return None
    try:
        fields = msgpack.unpackb(entry, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(fields, dict):
        return None
    return {k.encode() if isinstance(k, str) else k: v.encode() if isinstance(v, str) else v
            for k, v in fields.items()}


def _retry_fold(settings: Settings, conn: psycopg.Connection, tenant: str, thread: str, seq: int) -> str | None:
    """Fold the thread from the snapshot below ``seq`` to its head; write the due snapshots if the reducer passes."""
    registry = load_registry(settings.reducers)
    resolve = snapshot_blobs(settings)
    head_row = conn.execute(THREAD_HEAD_SQL, {"tenant": tenant, "thread": thread}).fetchone()
    head = int(head_row[0]) if head_row else 0
    if head < seq:
        return f"the thread's verified head is {head}, below seq {seq}: project its events first"
    snap = conn.execute(statements.SNAPSHOT_AT_OR_BELOW, (tenant, thread, seq - 1)).fetchone()
    # Snapshots are incremental: their chunks are read on this connection.
    state = durable.decode_snapshot_row(conn, tenant, thread, bytes(snap[1])).state if snap else empty(tenant, thread)
    try:
        for ev in durable.load_events(conn, tenant, thread, state.last_seq, seq):
            state = apply(state, resolve(ev) if ev.blob is not None else ev, registry)
    except ReducerError as e:
        conn.rollback()
        return f"reducer failed: {e}"
    except JournalError as e:
        conn.rollback()
        return f"could not fold: {e}"
    snapshots.write_due(conn, tenant, thread, seq - 1, head, [], settings.snapshot_every, resolve, registry)
    return None
