"""Replay from the tiers against real Redis/Valkey, PostgreSQL and S3 (invariant 7)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from journal.client import JournalClient
from journal.errors import AccessDenied, GapError, InvalidQuery, NotFound
from journal.events import Draft, Event
from journal.keys import TENANT_CONTEXT_THREAD
from journal.ops import Resumed
from journal.reducer import fold
from journal.settings import Settings
from journal.state import empty
from projections import db
from projections.worker import Projector
from replayer.replay import Replayer


def project(settings: Settings, *tenants: str) -> None:
    p = Projector(settings)
    p.drain(tenants=list(tenants))
    p.close()


def agent_steps(thread: str, n: int) -> list[Draft]:
    """A mix of every built-in step, so snapshots hold messages, calls, nodes and memory."""
    out: list[Draft] = []
    i = 0
    while len(out) < n:
        i += 1
        cid = f"c{i}"
        out += [
            Draft(thread, "node_enter", {"node": "plan"}, node="plan"),
            Draft(thread, "message", {"role": "assistant", "content": f"step {i}", "tool_calls": [cid]}),
            Draft(thread, "tool_call", {"call_id": cid, "tool": "search", "args": {"q": i}}, node="tools"),
            Draft(thread, "tool_result", {"call_id": cid, "tool": "search", "output": {"rows": i}}),
            Draft(thread, "memory_set", {"path": ["k", str(i % 3)], "value": i}),
            Draft(thread, "node_exit", {"node": "plan"}, node="plan"),
        ]
    return out[:n]


@pytest.fixture
def replayer(migrated: Settings) -> Iterator[Replayer]:
    with Replayer.from_settings(migrated) as r:
        yield r


def as_dict(state: Any) -> dict[str, Any]:
    return state.to_dict()  # type: ignore[no-any-return]


def test_replay_reads_the_unprojected_redis_tail(migrated: Settings, client: JournalClient, tenant: str,
                                                 replayer: Replayer) -> None:
    """Seqs only in Redis (appended after the last projection) replay exactly like a full fold."""
    client.append_many(tenant, agent_steps("th", 10))
    project(migrated, tenant)
    client.append_many(tenant, agent_steps("th", 16)[10:])  # seqs 11..16 are not projected
    events = client.read(tenant, "th")
    assert [e.seq for e in events] == list(range(1, 17))
    for n in (11, 13, 16):
        assert as_dict(replayer.replay(tenant, "th", at_seq=n)) == as_dict(fold(events[:n]))
    assert replayer.replay(tenant, "th").last_seq == 16
    assert replayer.latest_seq(tenant, "th") == 16


def test_replay_equals_fold_from_empty_at_every_seq_with_snapshots(
        migrated: Settings, client: JournalClient, tenant: str, replayer: Replayer, admin_pg: Any) -> None:
    """With a snapshot every 5 events, replay at each seq equals folding events 1..n from empty."""
    client.append_many(tenant, agent_steps("th", 23))
    p = Projector(migrated.with_(snapshot_every=5))
    p.drain(tenants=[tenant])
    p.close()
    snaps = admin_pg.execute("SELECT seq FROM journal.snapshots WHERE tenant_id = %s ORDER BY seq",
                             (tenant,)).fetchall()
    assert [s for (s,) in snaps] == [5, 10, 15, 20]
    events = client.read(tenant, "th")
    assert as_dict(replayer.replay(tenant, "th", at_seq=0)) == as_dict(empty(tenant, "th"))
    for n in range(1, 24):
        via_snapshot = replayer.replay(tenant, "th", at_seq=n)
        assert as_dict(via_snapshot) == as_dict(fold(events[:n])), n
        assert as_dict(replayer.replay(tenant, "th", at_seq=n, use_snapshots=False)) == as_dict(via_snapshot)


def test_at_time_picks_the_last_event_at_or_before(migrated: Settings, client: JournalClient, tenant: str,
                                                   replayer: Replayer) -> None:
    """at_time resolves to the last event appended at or before it, in PostgreSQL and in the Redis tail."""
    recs: list[Event] = []
    for i in range(6):
        recs.append(client.append(tenant, "th", "message", {"role": "user", "content": str(i)}))
        time.sleep(0.004)  # distinct server milliseconds
        if i == 3:
            project(migrated, tenant)  # seqs 1..4 in PostgreSQL, 5..6 only in Redis
    for rec in recs:
        assert replayer.replay(tenant, "th", at_time=rec.at).last_seq == rec.seq
        just_before_next = rec.at + timedelta(microseconds=999)
        assert replayer.replay(tenant, "th", at_time=just_before_next).last_seq == rec.seq
    assert replayer.replay(tenant, "th", at_time=datetime.now(UTC) + timedelta(days=1)).last_seq == 6
    with pytest.raises(NotFound):
        replayer.replay(tenant, "th", at_time=recs[0].at - timedelta(milliseconds=1))
    with pytest.raises(InvalidQuery):
        replayer.replay(tenant, "th", at_time=datetime(2030, 1, 1))  # naive: refused, not guessed


def test_gap_in_postgres_raises_gap_error_naming_the_seq(migrated: Settings, client: JournalClient, tenant: str,
                                                         replayer: Replayer, admin_pg: Any) -> None:
    """A row deleted from journal.events makes replay raise GapError naming the missing seq."""
    client.append_many(tenant, agent_steps("th", 8))
    project(migrated, tenant)
    admin_pg.execute("DELETE FROM journal.events WHERE tenant_id = %s AND thread_id = 'th' AND seq = 3", (tenant,))
    with pytest.raises(GapError) as err:
        replayer.replay(tenant, "th")
    assert err.value.missing == 3 and "seq 3" in str(err.value)
    assert replayer.replay(tenant, "th", at_seq=2).last_seq == 2  # below the gap the history is whole


def test_blob_payloads_are_resolved_before_folding(migrated: Settings, client: JournalClient, tenant: str,
                                                   replayer: Replayer) -> None:
    """An offloaded tool result is fetched from S3 before the fold, in the Redis tail and from PostgreSQL."""
    big = "PDF:" + "x" * (migrated.blob_threshold + 10)
    client.append(tenant, "th", "tool_call", {"call_id": "c1", "tool": "fetch_invoice", "args": {}})
    rec = client.append(tenant, "th", "tool_result", {"call_id": "c1", "tool": "fetch_invoice", "output": big})
    assert rec.blob is not None
    for _ in range(2):  # first from the Redis tail, then from PostgreSQL
        state = replayer.replay(tenant, "th")
        assert state.tool_calls["c1"].result is not None and state.tool_calls["c1"].result.output == big
        assert state.anomalies == ()
        project(migrated, tenant)


def test_reader_of_tenant_a_cannot_replay_tenant_b(migrated: Settings, client: JournalClient) -> None:
    """Through tenant A's reader URL, replaying or verifying tenant B is refused with AccessDenied."""
    a, b = f"iso-a-{time.time_ns():x}", f"iso-b-{time.time_ns():x}"
    for t in (a, b):
        client.append_many(t, agent_steps("th", 4))
    project(migrated, a, b)
    creds = db.create_tenant_reader(migrated, a)
    try:
        assert migrated.database_url
        with Replayer.from_settings(migrated, reader_url=creds.database_url(migrated.database_url)) as r:
            assert r.replay(a, "th").last_seq == 4
            with pytest.raises(AccessDenied, match="reads tenant"):
                r.replay(b, "th")
            with pytest.raises(AccessDenied):
                r.verify(b)
            assert [v.ok for v in r.verify(a)] == [True]
    finally:
        db.revoke_tenant_reader(migrated, a)


def test_resume_returns_latest_state_and_tenant_context(migrated: Settings, client: JournalClient,
                                                        tenant: str) -> None:
    """client.resume gives the latest state over all tiers, and the _tenant thread's state once it exists."""
    fresh = client.resume(tenant, "new")
    assert isinstance(fresh, Resumed) and fresh.seq == 0 and fresh.tenant_context is None
    client.append_many(tenant, agent_steps("th", 7))
    project(migrated, tenant)
    client.append(tenant, "th", "pause", {"reason": "needs approval"})
    r = client.resume(tenant, "th")
    assert r.seq == 8 and r.state.status == "paused" and r.tenant_context is None
    client.append(tenant, TENANT_CONTEXT_THREAD, "memory_set", {"path": ["prefs", "tone"], "value": "formal"})
    r = client.resume(tenant, "th")
    assert r.tenant_context is not None and r.tenant_context.memory["prefs"]["tone"] == "formal"
    client.append(tenant, "th", "message", {"role": "user", "content": "ok"}, expected_seq=r.seq)


def test_snapshot_after_a_blob_equals_the_full_fold(migrated: Settings, client: JournalClient, tenant: str,
                                                   replayer: Replayer) -> None:
    """A snapshot taken after an offloaded payload agrees with folding the resolved events from empty."""
    big = "PDF:" + "z" * (migrated.blob_threshold + 10)
    client.append(tenant, "th", "tool_call", {"call_id": "c1", "tool": "fetch_invoice", "args": {}})
    client.append(tenant, "th", "tool_result", {"call_id": "c1", "tool": "fetch_invoice", "output": big})
    client.append_many(tenant, agent_steps("th", 8))
    p = Projector(migrated.with_(snapshot_every=5))
    p.drain(tenants=[tenant])
    p.close()
    events = client.read(tenant, "th")  # blobs resolved
    assert as_dict(replayer.replay(tenant, "th", at_seq=7)) == as_dict(fold(events[:7]))
