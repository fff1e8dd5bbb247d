"""`agent-journal rebuild`: blue/green rebuild of threads rows and snapshots, live, resumable; dead-letter retry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import orjson

from journal import codec, keys
from journal.client import JournalClient
from journal.events import Draft
from journal.reducer import apply
from journal.settings import Settings
from journal.state import empty, encode_snapshot, encode_state
from projections.rebuild import Rebuilder, RebuildOptions, rebuild
from projections.worker import Projector, WorkerOptions
from replayer.replay import Replayer

MSG = {"role": "user", "content": "hi"}


def _steps(i: int) -> tuple[str, dict[str, Any]]:
    """A varied history: messages, nested nodes, memory, pauses and resumes."""
    k = i % 10
    if k == 3:
        return "node_enter", {"node": f"n{i % 3}"}
    if k == 5:
        return "memory_set", {"path": ["k", str(i % 4)], "value": i}
    if k == 7:
        return "node_exit", {"node": f"n{(i - 4) % 3}"}
    if k == 8 and i % 20 == 8:
        return "pause", {"reason": "wait"}
    if k == 9 and i % 20 == 9:
        return "resume", {"by": "human"}
    return "message", {**MSG, "i": i}


def _load(client: JournalClient, tenant: str, threads: int, events: int) -> None:
    for i in range(events):
        client.append_many(tenant, [Draft(f"th{j}", *_steps(i)) for j in range(threads)])


def _drain(settings: Settings, tenants: list[str]) -> None:
    p = Projector(settings, WorkerOptions())
    p.drain(tenants=tenants)
    p.close()


def _corrupt(pg: Any, tenant: str) -> None:
    """What a reducer or projection bug leaves behind: wrong rows, a wrong snapshot, missing snapshots."""
    pg.execute("UPDATE journal.threads SET status = 'failed', node = 'bogus', event_count = 1 "
               "WHERE tenant_id = %s AND thread_id = 'th0'", (tenant,))
    pg.execute("UPDATE journal.snapshots SET state = %s WHERE tenant_id = %s AND thread_id = 'th1' AND seq = 100",
               (encode_state(empty(tenant, "th1")), tenant))
    pg.execute("DELETE FROM journal.snapshots WHERE tenant_id = %s AND thread_id = 'th2'", (tenant,))


def assert_fresh_fold(pg: Any, tenant: str, every: int = 100) -> int:
    """Every threads row and snapshot of the tenant equals a fold of its events from empty (journal.reducer only)."""
    threads = pg.execute("SELECT thread_id, status, node, last_seq, last_hash, max_seq, event_count, branches "
                         "FROM journal.threads WHERE tenant_id = %s ORDER BY thread_id", (tenant,)).fetchall()
    assert threads
    total = 0
    for thread, status, node, last_seq, last_hash, max_seq, count, branches in threads:
        rows = pg.execute("SELECT seq, ts_ms, body, hash FROM journal.events WHERE tenant_id = %s AND thread_id = %s "
                          "ORDER BY seq", (tenant, thread)).fetchall()
        assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
        state = empty(tenant, thread)
        want_snaps = {}
        prev = None
        for seq, ts, body, h in rows:
            state = apply(state, codec.decode_body(tenant, thread, seq, ts, bytes(body)))
            if seq % every == 0:
                # Incremental snapshots chain on the one before: the projector's and the rebuild's alike.
                record, _, prev = encode_snapshot(state, prev)
                want_snaps[seq] = (record, bytes(h))
        assert (status, node, list(branches)) == (state.status, state.node, list(state.pending_branches)), thread
        assert (last_seq, max_seq, count) == (len(rows), len(rows), len(rows)), thread
        assert bytes(last_hash) == bytes(rows[-1][3])
        snaps = {s: (bytes(st), bytes(h)) for s, st, h in pg.execute(
            "SELECT seq, state, hash FROM journal.snapshots WHERE tenant_id = %s AND thread_id = %s", (tenant, thread))}
        assert snaps == want_snaps, (thread, sorted(snaps), sorted(want_snaps))
        total += len(rows)
    return total


def _dump(pg: Any, tenant: str) -> list[Any]:
    return [pg.execute(f"SELECT * FROM journal.{t} WHERE tenant_id = %s ORDER BY 2, 3", (tenant,)).fetchall()
            for t in ("threads", "snapshots")]


def test_rebuild_while_writers_append_and_a_projector_runs(migrated: Settings, admin_pg: Any) -> None:
    """A rebuild with 2 writers appending and a projector running ends equal to a fresh fold of every thread."""
    tenants = [f"rb-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with JournalClient.from_settings(migrated) as c:
        for t in tenants:
            _load(c, t, 4, 260)
    _drain(migrated, tenants)
    for t in tenants:
        _corrupt(admin_pg, t)
    stop = threading.Event()
    appended = [0, 0]

    def writer(w: int) -> None:
        with JournalClient.from_settings(migrated) as c:
            i = 260
            while not stop.is_set():
                t = tenants[(w + i) % 2]
                # Old threads (their rows and snapshots are being swapped) and a new thread of each writer.
                c.append_many(t, [Draft(f"th{(w + i) % 4}", *_steps(i)), Draft(f"new{w}", *_steps(i))])
                appended[w] += 2
                i += 1

    p = Projector(migrated, WorkerOptions(block_ms=20))
    workers = [threading.Thread(target=p.run, daemon=True)] + [
        threading.Thread(target=writer, args=(w,), daemon=True) for w in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        reports = rebuild(migrated, RebuildOptions(tenants=tuple(tenants), chunk=150))
    finally:
        stop.set()
        for w in workers[1:]:
            w.join(30)
        p.stop()
        workers[0].join(30)
    _drain(migrated, tenants)
    assert min(appended) > 0
    assert all(r.swapped for r in reports)
    assert sum(r.threads_changed for r in reports) >= 2  # th0's corrupt row in each tenant
    assert sum(r.snapshots_added for r in reports) >= 2 * 3  # th1's wrong one, th2's missing ones
    for t in tenants:
        assert assert_fresh_fold(admin_pg, t) >= 4 * 260
        assert admin_pg.execute("SELECT count(*) FROM journal.rebuild_threads WHERE tenant_id = %s",
                                (t,)).fetchone() == (0,)


def _cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNAL_")}
    env |= {"JOURNAL_DATABASE_URL": settings.database_url or "", "JOURNAL_REDIS_URL": settings.redis_url or "",
            "JOURNAL_S3_URL": settings.s3_url or "", "JOURNAL_SNAPSHOT_EVERY": str(settings.snapshot_every)}
    return env


def test_rebuild_killed_halfway_resumes_and_ends_equal(migrated: Settings, admin_pg: Any) -> None:
    """`agent-journal rebuild` SIGKILLed halfway keeps its progress; the next run resumes there and ends equal."""
    tenant = f"rk-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        _load(c, tenant, 6, 400)
    _drain(migrated, [tenant])
    _corrupt(admin_pg, tenant)
    before = _dump(admin_pg, tenant)
    proc = subprocess.Popen([sys.executable, "-m", "journal.cli", "rebuild", "--tenant", tenant, "--chunk", "100",
                             "--throttle", "600"], env=_cli_env(migrated), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        done = 0
        while done < 600 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            done = int(admin_pg.execute("SELECT COALESCE(sum(last_seq), 0) FROM journal.rebuild_threads "
                                        "WHERE tenant_id = %s", (tenant,)).fetchone()[0])
        assert proc.poll() is None, "the rebuild finished before it could be killed: slow its --throttle"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    done = int(admin_pg.execute("SELECT COALESCE(sum(last_seq), 0) FROM journal.rebuild_threads WHERE tenant_id = %s",
                                (tenant,)).fetchone()[0])
    assert 600 <= done < 2400
    assert _dump(admin_pg, tenant) == before  # the live rows serve, untouched, until the swap
    (report,) = Rebuilder(migrated, RebuildOptions(tenants=(tenant,))).run()
    assert report.swapped and report.events == 2400 - done  # resumed: nothing folded twice
    assert report.threads_changed == 1
    assert assert_fresh_fold(admin_pg, tenant) == 2400


def test_dry_run_reports_and_changes_nothing(migrated: Settings, admin_pg: Any, client: JournalClient,
                                            tenant: str) -> None:
    """A dry run writes nothing (live or shadow) and reports the rows a rebuild would change."""
    _load(client, tenant, 3, 230)
    _drain(migrated, [tenant])
    (clean,) = rebuild(migrated, RebuildOptions(tenants=(tenant,), dry_run=True))
    assert (clean.threads, clean.events, clean.threads_changed, clean.snapshots_added, clean.snapshots_removed) == (
        3, 690, 0, 0, 0)
    _corrupt(admin_pg, tenant)
    before = _dump(admin_pg, tenant)
    (report,) = rebuild(migrated, RebuildOptions(tenants=(tenant,), dry_run=True))
    assert _dump(admin_pg, tenant) == before
    assert admin_pg.execute("SELECT count(*) FROM journal.rebuild_threads WHERE tenant_id = %s",
                            (tenant,)).fetchone() == (0,)
    assert not report.swapped
    # th0's row; th1's snapshot at 100 replaced (one removed, one added); th2's two snapshots missing.
    assert (report.threads_changed, report.snapshots_removed, report.snapshots_added) == (1, 1, 3)
    done = subprocess.run([sys.executable, "-m", "journal.cli", "rebuild", "--tenant", tenant, "--dry-run",
                           "--format", "json"], env=_cli_env(migrated), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (row,) = orjson.loads(done.stdout)
    assert (row["tenant"], row["threads_changed"], row["snapshots_added"], row["swapped"]) == (tenant, 1, 3, False)
    assert _dump(admin_pg, tenant) == before


def test_dead_letter_retry(migrated: Settings, admin_pg: Any, client: JournalClient, tenant: str,
                           capsys: Any, monkeypatch: Any) -> None:
    """`dead-letters --retry`: an entry that now projects leaves dead_letters; one still refused counts an attempt."""
    from journal.cli import main
    from projections.retry import retry_dead_letter

    client.append(tenant, "th", "message", MSG)
    bad = client.redis.xadd(keys.stream(tenant), {"t": "th", "s": 2, "ts": 1, "b": b"\x00garbage"}).decode()
    client.redis.hset(keys.heads(tenant), "th", 2)
    _drain(migrated, [tenant])
    # A poison entry still bad: it stays, with one more attempt.
    outcome = retry_dead_letter(migrated, tenant, bad)
    assert not outcome.projected and outcome.attempts == 2 and "undecodable" in outcome.reason
    for name, value in _cli_env(migrated).items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert main(["dead-letters", tenant, "--retry", bad, "--format", "json"]) == 1  # still refused: exit 1
    (row,) = orjson.loads(capsys.readouterr().out)
    assert (row["stream_id"], row["projected"], row["attempts"]) == (bad, False, 3)
    assert main(["dead-letters", tenant, "--retry", "1-1"]) == 2  # no such dead letter: NotFound, exit 2
    # A dead letter whose entry is fine now (here: written to dead_letters by hand, as after a fixed bug).
    client.append(tenant, "th2", "message", MSG)
    fields = dict(client.redis.xrange(keys.stream(tenant))[-1][1])
    import msgpack

    admin_pg.execute("INSERT INTO journal.dead_letters (tenant_id, stream_id, thread_id, seq, reason, entry) "
                     "VALUES (%s, %s, 'th2', 1, 'old bug', %s)", (tenant, "9-9", msgpack.packb(fields)))
    outcome = retry_dead_letter(migrated, tenant, "9-9")
    assert outcome.projected
    assert admin_pg.execute("SELECT count(*) FROM journal.dead_letters WHERE tenant_id = %s AND stream_id = '9-9'",
                            (tenant,)).fetchone() == (0,)
    assert admin_pg.execute("SELECT last_seq FROM journal.threads WHERE tenant_id = %s AND thread_id = 'th2'",
                            (tenant,)).fetchone() == (1,)


def test_reducer_dead_letter_retry_after_the_fix(migrated: Settings, admin_pg: Any, client: JournalClient,
                                                 tenant: str, tmp_path: Any, monkeypatch: Any) -> None:
    """A snapshot fold dead-lettered by a raising custom reducer, retried once fixed: snapshots written, letter gone."""
    from projections.retry import retry_dead_letter

    module = f"rb_reducers_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "BROKEN = True\n\n"
        "def refund(state, event):\n"
        "    if BROKEN:\n"
        "        raise ValueError('refund reducer bug')\n"
        "    return state\n\n"
        "REDUCERS = {'x.acme.refund': refund}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = migrated.with_(reducers=module, snapshot_every=2)
    client.append(tenant, "th", "message", MSG)
    client.append(tenant, "th", "x.acme.refund", {"amount": 3})
    client.append(tenant, "th", "message", MSG)
    client.append(tenant, "th", "message", MSG)
    _drain(settings, [tenant])
    (sid,) = [r[0] for r in admin_pg.execute("SELECT stream_id FROM journal.dead_letters WHERE tenant_id = %s",
                                             (tenant,))]
    assert sid == "reducer:th:2"
    assert admin_pg.execute("SELECT count(*) FROM journal.snapshots WHERE tenant_id = %s", (tenant,)).fetchone() == (0,)
    still = retry_dead_letter(settings, tenant, sid)
    assert not still.projected and "refund reducer bug" in (still.reason or "")
    sys.modules[module].BROKEN = False  # type: ignore[attr-defined]
    assert retry_dead_letter(settings, tenant, sid).projected
    assert [r[0] for r in admin_pg.execute("SELECT seq FROM journal.snapshots WHERE tenant_id = %s ORDER BY seq",
                                           (tenant,))] == [2, 4]
    assert admin_pg.execute("SELECT count(*) FROM journal.dead_letters WHERE tenant_id = %s",
                            (tenant,)).fetchone() == (0,)


def test_tenants_take_turns(migrated: Settings, client: JournalClient) -> None:
    """Round-robin: a small tenant is rebuilt and swapped while a big one is still being folded."""
    big, small = f"rb-big-{uuid.uuid4().hex[:8]}", f"rb-small-{uuid.uuid4().hex[:8]}"
    _load(client, big, 3, 300)
    _load(client, small, 1, 50)
    _drain(migrated, [big, small])
    turns: list[tuple[str, int]] = []
    reports = rebuild(migrated, RebuildOptions(tenants=(big, small), chunk=100),
                      on_progress=lambda p: turns.append((p.tenant, p.done)))
    assert [t for t, _ in turns[:2]] == [big, small]
    last_small = max(i for i, (t, _) in enumerate(turns) if t == small)
    assert last_small < len(turns) - 5  # the small tenant was done (swapped) long before the big one
    assert turns[-1][1] == 950 and all(r.swapped for r in reports)


def _derived(pg: Any, tenant: str) -> list[Any]:
    """What a rebuild derives (no timestamps): the threads rows' fold columns, the snapshots."""
    return [pg.execute("SELECT thread_id, status, node, last_seq, last_hash, max_seq, event_count, branches "
                       "FROM journal.threads WHERE tenant_id = %s ORDER BY 1", (tenant,)).fetchall(),
            pg.execute("SELECT thread_id, seq, state, hash FROM journal.snapshots WHERE tenant_id = %s ORDER BY 1, 2",
                       (tenant,)).fetchall()]


def test_rebuild_folds_archived_threads_from_the_archive(migrated: Settings, admin_pg: Any, client: JournalClient,
                                                        tenant: str) -> None:
    """An archived thread (history in S3, then reactivated) is folded from its segments and PostgreSQL's rows:
    a rebuild of unchanged data changes nothing (the archiver's head snapshot, byte for byte), and a damaged
    row or a lost head snapshot comes back."""
    from datetime import timedelta

    from projections.archive import Archiver, candidates

    _load(client, tenant, 2, 230)
    client.append(tenant, "th0", "complete", {"summary": "done"})
    _drain(migrated, [tenant])
    report = Archiver(migrated).run(candidates(migrated, timedelta(0), tenants=[tenant]))
    assert not report.failed and [t.thread for t in report.threads] == ["th0"]
    head = report.threads[0].to_seq
    assert admin_pg.execute("SELECT count(*) FROM journal.events WHERE tenant_id = %s AND thread_id = 'th0'",
                            (tenant,)).fetchone() == (0,)
    (noop,) = rebuild(migrated, RebuildOptions(tenants=(tenant,)))
    assert (noop.threads_changed, noop.snapshots_added, noop.snapshots_removed, noop.swapped) == (0, 0, 0, True)
    assert noop.events == 230 + 1 + 230  # th0 from the archive, th1 from PostgreSQL
    for i in range(75):  # reactivated: the projector's snapshots resume above the archive's head (at 300)
        client.append(tenant, "th0", "message", {"role": "user", "content": f"again {i}"})
    _drain(migrated, [tenant])
    before = _derived(admin_pg, tenant)
    snaps = [r[0] for r in admin_pg.execute("SELECT seq FROM journal.snapshots WHERE tenant_id = %s AND thread_id = "
                                            "'th0' ORDER BY seq", (tenant,))]
    assert snaps == [head, 300], snaps
    admin_pg.execute("UPDATE journal.threads SET node = 'bogus' WHERE tenant_id = %s AND thread_id = 'th0'", (tenant,))
    admin_pg.execute("DELETE FROM journal.snapshots WHERE tenant_id = %s AND thread_id = 'th0' AND seq = %s",
                     (tenant, head))
    (dry,) = rebuild(migrated, RebuildOptions(tenants=(tenant,), dry_run=True))
    assert (dry.threads, dry.threads_changed, dry.snapshots_added, dry.snapshots_removed) == (2, 1, 1, 0)
    (rebuilt,) = rebuild(migrated, RebuildOptions(tenants=(tenant,)))
    assert (rebuilt.threads_changed, rebuilt.snapshots_added, rebuilt.snapshots_removed) == (1, 1, 0)
    assert _derived(admin_pg, tenant) == before
    with Replayer.from_settings(migrated) as r:  # and a replay through the rebuilt head snapshot is the full fold
        assert r.replay(tenant, "th0") == r.replay(tenant, "th0", use_snapshots=False)
