"""The projector against real Redis/Valkey and PostgreSQL."""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import pytest
from conftest import assert_exactly_once

from journal import codec, keys
from journal.client import JournalClient
from journal.errors import ThreadFenced
from journal.settings import Settings
from projections.worker import GROUP, Projector, WorkerOptions

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}


def projector(settings: Settings, **opts: Any) -> Projector:
    return Projector(settings, WorkerOptions(**opts))


def test_four_writers_twenty_tenants_exactly_once(migrated: Settings, admin_pg: Any) -> None:
    """Events from 4 writers over 20 tenants are all in `events` exactly once after a drain."""
    tenants = [f"p4-{random.getrandbits(40):x}-{i}" for i in range(20)]
    heads: dict[tuple[str, str], int] = {}
    lock = threading.Lock()

    def writer(w: int) -> None:
        with JournalClient.from_settings(migrated) as c:
            for i in range(300):
                t = tenants[(w * 7 + i) % 20]
                rec = c.append(t, f"th{i % 3}", "message", {**MSG, "w": w, "i": i})
                with lock:
                    heads[(t, rec.thread)] = max(heads.get((t, rec.thread), 0), rec.seq)

    ws = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    p = projector(migrated)
    p.drain(tenants=tenants)
    p.close()
    for t in tenants:
        assert_exactly_once(admin_pg, t, {th: h for (tt, th), h in heads.items() if tt == t})
    assert sum(heads.values()) == 1200


def test_redelivery_is_idempotent(migrated: Settings, admin_pg: Any, client: JournalClient, tenant: str) -> None:
    """Projecting the same entries twice (a crash after commit, before XACK) adds nothing."""
    for i in range(30):
        client.append(tenant, "th", "message", {**MSG, "i": i})
    entries = [(tenant, sid.decode(), f) for sid, f in client.redis.xrange(keys.stream(tenant))]
    p = projector(migrated)
    p.refresh_tenants()
    p.project(entries)
    p.project(entries)
    p.drain(tenants=[tenant])
    p.close()
    assert_exactly_once(admin_pg, tenant, {"th": 30})


def test_poison_event_goes_to_dead_letters_and_later_events_project(
        migrated: Settings, admin_pg: Any, client: JournalClient, tenant: str) -> None:
    """An undecodable entry lands in dead_letters with a reason; events after it still project."""
    client.append(tenant, "th", "message", {**MSG, "i": 1})
    bad = client.redis.xadd(keys.stream(tenant), {"t": "th", "s": 2, "ts": 1, "b": b"\x00garbage"}).decode()
    client.redis.hset(keys.heads(tenant), "th", 2)  # the garbage took seq 2
    client.append(tenant, "th", "message", {**MSG, "i": 3})
    client.append(tenant, "other", "message", {**MSG, "i": 1})
    p = projector(migrated)
    p.drain(tenants=[tenant])
    p.close()
    row = admin_pg.execute("SELECT reason, seq FROM journal.dead_letters WHERE tenant_id = %s AND stream_id = %s",
                           (tenant, bad)).fetchone()
    assert row is not None and "undecodable" in row[0] and row[1] == 2
    got = admin_pg.execute("SELECT thread_id, seq, hash IS NOT NULL FROM journal.events WHERE tenant_id = %s "
                           "ORDER BY 1, 2", (tenant,)).fetchall()
    # seq 3 is stored but cannot be chained past the dead seq 2: visible, unhashed, never lost.
    assert got == [("other", 1, True), ("th", 1, True), ("th", 3, False)]


def test_many_small_batches_in_one_round_with_poison(migrated: Settings, admin_pg: Any, client: JournalClient) -> None:
    """A round split into batches of 4 (each decoded while the previous one is written) keeps every event once."""
    tenants = [f"sb-{random.getrandbits(40):x}-{i}" for i in range(3)]
    for t in tenants:
        for i in range(10):
            for th in ("a", "b"):
                client.append(t, th, "message", {**MSG, "i": i})
    bad = client.redis.xadd(keys.stream(tenants[1]), {"t": "c", "s": 1, "ts": 1, "b": b"\x00garbage"}).decode()
    client.redis.hset(keys.heads(tenants[1]), "c", 1)
    client.append(tenants[1], "c", "message", {**MSG, "i": 2})
    p = projector(migrated, batch_size=4)
    p.drain(tenants=tenants)
    p.close()
    assert_exactly_once(admin_pg, tenants[0], {"a": 10, "b": 10})
    assert_exactly_once(admin_pg, tenants[2], {"a": 10, "b": 10})
    got = admin_pg.execute("SELECT thread_id, count(*), count(hash) FROM journal.events WHERE tenant_id = %s "
                           "GROUP BY 1 ORDER BY 1", (tenants[1],)).fetchall()
    assert got == [("a", 10, 10), ("b", 10, 10), ("c", 1, 0)]
    assert admin_pg.execute("SELECT seq FROM journal.dead_letters WHERE tenant_id = %s AND stream_id = %s",
                            (tenants[1], bad)).fetchone() == (1,)


def test_entry_postgres_refuses_is_dead_lettered_and_its_batch_still_projects(
        migrated: Settings, admin_pg: Any, client: JournalClient, tenant: str) -> None:
    """An entry PostgreSQL refuses (here a trigger on thread "c") fails its batch; the batch is retried entry by
    entry and only that entry is dead-lettered."""
    fn = f"public.refuse_{tenant.replace('-', '_')}"
    admin_pg.execute(f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF NEW.tenant_id = TG_ARGV[0] AND NEW.thread_id = 'c' THEN RAISE 'refused by the test'; "
                     "END IF; RETURN NEW; END $$")
    admin_pg.execute(f"CREATE TRIGGER refuse_c BEFORE INSERT ON journal.events FOR EACH ROW "
                     f"EXECUTE FUNCTION {fn}('{tenant}')")
    try:
        for i in range(6):
            client.append(tenant, "a", "message", {**MSG, "i": i})
        client.append(tenant, "c", "message", {**MSG, "i": 1})
        bad = client.redis.xrevrange(keys.stream(tenant), count=1)[0][0].decode()
        for i in range(6):
            client.append(tenant, "a", "message", {**MSG, "i": 6 + i})
        p = projector(migrated, batch_size=4)
        p.drain(tenants=[tenant])
        p.close()
    finally:
        admin_pg.execute("DROP TRIGGER refuse_c ON journal.events")
        admin_pg.execute(f"DROP FUNCTION {fn}()")
    assert_exactly_once(admin_pg, tenant, {"a": 12})
    row = admin_pg.execute("SELECT seq, reason FROM journal.dead_letters WHERE tenant_id = %s AND stream_id = %s",
                           (tenant, bad)).fetchone()
    assert row is not None and row[0] == 1 and "PostgreSQL refused it 3 times" in row[1]


def test_text_postgres_cannot_store_is_dead_lettered_before_any_sql(
        migrated: Settings, admin_pg: Any, client: JournalClient, tenant: str) -> None:
    """A body that decodes but holds text PostgreSQL cannot store (a NUL in the idempotency key, from a writer that
    skipped the client's checks) is dead-lettered at intake; the rest of its batch projects at once."""
    for i in range(6):
        client.append(tenant, "a", "message", {**MSG, "i": i})
    body = codec.frame(codec.pack([1, "message", None, {"i": 1}, "key\x00nul", {}, None]))
    bad = client.redis.xadd(keys.stream(tenant), {"t": "c", "s": 1, "ts": 1, "b": body}).decode()
    client.redis.hset(keys.heads(tenant), "c", 1)
    for i in range(6):
        client.append(tenant, "a", "message", {**MSG, "i": 6 + i})
    p = projector(migrated, batch_size=4)
    p.drain(tenants=[tenant])
    p.close()
    assert_exactly_once(admin_pg, tenant, {"a": 12})
    row = admin_pg.execute("SELECT seq, reason FROM journal.dead_letters WHERE tenant_id = %s AND stream_id = %s",
                           (tenant, bad)).fetchone()
    assert row is not None and row[0] == 1 and "idempotency key is not text" in row[1]


def test_reused_seq_with_different_content_is_a_conflict_and_fences(
        migrated: Settings, admin_pg: Any, client: JournalClient, tenant: str) -> None:
    """A seq issued twice (Redis lost its head) lands in conflicts, fences the thread, overwrites nothing."""
    for i in range(3):
        client.append(tenant, "th", "message", {**MSG, "v": "original", "i": i})
    p = projector(migrated)
    p.drain(tenants=[tenant])
    client.redis.hset(keys.heads(tenant), "th", 1)  # as if Redis restored an old snapshot
    client.append(tenant, "th", "message", {**MSG, "v": "impostor"})  # issued seq 2 again
    p.drain(tenants=[tenant])
    p.close()
    conflict = admin_pg.execute("SELECT seq FROM journal.conflicts WHERE tenant_id = %s", (tenant,)).fetchall()
    assert conflict == [(2,)]
    body = admin_pg.execute("SELECT payload FROM journal.events WHERE tenant_id = %s AND seq = 2",
                            (tenant,)).fetchone()
    assert body == ({**MSG, "v": "original", "i": 1},)
    assert admin_pg.execute("SELECT fenced FROM journal.threads WHERE tenant_id = %s", (tenant,)).fetchone() == (True,)
    with pytest.raises(ThreadFenced):
        client.append(tenant, "th", "message", MSG)


def test_lost_redis_tail_restores_heads_from_postgres(
        migrated: Settings, admin_pg: Any, client: JournalClient, tenant: str) -> None:
    """After Redis loses a tenant's keys, the projector raises heads to PostgreSQL's last seq before reuse."""
    for i in range(5):
        client.append(tenant, "th", "message", {**MSG, "i": i})
    p = projector(migrated, tail_check_grace_ms=0)
    p.drain(tenants=[tenant])
    client.redis.delete(keys.stream(tenant), keys.heads(tenant), keys.projected(tenant))
    p.check_tail()
    assert client.head(tenant, "th") == 5
    assert client.append(tenant, "th", "message", {**MSG, "i": 5}).seq == 6
    p.drain(tenants=[tenant])
    p.close()
    assert_exactly_once(admin_pg, tenant, {"th": 6})


def test_dead_workers_pending_entries_are_claimed(
        migrated: Settings, admin_pg: Any, client: JournalClient, tenant: str) -> None:
    """Entries read by a worker that died before XACK are claimed and projected by another."""
    for i in range(40):
        client.append(tenant, "th", "message", {**MSG, "i": i})
    client.redis.xgroup_create(keys.stream(tenant), GROUP, id="0", mkstream=True)
    client.redis.xreadgroup(GROUP, "dead-worker", {keys.stream(tenant): ">"}, count=25)
    p = projector(migrated, claim_idle_ms=50, maintenance_every=0.0)
    p.drain(tenants=[tenant])
    p.close()
    assert_exactly_once(admin_pg, tenant, {"th": 40})
    assert client.redis.xpending(keys.stream(tenant), GROUP)["pending"] == 0


def test_stop_projects_the_round_read_ahead(
        migrated: Settings, admin_pg: Any, client: JournalClient, tenant: str) -> None:
    """A stream that fills its share of a round (a backlog) has its next read sent before the round is
    written; stopping projects that read (already delivered to this consumer) before exiting, and leaves
    nothing pending."""
    for i in range(30):
        client.append(tenant, "th", "message", {**MSG, "i": i})
    p = projector(migrated, batch_size=4, read_ahead=10)
    p.run_once()  # a share is at most a batch: 4 entries, and the stream's next 4 are read ahead
    count = "SELECT count(*) FROM journal.events WHERE tenant_id = %s"
    assert admin_pg.execute(count, (tenant,)).fetchone() == (4,)
    assert client.redis.xpending(keys.stream(tenant), GROUP)["pending"] == 4
    p.stop()
    p.run()  # no new turn, but the round in hand is projected and acknowledged
    assert_exactly_once(admin_pg, tenant, {"th": 8})
    assert client.redis.xpending(keys.stream(tenant), GROUP)["pending"] == 0
    group = next(g for g in client.redis.xinfo_groups(keys.stream(tenant)) if g["name"] == GROUP.encode())
    assert group["lag"] == 22
    p2 = projector(migrated)
    p2.drain(tenants=[tenant])
    p2.close()
    assert_exactly_once(admin_pg, tenant, {"th": 30})


def test_trim_never_passes_an_uncommitted_entry(migrated: Settings, client: JournalClient, tenant: str) -> None:
    """XTRIM keeps every entry pending on a (dead) consumer, even with no hot window."""
    for i in range(30):
        client.append(tenant, "th", "message", {**MSG, "i": i})
    client.redis.xgroup_create(keys.stream(tenant), GROUP, id="0", mkstream=True)
    held = client.redis.xreadgroup(GROUP, "slow-worker", {keys.stream(tenant): ">"}, count=10)
    held_ids = [sid for sid, _ in held[0][1]]
    for i in range(30):
        client.append(tenant, "th", "message", {**MSG, "i": 30 + i})
    p = projector(migrated.with_(hot_window=1), claim_idle_ms=3_600_000)
    p.refresh_tenants()
    p.read_and_project()
    p.trim()
    remaining = [sid for sid, _ in client.redis.xrange(keys.stream(tenant))]
    assert set(held_ids) <= set(remaining)
    p.close()
    client.redis.delete(keys.stream(tenant))  # leave no pending entries for other tests' drains


def test_trim_keeps_hot_window(migrated: Settings, client: JournalClient, tenant: str) -> None:
    """After projection the stream is trimmed to the configured hot window."""
    for i in range(50):
        client.append(tenant, "th", "message", {**MSG, "i": i})
    p = projector(migrated.with_(hot_window=10))
    p.drain(tenants=[tenant])
    p.trim()
    p.close()
    assert client.redis.xlen(keys.stream(tenant)) == 10
    assert [e.seq for e in client.read(tenant, "th")] == list(range(1, 51))  # the trimmed part from PostgreSQL


def test_projected_durability_waits_for_postgres(migrated: Settings, tenant: str) -> None:
    """append(durability='projected') returns once the event is committed in PostgreSQL."""
    p = projector(migrated, block_ms=20)
    t = threading.Thread(target=p.run, daemon=True)
    t.start()
    try:
        with JournalClient.from_settings(migrated) as c:
            rec = c.append(tenant, "th", "message", {**MSG, "x": 1}, durability="projected")
        from projections import db

        with db.connect(migrated, role=None) as conn:
            assert conn.execute("SELECT seq FROM journal.events WHERE tenant_id = %s", (tenant,)).fetchall() == [
                (rec.seq,)]
    finally:
        p.stop()
        t.join(10)


def test_snapshots_fold_offloaded_payloads(migrated: Settings, admin_pg: Any, client: JournalClient,
                                           tenant: str) -> None:
    """A snapshot over a tool result stored in S3 folds the real payload: the call is resolved, not pending."""
    from journal.reducer import fold
    from journal.state import decode_state

    client.append(tenant, "th", "tool_call", {"call_id": "c1", "tool": "ocr", "args": {}})
    big = client.append(tenant, "th", "tool_result", {"call_id": "c1", "tool": "ocr", "output": "x" * 300_000})
    assert big.blob is not None
    p = projector(migrated.with_(snapshot_every=2))
    p.drain(tenants=[tenant])
    p.close()
    (state,) = admin_pg.execute("SELECT state FROM journal.snapshots WHERE tenant_id = %s AND seq = 2",
                                (tenant,)).fetchone()
    snap = decode_state(state)
    assert snap == fold(client.read(tenant, "th"))
    assert not snap.pending_calls


def test_async_projected_durability_and_timeout(migrated: Settings, tenant: str) -> None:
    """The asyncio client's 'projected' waits for the commit, and times out with DurabilityError without a worker."""
    import asyncio

    from journal.aio import AsyncJournalClient
    from journal.errors import DurabilityError

    async def go() -> None:
        async with await AsyncJournalClient.from_settings(migrated.with_(durability_timeout=0.3)) as c:
            with pytest.raises(DurabilityError, match="projector"):
                await c.append(tenant, "th", "message", MSG, durability="projected")
            p = projector(migrated, block_ms=20)
            t = threading.Thread(target=p.run, daemon=True)
            t.start()
            try:
                async with await AsyncJournalClient.from_settings(migrated) as c2:
                    rec = await c2.append(tenant, "th", "message", MSG, durability="projected")
                    assert rec.seq == 2
            finally:
                p.stop()
                t.join(10)

    asyncio.run(go())


def test_new_tenant_is_picked_up_without_restart(migrated: Settings, tenant: str) -> None:
    """A tenant whose first event comes after the worker started is projected within a couple of seconds."""
    import time

    from prometheus_client import REGISTRY

    p = projector(migrated, block_ms=20)
    t = threading.Thread(target=p.run, daemon=True)
    t.start()
    try:
        time.sleep(0.3)  # the worker is running and knows only the older tenants
        before = REGISTRY.get_sample_value("journal_events_projected_total") or 0
        t0 = time.monotonic()
        with JournalClient.from_settings(migrated.with_(durability_timeout=3.0)) as c:
            c.append(tenant, "th", "message", {**MSG, "first": True}, durability="projected")
        assert time.monotonic() - t0 < 3.0
        assert (REGISTRY.get_sample_value("journal_events_projected_total") or 0) >= before + 1
    finally:
        p.stop()
        t.join(10)


def test_snapshot_deferred_while_s3_is_down_then_written(migrated: Settings, admin_pg: Any, client: JournalClient,
                                                         tenant: str) -> None:
    """With S3 unreachable, a snapshot needing a blob is deferred (events still project); later ones are written."""
    from journal.reducer import fold
    from journal.state import decode_state

    client.append(tenant, "th", "tool_call", {"call_id": "c1", "tool": "ocr", "args": {}})
    client.append(tenant, "th", "tool_result", {"call_id": "c1", "tool": "ocr", "output": "x" * 300_000})
    down = projector(migrated.with_(snapshot_every=2, s3_url="http://127.0.0.1:9"))
    down.drain(tenants=[tenant])
    down.close()
    snaps = "SELECT seq, state FROM journal.snapshots WHERE tenant_id = %s ORDER BY seq"
    assert admin_pg.execute(snaps, (tenant,)).fetchall() == []
    assert admin_pg.execute("SELECT count(*) FROM journal.events WHERE tenant_id = %s", (tenant,)).fetchone() == (2,)
    client.append(tenant, "th", "message", {"role": "assistant", "content": "done"})
    client.append(tenant, "th", "complete", {})
    up = projector(migrated.with_(snapshot_every=2))
    up.drain(tenants=[tenant])
    up.close()
    rows = admin_pg.execute(snaps, (tenant,)).fetchall()
    assert [r[0] for r in rows] == [4]
    assert decode_state(rows[0][1]) == fold(client.read(tenant, "th"))


def test_unknown_redis_py_version_projects_on_the_plain_api(migrated: Settings, admin_pg: Any, client: JournalClient,
                                                             tenant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a redis-py outside the known range (fast paths off), new and own pending entries still project once."""
    import redis

    from projections import redis_internals

    for i in range(5):
        client.append(tenant, "th", "message", {**MSG, "i": i})
    first = Projector(migrated, WorkerOptions(), consumer=f"c-{tenant}")
    first.refresh_tenants()
    assert len(first.reader.read_round()) >= 5  # delivered to this consumer, never projected: pending
    first.close()
    monkeypatch.setattr(redis, "__version__", "99.0.0")
    monkeypatch.setattr(redis_internals, "_reported", set())
    for i in range(5, 10):
        client.append(tenant, "th", "message", {**MSG, "i": i})
    p = Projector(migrated, WorkerOptions(), consumer=f"c-{tenant}")
    assert not p.reader.reads.partial_reads
    p.drain(tenants=[tenant])
    p.close()
    assert_exactly_once(admin_pg, tenant, {"th": 10})


def test_projected_append_returns_while_another_tenant_has_a_backlog(migrated: Settings, admin_pg: Any) -> None:
    """A quiet tenant's ``projected`` append is committed in the first batch of a round, while another
    tenant's 50,000-entry backlog is still draining: not behind it (its name sorts first on purpose)."""
    uid = uuid.uuid4().hex[:8]
    busy, quiet = f"a-busy-{uid}", f"z-quiet-{uid}"
    with JournalClient.from_settings(migrated.with_(durability_timeout=30.0)) as c:
        for i in range(0, 50_000, 1000):
            c.append_many(busy, [{"thread": f"th{j % 50}", "type": "message", "payload": {**MSG, "i": j}}
                                 for j in range(i, i + 1000)])
        c.append(quiet, "th", "message", MSG)  # the tenant exists before the projector starts
        p = projector(migrated)
        p.refresh_tenants()
        t = threading.Thread(target=p.run, daemon=True)
        t.start()
        try:
            rec = c.append(quiet, "th", "message", {**MSG, "x": 1}, durability="projected")
            stored = admin_pg.execute("SELECT count(*) FROM journal.events WHERE tenant_id = %s",
                                      (busy,)).fetchone()[0]
            assert rec.seq == 2
            assert stored < 50_000, "the quiet tenant waited for the whole backlog of the busy one"
        finally:
            p.stop()
            t.join(120)


def test_a_dead_workers_round_is_claimed_at_read_speed(
        migrated: Settings, admin_pg: Any, client: JournalClient, tenant: str) -> None:
    """A worker killed with a whole round delivered (its read-ahead) leaves more pending entries than one
    claim takes: the next worker goes on claiming turn after turn, not one page per maintenance pass."""
    for i in range(0, 3000, 500):
        client.append_many(tenant, [{"thread": f"th{j % 3}", "type": "message", "payload": {**MSG, "i": j}}
                                    for j in range(i, i + 500)])
    client.redis.xgroup_create(keys.stream(tenant), GROUP, id="0", mkstream=True)
    client.redis.xreadgroup(GROUP, "killed-worker", {keys.stream(tenant): ">"}, count=3000)
    time.sleep(0.2)  # idle past claim_idle_ms
    # One maintenance pass in the whole test: each claim takes a share (500 entries) of the stream.
    p = projector(migrated, batch_size=500, read_ahead=5000, claim_idle_ms=100, maintenance_every=3600.0)
    p.refresh_tenants()
    # A share is read_ahead over the tenants the worker knows (other tests' too): at least 10 entries.
    for _ in range(400):
        p.run_once()
        if not client.redis.xpending(keys.stream(tenant), GROUP)["pending"]:
            break
    p.close()
    assert client.redis.xpending(keys.stream(tenant), GROUP)["pending"] == 0
    assert_exactly_once(admin_pg, tenant, {"th0": 1000, "th1": 1000, "th2": 1000})


def test_a_round_serves_its_quietest_streams_first() -> None:
    """Within a round, streams with fewer entries come first, each stream's entries in their order, and
    the streams that filled their share are the ones read ahead."""
    from projections.reader import Reader

    reader = Reader.__new__(Reader)
    entries = [("big", f"{i}-0", {}) for i in range(5)] + [("a", "1-0", {}), ("a", "2-0", {})] + [("b", "9-0", {})]
    out = reader.light_first(entries, share=5)
    assert [(t, sid) for t, sid, _ in out] == [("b", "9-0"), ("a", "1-0"), ("a", "2-0")] + [
        ("big", f"{i}-0") for i in range(5)]
    assert reader.backlog and reader._full == ["big"]
    assert reader.quiet == 3  # the worker commits them in a batch of their own


def test_snapshot_jobs_of_one_thread_merge_while_they_wait() -> None:
    """Jobs of one thread queued behind each other make one fold over their whole range."""
    from projections.snapshotter import KEEP_CHAINED, merge

    assert merge(("t", "th", 0, 120, ["e"] * 120), ("t", "th", 120, 250, ["f"] * 130)) == (  # type: ignore[arg-type]
        "t", "th", 0, 250, ["e"] * 120 + ["f"] * 130)
    # Not contiguous (another worker's batch in between), or too long to keep: the fold reads its events.
    assert merge(("t", "th", 0, 120, []), ("t", "th", 130, 250, [])) == ("t", "th", 0, 250, [])
    long = ["e"] * KEEP_CHAINED
    assert merge(("t", "th", 0, 10, long), ("t", "th", 10, 20, ["f"])) == ("t", "th", 0, 20, [])  # type: ignore[arg-type]


def test_projected_feed_is_short_lived(migrated: Settings, tenant: str) -> None:
    """The feed that wakes ``projected`` waiters gets an entry per commit and expires on its own."""
    p = projector(migrated, block_ms=20)
    t = threading.Thread(target=p.run, daemon=True)
    t.start()
    try:
        with JournalClient.from_settings(migrated) as c:
            for i in range(3):
                c.append(tenant, "th", "message", {**MSG, "i": i}, durability="projected")
            feed = keys.projected_feed(tenant)
            assert c.redis.xlen(feed) >= 1
            assert 0 < c.redis.pttl(feed) <= 60_000
    finally:
        p.stop()
        t.join(10)


def _stream(client: JournalClient, tenant: str) -> list[tuple[str, str, dict[bytes, Any]]]:
    return [(tenant, sid.decode(), f) for sid, f in client.redis.xrange(keys.stream(tenant))]


def test_small_batch_of_a_known_thread_takes_one_pipeline(migrated: Settings, admin_pg: Any, client: JournalClient,
                                                          tenant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a worker committed a thread, its next small batch is planned on the head it knows: no lock-and-read
    round trip (``store._lock_threads`` is not called), and the chain it writes is the one a read would give."""
    from projections import store
    for i in range(3):
        client.append(tenant, "th", "message", {**MSG, "i": i})
    p = projector(migrated)
    p.refresh_tenants()
    p.project(_stream(client, tenant))

    def no_lock(*_: Any) -> Any:
        raise AssertionError("the known head was read again")

    monkeypatch.setattr(store, "_lock_threads", no_lock)
    for i in range(3, 6):
        client.append(tenant, "th", "message", {**MSG, "i": i})
    from projections import metrics
    committed = metrics.KNOWN_HEADS.labels("committed")._value.get()
    p.project(_stream(client, tenant)[3:])
    p.close()
    assert metrics.KNOWN_HEADS.labels("committed")._value.get() == committed + 1
    assert_exactly_once(admin_pg, tenant, {"th": 6})


def test_head_moved_by_another_worker_is_read_again(migrated: Settings, admin_pg: Any, client: JournalClient,
                                                    tenant: str) -> None:
    """Two workers take turns on one thread: each finds the head it remembers moved by the other, rolls back
    the batch it planned on it and runs it on the head it reads. Nothing lost, nothing twice, one chain."""
    from projections import metrics
    moved = metrics.KNOWN_HEADS.labels("moved")._value.get()
    a, b = projector(migrated), projector(migrated)
    for p in (a, b):
        p.refresh_tenants()
    done = 0
    for turn in range(6):
        for i in range(2):
            client.append(tenant, "th", "message", {**MSG, "turn": turn, "i": i})
        entries = _stream(client, tenant)
        (a if turn % 2 == 0 else b).project(entries[done:])
        done = len(entries)
    # Each worker's cached head went stale at its second turn: it ran the batch the full way, and forgot it.
    assert ("th" not in {th for _, th in a.committer.heads._heads}
            and "th" not in {th for _, th in b.committer.heads._heads})
    assert metrics.KNOWN_HEADS.labels("moved")._value.get() == moved + 2  # once per worker, then cooled down
    a.close()
    b.close()
    assert_exactly_once(admin_pg, tenant, {"th": 12})
