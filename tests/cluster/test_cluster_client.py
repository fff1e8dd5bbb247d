"""The client on a real Valkey Cluster: `up --cluster`, a redis+cluster:// URL, durability 'replicated'."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import uuid
from typing import Any

import pytest
import redis
import redis.cluster

from journal import acl, keys
from journal.aio import AsyncJournalClient
from journal.cli import check_url, main
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.errors import ConfigError, DurabilityError, JournalError
from journal.redis_store import address_client, cluster_report, connect, is_cluster_url, live_nodes
from journal.settings import Settings

MSG = {"role": "user", "content": "hi"}


def tenants_on_every_primary(url: str, per_node: int = 1) -> list[str]:
    """Fresh tenant ids whose slots are served by each primary in turn (``per_node`` each)."""
    client: Any = connect(url)
    try:
        primaries = {n.name for n in client.get_primaries()}
        found: dict[str, list[str]] = {name: [] for name in primaries}
        while any(len(v) < per_node for v in found.values()):
            tenant = f"t-{uuid.uuid4().hex[:12]}"
            node = client.get_node_from_key(keys.stream(tenant)).name
            if len(found[node]) < per_node:
                found[node].append(tenant)
    finally:
        client.close()
    return [t for ts in found.values() for t in ts]


def test_up_cluster_forms_three_primaries_each_with_a_replica(cluster_stack: EmbeddedStack) -> None:
    """`up --cluster 3` gives 3 primaries sharing the 16384 slots, each followed by a linked replica."""
    nodes = cluster_report(cluster_stack.settings().redis_url or "")
    primaries = [n for n in nodes if n.role == "primary"]
    replicas = [n for n in nodes if n.role == "replica"]
    assert len(primaries) == 3 and len(replicas) == 3
    assert sum(n.slots for n in primaries) == 16384
    assert sorted(r.primary or "" for r in replicas) == sorted(p.address for p in primaries)
    assert all(r.link == "up" and r.lag is not None for r in replicas), nodes
    assert all(n.state == "ok" for n in nodes)


def test_status_shows_each_node(cluster_stack: EmbeddedStack, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`agent-journal status` lists every node of the cluster with its role, memory and lag."""
    for var in ("JOURNAL_REDIS_URL", "JOURNAL_DATABASE_URL", "JOURNAL_S3_URL"):
        monkeypatch.delenv(var, raising=False)
    main(["--data-dir", str(cluster_stack.data_dir), "status", "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert next(s for s in out["services"] if s["service"] == "redis")["up"]
    table = next(t for t in out["tables"] if t["title"] == "Valkey Cluster nodes")
    assert sorted(r["role"] for r in table["rows"]) == ["primary"] * 3 + ["replica"] * 3
    assert all(r["memory"].endswith(("K", "M", "G")) for r in table["rows"]), table


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_append_read_wait_resume_on_every_primary(kind: str, cluster_settings: Settings) -> None:
    """Through a redis+cluster:// URL, tenants on each primary append (single and batched), read, wait and resume."""
    assert is_cluster_url(cluster_settings.redis_url)

    async def scenario(c: AsyncJournalClient, tenant: str) -> tuple[list[int], int, int]:
        first = await c.append(tenant, "run", "message", MSG, idempotency_key="k1", expected_seq=0)
        await c.append_many(tenant, [{"thread": "run", "type": "message", "payload": MSG},
                                     {"thread": "other", "type": "message", "payload": MSG}])
        again = await c.append(tenant, "run", "message", MSG, idempotency_key="k1")
        assert again.seq == first.seq
        waiter = asyncio.ensure_future(c.wait(tenant, "run", 2, types=("resume",), timeout=10))
        await asyncio.sleep(0.2)
        await c.append(tenant, "run", "resume", {"by": "human"})
        got = await waiter
        resumed = await c.resume(tenant, "run")
        return [e.seq for e in await c.read(tenant, "run")], got.seq if got else 0, resumed.seq

    for tenant in tenants_on_every_primary(cluster_settings.redis_url or ""):
        if kind == "async":
            async def run(t: str = tenant) -> tuple[list[int], int, int]:
                c = await AsyncJournalClient.from_settings(cluster_settings)
                try:
                    return await scenario(c, t)
                finally:
                    await c.close()

            seqs, waited, head = asyncio.run(run())
        else:
            with JournalClient.from_settings(cluster_settings) as c:
                c.append(tenant, "run", "message", MSG, idempotency_key="k1", expected_seq=0)
                c.append_many(tenant, [{"thread": "run", "type": "message", "payload": MSG},
                                       {"thread": "other", "type": "message", "payload": MSG}])
                assert c.append(tenant, "run", "message", MSG, idempotency_key="k1").seq == 1
                found: list[Any] = []
                waiter = threading.Thread(target=lambda c=c, t=tenant, f=found: f.append(
                    c.wait(t, "run", 2, types=("resume",), timeout=10)))
                waiter.start()
                c.append(tenant, "run", "resume", {"by": "human"})
                waiter.join(15)
                seqs, waited, head = [e.seq for e in c.read(tenant, "run")], found[0].seq, c.resume(tenant, "run").seq
        assert (seqs, waited, head) == ([1, 2, 3], 3, 3)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_replicated_append_is_on_the_replica_when_acknowledged(kind: str, cluster_settings: Settings) -> None:
    """An append acknowledged with durability='replicated' is already in the replica of its primary."""
    for tenant in tenants_on_every_primary(cluster_settings.redis_url or ""):
        if kind == "async":
            async def run(t: str = tenant) -> int:
                c = await AsyncJournalClient.from_settings(cluster_settings)
                try:
                    return (await c.append(t, "run", "message", MSG, durability="replicated")).seq
                finally:
                    await c.close()

            seq = asyncio.run(run())
        else:
            with JournalClient.from_settings(cluster_settings) as c:
                seq = c.append(tenant, "run", "message", MSG, durability="replicated").seq
        assert seq == 1
        cluster: Any = connect(cluster_settings.redis_url or "")
        try:
            primary = cluster.get_node_from_key(keys.stream(tenant))
            replica = next(n for n in cluster_report(cluster_settings.redis_url or "") if n.primary == primary.name)
            host, _, port = replica.address.rpartition(":")
            password = cluster.get_redis_connection(primary).connection_pool.connection_kwargs.get("password")
        finally:
            cluster.close()
        direct = redis.Redis(host=host, port=int(port), password=password)
        try:
            direct.execute_command("READONLY")
            assert direct.xlen(keys.stream(tenant)) == 1
        finally:
            direct.close()


def test_a_retry_of_an_unconfirmed_replicated_append_is_confirmed_only_once_replicated(
        cluster_stack: EmbeddedStack, cluster_settings: Settings) -> None:
    """The replica stops: the append raises DurabilityError (written, not confirmed). A retry with its key from
    another client must not report it replicated while the replica still lacks it, and does once it has it."""
    tenant = tenants_on_every_primary(cluster_settings.redis_url or "")[0]
    primary = _primary_of(cluster_settings, tenant)
    replica = next(n for n in cluster_report(cluster_settings.redis_url or "") if n.primary == primary)
    pid = next(n["pid"] for n in cluster_stack.cluster_nodes() if f"127.0.0.1:{n['port']}" == replica.address)
    settings = cluster_settings.with_(durability_timeout=0.5)
    os.kill(pid, signal.SIGSTOP)
    try:
        with JournalClient.from_settings(settings) as first, pytest.raises(DurabilityError,
                                                                          match="no replica acknowledged"):
            first.append(tenant, "run", "message", MSG, durability="replicated", idempotency_key="k-1")
        with JournalClient.from_settings(settings) as retry:  # a new connection: it has written nothing yet
            with pytest.raises(DurabilityError, match="no replica acknowledged") as caught:
                retry.append(tenant, "run", "message", MSG, durability="replicated", idempotency_key="k-1")
            assert [e.seq for e in caught.value.written] == [1]
    finally:
        os.kill(pid, signal.SIGCONT)
    with JournalClient.from_settings(settings.with_(durability_timeout=5)) as retry:
        assert retry.append(tenant, "run", "message", MSG, durability="replicated", idempotency_key="k-1").seq == 1
        assert retry.head(tenant, "run") == 1


def _primary_of(settings: Settings, tenant: str) -> str:
    cluster: Any = connect(settings.redis_url or "")
    try:
        node = cluster.get_node_from_key(keys.stream(tenant))
        return f"{node.host}:{node.port}"
    finally:
        cluster.close()


def test_replicated_without_a_replica_says_what_was_written(settings: Settings, tenant: str) -> None:
    """On a server without a replica, durability='replicated' raises DurabilityError carrying the written event."""
    if is_cluster_url(settings.redis_url):
        pytest.skip("needs the session's single Valkey node (no replica)")
    with JournalClient.from_settings(settings.with_(durability_timeout=0.2)) as c:
        with pytest.raises(DurabilityError, match="no replica acknowledged") as caught:
            c.append(tenant, "run", "message", MSG, durability="replicated")
        assert [e.seq for e in caught.value.written] == [1]
        assert c.head(tenant, "run") == 1  # written: a retry must carry an idempotency key


def test_the_cluster_client_does_not_resend_an_append(cluster_settings: Settings) -> None:
    """The client's cluster connection has no command retries (a lost reply must not append twice)."""
    with JournalClient.from_settings(cluster_settings) as c:
        assert isinstance(c.redis, redis.cluster.RedisCluster)
        assert c.redis.retry._retries == 0


def test_up_cluster_of_another_size_is_refused(cluster_stack: EmbeddedStack) -> None:
    """`up --cluster 2` on a data directory holding a 3-primary cluster says so, and starts nothing."""
    with pytest.raises(ConfigError, match="has 3 primaries, not 2"):
        cluster_stack.up(("redis",), cluster=2)
    assert len(cluster_stack.cluster_nodes()) == 6


def test_tenant_credentials_keep_the_cluster_url(cluster_settings: Settings) -> None:
    """A tenant's URL on a cluster stays a redis+cluster:// URL carrying the tenant's user."""
    creds = acl.TenantCredentials("acme", acl.username("acme"), "pw")
    url = creds.redis_url(cluster_settings.redis_url or "")
    assert url.startswith("redis+cluster://journal-acme:pw@127.0.0.1:")
    check_url(url, "redis", "JOURNAL_REDIS_URL")


def test_a_user_left_on_one_node_exists_and_rotate_restores_it_everywhere(cluster_settings: Settings) -> None:
    """Existence is asked of every node (the admin client's one target may be a node without the user)."""
    url = cluster_settings.redis_url or ""
    tenant = f"one-{uuid.uuid4().hex[:8]}"
    admin: Any = connect(url)
    try:
        creds = acl.create_tenant_user(admin, tenant)
        nodes = live_nodes(admin)
        for address in nodes[:-1]:
            direct = address_client(admin, address)
            try:
                direct.execute_command("ACL", "DELUSER", creds.username)
            finally:
                direct.close()
        assert acl.tenant_user_exists(admin, tenant)
        acl.rotate_tenant_user(admin, tenant)
        for address in nodes:
            direct = address_client(admin, address)
            try:
                assert direct.execute_command("ACL", "GETUSER", creds.username) is not None, address
            finally:
                direct.close()
        assert acl.revoke_tenant_user(admin, tenant)
        assert not acl.tenant_user_exists(admin, tenant)
    finally:
        admin.close()


def test_rotate_defines_the_tenant_user_on_a_node_that_lacks_it(cluster_settings: Settings) -> None:
    """A node that joined after `tenant create` has no tenant user: the tenant's appends to its slots are refused
    there; `tenant rotate` defines the whole user on every node again, and they work."""
    url = cluster_settings.redis_url or ""
    tenant = tenants_on_every_primary(url)[0]
    host, _, port = _primary_of(cluster_settings, tenant).rpartition(":")
    admin: Any = connect(url)
    try:
        creds = acl.create_tenant_user(admin, tenant)
        node = admin.get_node(host=host, port=int(port))
        admin.execute_command("ACL", "DELUSER", creds.username, target_nodes=node)  # as a node added later
        # Refused on that node (as the entry node, or when the append reaches it).
        with pytest.raises(JournalError), \
                JournalClient.from_settings(cluster_settings.with_(redis_url=creds.redis_url(url))) as c:
            c.append(tenant, "run", "message", MSG)
        rotated = acl.rotate_tenant_user(admin, tenant)
        listed = {}
        for address in live_nodes(admin):  # every node of CLUSTER NODES, replicas included
            direct = address_client(admin, address)
            try:
                listed[address] = [ln for ln in direct.execute_command("ACL", "LIST") if creds.username.encode() in ln]
            finally:
                direct.close()
        assert len(listed) == 6 and all(listed.values()), listed
        assert len({tuple(v) for v in listed.values()}) == 1, listed  # one definition, on every node
        with JournalClient.from_settings(cluster_settings.with_(redis_url=rotated.redis_url(url))) as c:
            assert c.append(tenant, "run", "message", MSG).seq == 1
        acl.revoke_tenant_user(admin, tenant)
    finally:
        admin.close()


def test_streams_with_a_backlog_are_read_ahead_on_every_primary(cluster_settings: Settings, admin_pg: Any) -> None:
    """A round whose streams fill their share sends their next read ahead on each primary's connection, and
    the quiet streams are read behind it; every event is projected exactly once."""
    from conftest import assert_exactly_once

    from projections.worker import Projector, WorkerOptions

    busy = tenants_on_every_primary(cluster_settings.redis_url or "")
    quiet = tenants_on_every_primary(cluster_settings.redis_url or "")
    with JournalClient.from_settings(cluster_settings) as c:
        for t in busy:
            c.append_many(t, [{"thread": "th", "type": "message", "payload": {"role": "user", "content": f"{i}"}}
                              for i in range(120)])
        for t in quiet:
            c.append(t, "th", "message", {"role": "user", "content": "hi"})
    p = Projector(cluster_settings, WorkerOptions(batch_size=40, read_ahead=200))
    try:
        p.drain(tenants=busy + quiet, timeout=60)
    finally:
        p.close()
    for t in busy:
        assert_exactly_once(admin_pg, t, {"th": 120})
    for t in quiet:
        assert_exactly_once(admin_pg, t, {"th": 1})
