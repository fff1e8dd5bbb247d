"""Idle threads leave Redis (`agent-journal maintain`) and come back from PostgreSQL on the next append."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import redis

from journal import keys
from journal.client import JournalClient
from journal.errors import ConfigError, ConflictError
from journal.events import Draft
from journal.redis_store import connect
from journal.settings import Settings
from projections.idle import evict_idle
from projections.worker import Projector, WorkerOptions
from replayer import Replayer

MSG = {"role": "user", "content": "hello"}


def project(settings: Settings, tenant: str) -> None:
    p = Projector(settings, WorkerOptions())
    p.drain(tenants=[tenant])
    p.close()


def tenant_memory(r: redis.Redis, tenant: str) -> tuple[int, list[bytes]]:
    found = sorted(r.scan_iter(match=keys.stream(tenant).removesuffix("stream") + "*"))
    return sum(int(r.memory_usage(k) or 0) for k in found), found


def test_idle_tenant_leaves_redis_and_its_threads_continue_from_postgres(migrated: Settings) -> None:
    """After eviction no head, mark or entry is left; the next appends continue each thread's seq and chain."""
    tenant = f"idle-{uuid.uuid4().hex[:8]}"
    admin = connect(migrated.redis_url or "")
    with JournalClient.from_settings(migrated) as c:
        for _ in range(40):
            c.append_many(tenant, [Draft(f"th-{j}", "message", MSG) for j in range(25)])
        project(migrated, tenant)
        before, _ = tenant_memory(admin, tenant)
        (done,) = evict_idle(migrated, timedelta(0), [tenant])
        assert (done.threads, done.entries_trimmed) == (25, 1000)
        after, left = tenant_memory(admin, tenant)
        assert not admin.exists(keys.heads(tenant)) and admin.xlen(keys.stream(tenant)) == 0
        assert admin.hkeys(keys.projected(tenant)) == [keys.COMMITTED_MARK.encode()]
        assert set(left) == {keys.stream(tenant).encode(), keys.projected(tenant).encode(),
                             keys.evicted(tenant).encode()}
        print(f"tenant Redis memory: {before} B before, {after} B after eviction")
        assert after < before / 50, (before, after)

        assert [e.seq for e in c.read(tenant, "th-3")] == list(range(1, 41))
        assert c.resume(tenant, "th-3").seq == 40
        assert c.append(tenant, "th-3", "message", MSG, expected_seq=40).seq == 41
        with pytest.raises(ConflictError) as info:
            c.append(tenant, "th-4", "message", MSG, expected_seq=5)
        assert info.value.actual == 40
        assert [e.seq for e in c.append_many(tenant, [Draft("th-4", "message", MSG), Draft("th-4", "message", MSG),
                                                      Draft("brand-new", "message", MSG)])] == [41, 42, 1]
    project(migrated, tenant)
    with Replayer.from_settings(migrated) as r:
        verdicts = {v.thread: v for v in r.verify(tenant)}
        assert verdicts["th-3"].ok and verdicts["th-3"].checked == 41 and verdicts["th-4"].checked == 42
        assert all(v.ok for v in verdicts.values())
    admin.close()


def test_a_thread_appended_since_the_candidates_were_read_is_not_evicted(migrated: Settings) -> None:
    """A thread whose Redis head moved past what PostgreSQL holds keeps its head."""
    tenant = f"idle-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        c.append(tenant, "busy", "message", MSG)
        c.append(tenant, "quiet", "message", MSG)
        project(migrated, tenant)
        c.append(tenant, "busy", "message", MSG)  # not projected: PostgreSQL says head 1, Redis 2
        (done,) = evict_idle(migrated, timedelta(0), [tenant])
        assert done.threads == 1 and c.head(tenant, "busy") == 2 and c.head(tenant, "quiet") == 0
        assert done.entries_trimmed == 0  # a thread is still live: the hot window stays


def test_an_evicted_thread_without_postgres_configured_is_refused_clearly(migrated: Settings) -> None:
    """Appending to an evicted thread with no PostgreSQL URL raises ConfigError saying why; nothing is written."""
    tenant = f"idle-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        c.append(tenant, "th", "message", MSG)
        project(migrated, tenant)
    evict_idle(migrated, timedelta(0), [tenant])
    with JournalClient.from_settings(migrated.with_(database_url=None)) as hot_only:
        with pytest.raises(ConfigError, match="evicted"):
            hot_only.append(tenant, "th", "message", MSG)
        assert hot_only.head(tenant, "th") == 0


def test_maintain_command_evicts_and_reports(migrated: Settings, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`agent-journal maintain --idle 0s --tenant T --format json` evicts T's idle threads and says how many."""
    import json

    from journal.cli import main

    for name in ("redis_url", "database_url", "s3_url", "s3_access_key", "s3_secret_key"):
        monkeypatch.setenv(f"JOURNAL_{name.upper()}", str(getattr(migrated, name)))
    tenant = f"idle-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        c.append(tenant, "th", "message", MSG)
    project(migrated, tenant)
    capsys.readouterr()
    assert main(["maintain", "--idle", "0s", "--tenant", tenant, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "retention": [{"tenant": tenant, "abandoned": 0, "skipped": 0, "archive_due": 0, "archived": 0,
                       "archive_failed": 0, "deleted": 0}],
        "evicted": [{"tenant": tenant, "threads": 1, "entries_trimmed": 1}]}
    assert main(["maintain", "--idle", "a week"]) == 2
