"""Resume a thread after a crash, a pause or a week of silence: ``JournalClient.resume`` lands here.

    r = client.resume("acme", "run-42")
    client.append("acme", "run-42", "message", {...}, expected_seq=r.seq)

The state is the latest across every tier (PostgreSQL + the Redis hot tail not yet projected),
and ``tenant_context`` is the state of the tenant's reserved thread ``_tenant`` (preferences,
constraints, summaries of earlier sessions), or None when nothing was ever written there.
Registered as the ``agent_journal.resume`` entry point, so ``journal`` never imports this package.
"""

from __future__ import annotations

from dataclasses import dataclass

from journal.blobs import BlobStore
from journal.chain import key_bytes
from journal.client import JournalClient
from journal.errors import NotFound
from journal.keys import TENANT_CONTEXT_THREAD, validate_id
from journal.reducer import fold
from journal.state import ThreadState, empty
from replayer.replay import Replayer
from replayer.sources import PostgresSource, RedisSource


@dataclass(frozen=True, slots=True)
class Resumed:
    """Where a thread stands: its state, the seq to pass as ``expected_seq``, and the tenant's context."""

    state: ThreadState
    seq: int
    tenant_context: ThreadState | None


def _replayer(client: JournalClient) -> Replayer:
    settings = client.settings
    # Reuse the client's Redis connection and blob store: resume must see exactly what the client wrote.
    pg = PostgresSource.connect(settings) if settings.database_url else None
    blobs = client.blobs if client.blobs is not None else (BlobStore.from_settings(settings) if settings.s3_url
                                                             else None)
    return Replayer(pg, RedisSource(client.redis), blobs, key=key_bytes(settings.hash_key))


def _latest(r: Replayer, tenant: str, thread: str) -> ThreadState | None:
    try:
        return r.replay(tenant, thread)
    except NotFound:
        return None


def resume(client: JournalClient, tenant: str, thread: str) -> Resumed:
    """The latest state of ``tenant/thread`` from all tiers (empty at seq 0 for a new thread)."""
    validate_id(tenant, "tenant")
    validate_id(thread, "thread")
    r = _replayer(client)
    try:
        if r.pg is None:
            # No PostgreSQL configured: the hot tail is the whole history there is.
            events = r.resolve_blobs(client.read(tenant, thread, resolve_blobs=False))
            state = fold(events, empty(tenant, thread), r.registry)
            ctx_events = client.read(tenant, TENANT_CONTEXT_THREAD, resolve_blobs=False)
            ctx = fold(r.resolve_blobs(ctx_events), empty(tenant, TENANT_CONTEXT_THREAD)) if ctx_events else None
        else:
            state = _latest(r, tenant, thread) or empty(tenant, thread)
            ctx = None if thread == TENANT_CONTEXT_THREAD else _latest(r, tenant, TENANT_CONTEXT_THREAD)
            if thread == TENANT_CONTEXT_THREAD:
                ctx = state if state.last_seq else None
    finally:
        if r.pg is not None:
            r.pg.close()  # only the connection opened here; the Redis connection is the client's
    return Resumed(state=state, seq=state.last_seq, tenant_context=ctx)
