"""Faults on a real Valkey Cluster: a primary SIGKILLed under load, a busy slot resharded under load.

Both run on the session's cluster of ``tests/cluster/conftest.py`` and leave it whole (3 primaries,
each with a linked replica), so the order of the tests does not matter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import assert_exactly_once
from test_cluster_client import tenants_on_every_primary

from journal import keys
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.embedded_cluster import migrate_slot
from journal.errors import JournalError
from journal.redis_store import cluster_report, connect
from journal.settings import Settings
from projections.worker import Projector, WorkerOptions

MSG = {"role": "user", "content": "hi"}


class Writers:
    """Agents appending in threads until stopped; what each append was acknowledged with is recorded."""

    def __init__(self, settings: Settings, jobs: list[tuple[str, str, str]]) -> None:
        #: (tenant, thread, durability) per writer.
        self.jobs = jobs
        self.settings = settings
        self.acked: dict[tuple[str, str], dict[int, int]] = {}  # (tenant, thread) -> seq -> the payload's n
        self.failures = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, args=job) for job in jobs]
        self._lock = threading.Lock()

    def _write(self, tenant: str, thread: str, durability: str) -> None:
        n = 0
        with JournalClient.from_settings(self.settings.with_(durability_timeout=2.0)) as c:
            while not self._stop.is_set():
                n += 1
                key = f"{thread}-{n}"
                give_up = time.monotonic() + 60
                while True:  # an agent retries with its idempotency key until it is acknowledged
                    try:
                        ev = c.append(tenant, thread, "message", {**MSG, "n": n}, idempotency_key=key,
                                      durability=durability)
                        break
                    except JournalError:
                        with self._lock:
                            self.failures += 1
                        if time.monotonic() > give_up:
                            raise
                        time.sleep(0.05)
                with self._lock:
                    self.acked.setdefault((tenant, thread), {})[ev.seq] = n
                time.sleep(0.002)

    def __enter__(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def count(self) -> int:
        with self._lock:
            return sum(len(v) for v in self.acked.values())


def wait_until(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def healthy(stack: EmbeddedStack) -> bool:
    """Every slot served by a primary that answers (asked through a node alive now)."""
    try:
        nodes = cluster_report(stack.settings().redis_url or "")
    except JournalError:
        return False
    # The killed primary stays listed (flagged fail, no slots) until it comes back as a replica.
    return sum(n.slots for n in nodes if n.role == "primary" and n.state == "ok") == 16384


@pytest.fixture
def projector_running(cluster_settings: Settings) -> Iterator[Callable[[], None]]:
    """A projector working through the fault in a thread of its own; call the fixture's value to stop it."""
    p = Projector(cluster_settings, WorkerOptions(claim_idle_ms=500), consumer=f"fault-{uuid.uuid4().hex[:6]}")
    runner = threading.Thread(target=p.run)
    runner.start()

    def stop() -> None:
        p.stop()
        runner.join(60)

    yield stop
    stop()


def drain(settings: Settings, tenants: list[str]) -> None:
    """Project what is left with a projector of its own (claiming what the stopped one left pending)."""
    p = Projector(settings, WorkerOptions(claim_idle_ms=100), consumer=f"drain-{uuid.uuid4().hex[:6]}")
    try:
        p.drain(timeout=90, tenants=tenants)
    finally:
        p.close()


def stream_seqs(settings: Settings, tenant: str, thread: str) -> list[int]:
    """The seqs of ``thread``'s entries in its tenant's stream, in stream order."""
    r: Any = connect(settings.redis_url or "")
    try:
        return [int(f[b"s"]) for _, f in r.xrange(keys.stream(tenant)) if f.get(b"t") == thread.encode()]
    finally:
        r.close()


def test_primary_sigkilled_under_load_loses_no_replicated_event(
        cluster_stack: EmbeddedStack, cluster_settings: Settings, projector_running: Callable[[], None], admin_pg: Any,
        record_property: Any) -> None:
    """A primary SIGKILLed under load: its replica takes over; every 'replicated' event is there, projected once."""
    url = cluster_settings.redis_url or ""
    tenants = tenants_on_every_primary(url, per_node=2)
    probe: Any = connect(url)
    victim_address = probe.get_node_from_key(keys.stream(tenants[0])).name
    probe.close()
    victim = next(i for i, n in enumerate(cluster_stack.cluster_nodes()) if f"127.0.0.1:{n['port']}" == victim_address)
    on_victim = [t for t in tenants if _node_of(url, t) == victim_address]
    jobs = [(t, "rep", "replicated") for t in tenants] + [(t, "mem", "memory") for t in on_victim]
    with Writers(cluster_settings, jobs) as writers:
        wait_until("some load", lambda: writers.count() > 200)
        before = writers.count()
        cluster_stack.kill_node(victim)
        killed_at = time.monotonic()
        wait_until("the replica promoted", lambda: healthy(cluster_stack))
        promoted_after = time.monotonic() - killed_at
        # The promoted primary has no replica: its 'replicated' appends are written but not confirmed
        # (DurabilityError; the writers retry with their keys) until the old primary rejoins as its replica.
        cluster_stack.up(("redis",), cluster=3)
        wait_until("appends again after the failover", lambda: writers.count() > before + 300, timeout=60)
    record_property("failover_seconds", round(promoted_after, 2))
    projector_running()
    # The URL named one node, maybe the one killed: new clients enter through a node alive now.
    cluster_settings = cluster_settings.with_(redis_url=cluster_stack.settings().redis_url)
    drain(cluster_settings, tenants)
    lost_memory = 0
    with JournalClient.from_settings(cluster_settings) as c:
        for (tenant, thread), acked in writers.acked.items():
            # Every tier (the projector trims the stream below what PostgreSQL holds), gapless or an error.
            stored = {e.seq: e.payload["n"] for e in c.read(tenant, thread)}
            changed = {seq for seq, n in acked.items() if stored.get(seq) != n}
            if thread == "rep":
                assert not changed, f"{tenant}: replicated events lost: {sorted(changed)[:10]}"
                assert_exactly_once(admin_pg, tenant, {"rep": c.head(tenant, "rep")})
            else:
                lost_memory += len(changed)  # gone, or its seq issued again to a later event
    record_property("memory_events_lost", lost_memory)
    print(f"failover after {promoted_after:.1f}s; 'memory' events acknowledged then lost: {lost_memory}; "
          f"append errors retried: {writers.failures}")


def _node_of(url: str, tenant: str) -> str:
    r: Any = connect(url)
    try:
        return str(r.get_node_from_key(keys.stream(tenant)).name)
    finally:
        r.close()


def test_slot_of_busy_tenants_resharded_under_load(cluster_stack: EmbeddedStack, cluster_settings: Settings,
                                                   projector_running: Callable[[], None], admin_pg: Any) -> None:
    """A slot whose tenants are appending is moved to another primary: nothing lost, no seq issued twice."""
    url = cluster_stack.settings().redis_url or ""
    settings = cluster_settings.with_(redis_url=url)
    probe: Any = connect(url)
    try:
        # Several busy tenants in one slot: ids of one hash tag differ, so find ids sharing a slot.
        first = f"t-{uuid.uuid4().hex[:12]}"
        slot = probe.keyslot(keys.stream(first))
        busy = [first]
        while len(busy) < 3:
            candidate = f"t-{uuid.uuid4().hex[:12]}"
            if probe.keyslot(keys.stream(candidate)) == slot:
                busy.append(candidate)
        source = probe.nodes_manager.get_node_from_slot(slot).name
        target = next(n.name for n in probe.get_primaries() if n.name != source)
    finally:
        probe.close()
    jobs = [(t, f"th{i}", "memory") for t in busy for i in range(2)]
    with Writers(settings, jobs) as writers:
        wait_until("some load", lambda: writers.count() > 300)
        moved = migrate_slot(url, slot, target)
        before = writers.count()
        wait_until("appends after the move", lambda: writers.count() > before + 300)
    assert moved > 0
    check: Any = connect(url)
    try:
        assert check.nodes_manager.get_node_from_slot(slot).name == target
    finally:
        check.close()
    projector_running()
    drain(settings, busy)
    with JournalClient.from_settings(settings) as c:
        for (tenant, thread), acked in writers.acked.items():
            stored = {e.seq: e.payload["n"] for e in c.read(tenant, thread)}
            assert all(stored.get(seq) == n for seq, n in acked.items()), f"{tenant}/{thread}: an event lost"
            # Each acknowledged append has its own seq: none issued twice.
            assert len(set(acked.values())) == len(acked) == len(set(acked))
            assert_exactly_once(admin_pg, tenant, {thread: c.head(tenant, thread)})


def start_projector(settings: Settings) -> subprocess.Popen[bytes]:
    """`agent-journal project` in a process of its own, on the cluster."""
    env = {**os.environ, "JOURNAL_REDIS_URL": settings.redis_url or "", "JOURNAL_DATABASE_URL":
           settings.database_url or "", "JOURNAL_S3_URL": settings.s3_url or ""}
    return subprocess.Popen([sys.executable, "-m", "journal.cli", "project", "--no-migrate", "--claim-idle-ms", "300",
                             "--batch-size", "200"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_projector_killed_on_the_cluster_the_other_takes_over(cluster_stack: EmbeddedStack,
                                                              cluster_settings: Settings, admin_pg: Any) -> None:
    """Two projector processes on the cluster, one SIGKILLed under load: the other projects everything, once."""
    settings = cluster_settings.with_(redis_url=cluster_stack.settings().redis_url)
    tenants = tenants_on_every_primary(settings.redis_url or "", per_node=2)
    doomed, survivor = start_projector(settings), start_projector(settings)
    try:
        with Writers(settings, [(t, "th", "memory") for t in tenants]) as writers:
            wait_until("some load", lambda: writers.count() > 500)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
            before = writers.count()
            wait_until("more load after the kill", lambda: writers.count() > before + 500)

        def projected() -> bool:
            with JournalClient.from_settings(settings) as c:
                return all(int(admin_pg.execute(
                    "SELECT coalesce(max(seq), 0) FROM journal.events WHERE tenant_id = %s AND thread_id = 'th'",
                    (t,)).fetchone()[0]) == c.head(t, "th") for t in tenants)

        wait_until("the survivor projected everything, the dead one's pending entries too", projected, timeout=90)
    finally:
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0, survivor.stderr.read().decode()[-2000:] if survivor.stderr else ""
    with JournalClient.from_settings(settings) as c:
        for t in tenants:
            assert_exactly_once(admin_pg, t, {"th": c.head(t, "th")})
