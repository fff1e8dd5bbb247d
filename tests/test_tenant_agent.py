"""A tenant-scoped agent: with only its tenant's credentials it appends, reads, waits and resumes.

The credentials are what `agent-journal tenant create` hands out: a Redis ACL user confined to
the tenant's keys and a PostgreSQL login bound to the tenant. Nothing of another tenant is
reachable with them, in Redis or in PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import make_client

from journal import keys
from journal.errors import AccessDenied
from journal.redis_store import connect
from journal.settings import Settings
from projections.worker import Projector, WorkerOptions

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_tenant_agent_appends_reads_waits_and_resumes(kind: str, migrated: Settings, tenant_settings: Settings,
                                                      tenant: str) -> None:
    """The README's agent loop works end to end on a tenant's own credentials, across the Redis and PostgreSQL tiers."""
    with make_client(kind, tenant_settings) as agent:
        rec = agent.append(tenant, "run-42", "message", {"role": "user", "content": "refund order 1234?"},
                           idempotency_key="msg-1", expected_seq=0)
        paused = agent.append(tenant, "run-42", "pause", {"reason": "refund over $100 needs a human"},
                              expected_seq=rec.seq)
        agent.append(tenant, "run-42", "resume", {"by": "human:alice"})
        p = Projector(migrated, WorkerOptions())
        p.drain(tenants=[tenant])
        p.close()
        admin = connect(migrated.redis_url or "")
        admin.xtrim(keys.stream(tenant), maxlen=0, approximate=False)  # everything now only in PostgreSQL
        admin.close()
        agent.append(tenant, "run-42", "message", {"role": "assistant", "content": "Refund issued."})
        approval = agent.wait(tenant, "run-42", after_seq=paused.seq, types=("resume",), timeout=3600)
        assert approval is not None and approval.payload == {"by": "human:alice"}
        assert [e.seq for e in agent.read(tenant, "run-42")] == [1, 2, 3, 4]
        resumed = agent.resume(tenant, "run-42")
        assert (resumed.seq, resumed.state.status) == (4, "active")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_tenant_agent_reaches_nothing_of_another_tenant(kind: str, migrated: Settings, tenant_settings: Settings,
                                                        tenant: str) -> None:
    """Append, read, wait and resume on another tenant are refused with AccessDenied."""
    other = tenant + "-b"
    with make_client("sync", migrated) as admin_client:
        admin_client.append(other, "th", "message", {**MSG, "secret": 1})
    with make_client(kind, tenant_settings) as agent:
        calls: list[tuple[str, tuple[Any, ...]]] = [
            ("append", (other, "th", "message", MSG)), ("read", (other, "th")), ("head", (other, "th")),
            ("wait", (other, "th", 0)), ("resume", (other, "th"))]
        for name, args in calls:
            with pytest.raises(AccessDenied):
                getattr(agent, name)(*args)


def test_tenant_reader_login_cannot_read_another_tenant_from_postgres(migrated: Settings, tenant_settings: Settings,
                                                                     tenant: str) -> None:
    """The durable tier refuses another tenant by name for a bound reader login, before any query."""
    from journal.durable import DurableReader

    reader = DurableReader(tenant_settings.database_url or "")
    try:
        assert reader.events(tenant, "th", 0) == []
        assert reader.bound_tenant == tenant
        with pytest.raises(AccessDenied, match="reads tenant"):
            reader.events(tenant + "-b", "th", 0)
    finally:
        reader.close()


def test_reader_replayer_reads_the_hot_tail_and_refuses_other_tenants(migrated: Settings, tenant_settings: Settings,
                                                                      tenant: str) -> None:
    """Replayer.from_settings as a tenant reader includes unprojected events, and refuses another tenant outright."""
    from replayer import Replayer

    with make_client("sync", tenant_settings) as agent:
        agent.append(tenant, "th", "message", {"role": "user", "content": "not projected yet"})
    with Replayer.from_settings(tenant_settings, reader_url=tenant_settings.database_url) as r:
        assert r.replay(tenant, "th").last_seq == 1
        with pytest.raises(AccessDenied, match="reads tenant"):
            r.replay(tenant + "-b", "th")
