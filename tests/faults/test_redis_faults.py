"""Faults of the Valkey server: SIGKILL under load, and a restart that lost (part of) its AOF.

Every test here runs on the module's private stack (``private_stack``): it kills Valkey.
"""

from __future__ import annotations

import operator
import random
import shutil
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from conftest import assert_exactly_once

from journal import codec, keys
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.errors import DurabilityError, StoreUnavailable, ThreadFenced
from journal.settings import Settings
from projections.worker import Projector, WorkerOptions

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}

Key = tuple[str, str, int]  # (tenant, thread, seq)


def aof_dir(stack: EmbeddedStack) -> Path:
    return stack.data_dir / "redis" / "appendonlydir"


def drain(settings: Settings, tenants: list[str], timeout: float = 60.0) -> None:
    p = Projector(settings, WorkerOptions(claim_idle_ms=100, maintenance_every=0.2, tail_check_grace_ms=0))
    try:
        p.drain(tenants=tenants, timeout=timeout)
    finally:
        p.close()


def pg_events(pg: Any, tenants: list[str]) -> dict[Key, Any]:
    """(tenant, thread, seq) -> payload id of every event PostgreSQL stores for ``tenants``."""
    rows = pg.execute("SELECT tenant_id, thread_id, seq, ts_ms, body FROM journal.events WHERE tenant_id = ANY(%s)",
                      (tenants,)).fetchall()
    return {(t, th, s): _pid(codec.decode_body(t, th, s, ts, bytes(b)).payload) for t, th, s, ts, b in rows}


def pg_conflicts(pg: Any, tenants: list[str]) -> dict[Key, set[Any]]:
    """(tenant, thread, seq) -> payload ids of both versions of every recorded sequence conflict."""
    out: dict[Key, set[Any]] = defaultdict(set)
    for t, th, s, old, new in pg.execute("SELECT tenant_id, thread_id, seq, existing_body, incoming_body FROM "
                                         "journal.conflicts WHERE tenant_id = ANY(%s)", (tenants,)).fetchall():
        for body in (old, new):
            out[(t, th, s)].add(_pid(codec.decode_body(t, th, s, 0, bytes(body)).payload))
    return out


def redis_events(client: JournalClient, tenants: list[str]) -> set[tuple[str, str, int, Any]]:
    """(tenant, thread, seq, payload id) of every entry still in the tenants' streams."""
    out = set()
    for t in tenants:
        for sid, fields in client.redis.xrange(keys.stream(t)):
            ev = codec.decode_entry(t, fields, sid.decode())
            out.add((t, ev.thread, ev.seq, _pid(ev.payload)))
    return out


def _pid(payload: Any) -> Any:
    return payload.get("id") if isinstance(payload, dict) else None


def pg_heads(pg: Any, tenant: str) -> dict[str, int]:
    return dict(pg.execute("SELECT thread_id, last_seq FROM journal.threads WHERE tenant_id = %s",
                           (tenant,)).fetchall())


# -- 2. SIGKILL under load -----------------------------------------------------------------------------


@dataclass
class Ledger:
    """What the writers were told: acknowledged events per durability level, refusals, fenced threads."""

    acked: dict[str, list[tuple[str, str, int, str]]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    fenced: set[tuple[str, str]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def writer(settings: Settings, w: int, tenant: str, level: str, ledger: Ledger, stop: threading.Event,
           quiet: threading.Event) -> None:
    """Append to this writer's own threads until ``stop`` (fsync writers pause while ``quiet``); record each
    acknowledgement and each refusal."""
    rng = random.Random(w)
    threads = [f"w{w}-th{k}" for k in range(3)]
    i = 0
    client = JournalClient.from_settings(settings)
    try:
        while not stop.is_set():
            if level != "memory" and quiet.is_set():
                time.sleep(0.01)
                continue
            k = rng.randrange(len(threads))
            pid = f"{w}-{i}"
            i += 1
            try:
                ev = client.append(tenant, threads[k], "message", {**MSG, "id": pid, "pad": "x" * rng.randrange(300)},
                                   durability=level)
            except ThreadFenced as e:
                with ledger.lock:
                    ledger.fenced.add((tenant, e.thread))
                    ledger.errors["ThreadFenced"] += 1
                threads[k] = f"{threads[k]}-n{i}"  # that thread is an operator's now; go on with a new one
                continue
            except (StoreUnavailable, DurabilityError) as e:
                with ledger.lock:
                    ledger.errors[type(e).__name__] += 1
                time.sleep(0.05)
                continue
            with ledger.lock:
                ledger.acked[level].append((tenant, ev.thread, ev.seq, pid))
            time.sleep(0.002)
    finally:
        client.close()


def test_valkey_sigkilled_under_load_loses_no_fsync_event(
        private_stack: EmbeddedStack, fault_settings: Settings, admin_connect: Callable[..., Any],
        record_property: Callable[[str, object], None]) -> None:
    """Valkey SIGKILLed mid-load and restarted: every fsync-acknowledged event survives; memory losses are
    counted; a seq reissued after the crash is either in journal.conflicts or replaced a lost memory event."""
    run = uuid.uuid4().hex[:6]
    tenants = [f"rk-{run}-{i}" for i in range(2)]
    levels = ["fsync", "fsync", "fsync", "memory", "memory", "memory"]
    ledger = Ledger()
    stop, quiet = threading.Event(), threading.Event()
    writers = [threading.Thread(target=writer, args=(fault_settings, w, tenants[w % 2], lvl, ledger, stop, quiet))
               for w, lvl in enumerate(levels)]
    # A projector runs throughout, so some events reach PostgreSQL before the crash takes them from Redis.
    live = Projector(fault_settings, WorkerOptions(claim_idle_ms=1000, maintenance_every=0.5, block_ms=50))
    projector = threading.Thread(target=live.run)
    projector.start()
    for t in writers:
        t.start()
    try:
        time.sleep(1.5)
        # WAITAOF makes Valkey fsync at once, which carries every memory event before it to disk too: keep the
        # fsync writers quiet for the last half second, so memory events are not all fsynced when the crash comes.
        # (Valkey write()s the AOF before it replies, so a process SIGKILL keeps even unfsynced events in the page
        # cache; only a machine crash can lose them. The count measured here is the process-crash figure.)
        quiet.set()
        time.sleep(0.5)
        before_kill = {lvl: len(v) for lvl, v in ledger.acked.items()}
        private_stack.kill("redis")
        time.sleep(1.0)  # writers see StoreUnavailable meanwhile: those appends are not acknowledged
        private_stack.start("redis")
        quiet.clear()
        time.sleep(2.5)
    finally:
        stop.set()
        for t in writers:
            t.join(30)
        live.stop()
        projector.join(30)
    assert not projector.is_alive()
    assert ledger.errors["StoreUnavailable"] > 0, "the writers never noticed the crash"
    assert all(before_kill.get(lvl, 0) > 0 for lvl in ("fsync", "memory"))
    after = {lvl: len(v) - before_kill.get(lvl, 0) for lvl, v in ledger.acked.items()}
    assert all(after.get(lvl, 0) > 0 for lvl in ("fsync", "memory")), ("writers did not resume", after)

    drain(fault_settings, tenants)
    pg = admin_connect(fault_settings)
    with JournalClient.from_settings(fault_settings) as client:
        hot = redis_events(client, tenants)
    try:
        stored = pg_events(pg, tenants)
        conflicts = pg_conflicts(pg, tenants)

        def where(t: str, th: str, s: int, pid: str) -> str | None:
            if stored.get((t, th, s)) == pid:
                return "events"
            if pid in conflicts.get((t, th, s), ()):
                return "conflicts"
            if (t, th, s, pid) in hot:
                return "redis"
            return None

        found: dict[str, Counter[str | None]] = {lvl: Counter(where(*a) for a in acked)
                                                 for lvl, acked in ledger.acked.items()}
        lost_fsync = [a for a in ledger.acked["fsync"] if where(*a) is None]
        lost_memory = [a for a in ledger.acked["memory"] if where(*a) is None]

        # The same seq acknowledged twice with different content: noticed (a conflict) or the older one is gone.
        versions: dict[Key, list[tuple[str, str]]] = defaultdict(list)
        for lvl, acked in ledger.acked.items():
            for t, th, s, pid in acked:
                versions[(t, th, s)].append((pid, lvl))
        reissued = {k: v for k, v in versions.items() if len({pid for pid, _ in v}) > 1}
        unnoticed = []
        for k, vs in reissued.items():
            if k in conflicts:
                continue
            gone = [(pid, lvl) for pid, lvl in vs if where(*k, pid) is None]
            if len(gone) != len(vs) - 1 or any(lvl != "memory" for _, lvl in gone):
                unnoticed.append((k, vs))

        # PostgreSQL: every thread gapless, chained, no seq twice (the primary key), whatever got fenced.
        for t in tenants:
            heads: dict[str, int] = {}
            for tt, th, s in stored:
                if tt == t:
                    heads[th] = max(heads.get(th, 0), s)
            assert_exactly_once(pg, t, heads)
        fenced_pg = pg.execute("SELECT count(*) FROM journal.threads WHERE tenant_id = ANY(%s) AND fenced",
                               (tenants,)).fetchone()[0]
    finally:
        pg.close()

    summary = {
        "acked": {lvl: len(v) for lvl, v in ledger.acked.items()},
        "found": {lvl: dict(c) for lvl, c in found.items()},
        "memory_lost": len(lost_memory),
        "reissued_seqs": len(reissued),
        "conflicts": len(conflicts),
        "fenced_threads": fenced_pg,
        "writer_errors": dict(ledger.errors),
    }
    print(f"\nvalkey SIGKILL under load: {summary}")
    record_property("memory_acked", len(ledger.acked["memory"]))
    record_property("memory_lost", len(lost_memory))
    record_property("fsync_acked", len(ledger.acked["fsync"]))
    record_property("reissued_seqs", len(reissued))
    record_property("conflicts", len(conflicts))
    assert lost_fsync == [], f"{len(lost_fsync)} fsync-acknowledged events lost: {lost_fsync[:10]}"
    assert unnoticed == [], f"seqs reissued with different content and not in journal.conflicts: {unnoticed[:10]}"


# -- 5. Redis loses its tail ------------------------------------------------------------------------------


def load(client: JournalClient, tenant: str, threads: list[str], n: int, tag: str) -> dict[str, int]:
    heads: dict[str, int] = {}
    for i in range(n):
        ev = client.append(tenant, threads[i % len(threads)], "message", {**MSG, "id": f"{tag}-{i}"})
        heads[ev.thread] = ev.seq
    return heads


def restart_with_aof(stack: EmbeddedStack, replacement: Path | None) -> None:
    """SIGKILL Valkey, replace its AOF directory (``None``: delete it, so it starts empty), start it again."""
    stack.kill("redis")
    shutil.rmtree(aof_dir(stack))
    if replacement is not None:
        shutil.copytree(replacement, aof_dir(stack))
    stack.start("redis")


def test_redis_restarted_empty_never_reissues_a_projected_seq(
        private_stack: EmbeddedStack, fault_settings: Settings, admin_connect: Callable[..., Any]) -> None:
    """Valkey restarted with its AOF deleted: after check_tail every thread continues at PostgreSQL's last seq + 1."""
    run = uuid.uuid4().hex[:6]
    tenants = [f"empty-{run}-{i}" for i in range(2)]
    threads = ["a", "b", "c"]
    with JournalClient.from_settings(fault_settings) as client:
        for t in tenants:
            load(client, t, threads, 150, "orig")
    drain(fault_settings, tenants)
    assert sorted(p.name for p in aof_dir(private_stack).iterdir())  # the files this test deletes
    restart_with_aof(private_stack, None)

    pg = admin_connect(fault_settings)
    try:
        last = {t: pg_heads(pg, t) for t in tenants}
        assert all(h == {"a": 50, "b": 50, "c": 50} for h in last.values())
        with JournalClient.from_settings(fault_settings) as client:
            assert client.redis.exists(*(keys.stream(t) for t in tenants)) == 0, "Valkey did not start empty"
            assert client.head(tenants[0], "a") == 0
        p = Projector(fault_settings, WorkerOptions(tail_check_grace_ms=0))
        p.check_tail()
        p.close()
        with JournalClient.from_settings(fault_settings) as client:
            for t in tenants:
                for th in threads:
                    assert client.head(t, th) == last[t][th]
                    assert client.append(t, th, "message", {**MSG, "id": f"new-{th}"}).seq == last[t][th] + 1
        drain(fault_settings, tenants)
        for t in tenants:
            assert_exactly_once(pg, t, {th: last[t][th] + 1 for th in threads})
        assert pg.execute("SELECT count(*) FROM journal.conflicts WHERE tenant_id = ANY(%s)",
                          (tenants,)).fetchone() == (0,)
    finally:
        pg.close()


@dataclass
class OldAof:
    """State after Valkey came back from an AOF copied at T1 (before more events were appended and projected)."""

    settings: Settings
    checked: str  # tenant nobody appended to before check_tail
    early: str  # tenant whose thread "a" got an append in the window before detection
    pg_last: dict[str, dict[str, int]]
    t1_heads: dict[str, dict[str, int]]
    early_seq: int


@pytest.fixture(scope="module")
def old_aof(private_stack: EmbeddedStack, fault_settings: Settings, admin_connect: Callable[..., Any],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[OldAof]:
    """Append + project, copy the AOF (T1), append + project more, SIGKILL, restore T1, start;
    append once to ``early``/a before anything detects the loss, then run the projector (drain + check_tail)."""
    run = uuid.uuid4().hex[:6]
    checked, early = f"old-{run}-c", f"old-{run}-e"
    threads = ["a", "b"]
    with JournalClient.from_settings(fault_settings) as client:
        t1 = {t: load(client, t, threads, 40, "t1") for t in (checked, early)}
        client.append(checked, "a", "message", {**MSG, "id": "t1-fsync"}, durability="fsync")  # T1 is on disk
        t1[checked]["a"] += 1
    drain(fault_settings, [checked, early])
    copy = tmp_path_factory.mktemp("aof-t1") / "appendonlydir"
    shutil.copytree(aof_dir(private_stack), copy)
    with JournalClient.from_settings(fault_settings) as client:
        for t in (checked, early):
            load(client, t, threads, 30, "t2")
    drain(fault_settings, [checked, early])
    restart_with_aof(private_stack, copy)

    pg = admin_connect(fault_settings)
    try:
        pg_last = {t: pg_heads(pg, t) for t in (checked, early)}
    finally:
        pg.close()
    with JournalClient.from_settings(fault_settings) as client:
        assert {t: {th: client.head(t, th) for th in threads} for t in (checked, early)} == t1
        # The window before detection: this seq is already in PostgreSQL with other content.
        early_seq = client.append(early, "a", "message", {**MSG, "id": "impostor"}).seq
    assert early_seq <= pg_last[early]["a"]
    drain(fault_settings, [checked, early])  # projects the impostor; its maintenance runs check_tail
    yield OldAof(fault_settings, checked, early, pg_last, t1, early_seq)


def test_old_aof_restored_heads_raised_and_early_reuse_fenced(
        old_aof: OldAof, admin_connect: Callable[..., Any]) -> None:
    """Valkey restored from an older AOF: check_tail raises heads to PostgreSQL's last seqs; a seq reissued before
    detection lands in journal.conflicts, fences the thread, and PostgreSQL keeps the original."""
    s, early = old_aof, old_aof.early
    with JournalClient.from_settings(s.settings) as client:
        for th, last in s.pg_last[s.checked].items():
            assert client.head(s.checked, th) == last
            assert client.append(s.checked, th, "message", {**MSG, "id": f"after-{th}"}).seq == last + 1
        with pytest.raises(ThreadFenced):
            client.append(early, "a", "message", {**MSG, "id": "refused"})
    drain(s.settings, [s.checked, early])
    pg = admin_connect(s.settings)
    try:
        assert_exactly_once(pg, s.checked, {th: last + 1 for th, last in s.pg_last[s.checked].items()})
        rows = pg.execute("SELECT thread_id, seq, existing_body, incoming_body FROM journal.conflicts "
                          "WHERE tenant_id = %s", (early,)).fetchall()
        assert [(r[0], r[1]) for r in rows] == [("a", s.early_seq)]
        existing = _pid(codec.decode_body(early, "a", s.early_seq, 0, bytes(rows[0][2])).payload)
        incoming = _pid(codec.decode_body(early, "a", s.early_seq, 0, bytes(rows[0][3])).payload)
        assert incoming == "impostor" and existing != "impostor"
        kept = pg.execute("SELECT payload->>'id' FROM journal.events WHERE tenant_id = %s AND thread_id = 'a' AND "
                          "seq = %s", (early, s.early_seq)).fetchone()
        assert kept == (existing,)
        assert pg.execute("SELECT fenced FROM journal.threads WHERE tenant_id = %s AND thread_id = 'a'",
                          (early,)).fetchone() == (True,)
        assert_exactly_once(pg, early, s.pg_last[early])
    finally:
        pg.close()


def test_old_aof_other_threads_raised_after_an_early_append(old_aof: OldAof) -> None:
    """After an append in the detection window, check_tail still raises the tenant's other threads' heads."""
    with JournalClient.from_settings(old_aof.settings) as client:
        head = client.head(old_aof.early, "b")
    assert head >= old_aof.pg_last[old_aof.early]["b"], (
        f"thread b head {head} (T1 was {old_aof.t1_heads[old_aof.early]['b']}) is below PostgreSQL's "
        f"{old_aof.pg_last[old_aof.early]['b']}: its next append reissues a projected seq")


def test_old_aof_detected_under_continuous_load_before_any_reuse(
        private_stack: EmbeddedStack, fault_settings: Settings, admin_connect: Callable[..., Any]) -> None:
    """Valkey restored from an older AOF while a projector runs and a writer keeps appending to another thread:
    the projector raises the stale threads' heads to PostgreSQL's before anyone appends to them."""
    tenant = f"oldload-{uuid.uuid4().hex[:6]}"
    with JournalClient.from_settings(fault_settings) as client:
        load(client, tenant, ["a", "b"], 40, "t1")
        client.append(tenant, "a", "message", {**MSG, "id": "t1-fsync"}, durability="fsync")
    drain(fault_settings, [tenant])
    copy = Path(private_stack.data_dir) / f"aof-{tenant}"
    shutil.copytree(aof_dir(private_stack), copy)
    with JournalClient.from_settings(fault_settings) as client:
        load(client, tenant, ["a", "b"], 30, "t2")
    drain(fault_settings, [tenant])
    pg = admin_connect(fault_settings)
    try:
        last = pg_heads(pg, tenant)
    finally:
        pg.close()
    live = Projector(fault_settings, WorkerOptions(maintenance_every=1.0, block_ms=50))
    worker = threading.Thread(target=live.run)
    worker.start()
    try:
        restart_with_aof(private_stack, copy)
        with JournalClient.from_settings(fault_settings) as client:
            until = time.monotonic() + 4.0  # several maintenance turns of the running projector
            i = 0
            while time.monotonic() < until:
                try:
                    client.append(tenant, "c", "message", {**MSG, "id": f"c-{i}"})
                    i += 1
                except StoreUnavailable:
                    pass
                time.sleep(0.005)
            heads = {th: client.head(tenant, th) for th in ("a", "b")}
    finally:
        live.stop()
        worker.join(30)
    assert heads["a"] >= last["a"] and heads["b"] >= last["b"], (
        f"heads {heads} still below PostgreSQL's {last} after 4 s of a running projector: the next append to a or b "
        "reissues a projected seq")


def test_a_langgraph_saver_whose_thread_lost_its_tail_in_redis_folds_it_again_and_goes_on(
        private_stack: EmbeddedStack, fault_settings: Settings, tmp_path: Path) -> None:
    """A saver's cached index holds checkpoints that Valkey then lost (acknowledged at durability 'memory',
    never projected: Valkey restored from an older AOF). Its next put conflicts with the lower head: the saver
    folds the thread again from what the journal holds and the run goes on; a new saver reads what it wrote."""
    pytest.importorskip("langgraph.graph")
    from langgraph.graph import END, START, StateGraph

    from replayer.langgraph import JournalSaver

    class Turns(TypedDict):
        turns: Annotated[list[str], operator.add]

    def graph(saver: JournalSaver) -> Any:
        g = StateGraph(Turns)
        g.add_node("turn", lambda s: {"turns": [f"turn {len(s['turns']) + 1}"]})
        g.add_edge(START, "turn")
        g.add_edge("turn", END)
        return g.compile(checkpointer=saver)

    tenant, config = f"lg-{uuid.uuid4().hex[:6]}", {"configurable": {"thread_id": "chat"}}
    with JournalClient.from_settings(fault_settings) as client:
        saver = JournalSaver(client, tenant=tenant, durability="memory")
        for _ in range(3):
            graph(saver).invoke({"turns": []}, config)
        client.append(tenant, "marker", "message", {**MSG, "id": "t1-fsync"}, durability="fsync")  # T1 on disk
        drain(fault_settings, [tenant])
        copy = tmp_path / "appendonlydir"
        shutil.copytree(aof_dir(private_stack), copy)
        for _ in range(3):  # acknowledged in Valkey, never projected: lost with the restore
            graph(saver).invoke({"turns": []}, config)
        restart_with_aof(private_stack, copy)
        drain(fault_settings, [tenant])  # check_tail: heads back to what PostgreSQL holds
        out = graph(saver).invoke({"turns": []}, config)  # the cached index is ahead of the journal
        assert out["turns"] == [f"turn {i}" for i in range(1, 8)]
        fresh = JournalSaver(client, tenant=tenant).get_tuple(config)
        assert fresh is not None and fresh.checkpoint["channel_values"]["turns"] == out["turns"]
