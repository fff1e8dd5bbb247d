"""Snapshot policy: fold a thread's state every K events, with the one reducer.

A snapshot stores the state at seq ``m·K`` as framed msgpack (exact round trip) together
with the chain hash at that seq, so a replay starting from it is tied to the verified chain.
Snapshots are incremental (``journal.state.encode_snapshot``): the old items of the growing
lists (messages, tool calls, …) are sealed once in ``snapshot_chunks`` and referenced by the
later snapshots, so a snapshot's size, and the cost of reading it, stay flat as a thread grows.
"""

from __future__ import annotations

from typing import Protocol

import psycopg

from journal import durable, logs
from journal.errors import BlobError, CodecError, JournalError
from journal.events import Event
from journal.reducer import ReducerError, Registry, apply
from journal.state import empty, encode_snapshot
from projections import chunks, statements

log = logs.get_logger("projections.snapshots")

class BlobSource(Protocol):
    """Fills in offloaded payloads for the fold, and says whether object storage is usable now."""

    def __call__(self, event: Event) -> Event: ...

    def available(self) -> bool: ...


def write_due(conn: psycopg.Connection, tenant: str, thread: str, old_seq: int, new_seq: int,
              chained: list[Event], every: int, resolve: BlobSource | None = None,
              registry: Registry | None = None) -> int:
    """Write the snapshots due at each multiple of ``every`` in (old_seq, new_seq]; return how many.

    ``registry`` is the custom reducers (``reducer.load_registry(settings.reducers)``): the same
    ones the replayer folds with, or a replay from this snapshot would differ from a full fold.

    ``resolve`` fills in payloads offloaded to object storage: the fold must see the same
    events here as in a replay. If a blob cannot be had, the snapshot is skipped (a later one,
    or the replay from an earlier one, covers it); the events are already safe.
    """
    targets = list(range((old_seq // every + 1) * every, new_seq + 1, every))
    if not targets:
        return 0
    chunks.share(conn, tenant, thread)  # before the previous snapshot is read: its chunks are reused by name
    row = conn.execute(statements.SNAPSHOT_AT_OR_BELOW, (tenant, thread, targets[0])).fetchone()
    # The previous snapshot's chunks: the new one reuses those its lists still begin with.
    previous, base_seq = None, 0
    if row is not None:
        try:
            previous, base_seq = durable.decode_snapshot_row(conn, tenant, thread, row[1]), row[0]
        except CodecError as e:
            # An unreadable snapshot (a chunk deleted or altered) must not stop projection: fold from
            # seq 1 instead, and the new snapshots are whole again (their chunks written anew).
            log.warning("snapshot_unreadable_folding_from_start", tenant=tenant, thread=thread, seq=row[0],
                        error=str(e))
    state = previous.state if previous is not None else empty(tenant, thread)
    if (resolve is None or not resolve.available()) and conn.execute(
        statements.OFFLOADED_IN_RANGE, (tenant, thread, base_seq, new_seq)).fetchone() == (True,):
        # Skip before loading anything: a fold far behind its last snapshot is costly to redo at
        # every batch while object storage is down.
        log.info("snapshot_deferred_blobs_unavailable", tenant=tenant, thread=thread, seq=targets[-1])
        return 0
    first_new = chained[0].seq if chained else new_seq + 1
    history = (durable.load_events(conn, tenant, thread, base_seq, first_new - 1)
               + [e for e in chained if e.seq > base_seq])
    hashes: dict[int, bytes] = dict(conn.execute(
        statements.HASHES_AT, (tenant, thread, targets)).fetchall())
    written = 0
    wanted = set(targets)
    for ev in history:
        if ev.blob is not None:
            try:
                if resolve is None:
                    raise BlobError("no object storage configured to read offloaded payloads")
                ev = resolve(ev)
            except JournalError as e:
                log.warning("snapshot_skipped_blob_unavailable", tenant=tenant, thread=thread, seq=ev.seq, error=str(e))
                return written
        try:
            state = apply(state, ev, registry)
        except ReducerError as e:
            # The event stays in the journal (it is valid data); only the snapshot cannot be built.
            log.error("snapshot_reducer_failed", tenant=tenant, thread=thread, seq=ev.seq, error=str(e))
            conn.execute(
                statements.INSERT_DEAD_LETTER,
                (tenant, f"reducer:{thread}:{ev.seq}", thread, ev.seq, f"reducer failed: {e}", None))
            return written
        if ev.seq in wanted and ev.seq in hashes:
            record, sealed, previous = encode_snapshot(state, previous)
            for ch in sealed:
                conn.execute(statements.INSERT_CHUNK, (tenant, thread, ch.id, ch.body))
            conn.execute(statements.INSERT_SNAPSHOT, (tenant, thread, ev.seq, record, hashes[ev.seq]))
            written += 1
    return written
