"""Hash-chain verification against PostgreSQL: tampering done as the database superuser is caught (invariant 8)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from journal import codec
from journal.chain import link
from journal.client import JournalClient
from journal.events import Event
from journal.settings import Settings
from projections.worker import Projector
from replayer.replay import ThreadVerdict, verify
from replayer.verify import CHANGED, INSERTED, MISSING, REORDERED

N = 10


@pytest.fixture
def journal(migrated: Settings, client: JournalClient, tenant: str) -> str:
    """A tenant with thread 'th' (seqs 1..10, content 'hello-<seq>') and an untouched thread 'other'."""
    for i in range(1, N + 1):
        client.append(tenant, "th", "message", {"role": "user", "content": f"hello-{i}"}, actor={"agent_id": "a1"})
        client.append(tenant, "other", "message", {"role": "user", "content": f"other-{i}"})
    p = Projector(migrated)
    p.drain(tenants=[tenant])
    p.close()
    return tenant


def check(settings: Settings, tenant: str, seq: int, reason: str) -> None:
    results = {v.thread: v for v in verify(tenant, settings=settings)}
    assert set(results) == {"th", "other"}
    assert results["other"].ok and results["other"].checked == N
    bad = results["th"]
    assert (bad.ok, bad.first_bad_seq, bad.reason) == (False, seq, reason), bad.detail
    assert bad.checked == seq - 1


def forge(pg: Any, tenant: str, seq: int, content: str) -> None:
    """Insert a well-formed event chained to the row before it, as an attacker without the HMAC key could."""
    prev, ts = pg.execute("SELECT hash, ts_ms FROM journal.events WHERE tenant_id = %s AND thread_id = 'th' "
                          "AND seq = %s", (tenant, seq - 1)).fetchone()
    payload = {"content": content, "role": "user"}
    ev = Event(tenant, "th", seq, "message", payload, ts + 1, actor={"agent_id": "a1"})
    body = codec.frame(codec.pack_body("message", payload, None, None, {"agent_id": "a1"}, None))
    pg.execute(
        "INSERT INTO journal.events (tenant_id, thread_id, seq, type, agent_id, actor, ts_ms, appended_at, payload, "
        "version, body, stream_id, prev_hash, hash) VALUES (%s, 'th', %s, 'message', 'a1', %s, %s, "
        "to_timestamp(%s / 1000.0), %s, 1, %s, 'forged', %s, %s)",
        (tenant, seq, json.dumps({"agent_id": "a1"}), ts + 1, ts + 1, json.dumps(payload), body, bytes(prev),
         link(bytes(prev), ev)))


def test_untouched_tenant_verifies(migrated: Settings, journal: str) -> None:
    """Every thread of an untouched tenant verifies, anchored to threads.last_hash."""
    results = verify(journal, settings=migrated)
    assert [(v.thread, v.ok, v.checked) for v in results] == [("other", True, N), ("th", True, N)]
    assert all(isinstance(v, ThreadVerdict) and v.to_dict()["tenant"] == journal for v in results)


def test_one_changed_byte_of_a_body_is_caught(migrated: Settings, journal: str, admin_pg: Any) -> None:
    """One byte changed in the stored body of seq 4 is reported as changed at seq 4."""
    (body,) = admin_pg.execute("SELECT body FROM journal.events WHERE tenant_id = %s AND thread_id = 'th' "
                               "AND seq = 4", (journal,)).fetchone()
    body = bytes(body)
    at = body.index(b"hello-4")
    tampered = body[:at] + b"j" + body[at + 1:]  # still decodes: content now reads "jello-4"
    admin_pg.execute("UPDATE journal.events SET body = %s WHERE tenant_id = %s AND thread_id = 'th' AND seq = 4",
                     (tampered, journal))
    check(migrated, journal, 4, CHANGED)


def test_undecodable_body_is_caught(migrated: Settings, journal: str, admin_pg: Any) -> None:
    """A body altered so that it no longer decodes is reported as changed at its seq, not as a crash."""
    admin_pg.execute("UPDATE journal.events SET body = '\\x4aff'::bytea WHERE tenant_id = %s AND thread_id = 'th' "
                     "AND seq = 7", (journal,))
    check(migrated, journal, 7, CHANGED)


def test_changed_jsonb_payload_is_caught(migrated: Settings, journal: str, admin_pg: Any) -> None:
    """Editing only the queryable JSONB copy of seq 6 is reported as changed at seq 6."""
    admin_pg.execute("UPDATE journal.events SET payload = jsonb_set(payload, '{content}', '\"hello-evil\"') "
                     "WHERE tenant_id = %s AND thread_id = 'th' AND seq = 6", (journal,))
    check(migrated, journal, 6, CHANGED)


def test_deleted_event_is_caught(migrated: Settings, journal: str, admin_pg: Any) -> None:
    """Deleting seq 5 is reported as missing at seq 5."""
    admin_pg.execute("DELETE FROM journal.events WHERE tenant_id = %s AND thread_id = 'th' AND seq = 5", (journal,))
    check(migrated, journal, 5, MISSING)


def test_deleted_last_event_is_caught(migrated: Settings, journal: str, admin_pg: Any) -> None:
    """Cutting the last event off is caught by the recorded head: missing at seq 10."""
    admin_pg.execute("DELETE FROM journal.events WHERE tenant_id = %s AND thread_id = 'th' AND seq = %s",
                     (journal, N))
    check(migrated, journal, N, MISSING)


def test_inserted_event_is_caught(migrated: Settings, journal: str, admin_pg: Any) -> None:
    """A forged event slipped in at seq 4 (later ones renumbered) is reported as inserted at seq 4."""
    q = "UPDATE journal.events SET seq = seq + %s WHERE tenant_id = %s AND thread_id = 'th' AND seq >= %s"
    admin_pg.execute(q, (1000, journal, 4))  # two steps: a single +1 would collide on the primary key
    admin_pg.execute(q, (-999, journal, 1004))
    forge(admin_pg, journal, 4, "hello-forged")
    check(migrated, journal, 4, INSERTED)


def test_event_appended_behind_the_recorded_head_is_caught(migrated: Settings, journal: str, admin_pg: Any) -> None:
    """A consistently chained forgery after the last seq is caught by the head anchor: inserted at seq 11."""
    forge(admin_pg, journal, N + 1, "hello-forged")
    check(migrated, journal, N + 1, INSERTED)


def test_swapped_events_are_caught(migrated: Settings, journal: str, admin_pg: Any) -> None:
    """Swapping seqs 3 and 7 is reported as reordered at seq 3."""
    q = "UPDATE journal.events SET seq = %s WHERE tenant_id = %s AND thread_id = 'th' AND seq = %s"
    admin_pg.execute(q, (-3, journal, 3))
    admin_pg.execute(q, (3, journal, 7))
    admin_pg.execute(q, (7, journal, -3))
    check(migrated, journal, 3, REORDERED)
