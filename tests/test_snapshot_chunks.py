"""Incremental snapshots: sealed chunks of the growing lists, one fold whatever the path (invariant 7).

The pure tests check the encoding against the fold on generated histories (chunk sizes made tiny
so every boundary is crossed); the others run the projector, the replayer and the client on the
real servers, and check tenant isolation of ``journal.snapshot_chunks``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journal import codec, durable
from journal import state as state_mod
from journal.client import JournalClient
from journal.errors import CodecError
from journal.events import Draft, Event
from journal.reducer import apply, fold, load_registry
from journal.settings import Settings
from journal.state import LayeredMap, ThreadState, decode_snapshot, empty, encode_snapshot
from projections import chunks, db, snapshots
from projections.archive import Archiver, candidates
from projections.rebuild import RebuildOptions, rebuild
from projections.worker import Projector
from replayer.replay import Replayer

THREAD = "th"


# -- custom reducers that change lists in place (the chunking must notice) -------------------------

def trim(state: ThreadState, event: Event) -> ThreadState:
    """Keeps the newest ``keep`` messages: the message list shrinks from the front."""
    return dataclasses.replace(state, messages=state.messages[-int(event.payload["keep"]):])


def edit(state: ThreadState, event: Event) -> ThreadState:
    """Rewrites the content of message ``index`` (same seq, other content): a change, not an append."""
    i = int(event.payload["index"])
    if not state.messages:
        return state
    i %= len(state.messages)
    msgs = list(state.messages)
    msgs[i] = dataclasses.replace(msgs[i], content=event.payload["content"])
    return dataclasses.replace(state, messages=tuple(msgs))


def count(state: ThreadState, event: Event) -> ThreadState:
    return state.with_custom("count", int(state.custom.get("count", 0)) + 1)


REDUCERS_MODULE = "chunk_test_reducers"
_mod = types.ModuleType(REDUCERS_MODULE)
_mod.REDUCERS = {"x.test.trim": trim, "x.test.edit": edit, "x.test.count": count}  # type: ignore[attr-defined]
sys.modules[REDUCERS_MODULE] = _mod
REGISTRY = load_registry(REDUCERS_MODULE)


@pytest.fixture
def tiny_chunks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Chunks of 3 items with 1 kept inline, so a short thread crosses many chunk boundaries."""
    monkeypatch.setattr(state_mod, "CHUNK_ITEMS", 3)
    monkeypatch.setattr(state_mod, "KEEP_INLINE", 1)
    monkeypatch.setattr(state_mod, "INDEX_FANOUT", 4)
    state_mod.clear_chunk_cache()
    yield
    state_mod.clear_chunk_cache()


def _drafts(kinds: list[tuple[str, int]]) -> list[Draft]:
    out: list[Draft] = []
    for i, (kind, arg) in enumerate(kinds):
        cid = f"c{arg % 7}"
        if kind == "message":
            out.append(Draft(THREAD, "message", {"role": "user", "content": f"m{i}", "tool_calls": [cid]}))
        elif kind == "call":
            out.append(Draft(THREAD, "tool_call", {"call_id": cid, "tool": "search", "args": {"i": i}}))
        elif kind == "result":
            out.append(Draft(THREAD, "tool_result", {"call_id": cid, "tool": "search", "output": i}))
        elif kind == "enter":
            out.append(Draft(THREAD, "node_enter", {"node": "n"}))
        elif kind == "exit":
            out.append(Draft(THREAD, "node_exit", {"node": "n"}))
        elif kind == "set":
            out.append(Draft(THREAD, "memory_set", {"path": ["k", str(arg)], "value": i}))
        elif kind == "opaque":
            out.append(Draft(THREAD, "x.test.unknown", {"i": i}))
        elif kind == "trim":
            out.append(Draft(THREAD, "x.test.trim", {"keep": arg % 5 + 1}))
        elif kind == "edit":
            # 1 and True are == in Python; the chunk must still be found changed.
            out.append(Draft(THREAD, "x.test.edit", {"index": arg, "content": [True, 1.0, 1][arg % 3]}))
        else:
            out.append(Draft(THREAD, "x.test.count", {}))
    return out


KINDS = st.lists(st.tuples(st.sampled_from(["message", "message", "call", "result", "enter", "exit", "set",
                                            "opaque", "trim", "edit", "count"]), st.integers(0, 20)),
                 min_size=1, max_size=80)


def _events(tenant: str, drafts: list[Draft]) -> list[Event]:
    return [Event(tenant, d.thread, i, d.type, d.payload, 1_000 + i) for i, d in enumerate(drafts, 1)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=KINDS, every=st.integers(1, 9), size=st.integers(1, 5), inline=st.integers(0, 3),
       fanout=st.integers(1, 4))
def test_snapshot_plus_tail_equals_the_fold(monkeypatch: pytest.MonkeyPatch, kinds: list[tuple[str, int]],
                                             every: int, size: int, inline: int, fanout: int) -> None:
    """Every chunked snapshot decodes (cache cold and warm) to the fold at its seq, and folding on from it
    equals the fold from empty at every later seq; lists replaced or edited by a reducer included."""
    monkeypatch.setattr(state_mod, "CHUNK_ITEMS", size)
    monkeypatch.setattr(state_mod, "KEEP_INLINE", inline)
    monkeypatch.setattr(state_mod, "INDEX_FANOUT", fanout)
    events = _events("t-pure", _drafts(kinds))
    stored: dict[bytes, bytes] = {}
    snaps: list[tuple[int, bytes]] = []
    s, previous = empty("t-pure", THREAD), None
    for e in events:
        s = apply(s, e, REGISTRY)
        if e.seq % every == 0:
            record, new, previous = encode_snapshot(s, previous)
            stored.update((c.id, c.body) for c in new)
            snaps.append((e.seq, record))
    for seq, record in snaps:
        for cold in (True, False):
            if cold:
                state_mod.clear_chunk_cache()
            got = decode_snapshot(record, "t-pure", THREAD, lambda ids: {i: stored[i] for i in ids}).state
            want = fold(events[:seq], empty("t-pure", THREAD), REGISTRY)
            assert got == want and got.to_dict() == want.to_dict()
            assert list(got.tool_calls) == list(want.tool_calls)  # call order, not only the same calls
        for upto in (seq + 1, len(events)):
            if upto <= len(events):
                assert fold(events[seq:upto], got, REGISTRY).to_dict() == fold(events[:upto], None, REGISTRY).to_dict()
    state_mod.clear_chunk_cache()


def test_unchanged_lists_reuse_their_chunks_and_changed_ones_do_not(tiny_chunks: None) -> None:
    """Appending reuses every sealed chunk; an edit of an old message reseals from that chunk on."""
    events = _events("t-reuse", _drafts([("message", i) for i in range(20)]))
    s = fold(events, None, REGISTRY)
    _, first, snap = encode_snapshot(s)
    leaves = [c for c in first if not c.index]
    assert len(leaves) == 6 and all(c.field == "messages" for c in first)  # 20 = 6·3 + 2 (≥ 1 inline)
    assert [c.items for c in first if c.index] == [tuple(c.id for c in leaves[:4])]  # 4 names per index chunk
    more = fold(_events("t-reuse", _drafts([("message", i) for i in range(23)]))[20:], s, REGISTRY)
    _, second, snap2 = encode_snapshot(more, snap)
    assert len(second) == 1 and snap2.chunks["messages"][:6] == snap.chunks["messages"]
    assert snap2.index == snap.index  # the index chunk is reused, not written again
    edited = apply(more, Event("t-reuse", THREAD, 24, "x.test.edit", {"index": 7, "content": True}, 2_000), REGISTRY)
    _, third, snap3 = encode_snapshot(edited, snap2)
    assert snap3.chunks["messages"][:2] == snap2.chunks["messages"][:2]  # items 0..5 unchanged
    assert snap3.chunks["messages"][2] != snap2.chunks["messages"][2]
    assert len([c for c in third if not c.index]) == 5 and snap3.index != snap2.index


def test_a_missing_or_altered_chunk_is_a_codec_error(tiny_chunks: None) -> None:
    s = fold(_events("t-bad", _drafts([("message", i) for i in range(10)])), None, REGISTRY)
    record, new, _ = encode_snapshot(s)
    state_mod.clear_chunk_cache()
    with pytest.raises(CodecError, match=r"missing from journal\.snapshot_chunks"):
        decode_snapshot(record, "t-bad", THREAD, lambda ids: {})
    with pytest.raises(CodecError, match=r"does not match its SHA-256 name"):
        decode_snapshot(record, "t-bad", THREAD, lambda ids: {i: new[0].body + b"x" for i in ids})
    with pytest.raises(CodecError, match=r"no reader of journal\.snapshot_chunks"):
        decode_snapshot(record, "t-bad", THREAD)
    with pytest.raises(CodecError, match="read for"):
        decode_snapshot(record, "t-other", THREAD, lambda ids: {})


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), st.integers()), max_size=700))
def test_layered_map_is_an_ordered_dict(ops: list[tuple[int, int]]) -> None:
    """Same keys, values and order as a dict updated in place; older maps unchanged."""
    d: dict[str, int] = {}
    m: Any = LayeredMap({})
    history: list[tuple[Any, dict[str, int]]] = []
    for k, v in ops:
        d[str(k)] = v
        m = m.set(str(k), v)
        history.append((m, dict(d)))
    for old, want in history[:: max(1, len(history) // 20)]:
        assert list(old.items()) == list(want.items()) and len(old) == len(want)
    assert m == d and dict(m) == d


# -- on the real servers ---------------------------------------------------------------------------

@pytest.fixture
def chunked(migrated: Settings, tiny_chunks: None) -> Settings:
    return migrated.with_(reducers=REDUCERS_MODULE, snapshot_every=4)


def _project(settings_: Settings, *tenants: str) -> None:
    p = Projector(settings_)
    p.drain(tenants=list(tenants))
    p.close()


def test_replay_at_every_seq_inside_at_and_across_chunk_boundaries(chunked: Settings, tenant: str,
                                                                  admin_pg: Any) -> None:
    """Projected with chunked snapshots, replay at every seq (cache cold and warm) and resume equal the fold."""
    kinds = [("message", i) if i % 5 else ("call", i) for i in range(30)] + [("result", 3), ("edit", 4),
             ("message", 1), ("trim", 3), ("message", 2), ("count", 0)] + [("message", i) for i in range(14)]
    drafts = _drafts(kinds)
    with JournalClient.from_settings(chunked) as c:
        written = c.append_many(tenant, drafts)
        _project(chunked, tenant)
        n_chunks = admin_pg.execute("SELECT count(*) FROM journal.snapshot_chunks WHERE tenant_id = %s",
                                    (tenant,)).fetchone()[0]
        assert n_chunks > 5
        events = c.read(tenant, THREAD)
        assert [e.seq for e in events] == [e.seq for e in written]
        with Replayer.from_settings(chunked) as r:
            for seq in range(1, len(events) + 1):
                if seq % 7 == 0:
                    state_mod.clear_chunk_cache()
                want = fold(events[:seq], None, REGISTRY)
                assert r.replay(tenant, THREAD, at_seq=seq).to_dict() == want.to_dict(), seq
            assert r.replay(tenant, THREAD, at_seq=len(events), use_snapshots=False) == want
        state_mod.clear_chunk_cache()
        assert c.resume(tenant, THREAD).state == want
        assert c.resume(tenant, THREAD).state == want  # warm


def test_a_thread_longer_than_the_hot_window_resumes_whole(chunked: Settings, tenant: str) -> None:
    """Redis trimmed to 5 entries: resume and replay come from chunked snapshots and PostgreSQL, unchanged."""
    settings_ = chunked.with_(hot_window=5)
    drafts = _drafts([("message", i) if i % 3 else ("call", i) for i in range(60)])
    with JournalClient.from_settings(settings_) as c:
        c.append_many(tenant, drafts)
        p = Projector(settings_)
        p.drain(tenants=[tenant])
        p.trim()
        p.close()
        assert c.redis.xlen(f"agent:v1:{{{tenant}}}:stream") == 5
        c.append_many(tenant, _drafts([("message", 99), ("result", 3)]))  # a hot tail above PostgreSQL
        events = c.read(tenant, THREAD)
        want = fold(events, None, REGISTRY)
        state_mod.clear_chunk_cache()
        assert c.resume(tenant, THREAD).state == want
        with Replayer.from_settings(settings_) as r:
            assert r.replay(tenant, THREAD) == want
            assert r.replay(tenant, THREAD, at_seq=37) == fold(events[:37], None, REGISTRY)


def test_snapshot_chunks_are_tenant_isolated(chunked: Settings, admin_pg: Any) -> None:
    """A tenant reader sees, counts and reads its own chunks only, and cannot write any; journal_app
    scoped to one tenant sees that tenant's chunks only."""
    a, b = f"chk-a-{uuid.uuid4().hex[:8]}", f"chk-b-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(chunked) as c:
        for t in (a, b):
            c.append_many(t, _drafts([("message", i) for i in range(12)]))
    _project(chunked, a, b)
    counts = dict(admin_pg.execute("SELECT tenant_id, count(*) FROM journal.snapshot_chunks "
                                   "WHERE tenant_id IN (%s, %s) GROUP BY tenant_id", (a, b)).fetchall())
    assert counts[a] > 0 and counts[b] > 0
    creds = db.create_tenant_reader(chunked, a)
    try:
        assert chunked.database_url
        with psycopg.connect(creds.database_url(chunked.database_url), autocommit=True) as reader:
            seen = {r[0] for r in reader.execute("SELECT tenant_id FROM journal.snapshot_chunks").fetchall()}
            assert seen == {a}
            assert reader.execute("SELECT count(*) FROM journal.snapshot_chunks WHERE tenant_id = %s",
                                  (b,)).fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute("INSERT INTO journal.snapshot_chunks (tenant_id, thread_id, chunk_id, body) "
                               "VALUES (%s, 'th', '\\x00', '\\x00')", (a,))
        with db.connect(chunked, role=db.APP) as app, app.transaction():
            app.execute("SELECT set_config('journal.tenant', %s, true)", (b,))
            assert {r[0] for r in app.execute("SELECT tenant_id FROM journal.snapshot_chunks").fetchall()} == {b}
    finally:
        db.revoke_tenant_reader(chunked, a)


def test_deleted_chunks_are_a_typed_error_and_the_projector_keeps_going(chunked: Settings, tenant: str,
                                                                         admin_pg: Any) -> None:
    """With a thread's chunks deleted, a replay from its snapshot says what to do; the projector folds
    the next snapshot from seq 1 and writes its chunks anew, and replay from it equals the fold."""
    with JournalClient.from_settings(chunked) as c:
        c.append_many(tenant, _drafts([("message", i) for i in range(16)]))
        _project(chunked, tenant)
        admin_pg.execute("DELETE FROM journal.snapshot_chunks WHERE tenant_id = %s", (tenant,))
        admin_pg.commit()
        state_mod.clear_chunk_cache()
        with Replayer.from_settings(chunked) as r, pytest.raises(CodecError, match="rebuild the thread's snapshots"):
            r.replay(tenant, THREAD, at_seq=16)
        c.append_many(tenant, _drafts([("message", i) for i in range(4)]))
        _project(chunked, tenant)
        state_mod.clear_chunk_cache()
        events = c.read(tenant, THREAD)
        with Replayer.from_settings(chunked) as r:
            assert r.replay(tenant, THREAD, at_seq=20) == fold(events, None, REGISTRY)


def test_an_archived_thread_resumes_from_its_chunked_head_snapshot(chunked: Settings, tenant: str,
                                                                   admin_pg: Any) -> None:
    """The archiver folds from a chunked snapshot and writes the head snapshot incrementally; its chunks stay
    when the rows and older snapshots go, and resume and replay after archiving equal the fold."""
    drafts = [*_drafts([("message", i) if i % 4 else ("call", i) for i in range(41)]), Draft(THREAD, "complete", {})]
    with JournalClient.from_settings(chunked) as c:
        c.append_many(tenant, drafts)
        _project(chunked, tenant)
        events = c.read(tenant, THREAD)
        want = fold(events, None, REGISTRY)
        state_mod.clear_chunk_cache()
        report = Archiver(chunked, per_segment=10).run(candidates(chunked, timedelta(0), tenants=[tenant]))
        assert [t.error for t in report.threads] == [None]
        left = admin_pg.execute("SELECT (SELECT count(*) FROM journal.events WHERE tenant_id = %s), "
                                "(SELECT count(*) FROM journal.snapshots WHERE tenant_id = %s), "
                                "(SELECT count(*) FROM journal.snapshot_chunks WHERE tenant_id = %s)",
                                (tenant, tenant, tenant)).fetchone()
        assert left[0] == 0 and left[1] == 1 and left[2] > 5
        state_mod.clear_chunk_cache()
        assert c.resume(tenant, THREAD).state == want
        with Replayer.from_settings(chunked) as r:
            assert r.replay(tenant, THREAD) == want
            assert r.replay(tenant, THREAD, at_seq=21) == fold(events[:21], None, REGISTRY)


# -- chunks no snapshot names any more (projections.chunks) ----------------------------------------

def _chunk_ids(pg: Any, tenant: str) -> set[bytes]:
    return {bytes(r[0]) for r in pg.execute("SELECT chunk_id FROM journal.snapshot_chunks WHERE tenant_id = %s",
                                            (tenant,)).fetchall()}


def _named(pg: Any, tenant: str) -> set[bytes]:
    """Every chunk the tenant's live snapshots need (read independently of the sweep's own query)."""
    load = durable.chunk_loader(pg, tenant, THREAD)
    records = pg.execute("SELECT state FROM journal.snapshots WHERE tenant_id = %s AND thread_id = %s",
                         (tenant, THREAD)).fetchall()
    return set().union(*(state_mod.referenced_chunks(r[0], load) for r in records))


def _trimmed_history() -> list[Draft]:
    """Messages, a trim to 2 (the old chunks stop being the list's prefix), more messages, completion."""
    return [*_drafts([("message", i) for i in range(20)] + [("trim", 1)] + [("message", i) for i in range(21)]),
            Draft(THREAD, "complete", {})]


def test_archive_sweeps_the_chunks_only_deleted_snapshots_named(chunked: Settings, tenant: str,
                                                                admin_pg: Any) -> None:
    """A list trimmed mid-thread: the old snapshots name chunks the head snapshot does not. Archiving
    deletes those snapshots and then exactly those chunks; resume and replay still equal the fold."""
    with JournalClient.from_settings(chunked) as c:
        c.append_many(tenant, _trimmed_history())
        _project(chunked, tenant)
        before = _chunk_ids(admin_pg, tenant)
        events = c.read(tenant, THREAD)
        want = fold(events, None, REGISTRY)
        report = Archiver(chunked, per_segment=10).run(candidates(chunked, timedelta(0), tenants=[tenant]))
        assert [t.error for t in report.threads] == [None]
        after = _chunk_ids(admin_pg, tenant)
        assert after == _named(admin_pg, tenant) and after  # the head snapshot's chunks, all of them
        assert len(before - after) > 5  # the trimmed-away chunks went
        state_mod.clear_chunk_cache()
        assert c.resume(tenant, THREAD).state == want
        with Replayer.from_settings(chunked) as r:
            assert r.replay(tenant, THREAD, at_seq=30) == fold(events[:30], None, REGISTRY)


def test_the_sweep_leaves_a_thread_whose_chunk_writer_is_mid_transaction(chunked: Settings, tenant: str,
                                                                          admin_pg: Any) -> None:
    """The projector's snapshot fold holds the thread's chunk lock until it commits: a sweep meanwhile
    skips the thread (None, nothing deleted); after the commit it deletes what no snapshot names."""
    with JournalClient.from_settings(chunked) as c:
        c.append_many(tenant, _drafts([("message", i) for i in range(12)]))
    _project(chunked, tenant)
    stray = state_mod.seal("messages", [])  # a chunk no snapshot names
    admin_pg.execute("INSERT INTO journal.snapshot_chunks (tenant_id, thread_id, chunk_id, body) "
                     "VALUES (%s, %s, %s, %s)", (tenant, THREAD, stray.id, stray.body))
    named = _named(admin_pg, tenant)
    with db.connect(chunked) as writer, db.connect(chunked) as sweeper:
        assert snapshots.write_due(writer, tenant, THREAD, 0, 12, [], 4, None, REGISTRY) > 0  # not committed
        assert chunks.sweep(sweeper, tenant, THREAD) is None
        assert stray.id in _chunk_ids(admin_pg, tenant)
        writer.commit()
        assert chunks.sweep(sweeper, tenant, THREAD) == 1
        assert chunks.sweep(sweeper, tenant, THREAD) == 0
    assert _chunk_ids(admin_pg, tenant) == named
    state_mod.clear_chunk_cache()
    with Replayer.from_settings(chunked) as r, JournalClient.from_settings(chunked) as c:
        assert r.replay(tenant, THREAD, at_seq=12) == fold(c.read(tenant, THREAD), None, REGISTRY)


def test_a_sweep_that_fails_after_a_committed_change_is_logged_not_raised(chunked: Settings, tenant: str) -> None:
    """The archiver and the rebuild sweep after they committed: a lost connection then costs the sweep only."""
    conn = db.connect(chunked)
    conn.close()
    assert chunks.sweep_after(conn, tenant, THREAD) == 0
    with pytest.raises(psycopg.Error):
        chunks.sweep(conn, tenant, THREAD)


def test_the_sweep_keeps_every_chunk_of_a_thread_with_an_unreadable_snapshot(chunked: Settings, tenant: str,
                                                                             admin_pg: Any) -> None:
    """An index chunk missing: what the snapshot naming it needs cannot be known, so nothing is deleted."""
    with JournalClient.from_settings(chunked) as c:
        c.append_many(tenant, _drafts([("message", i) for i in range(40)]))
    _project(chunked, tenant)
    load = durable.chunk_loader(admin_pg, tenant, THREAD)
    (record,) = admin_pg.execute("SELECT state FROM journal.snapshots WHERE tenant_id = %s ORDER BY seq DESC "
                                 "LIMIT 1", (tenant,)).fetchone()
    index_ids = codec.unframe(bytes(record))["index"]["messages"]
    admin_pg.execute("DELETE FROM journal.snapshot_chunks WHERE tenant_id = %s AND chunk_id = %s",
                     (tenant, index_ids[0]))
    with pytest.raises(CodecError, match="index chunk"):
        state_mod.referenced_chunks(record, load)
    before = _chunk_ids(admin_pg, tenant)
    with db.connect(chunked) as conn:
        assert chunks.sweep(conn, tenant, THREAD) is None
    assert _chunk_ids(admin_pg, tenant) == before


def test_rebuild_with_other_reducers_sweeps_the_chunks_of_the_snapshots_it_replaced(chunked: Settings, tenant: str,
                                                                                    admin_pg: Any) -> None:
    """Projected without a reducer for ``x.test.unknown`` (kept in the opaque list, chunked), then rebuilt
    with one: the opaque chunks no snapshot names any more are swept after the swap; replay equals the fold."""
    drafts = _drafts([("opaque", i) for i in range(24)] + [("message", i) for i in range(8)])
    with JournalClient.from_settings(chunked) as c:
        c.append_many(tenant, drafts)
        _project(chunked, tenant)
        before = _chunk_ids(admin_pg, tenant)
        counting = types.ModuleType("chunk_test_counting")
        counting.REDUCERS = {**_mod.REDUCERS, "x.test.unknown": count}  # type: ignore[attr-defined]
        sys.modules[counting.__name__] = counting
        rebuilt_settings = chunked.with_(reducers=counting.__name__)
        (report,) = rebuild(rebuilt_settings, RebuildOptions(tenants=(tenant,)))
        assert report.swapped and report.snapshots_removed > 0
        after = _chunk_ids(admin_pg, tenant)
        assert report.chunks_swept == len(before - after) > 0
        assert after == _named(admin_pg, tenant)
        state_mod.clear_chunk_cache()
        with Replayer.from_settings(rebuilt_settings) as r:
            assert r.replay(tenant, THREAD) == fold(c.read(tenant, THREAD), None, load_registry(counting.__name__))


def test_sweep_chunks_command(chunked: Settings, tenant: str, admin_pg: Any, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """`agent-journal sweep-chunks --tenant T --format json` deletes T's stray chunk, keeps the named ones;
    a bad tenant id is one line and exit status 2."""
    from journal.cli import main

    monkeypatch.setenv("JOURNAL_DATABASE_URL", str(chunked.database_url))
    with JournalClient.from_settings(chunked) as c:
        c.append_many(tenant, _drafts([("message", i) for i in range(12)]))
    _project(chunked, tenant)
    stray = state_mod.seal("messages", [])
    admin_pg.execute("INSERT INTO journal.snapshot_chunks (tenant_id, thread_id, chunk_id, body) "
                     "VALUES (%s, %s, %s, %s)", (tenant, THREAD, stray.id, stray.body))
    named = _named(admin_pg, tenant)
    capsys.readouterr()
    assert main(["sweep-chunks", "--tenant", tenant, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"threads": 1, "chunks_deleted": 1, "skipped": []}
    assert _chunk_ids(admin_pg, tenant) == named
    assert main(["sweep-chunks", "--tenant", "no/such{tenant}"]) == 2
    said = capsys.readouterr()
    said_text = (said.out + said.err).strip()
    assert "tenant" in said_text and len(said_text.splitlines()) == 1, said_text
