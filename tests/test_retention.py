"""Retention (`agent-journal maintain`): idle threads abandoned by an event in their history, per-tenant policy."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from journal import keys
from journal.client import JournalClient
from journal.errors import ConfigError, InvalidEvent
from journal.settings import Settings
from projections.idle import evict_idle
from projections.retention import Policy, Retention, apply_retention
from projections.worker import Projector, WorkerOptions
from replayer import Replayer
from replayer.audit import timeline

MSG = {"role": "user", "content": "hello"}


def project(settings: Settings, tenant: str) -> None:
    p = Projector(settings, WorkerOptions())
    p.drain(tenants=[tenant])
    p.close()


def age(pg: Any, tenant: str, thread: str, days: int) -> None:
    """Make a thread look idle for ``days`` (its last projection that long ago)."""
    pg.execute("UPDATE journal.threads SET updated_at = now() - make_interval(days => %s) "
               "WHERE tenant_id = %s AND thread_id = %s", (days, tenant, thread))


def status(pg: Any, tenant: str, thread: str) -> str:
    return str(pg.execute("SELECT status FROM journal.threads WHERE tenant_id = %s AND thread_id = %s",
                          (tenant, thread)).fetchone()[0])


def test_idle_thread_is_abandoned_by_an_event_replay_shows(migrated: Settings, admin_pg: Any,
                                                           client: JournalClient, tenant: str) -> None:
    """A thread idle past 7 days gets an `abandon` event: the row, the replay and the timeline say abandoned."""
    for _ in range(3):
        client.append(tenant, "old", "message", MSG)
    client.append(tenant, "fresh", "message", MSG)
    project(migrated, tenant)
    age(admin_pg, tenant, "old", 8)
    age(admin_pg, tenant, "fresh", 6)
    (report,) = apply_retention(migrated, [tenant])
    assert (report.abandoned, report.skipped) == (1, 0)
    (again,) = apply_retention(migrated, [tenant])  # re-run before the projector caught up: nothing new
    assert (again.abandoned, again.skipped) == (0, 1)
    project(migrated, tenant)
    (later,) = apply_retention(migrated, [tenant])  # projected: not idle any more, and abandoned anyway
    assert later.abandoned == 0
    assert status(admin_pg, tenant, "old") == "abandoned" and status(admin_pg, tenant, "fresh") == "active"
    events = client.read(tenant, "old")
    assert [e.type for e in events] == ["message", "message", "message", "abandon"]
    assert events[-1].payload["idle_days"] == 7
    with Replayer.from_settings(migrated) as r:
        assert r.replay(tenant, "old").status == "abandoned"
        assert r.replay(tenant, "old", at_seq=3).status == "active"
        assert [s.status for s in timeline(r, tenant, "old")][-2:] == ["active", "abandoned"]
        assert all(v.ok for v in r.verify(tenant))
    # The agent comes back: the thread is active again, in the row and in the fold.
    client.append(tenant, "old", "message", MSG)
    client.append(tenant, "old", "message", MSG)
    project(migrated, tenant)
    assert status(admin_pg, tenant, "old") == "active"
    with Replayer.from_settings(migrated) as r:
        assert r.replay(tenant, "old").status == "active"
        assert [s.status for s in timeline(r, tenant, "old", after=4)] == ["active", "active"]
        assert [s.status for s in timeline(r, tenant, "old", after=5)] == ["active"]  # seeded past the abandon


def test_agent_appending_meanwhile_wins(migrated: Settings, admin_pg: Any, client: JournalClient,
                                        tenant: str) -> None:
    """A thread whose agent appended after the last projection is not abandoned: the conflict is counted."""
    client.append(tenant, "th", "message", MSG)
    project(migrated, tenant)
    age(admin_pg, tenant, "th", 30)
    client.append(tenant, "th", "message", MSG)  # in Redis, not yet in PostgreSQL
    (report,) = apply_retention(migrated, [tenant])
    assert (report.abandoned, report.skipped) == (0, 1)
    project(migrated, tenant)
    assert [e.type for e in client.read(tenant, "th")] == ["message", "message"]
    assert status(admin_pg, tenant, "th") == "active"


def test_evicted_thread_is_abandoned_through_postgres_head(migrated: Settings, admin_pg: Any,
                                                           client: JournalClient, tenant: str) -> None:
    """A thread already evicted from Redis gets its abandon event at the seq after PostgreSQL's head."""
    for _ in range(2):
        client.append(tenant, "th", "message", MSG)
    project(migrated, tenant)
    evict_idle(migrated, timedelta(0), [tenant])
    age(admin_pg, tenant, "th", 9)
    (report,) = apply_retention(migrated, [tenant])
    assert report.abandoned == 1
    project(migrated, tenant)
    assert [(e.seq, e.type) for e in client.read(tenant, "th")][-1] == (3, "abandon")


def test_per_tenant_policy_file(migrated: Settings, admin_pg: Any, client: JournalClient, tmp_path: Path) -> None:
    """The policy file's [tenant.X] overrides [default]; fields left out come from [default]."""
    slow, fast = f"slow-{uuid.uuid4().hex[:8]}", f"fast-{uuid.uuid4().hex[:8]}"
    for t in (slow, fast):
        client.append(t, "th", "message", MSG)
        project(migrated, t)
        age(admin_pg, t, "th", 10)
    policy = tmp_path / "retention.toml"
    policy.write_text(f'[default]\nabandon_after = "7d"\narchive_after = "30d"\n\n'
                      f'[tenant.{slow}]\nabandon_after = "14d"\n')
    retention = Retention.load(policy)
    assert retention.of(slow) == Policy(timedelta(days=14), timedelta(days=30), None)
    assert retention.of(fast) == Policy(timedelta(days=7), timedelta(days=30), None)
    reports = {r.tenant: r for r in apply_retention(migrated.with_(retention_file=policy), [slow, fast])}
    assert (reports[slow].abandoned, reports[fast].abandoned) == (0, 1)


@pytest.mark.parametrize(("text", "says"), [
    ('[default]\nabandon_after = "a week"\n', "abandon_after"),
    ('[default]\nabandon_after = 7\n', "quoted span"),
    ('[default]\nkeep = "7d"\n', "unknown field"),
    ('[tenants.acme]\nabandon_after = "7d"\n', "unknown table"),
    ('[default\n', "not valid TOML"),
])
def test_bad_policy_file_is_refused_clearly(tmp_path: Path, text: str, says: str) -> None:
    """A policy file with a mistake raises ConfigError naming it, before anything is done."""
    policy = tmp_path / "retention.toml"
    policy.write_text(text)
    with pytest.raises(ConfigError, match=says):
        Retention.load(policy)


def test_expired_terminal_thread_is_deleted_once_evicted(migrated: Settings, admin_pg: Any, client: JournalClient,
                                                         tenant: str) -> None:
    """delete_after removes a completed thread's rows (its snapshot chunks too) once Redis no longer holds it;
    a live one stays."""
    # Long enough for snapshots with sealed chunks (a list's items sealed 128 at a time).
    for _ in range(3):
        client.append_many(tenant, [{"thread": "done", "type": "message", "payload": MSG}] * 100)
    client.append(tenant, "done", "complete", {"summary": "ok"})
    client.append(tenant, "live", "message", MSG)
    project(dataclasses.replace(migrated, snapshot_every=50), tenant)
    chunks = "SELECT count(*) FROM journal.snapshot_chunks WHERE tenant_id = %s AND thread_id = 'done'"
    assert admin_pg.execute(chunks, (tenant,)).fetchone()[0] > 0
    for th in ("done", "live"):
        age(admin_pg, tenant, th, 400)
    retention = Retention(Policy(abandon_after=None, delete_after=timedelta(days=365)))
    (first,) = apply_retention(migrated, [tenant], retention)
    assert first.deleted == 0  # still in Redis
    evict_idle(migrated, timedelta(0), [tenant])
    (second,) = apply_retention(migrated, [tenant], retention)
    assert second.deleted == 1
    assert admin_pg.execute("SELECT thread_id FROM journal.threads WHERE tenant_id = %s",
                            (tenant,)).fetchall() == [("live",)]
    assert admin_pg.execute("SELECT count(*) FROM journal.events WHERE tenant_id = %s AND thread_id = 'done'",
                            (tenant,)).fetchone() == (0,)
    assert admin_pg.execute(chunks, (tenant,)).fetchone() == (0,)
    assert client.append(tenant, "done", "message", MSG).seq == 1  # a new history


def test_abandon_payload_is_checked(client: JournalClient, tenant: str) -> None:
    """An `abandon` event's payload must be a map, like every built-in type's."""
    with pytest.raises(InvalidEvent):
        client.append(tenant, "th", "abandon", "bored")


def test_archive_after_moves_terminal_threads_to_s3(migrated: Settings, admin_pg: Any, client: JournalClient,
                                                    tenant: str) -> None:
    """archive_after runs the archiver over terminal threads idle that long; the thread still reads the same."""
    client.append(tenant, "done", "message", MSG)
    client.append(tenant, "done", "complete", {"summary": "ok"})
    client.append(tenant, "live", "message", MSG)
    project(migrated, tenant)
    for th in ("done", "live"):
        age(admin_pg, tenant, th, 40)
    before = [(e.seq, e.type) for e in client.read(tenant, "done")]
    retention = Retention(Policy(abandon_after=None, archive_after=timedelta(days=30)))
    (report,) = apply_retention(migrated, [tenant], retention)
    assert (report.archive_due, report.archived, report.archive_failed) == (1, 1, 0)
    assert admin_pg.execute("SELECT thread_id FROM journal.archives WHERE tenant_id = %s",
                            (tenant,)).fetchall() == [("done",)]
    assert [(e.seq, e.type) for e in client.read(tenant, "done")] == before
    (again,) = apply_retention(migrated, [tenant], retention)
    assert (again.archive_due, again.archived) == (0, 0)


# -- the delete against a racing append ------------------------------------------------------------

def _expired_and_evicted(settings: Settings, admin_pg: Any, client: JournalClient, tenant: str) -> None:
    client.append(tenant, "done", "message", MSG)
    client.append(tenant, "done", "complete", {"summary": "ok"})
    project(settings, tenant)
    age(admin_pg, tenant, "done", 400)
    evict_idle(settings, timedelta(0), [tenant])


def test_an_append_racing_the_delete_waits_and_starts_a_new_history(migrated: Settings, admin_pg: Any,
                                                                    client: JournalClient, tenant: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the hold, an append restoring the old head from PostgreSQL just before the delete wrote seq 3
    above a deleted history (a hole at 1-2); held, it waits for the delete and writes seq 1 of a new history."""
    from projections import retention as rmod

    _expired_and_evicted(migrated, admin_pg, client, tenant)
    # The delete takes 0.6 s inside its transaction, rows locked, the thread held.
    slow = "SELECT pg_sleep(0.6) WHERE %(tenant)s::text IS NOT NULL AND %(thread)s::text IS NOT NULL"
    monkeypatch.setattr(rmod, "DELETE_THREAD_SQL", [slow, *rmod.DELETE_THREAD_SQL])
    reports: list[Any] = []
    maintain = threading.Thread(target=lambda: reports.extend(apply_retention(
        migrated, [tenant], Retention(Policy(abandon_after=None, delete_after=timedelta(days=365))))))
    maintain.start()
    deadline = time.monotonic() + 5
    while not client.redis.hexists(keys.fences(tenant), "done") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.redis.hget(keys.fences(tenant), "done").startswith(b"hold:retention:")
    t0 = time.monotonic()
    rec = client.append(tenant, "done", "message", MSG)  # during the delete
    waited = time.monotonic() - t0
    maintain.join(10)
    assert reports and reports[0].deleted == 1
    assert rec.seq == 1 and waited > 0.2, (rec.seq, waited)
    assert not client.redis.hexists(keys.fences(tenant), "done")  # released
    project(migrated, tenant)
    assert admin_pg.execute("SELECT seq FROM journal.events WHERE tenant_id = %s AND thread_id = 'done'",
                            (tenant,)).fetchall() == [(1,)]
    with Replayer.from_settings(migrated) as r:
        [verdict] = r.verify(tenant, "done")
        assert verdict.ok, verdict


def test_a_hold_that_outlasts_the_wait_refuses_the_append_and_a_stale_one_is_released(
        migrated: Settings, admin_pg: Any, client: JournalClient, tenant: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ThreadHeld after HOLD_WAIT, nothing written; the next `maintain` releases a hold a crashed run left."""
    from journal import ops
    from journal.errors import ThreadHeld
    from projections.retention import HOLD_PREFIX

    _expired_and_evicted(migrated, admin_pg, client, tenant)
    fences = keys.fences(tenant)
    crashed = f"{HOLD_PREFIX}{int(time.time() * 1000) - 3_600_000}: retention is deleting this thread's expired history"
    client.redis.hset(fences, "done", crashed)  # as a run that crashed an hour ago left it
    monkeypatch.setattr(ops, "HOLD_WAIT", 0.3)
    with pytest.raises(ThreadHeld, match=r"is held .*wrote nothing"):
        client.append(tenant, "done", "message", MSG)
    assert client.head(tenant, "done") == 0
    (report,) = apply_retention(migrated, [tenant], Retention(Policy(abandon_after=None,
                                                                     delete_after=timedelta(days=365))))
    assert report.deleted == 1 and not client.redis.hexists(fences, "done")
    assert client.append(tenant, "done", "message", MSG).seq == 1
