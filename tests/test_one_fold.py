"""One derivation of state: the projected threads row and the snapshots agree with the fold (real servers)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journal.client import JournalClient
from journal.events import Draft, Event
from journal.reducer import fold, load_registry
from journal.settings import Settings
from projections.worker import Projector
from replayer.replay import Replayer

NODES = ["planner", "tools", "approval"]
THREAD = "th"


@st.composite
def histories(draw: st.DrawFn) -> list[Draft]:
    """A thread of built-in events with valid payloads: nested and stray node moves, pauses, ends, tools, memory."""
    out: list[Draft] = []
    calls = 0
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["enter", "enter", "exit", "exit", "message", "call", "result", "set", "pause",
                                     "resume", "complete", "fail"]))
        # Any event may carry a node= (the old threads.node followed it); node events may name theirs only there.
        node = draw(st.none() | st.sampled_from(NODES))
        if kind in ("enter", "exit"):
            name = draw(st.sampled_from(NODES))
            in_payload = node is None or draw(st.booleans())
            payload: dict[str, Any] = {"node": name} if in_payload else {}
            out.append(Draft(THREAD, "node_enter" if kind == "enter" else "node_exit", payload, node=node))
        elif kind == "message":
            out.append(Draft(THREAD, "message", {"role": "user", "content": "hi"}, node=node))
        elif kind == "call":
            calls += 1
            out.append(Draft(THREAD, "tool_call", {"call_id": f"c{calls}", "tool": "search"}, node=node))
        elif kind == "result":
            out.append(Draft(THREAD, "tool_result", {"call_id": f"c{max(calls, 1)}", "output": 1}, node=node))
        elif kind == "set":
            out.append(Draft(THREAD, "memory_set", {"path": "a.b", "value": 1}, node=node))
        else:
            out.append(Draft(THREAD, kind, {}, node=node))
    return out


@pytest.fixture(scope="module")
def projector(migrated: Settings) -> Iterator[Projector]:
    """One real projector worker for the module's examples (each example uses a tenant of its own)."""
    p = Projector(migrated)
    yield p
    p.close()


def thread_row(pg: Any, tenant: str) -> tuple[Any, ...]:
    return pg.execute("SELECT status, node, branches, last_seq, max_seq, event_count FROM journal.threads "
                      "WHERE tenant_id = %s AND thread_id = %s", (tenant, THREAD)).fetchone()


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(histories(), st.lists(st.integers(1, 29), max_size=3))
def test_threads_row_equals_the_fold(projector: Projector, client: JournalClient, admin_pg: Any,
                                     history: list[Draft], cuts: list[int]) -> None:
    """After any history, projected in one batch or several, the threads row has the fold's status, node and counts."""
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    bounds = sorted({0, len(history), *(c for c in cuts if c < len(history))})
    for lo, hi in itertools.pairwise(bounds):
        client.append_many(tenant, history[lo:hi])
        projector.drain(tenants=[tenant])  # each chunk is its own batch: the row moves incrementally
    state = fold(client.read(tenant, THREAD))
    assert thread_row(admin_pg, tenant) == (state.status, state.node, list(state.pending_branches), state.last_seq,
                                            state.last_seq, state.event_count)


def test_node_after_exit_is_the_enclosing_one(projector: Projector, client: JournalClient, admin_pg: Any,
                                              tenant: str) -> None:
    """The demo's shape: after planner's exit a completed thread has no node, whatever node= the complete carried."""
    client.append_many(tenant, [Draft(THREAD, "node_enter", {"node": "planner"}, node="planner"),
                                Draft(THREAD, "node_enter", {"node": "tools"}, node="tools"),
                                Draft(THREAD, "node_exit", {"node": "tools"}, node="tools")])
    projector.drain(tenants=[tenant])
    assert thread_row(admin_pg, tenant)[:3] == ("active", "planner", ["planner"])
    client.append_many(tenant, [Draft(THREAD, "node_exit", {"node": "planner"}, node="planner"),
                                Draft(THREAD, "complete", {"summary": "done"}, node="planner")])
    projector.drain(tenants=[tenant])
    assert thread_row(admin_pg, tenant)[:3] == ("completed", None, [])


COUNTER_MODULE = """
def counter(state, event):
    return state.with_custom("counter", (state.custom.get("counter") or 0) + event.payload["n"])

REDUCERS = {"x.test.counter": counter}
"""


def test_snapshot_writer_and_replayer_fold_with_the_configured_reducers(
        migrated: Settings, client: JournalClient, tenant: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With JOURNAL_REDUCERS set, the projector's snapshot, a replay and a resume fold custom events alike."""
    name = f"jr_reducers_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(COUNTER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    configured = migrated.with_(reducers=name, snapshot_every=2)
    for n in (1, 2, 3):
        client.append(tenant, THREAD, "x.test.counter", {"n": n})
    p = Projector(configured)
    p.drain(tenants=[tenant])
    p.close()
    expected = fold(client.read(tenant, THREAD), registry=load_registry(name))
    assert expected.custom["counter"] == 6 and expected.opaque == ()
    with Replayer.from_settings(configured) as r:
        snap = r._pg().snapshot(tenant, THREAD, 2)
        assert snap is not None and snap.custom["counter"] == 3
        assert r.replay(tenant, THREAD) == expected
    with JournalClient.from_settings(configured) as agent:
        assert agent.resume(tenant, THREAD).state == expected  # from the snapshot, folding on with the same reducer


def test_migration_recomputes_status_and_node_of_existing_threads(migrated: Settings, admin_pg: Any) -> None:
    """Upgrading a database projected by the old rules gives each threads row the fold's status, node and branches."""
    import psycopg

    from journal import codec
    from projections import db

    name = f"jr_mig_{uuid.uuid4().hex[:8]}"
    admin_pg.execute(f"CREATE DATABASE {name}")
    assert migrated.database_url
    base, _, _ = migrated.database_url.rpartition("/")
    settings = migrated.with_(database_url=f"{base}/{name}")
    try:
        db.migrate(settings, "0001")
        steps = [("node_enter", {"node": "planner"}, "planner"), ("node_enter", {}, "tools"),
                 ("node_exit", {"node": "tools"}, "tools"), ("pause", {}, "tools"), ("node_exit", {}, "planner"),
                 ("message", {"role": "user", "content": "hi"}, "writer")]
        history = [Draft(THREAD, t, p, node=n) for t, p, n in steps]
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            for seq, d in enumerate(history, 1):
                body = codec.frame(codec.pack_body(d.type, d.payload, d.node, None, {}, None))
                conn.execute(
                    "INSERT INTO journal.events (tenant_id, thread_id, seq, type, node, ts_ms, appended_at, payload, "
                    "version, body, stream_id) VALUES ('acme', %s, %s, %s, %s, 0, now(), %s, 1, %s, 'x')",
                    (THREAD, seq, d.type, d.node, psycopg.types.json.Jsonb(d.payload), body))
            # As the old projector left it: the node of the last event that carried one.
            conn.execute("INSERT INTO journal.threads (tenant_id, thread_id, status, last_seq, max_seq, node, "
                         "event_count) VALUES ('acme', %s, 'paused', 6, 6, 'writer', 6)", (THREAD,))
            conn.execute("INSERT INTO journal.threads (tenant_id, thread_id, last_seq, node) "
                         "VALUES ('acme', 'quiet', 0, 'writer')")
        db.migrate(settings)
        events = [Event("acme", THREAD, seq, d.type, d.payload, 0, node=d.node) for seq, d in enumerate(history, 1)]
        state = fold(events)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            rows = conn.execute("SELECT thread_id, status, node, branches FROM journal.threads ORDER BY 1").fetchall()
        assert state.node is None and state.status == "paused"
        assert rows == [("quiet", "active", None, []), (THREAD, state.status, state.node, list(state.pending_branches))]
    finally:
        admin_pg.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


FAILING_MODULE = """
def explode(state, event):
    raise ValueError("no fold for " + str(event.payload["n"]))

REDUCERS = {"x.test.explode": explode}
"""


def test_a_failed_snapshot_fold_is_dead_lettered_by_the_one_statement(
        migrated: Settings, client: JournalClient, tenant: str, admin_pg: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A reducer that fails at a snapshot leaves the events stored and one dead letter (no entry), counted per try."""
    from projections import db, snapshots

    name = f"jr_explode_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(FAILING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    configured = migrated.with_(reducers=name, snapshot_every=2)
    for n in (1, 2):
        client.append(tenant, THREAD, "x.test.explode", {"n": n})
    p = Projector(configured)
    p.drain(tenants=[tenant])
    p.close()
    dead = "SELECT stream_id, thread_id, seq, reason, entry, attempts FROM journal.dead_letters WHERE tenant_id = %s"
    [(stream_id, thread, seq, reason, entry, attempts)] = admin_pg.execute(dead, (tenant,)).fetchall()
    assert (stream_id, thread, seq, entry, attempts) == (f"reducer:{THREAD}:1", THREAD, 1, None, 1)
    assert reason.startswith("reducer failed: ") and "ValueError: no fold for 1" in reason
    assert admin_pg.execute("SELECT count(*) FROM journal.events WHERE tenant_id = %s", (tenant,)).fetchone() == (2,)
    with db.connect(configured) as conn:  # the snapshot retried (from the stored events): one more attempt
        assert snapshots.write_due(conn, tenant, THREAD, 0, 2, [], 2, None, load_registry(name)) == 0
        conn.commit()
    assert admin_pg.execute(dead, (tenant,)).fetchall()[0][-1] == 2
