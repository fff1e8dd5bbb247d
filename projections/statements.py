"""Every hand-written SQL statement of ``projections``, named once.

The schema is ``projections.tables`` (SQLAlchemy Core); a simple statement off the hot path is
built from it with ``tables.compiled(...)`` next to its use (``fences``, ``purge``, ``inspect``,
``idle``, ``maintenance``, ``db``…). What is written by hand lives here, each with why:

* the batch path (``store``, ``snapshots``): the binary ``COPY`` into a temporary table, the
  ``unnest()`` statements pipelined under the threads' row locks, ``SET LOCAL`` planner settings.
  Their ``%b`` (binary) parameters, join shapes and ``LATERAL … OFFSET 0`` are measured choices a
  query builder would not keep;
* what the Core tables do not declare: catalogs (``pg_roles``, ``pg_stat_activity``), Alembic's
  version table, role DDL (``psycopg.sql`` templates, composed with ``Identifier``/``Literal`` only,
  never with text).

The client's reads of the durable tier (``journal.durable``) are reused, not repeated here.
"""

from __future__ import annotations

from psycopg import sql

# -- the batch (projections.store) -----------------------------------------------------------------

#: Every join of a batch looks up keys from an unnest() batch. The planner prices that as a hash join
#: over a whole table (threads, events) once the batch has a few thousand keys: measured 3× slower
#: at 50,000 threads, and it grows with the table. Index nested loops cost only what the batch touches.
NO_HASHJOIN = "SET LOCAL enable_hashjoin = off"
#: As :data:`NO_HASHJOIN`, for merge joins (the planner's next choice once hash joins are off).
NO_MERGEJOIN = "SET LOCAL enable_mergejoin = off"

#: Create the batch's missing ``threads`` rows (pipelined before :data:`LOCK_THREADS`).
INSERT_THREADS = ("INSERT INTO journal.threads (tenant_id, thread_id) SELECT * FROM unnest(%b::text[], %b::text[]) "
                  "ON CONFLICT DO NOTHING")
#: Lock the batch's threads in key order (so workers never deadlock) and read their heads.
LOCK_THREADS = ("SELECT t.tenant_id, t.thread_id, t.last_seq, t.last_hash, t.max_seq, t.status, t.branches "
                "FROM journal.threads t JOIN unnest(%b::text[], %b::text[]) u(a, b) "
                "ON t.tenant_id = u.a AND t.thread_id = u.b ORDER BY t.tenant_id, t.thread_id FOR UPDATE OF t")
#: The fast path of a small batch (``store.KnownHeads``): lock the batch's threads in key order as
#: :data:`LOCK_THREADS` does, and fail — a division by zero, which aborts the pipelined writes and COMMIT
#: behind it — unless every one still has the head this worker committed last, so the batch planned on
#: those heads is what :data:`LOCK_THREADS` would have planned. The last parameter is the thread count.
EXPECT_HEADS = (
    "WITH l AS (SELECT t.last_seq, t.last_hash, t.max_seq, t.status, t.branches, u.s, u.h, u.m, u.st, u.br "
    "FROM journal.threads t JOIN unnest(%b::text[], %b::text[], %b::bigint[], %b::bytea[], %b::bigint[], "
    "%b::text[], %b::text[]) u(a, b, s, h, m, st, br) ON t.tenant_id = u.a AND t.thread_id = u.b "
    "ORDER BY t.tenant_id, t.thread_id FOR UPDATE OF t) "
    "SELECT 1 / (count(*) FILTER (WHERE (last_seq, last_hash, max_seq, status, branches) "
    "IS NOT DISTINCT FROM (s, h, m, st, br::jsonb)) = %b)::int FROM l")

#: The stored bodies of incoming seqs at or below their thread's max_seq (redelivery or conflict?).
STORED_BODIES = ("SELECT e.tenant_id, e.thread_id, e.seq, e.body FROM journal.events e "
                 "JOIN unnest(%b::text[], %b::text[], %b::bigint[]) u(a, b, c) "
                 "ON e.tenant_id = u.a AND e.thread_id = u.b AND e.seq = u.c")

#: Per (tenant, thread, verified head): events stored above the head without a hash, waiting for an
#: earlier seq. LATERAL … OFFSET 0: one index range scan per thread. As a join, the planner scans every
#: partition for "hash IS NULL" (it expects few such rows): 0.5 s at 1M events, not 22 ms.
UNCHAINED = ("SELECT u.a, u.b, e.seq, e.ts_ms, e.body FROM unnest(%b::text[], %b::text[], %b::bigint[]) u(a, b, c) "
             "CROSS JOIN LATERAL (SELECT seq, ts_ms, body FROM journal.events WHERE tenant_id = u.a "
             "AND thread_id = u.b AND seq > u.c AND hash IS NULL OFFSET 0) e")

#: The staging table's columns, in :data:`COPY_TYPES`' order: ``journal.events`` but its defaults.
STAGE_COLUMNS = ("t text, th text, s bigint, ty text, n text, tl text, ag text, ac text, ts bigint, p text, "
                 "bs text, bz bigint, ik text, v smallint, b bytea, sid text, ph bytea, h bytea")
#: The binary COPY's types of :data:`STAGE_COLUMNS` (``copy.set_types``).
COPY_TYPES = ["text", "text", "int8", "text", "text", "text", "text", "text", "int8", "text", "text", "int8",
              "text", "int2", "bytea", "text", "bytea", "bytea"]
#: The session's staging table, emptied at each commit. COPY straight into journal.events is refused
#: under row-level security; a session's own temporary table has none (the INSERT still passes the policies).
CREATE_STAGE = f"CREATE TEMP TABLE IF NOT EXISTS journal_batch ({STAGE_COLUMNS}) ON COMMIT DELETE ROWS"
#: Rows into the staging table by binary COPY: the C fast path, far cheaper than bound INSERT rows.
COPY_STAGE = "COPY pg_temp.journal_batch FROM STDIN (FORMAT BINARY)"
#: The staged rows into ``journal.events``. No ON CONFLICT: every seq inserted is above the thread's
#: max_seq, read under the thread's row lock, so it cannot exist; a speculative insertion per row would
#: cost a third of the statement.
INSERT_EVENTS = """
INSERT INTO journal.events (tenant_id, thread_id, seq, type, node, tool, agent_id, actor, ts_ms, appended_at,
    payload, blob_sha256, blob_size, idempotency_key, version, body, stream_id, prev_hash, hash)
SELECT t, th, s, ty, n, tl, ag, ac::jsonb, ts, to_timestamp(ts / 1000.0), p::jsonb, bs, bz, ik, v, b, sid, ph, h
FROM pg_temp.journal_batch
"""

#: A small batch's rows straight from unnest() arrays (:data:`COPY_TYPES` order), pipelined with the other
#: writes and the COMMIT: the COPY costs two round trips of its own (CopyIn, then its completion), which for
#: a handful of rows is most of the batch (``store.SMALL_BATCH``).
INSERT_EVENTS_UNNEST = """
INSERT INTO journal.events (tenant_id, thread_id, seq, type, node, tool, agent_id, actor, ts_ms, appended_at,
    payload, blob_sha256, blob_size, idempotency_key, version, body, stream_id, prev_hash, hash)
SELECT t, th, s, ty, n, tl, ag, ac::jsonb, ts, to_timestamp(ts / 1000.0), p::jsonb, bs, bz, ik, v, b, sid, ph, h
FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
    %b::bigint[], %b::text[], %b::text[], %b::bigint[], %b::text[], %b::smallint[], %b::bytea[], %b::text[],
    %b::bytea[], %b::bytea[]) u(t, th, s, ty, n, tl, ag, ac, ts, p, bs, bz, ik, v, b, sid, ph, h)
"""

#: Chain hashes of events stored earlier without one, now that their gap is filled (one unnest() batch).
CHAIN_HASHES = ("UPDATE journal.events e SET prev_hash = u.p, hash = u.h FROM unnest(%b::text[], %b::text[], "
                "%b::bigint[], %b::bytea[], %b::bytea[]) u(a, b, s, p, h) "
                "WHERE e.tenant_id = u.a AND e.thread_id = u.b AND e.seq = u.s")
#: The threads' new heads, status, node, branches and counts (one unnest() batch; the status comes from
#: ``journal.lifecycle``, which also makes an abandoned thread that receives events active again).
ADVANCE_THREADS = (
    "UPDATE journal.threads t SET last_seq = u.s, last_hash = u.h, max_seq = u.m, status = u.st, node = u.n, "
    "branches = COALESCE(u.br::jsonb, t.branches), event_count = t.event_count + u.c, updated_at = now() "
    "FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bytea[], %b::bigint[], %b::text[], %b::text[], "
    "%b::text[], %b::bigint[]) u(a, b, s, h, m, st, n, br, c) WHERE t.tenant_id = u.a AND t.thread_id = u.b")
#: A reused seq with a different body: both bodies kept, nothing overwritten (executemany, rare).
INSERT_CONFLICT = ("INSERT INTO journal.conflicts (tenant_id, thread_id, seq, incoming_stream_id, existing_body, "
                   "incoming_body) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")
#: Fence the threads of the batch's conflicts (one unnest() batch).
FENCE_THREADS = ("UPDATE journal.threads t SET fenced = true, "
                 "fence_reason = 'sequence conflict; see journal.conflicts' "
                 "FROM unnest(%b::text[], %b::text[]) u(a, b) WHERE t.tenant_id = u.a AND t.thread_id = u.b")
#: The one dead-letter write (the batch's poison, the committer's bare fallback, a failed snapshot fold):
#: parameters (tenant, stream_id, thread or NULL, seq or NULL, reason, entry or NULL). A repeat counts an
#: attempt and keeps the newest reason; the first entry stays.
INSERT_DEAD_LETTER = ("INSERT INTO journal.dead_letters (tenant_id, stream_id, thread_id, seq, reason, entry) "
                      "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, stream_id) DO UPDATE SET "
                      "attempts = journal.dead_letters.attempts + 1, last_seen = now(), reason = EXCLUDED.reason")
#: The stream position consumed per tenant, only ever moving forward (same transaction as the rows), and
#: returned: each tenant's committed stream time before (``before`` sees the statement's snapshot, not the
#: INSERT's effect; a new tenant has no row). One statement, not a SELECT before it: the pipeline's
#: statements each cost ~25 µs of psycopg, and that SELECT was planned anew at every batch (27 µs).
ADVANCE_OFFSETS = ("WITH before AS (SELECT tenant_id, stream_ms FROM journal.offsets WHERE tenant_id = ANY(%b)), "
                   "moved AS (INSERT INTO journal.offsets (tenant_id, stream_ms, stream_seq) "
                   "SELECT * FROM unnest(%b::text[], %b::bigint[], %b::bigint[]) "
                   "ON CONFLICT (tenant_id) DO UPDATE SET updated_at = now(), "
                   "stream_ms = GREATEST(journal.offsets.stream_ms, EXCLUDED.stream_ms), "
                   "stream_seq = CASE WHEN (EXCLUDED.stream_ms, EXCLUDED.stream_seq) > "
                   "(journal.offsets.stream_ms, journal.offsets.stream_seq) THEN EXCLUDED.stream_seq "
                   "ELSE journal.offsets.stream_seq END) "
                   "SELECT tenant_id, stream_ms FROM before")
#: Sent as a statement inside the pipeline (not ``conn.commit()``), so PostgreSQL commits while the
#: projector decodes its next batch.
COMMIT = "COMMIT"

# -- snapshots (projections.snapshots, on the batch path when a snapshot is due) -------------------
# The events between a snapshot and the batch are read with ``journal.durable.EVENTS_SQL``.

#: The newest snapshot at or below a seq, with its seq (``durable.SNAPSHOT_SQL`` has the state only).
SNAPSHOT_AT_OR_BELOW = ("SELECT seq, state FROM journal.snapshots WHERE tenant_id = %s AND thread_id = %s "
                        "AND seq <= %s ORDER BY seq DESC LIMIT 1")
#: Whether a seq range of the thread has an offloaded payload (a fold would need object storage).
OFFLOADED_IN_RANGE = ("SELECT EXISTS (SELECT 1 FROM journal.events WHERE tenant_id = %s AND thread_id = %s "
                      "AND seq > %s AND seq <= %s AND blob_sha256 IS NOT NULL)")
#: The chain hashes at the snapshot seqs.
HASHES_AT = "SELECT seq, hash FROM journal.events WHERE tenant_id = %s AND thread_id = %s AND seq = ANY(%s)"
#: A snapshot; a second writer of the same seq changes nothing (the fold is deterministic).
INSERT_SNAPSHOT = ("INSERT INTO journal.snapshots (tenant_id, thread_id, seq, state, hash) "
                   "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")
#: A sealed snapshot chunk; named by the hash of its body, so a second write of it changes nothing.
INSERT_CHUNK = ("INSERT INTO journal.snapshot_chunks (tenant_id, thread_id, chunk_id, body) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING")

# -- snapshot chunks no snapshot references (projections.chunks) ----------------------------------
# A writer of chunks and snapshots holds its thread's lock shared, the sweep exclusively: an INSERT of a
# chunk that already exists changes nothing, so a sweep between it and the snapshot naming the chunk
# would leave that snapshot unreadable. Two int4 keys (hashtext): a collision only makes one wait.

#: Held (shared) until the transaction ends by whoever writes a thread's chunks and the snapshots naming them.
SHARE_CHUNKS = "SELECT pg_advisory_xact_lock_shared(hashtext(%s), hashtext(%s))"
#: The sweep's lock; true if taken. Never waited for: a busy thread is swept another time.
TRY_SWEEP_CHUNKS = "SELECT pg_try_advisory_xact_lock(hashtext(%s), hashtext(%s))"
#: Every snapshot record of a thread that may name chunks: the live ones and a rebuild's shadow ones.
THREAD_SNAPSHOT_RECORDS = ("SELECT state FROM journal.snapshots "
                           "WHERE tenant_id = %(tenant)s AND thread_id = %(thread)s "
                           "UNION ALL SELECT state FROM journal.rebuild_snapshots "
                           "WHERE tenant_id = %(tenant)s AND thread_id = %(thread)s")
#: Delete a thread's chunks but those named (the sweep's list of every chunk a snapshot needs).
DELETE_CHUNKS_BUT = ("DELETE FROM journal.snapshot_chunks WHERE tenant_id = %s AND thread_id = %s "
                     "AND NOT (chunk_id = ANY(%s::bytea[]))")
#: Threads that have chunks, after a (tenant, thread) key, in key order (``agent-journal sweep-chunks``).
THREADS_WITH_CHUNKS = ("SELECT DISTINCT tenant_id, thread_id FROM journal.snapshot_chunks "
                       "WHERE (tenant_id, thread_id) > (%s, %s) AND (%s::text IS NULL OR tenant_id = %s) "
                       "ORDER BY tenant_id, thread_id LIMIT %s")

# -- outside the Core tables: catalogs, Alembic, roles (projections.db, projections.cli) ------------

#: Alembic's current revision (its version table is Alembic's, not declared in ``tables``).
CURRENT_REVISION = "SELECT version_num FROM journal.alembic_version"
#: Whether a role exists (the cluster catalog).
ROLE_EXISTS = "SELECT 1 FROM pg_roles WHERE rolname = %s"
#: End the sessions of a login role, before dropping it.
TERMINATE_SESSIONS = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"
#: ``.format(Identifier(role))``: act as ``role`` (row-level security applies to it).
SET_ROLE = sql.SQL("SET ROLE {}")
#: Back to the session's login role.
RESET_ROLE = "RESET ROLE"
#: ``.format(Identifier(role), Literal(password))``: a tenant reader's login role.
CREATE_READER = sql.SQL("CREATE ROLE {} LOGIN NOCREATEDB NOCREATEROLE PASSWORD {}")
#: As :data:`CREATE_READER`, for a role that exists (its password rotates).
ALTER_READER = sql.SQL("ALTER ROLE {} LOGIN NOCREATEDB NOCREATEROLE PASSWORD {}")
#: ``.format(Identifier(granted), Identifier(grantee))``: role membership.
GRANT_ROLE = sql.SQL("GRANT {} TO {}")
#: ``.format(Identifier(role))``.
DROP_ROLE = sql.SQL("DROP ROLE {}")

# -- rebuild (projections.rebuild): shadow tables, then a swap per tenant under the threads' row locks ----

#: A tenant's threads (after a thread id, in key order) whose shadow row is missing or behind the events:
#: a stored seq above it that is chained or above its max_seq. The tenant is given twice so the
#: ``events`` partition is chosen at plan time; the EXISTS is one index range scan above the shadow's head.
REBUILD_PENDING = (
    "SELECT t.thread_id, r.last_seq FROM journal.threads t LEFT JOIN journal.rebuild_threads r "
    "ON r.tenant_id = t.tenant_id AND r.thread_id = t.thread_id "
    "WHERE t.tenant_id = %(tenant)s AND t.thread_id > %(after)s AND (r.thread_id IS NULL OR EXISTS ("
    "SELECT 1 FROM journal.events e WHERE e.tenant_id = %(tenant)s AND e.thread_id = t.thread_id "
    "AND e.seq > r.last_seq AND (e.seq > r.max_seq OR e.hash IS NOT NULL))) "
    "ORDER BY t.thread_id LIMIT %(limit)s")
#: As :data:`REBUILD_PENDING`, among the threads the swap holds locked (``%(locked)s``, a text[]).
REBUILD_PENDING_LOCKED = REBUILD_PENDING.replace(
    "t.thread_id > %(after)s", "t.thread_id > %(after)s AND t.thread_id = ANY(%(locked)s)")
#: Without object storage an archived thread's history cannot be read: these leave archived threads as they are.
_NOT_ARCHIVED = ("t.thread_id > %(after)s AND NOT EXISTS (SELECT 1 FROM journal.archives a "
                 "WHERE a.tenant_id = %(tenant)s AND a.thread_id = t.thread_id)")
REBUILD_PENDING_NOT_ARCHIVED = REBUILD_PENDING.replace("t.thread_id > %(after)s", _NOT_ARCHIVED)
REBUILD_PENDING_LOCKED_NOT_ARCHIVED = REBUILD_PENDING_LOCKED.replace("t.thread_id > %(after)s", _NOT_ARCHIVED)
#: A thread's stored events above a seq, with their chain hash (NULL while an earlier seq is in flight).
REBUILD_EVENTS = ("SELECT seq, ts_ms, body, hash FROM journal.events WHERE tenant_id = %s AND thread_id = %s "
                  "AND seq > %s ORDER BY seq LIMIT %s")
#: Events stored above the chained head (waiting for an earlier seq): how many, and the highest.
REBUILD_ABOVE_HEAD = ("SELECT count(*), max(seq) FROM journal.events WHERE tenant_id = %s AND thread_id = %s "
                      "AND seq > %s")
#: Where the rebuild of a thread got to (a rebuild killed before its swap resumes here).
SHADOW_THREAD = ("SELECT status, last_seq, last_hash, branches FROM journal.rebuild_threads "
                 "WHERE tenant_id = %s AND thread_id = %s")
#: The newest shadow snapshot at or below a seq.
SHADOW_SNAPSHOT_AT_OR_BELOW = ("SELECT seq, state FROM journal.rebuild_snapshots WHERE tenant_id = %s "
                               "AND thread_id = %s AND seq <= %s ORDER BY seq DESC LIMIT 1")
#: A thread's shadow row, written with its shadow snapshots in one transaction.
UPSERT_SHADOW_THREAD = (
    "INSERT INTO journal.rebuild_threads (tenant_id, thread_id, status, last_seq, last_hash, max_seq, node, "
    "event_count, branches) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb) "
    "ON CONFLICT (tenant_id, thread_id) DO UPDATE SET status = EXCLUDED.status, last_seq = EXCLUDED.last_seq, "
    "last_hash = EXCLUDED.last_hash, max_seq = EXCLUDED.max_seq, node = EXCLUDED.node, "
    "event_count = EXCLUDED.event_count, branches = EXCLUDED.branches")
#: A shadow snapshot (a resumed chunk may write one again: the fold is deterministic).
INSERT_SHADOW_SNAPSHOT = ("INSERT INTO journal.rebuild_snapshots (tenant_id, thread_id, seq, state, hash) "
                          "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING")
#: Per tenant: events of its threads (max_seq) and how many of them its shadow rows cover, for progress.
REBUILD_TOTALS = ("SELECT t.tenant_id, COALESCE(sum(t.max_seq), 0), COALESCE(sum(LEAST(r.last_seq, t.max_seq)), 0) "
                  "FROM journal.threads t LEFT JOIN journal.rebuild_threads r ON r.tenant_id = t.tenant_id "
                  "AND r.thread_id = t.thread_id WHERE t.tenant_id = ANY(%s) AND NOT EXISTS (SELECT 1 FROM "
                  "journal.archives a WHERE a.tenant_id = t.tenant_id AND a.thread_id = t.thread_id) "
                  "GROUP BY t.tenant_id")
#: Every tenant with threads.
REBUILD_TENANTS = "SELECT DISTINCT tenant_id FROM journal.threads ORDER BY tenant_id"
#: The swap's lock: every threads row of the tenant, in key order as the projector's batches take them
#: (``LOCK_THREADS``), so the two never deadlock. A batch of the tenant waits for the swap, or the swap for it.
SWAP_LOCK = "SELECT thread_id FROM journal.threads WHERE tenant_id = %s ORDER BY thread_id FOR UPDATE"
#: The live rows the shadow disagrees with take the shadow's values (``updated_at``, the last activity, and
#: the fences stay). Its row count is the number of rows changed.
SWAP_THREADS = (
    "UPDATE journal.threads t SET status = r.status, last_seq = r.last_seq, last_hash = r.last_hash, "
    "max_seq = r.max_seq, node = r.node, event_count = r.event_count, branches = r.branches "
    "FROM journal.rebuild_threads r WHERE t.tenant_id = %(tenant)s AND r.tenant_id = t.tenant_id "
    "AND r.thread_id = t.thread_id AND t.thread_id = ANY(%(locked)s) AND (t.status, t.last_seq, t.last_hash, "
    "t.max_seq, t.node, t.event_count, t.branches) IS DISTINCT FROM (r.status, r.last_seq, r.last_hash, "
    "r.max_seq, r.node, r.event_count, r.branches)")
#: Live snapshots of the locked threads the rebuild folded (not archived ones) that the shadow does not hold
#: identically.
SWAP_DROP_SNAPSHOTS = (
    "DELETE FROM journal.snapshots s WHERE s.tenant_id = %(tenant)s AND s.thread_id = ANY(%(locked)s) "
    "AND EXISTS (SELECT 1 FROM journal.rebuild_threads t WHERE t.tenant_id = s.tenant_id "
    "AND t.thread_id = s.thread_id) "
    "AND NOT EXISTS (SELECT 1 FROM journal.rebuild_snapshots r WHERE r.tenant_id = s.tenant_id "
    "AND r.thread_id = s.thread_id AND r.seq = s.seq AND r.state = s.state AND r.hash = s.hash) "
    "RETURNING s.thread_id")
#: Shadow snapshots the live table lacks (after :data:`SWAP_DROP_SNAPSHOTS`).
SWAP_ADD_SNAPSHOTS = (
    "INSERT INTO journal.snapshots (tenant_id, thread_id, seq, state, hash) SELECT tenant_id, thread_id, seq, "
    "state, hash FROM journal.rebuild_snapshots WHERE tenant_id = %(tenant)s AND thread_id = ANY(%(locked)s) "
    "ON CONFLICT DO NOTHING")
#: The live row of a thread, for the dry run's comparison.
LIVE_THREAD = ("SELECT status, last_seq, last_hash, max_seq, node, event_count, branches FROM journal.threads "
               "WHERE tenant_id = %s AND thread_id = %s")
#: The live snapshots of a thread, for the dry run's comparison.
LIVE_SNAPSHOTS = "SELECT seq, state, hash FROM journal.snapshots WHERE tenant_id = %s AND thread_id = %s"
#: A tenant's shadow, once swapped in (or at ``--restart``).
CLEAR_SHADOW_THREADS = "DELETE FROM journal.rebuild_threads WHERE tenant_id = %s"
#: As :data:`CLEAR_SHADOW_THREADS`, for the shadow snapshots.
CLEAR_SHADOW_SNAPSHOTS = "DELETE FROM journal.rebuild_snapshots WHERE tenant_id = %s"
#: A tenant's threads after a thread id, in key order (the dry run reads every one).
REBUILD_ALL_THREADS = ("SELECT t.thread_id, NULL::bigint FROM journal.threads t WHERE t.tenant_id = %(tenant)s "
                       "AND t.thread_id > %(after)s ORDER BY t.thread_id LIMIT %(limit)s")
REBUILD_ALL_THREADS_NOT_ARCHIVED = REBUILD_ALL_THREADS.replace("t.thread_id > %(after)s", _NOT_ARCHIVED)
