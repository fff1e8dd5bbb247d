"""The S3 archive tier: cold threads leave PostgreSQL for sealed segments and read exactly as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from journal import archive as fmt
from journal.blobs import BlobStore, s3_client
from journal.cli import main
from journal.client import JournalClient
from journal.errors import ArchiveCorrupt
from journal.events import Draft
from journal.reducer import fold
from journal.settings import Settings
from journal.state import empty
from projections.archive import Archiver, archive, candidates
from projections.idle import evict_idle
from projections.purge import purge_tenant
from projections.worker import Projector, WorkerOptions
from replayer import Replayer
from replayer.audit import export_bundle, timeline
from replayer.bundle import verify_bundle

ROOT = Path(__file__).resolve().parents[1]
NOW = timedelta(0)


def project(settings: Settings, tenant: str) -> None:
    p = Projector(settings, WorkerOptions())
    p.drain(tenants=[tenant])
    p.close()


def write_thread(c: JournalClient, tenant: str, thread: str, n: int, *, big: bool = True, done: bool = True) -> None:
    """``n`` events of several kinds (a tool call and result, memory, node moves, a blob payload), then complete."""
    drafts: list[Draft] = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            drafts.append(Draft(thread, "message", {"role": "user", "content": f"step {i}"}))
        elif kind == 1:
            drafts.append(Draft(thread, "tool_call", {"call_id": f"c{i}", "tool": "search", "args": {"q": i}}))
        elif kind == 2:
            drafts.append(Draft(thread, "tool_result", {"call_id": f"c{i - 1}", "output": {"hits": i}}))
        elif kind == 3:
            drafts.append(Draft(thread, "memory_set", {"path": ["k", str(i % 7)], "value": i}))
        else:
            drafts.append(Draft(thread, "node_enter" if i % 10 == 4 else "node_exit", {"node": "planner"}))
    if big:
        big_text = "x" * (c.settings.blob_threshold + 10)
        drafts.insert(n // 2, Draft(thread, "message", {"role": "tool", "content": big_text}))
    if done:
        drafts.append(Draft(thread, "complete", {}))
    for start in range(0, len(drafts), 50):
        c.append_many(tenant, drafts[start:start + 50])


def pg_counts(settings: Settings, tenant: str, thread: str) -> dict[str, int]:
    with psycopg.connect(settings.database_url or "") as conn:
        return {t: int(conn.execute(f"SELECT count(*) FROM journal.{t} WHERE tenant_id = %s AND thread_id = %s",
                                    (tenant, thread)).fetchone()[0])  # type: ignore[index]
                for t in ("events", "snapshots", "archives", "threads")}


def s3_keys(settings: Settings, prefix: str) -> list[str]:
    s3 = s3_client(settings)
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def observe(settings: Settings, tenant: str, thread: str, tmp: Path, at: list[int]) -> dict[str, Any]:
    """Everything a reader can see of a thread: replays at seqs, verification, the bundle, client read/resume."""
    with Replayer.from_settings(settings) as r:
        states = {s: r.replay(tenant, thread, at_seq=s) for s in at}
        full = r.replay(tenant, thread, use_snapshots=False)
        (verdict,) = r.verify(tenant, thread)
        chain, head = r.stored_chain(tenant, thread)
        out = tmp / f"{uuid.uuid4().hex}.ajb"
        exported = export_bundle(r, tenant, thread, out)
        history = r.history(tenant, thread)
        steps = timeline(r, tenant, thread) + timeline(r, tenant, thread, after=at[1], upto=at[-2])
        at_time = {s: r.replay(tenant, thread, at_time=history[s - 1].at) for s in at}
    bundle = verify_bundle(out, registry=None)
    with JournalClient.from_settings(settings) as c:
        read = c.read(tenant, thread)
        read_after = c.read(tenant, thread, after_seq=7)
        resumed = c.resume(tenant, thread)
    return {"states": states, "full": full, "verdict": (verdict.ok, verdict.checked, verdict.head_hash),
            "chain": [(s.event, s.hash, s.prev_hash) for s in chain], "head": head,
            "bundle": (bundle.ok, bundle.events, bundle.blobs, bundle.head_hash, exported.head_hash, bundle.state),
            "history": history, "timeline": steps, "at_time": at_time, "read": read, "read_after": read_after,
            "resumed": (resumed.state, resumed.seq)}


def test_archived_thread_reads_replays_verifies_and_exports_as_before(migrated: Settings, tmp_path: Path) -> None:
    """Every reader (replay at several seqs, verify, bundle, client read/resume) sees the same after archiving."""
    tenant, thread = f"arc-{uuid.uuid4().hex[:8]}", "run-1"
    with JournalClient.from_settings(migrated) as c:
        write_thread(c, tenant, thread, 230)
        write_thread(c, tenant, "still-active", 20, big=False, done=False)
    project(migrated, tenant)
    seqs = [1, 5, 99, 100, 117, 200, 232]
    before = observe(migrated, tenant, thread, tmp_path, seqs)
    assert before["verdict"][0] and before["bundle"][0] and before["bundle"][2] == 1

    assert [(c.thread, c.events) for c in candidates(migrated, NOW, tenants=[tenant])] == [(thread, 232)]
    report = Archiver(migrated, per_segment=100).run(candidates(migrated, NOW, tenants=[tenant]))
    (moved,) = report.threads
    assert moved.error is None and (moved.from_seq, moved.to_seq, moved.segments) == (1, 232, 3)
    assert pg_counts(migrated, tenant, thread) == {"events": 0, "snapshots": 1, "archives": 1, "threads": 1}
    assert s3_keys(migrated, f"{tenant}/archive/{thread}/") == sorted(
        [fmt.segment_key(tenant, thread, a, b) for a, b in ((1, 100), (101, 200), (201, 232))]
        + [fmt.manifest_key(tenant, thread, 232)])

    after = observe(migrated, tenant, thread, tmp_path, seqs)
    assert after == before
    assert after["full"] == fold(after["history"], empty(tenant, thread))
    # Nothing left to archive; the active thread was never a candidate.
    assert candidates(migrated, NOW, tenants=[tenant]) == []
    assert archive(migrated, NOW, tenants=[tenant]).threads == []


def test_a_crash_between_upload_and_delete_loses_nothing_and_a_rerun_completes(migrated: Settings,
                                                                               tmp_path: Path) -> None:
    """The archiver SIGKILLed after its upload and read-back: rows stay in PostgreSQL, reads work, a re-run finishes."""
    tenant, thread = f"arc-{uuid.uuid4().hex[:8]}", "run-1"
    with JournalClient.from_settings(migrated) as c:
        write_thread(c, tenant, thread, 120)
    project(migrated, tenant)
    before = observe(migrated, tenant, thread, tmp_path, [3, 60, 122])
    script = f"""
import os, signal
from datetime import timedelta
from journal.settings import Settings
from projections.archive import archive
settings = Settings.from_env()
def crash(step, tenant, thread):
    if step == "uploaded":
        os.kill(os.getpid(), signal.SIGKILL)
archive(settings, timedelta(0), tenants=[{tenant!r}], hook=crash)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **{f"JOURNAL_{k}": v or "" for k, v in (
        ("REDIS_URL", migrated.redis_url), ("DATABASE_URL", migrated.database_url), ("S3_URL", migrated.s3_url),
        ("S3_BUCKET", migrated.s3_bucket), ("S3_ACCESS_KEY", migrated.s3_access_key),
        ("S3_SECRET_KEY", migrated.s3_secret_key))}}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    # Uploaded, not switched: every row is still in PostgreSQL and no stub points at S3.
    assert pg_counts(migrated, tenant, thread)["events"] == 122
    assert pg_counts(migrated, tenant, thread)["archives"] == 0
    assert fmt.manifest_key(tenant, thread, 122) in s3_keys(migrated, f"{tenant}/archive/")
    assert observe(migrated, tenant, thread, tmp_path, [3, 60, 122]) == before

    (moved,) = archive(migrated, NOW, tenants=[tenant]).threads
    assert moved.error is None and moved.events == 122
    assert pg_counts(migrated, tenant, thread)["events"] == 0
    assert observe(migrated, tenant, thread, tmp_path, [3, 60, 122]) == before


def test_an_archived_thread_that_gets_new_appends_continues_its_chain(migrated: Settings, tmp_path: Path) -> None:
    """New appends (head in Redis, then after eviction) continue seq and chain; verify spans archive + rows."""
    tenant = f"arc-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        write_thread(c, tenant, "cold", 40, big=False)
        project(migrated, tenant)
        evict_idle(migrated, NOW, [tenant])  # "cold" loses its Redis head; "hot", written after, keeps its own
        write_thread(c, tenant, "hot", 40, big=False)
    project(migrated, tenant)
    assert {t.thread for t in archive(migrated, NOW, tenants=[tenant]).threads} == {"hot", "cold"}
    with JournalClient.from_settings(migrated) as c:
        assert c.head(tenant, "cold") == 0  # no head in Redis: it must come from the archive stub
        assert c.append(tenant, "cold", "message", {"role": "user", "content": "again"}, expected_seq=41).seq == 42
        assert c.append(tenant, "hot", "resume", {}).seq == 42
        assert c.append(tenant, "hot", "message", {"role": "user", "content": "more"}).seq == 43
        # Read before projection: archive + Redis tail, gapless.
        assert [e.seq for e in c.read(tenant, "cold")] == list(range(1, 43))
    project(migrated, tenant)
    with Replayer.from_settings(migrated) as r:
        verdicts = {v.thread: v for v in r.verify(tenant)}
        assert verdicts["cold"].ok and verdicts["cold"].checked == 42, verdicts["cold"]
        assert verdicts["hot"].ok and verdicts["hot"].checked == 43, verdicts["hot"]
        hot = r.replay(tenant, "hot")
        assert hot == fold(r.history(tenant, "hot"), empty(tenant, "hot")) and hot.status == "active"
    # Completed again and archived a second time: a new segment and a manifest that lists both.
    with JournalClient.from_settings(migrated) as c:
        c.append(tenant, "hot", "complete", {})
    project(migrated, tenant)
    before = observe(migrated, tenant, "hot", tmp_path, [10, 41, 42, 44])
    again = {t.thread: (t.from_seq, t.to_seq) for t in archive(migrated, NOW, tenants=[tenant]).threads}
    assert again == {"hot": (42, 44), "cold": (42, 42)}  # "cold" is still completed: its new event goes too
    assert observe(migrated, tenant, "hot", tmp_path, [10, 41, 42, 44]) == before
    manifest = fmt.Manifest.from_bytes(BlobStore.from_settings(migrated).get_object(
        fmt.manifest_key(tenant, "hot", 44)), "test")
    assert [(s.first_seq, s.last_seq) for s in manifest.segments] == [(1, 41), (42, 44)]


def test_a_tampered_segment_is_refused_and_named(migrated: Settings) -> None:
    """A segment changed in S3 fails its manifest digest: reads raise ArchiveCorrupt, verify says not ok."""
    tenant, thread = f"arc-{uuid.uuid4().hex[:8]}", "run-1"
    with JournalClient.from_settings(migrated) as c:
        write_thread(c, tenant, thread, 10, big=False)
    project(migrated, tenant)
    archive(migrated, NOW, tenants=[tenant])
    store = BlobStore.from_settings(migrated)
    key = fmt.segment_key(tenant, thread, 1, 11)
    store.put_object(key, store.get_object(key)[:-1] + b"\x00")
    with JournalClient.from_settings(migrated) as c, pytest.raises(ArchiveCorrupt, match="does not match"):
        c.read(tenant, thread)
    with Replayer.from_settings(migrated) as r:
        (verdict,) = r.verify(tenant, thread)
    assert not verdict.ok and "does not match its manifest" in (verdict.detail or "")


def test_purge_removes_the_archive_and_its_stub(migrated: Settings) -> None:
    """purge-tenant deletes the archived segments, manifests and the stub row; the neighbour keeps its archive."""
    tenant = f"arc-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        for t in (tenant, tenant + "2"):
            write_thread(c, t, "run-1", 10, big=False)
    for t in (tenant, tenant + "2"):
        project(migrated, t)
        archive(migrated, NOW, tenants=[t])
    neighbour = s3_keys(migrated, f"{tenant}2/")
    report = purge_tenant(migrated, tenant)
    assert report.rows["archives"] == 1 and report.objects >= 2
    assert s3_keys(migrated, f"{tenant}/") == [] and s3_keys(migrated, f"{tenant}2/") == neighbour
    assert pg_counts(migrated, tenant + "2", "run-1")["archives"] == 1


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def env(migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in (("REDIS_URL", migrated.redis_url), ("DATABASE_URL", migrated.database_url),
                        ("S3_URL", migrated.s3_url), ("S3_BUCKET", migrated.s3_bucket),
                        ("S3_ACCESS_KEY", migrated.s3_access_key), ("S3_SECRET_KEY", migrated.s3_secret_key)):
        monkeypatch.setenv(f"JOURNAL_{name}", value or "")
    return migrated


@pytest.mark.parametrize(("argv", "says"), [
    (["archive", "--idle", "soon"], "not a span"),
    (["archive", "--idle", ""], "not a span"),
    (["archive", "--status", "done"], "--status done"),
    (["archive", "--status", ""], "--status"),
    (["archive", "--status", "completed,,failed"], "--status"),
    (["archive", "--tenant", "a{b}"], "tenant"),
    (["archive", "--tenant", ""], "tenant"),
    (["archive", "--format", "xml"], "invalid choice"),
    (["archive", "--dry-run", "--idle=-3d"], "not a span"),
])
def test_archive_bad_input_is_one_clean_line(env: Settings, capsys: pytest.CaptureFixture[str], argv: list[str],
                                             says: str) -> None:
    """Every archive argument, given badly, exits non-zero with a line saying what is wrong, never a traceback."""
    code, out = run_cli(capsys, argv)
    assert code != 0 and says in out and "Traceback" not in out, out


def test_archive_without_s3_says_so(env: Settings, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """archive (not --dry-run) with no object storage configured or running says it needs S3."""
    monkeypatch.delenv("JOURNAL_S3_URL")
    monkeypatch.setenv("JOURNAL_DATA_DIR", str(tmp_path))
    code, out = run_cli(capsys, ["archive", "--idle", "0s"])
    assert code != 0 and "Traceback" not in out and "s3" in out.lower(), out


def test_archive_cli_dry_run_then_json_summary(env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run lists the candidates and moves nothing; the real run prints what moved."""
    tenant = f"arc-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(env) as c:
        write_thread(c, tenant, "run-1", 10, big=False)
    project(env, tenant)
    code, out = run_cli(capsys, ["archive", "--idle", "0s", "--tenant", tenant, "--dry-run", "--format", "json"])
    assert code == 0 and json.loads(out) == [{"tenant": tenant, "thread": "run-1", "from_seq": 1, "to_seq": 11,
                                              "events": 11}], out
    assert pg_counts(env, tenant, "run-1")["events"] == 11
    code, out = run_cli(capsys, ["archive", "--idle", "0s", "--tenant", tenant, "--format", "json"])
    summary = json.loads(out)
    assert code == 0 and (summary["threads"], summary["events"], summary["failed"]) == (1, 11, 0), out
    code, out = run_cli(capsys, ["archive", "--idle", "0s", "--tenant", tenant])
    assert code == 0 and "archived 0 thread(s)" in out, out


def test_the_projector_snapshots_a_reactivated_thread_from_the_head_snapshot(migrated: Settings) -> None:
    """Past the next multiple of K after archiving, the projector folds its snapshot from the one kept at the head."""
    tenant, thread = f"arc-{uuid.uuid4().hex[:8]}", "run-1"
    every = migrated.snapshot_every
    with JournalClient.from_settings(migrated) as c:
        write_thread(c, tenant, thread, every - 6, big=False)
        project(migrated, tenant)
        archive(migrated, NOW, tenants=[tenant])
        for _ in range(10):
            c.append(tenant, thread, "message", {"role": "user", "content": "back"})
    project(migrated, tenant)
    with psycopg.connect(migrated.database_url or "") as conn:
        snaps = [r[0] for r in conn.execute("SELECT seq FROM journal.snapshots WHERE tenant_id = %s ORDER BY seq",
                                            (tenant,)).fetchall()]
        dead = conn.execute("SELECT count(*) FROM journal.dead_letters WHERE tenant_id = %s", (tenant,)).fetchone()
    assert snaps == [every - 5, every] and dead == (0,)
    with Replayer.from_settings(migrated) as r:
        assert r.replay(tenant, thread, at_seq=every) == r.replay(tenant, thread, at_seq=every, use_snapshots=False)
        assert all(v.ok for v in r.verify(tenant))


@pytest.fixture(scope="module")
def private_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A SeaweedFS of this module's own: per-tenant keys turn on its authentication for every client."""
    from journal.embedded import EmbeddedStack

    stack = EmbeddedStack(tmp_path_factory.mktemp("archive-s3"))
    yield stack.up(("s3",))
    stack.down()


def test_a_tenants_own_credentials_read_its_archive_and_no_other(migrated: Settings, private_s3: Settings) -> None:
    """Archive keys sit under {tenant}/: its reader login and S3 key read it; another tenant's S3 key cannot."""
    from dataclasses import replace

    from journal.errors import AccessDenied
    from journal.s3_tenants import SeaweedAdmin
    from projections import db

    settings = migrated.with_(s3_url=private_s3.s3_url, s3_access_key=private_s3.s3_access_key,
                              s3_secret_key=private_s3.s3_secret_key, data_dir=private_s3.data_dir)
    admin = SeaweedAdmin.for_settings(settings)
    assert admin is not None
    tenant, thread = f"arc-{uuid.uuid4().hex[:8]}", "run-1"
    other = tenant + "x"
    with JournalClient.from_settings(settings) as c:
        write_thread(c, tenant, thread, 10, big=False)
        expected = c.read(tenant, thread)
    project(settings, tenant)
    archive(settings, NOW, tenants=[tenant])
    mine, theirs = admin.create_tenant(settings, tenant), admin.create_tenant(settings, other)
    reader = db.create_tenant_reader(settings, tenant)
    try:
        own = replace(settings, s3_access_key=mine.access_key, s3_secret_key=mine.secret_key,
                      database_url=reader.database_url(settings.database_url or ""))
        with JournalClient.from_settings(own) as c:
            assert c.read(tenant, thread) == expected and c.resume(tenant, thread).seq == 11
        foreign = replace(settings, s3_access_key=theirs.access_key, s3_secret_key=theirs.secret_key)
        with JournalClient.from_settings(foreign) as c, pytest.raises(AccessDenied):
            c.read(tenant, thread)
    finally:
        admin.revoke_tenant(tenant)
        admin.revoke_tenant(other)
        db.revoke_tenant_reader(settings, tenant)


def test_the_async_client_reads_and_resumes_an_archived_thread(migrated: Settings) -> None:
    """AsyncJournalClient drives the same operations: read and resume of an archived thread equal the sync client's."""
    import asyncio

    from journal.aio import AsyncJournalClient

    tenant, thread = f"arc-{uuid.uuid4().hex[:8]}", "run-1"
    with JournalClient.from_settings(migrated) as c:
        write_thread(c, tenant, thread, 30)
        expected = (c.read(tenant, thread), c.resume(tenant, thread).state)
    project(migrated, tenant)
    archive(migrated, NOW, tenants=[tenant])

    async def go() -> tuple[Any, Any]:
        async with await AsyncJournalClient.from_settings(migrated) as a:
            return await a.read(tenant, thread), (await a.resume(tenant, thread)).state

    assert asyncio.run(go()) == expected


def test_without_object_storage_an_archived_thread_says_to_configure_it(migrated: Settings) -> None:
    """A reader with no S3 configured gets a typed error naming JOURNAL_S3_URL, not an empty or short history."""
    from dataclasses import replace

    from journal.errors import ConfigError, HistoryIncomplete
    from replayer.sources import PostgresSource

    tenant, thread = f"arc-{uuid.uuid4().hex[:8]}", "run-1"
    with JournalClient.from_settings(migrated) as c:
        write_thread(c, tenant, thread, 10, big=False)
    project(migrated, tenant)
    archive(migrated, NOW, tenants=[tenant])
    with JournalClient.from_settings(replace(migrated, s3_url=None)) as c, \
            pytest.raises(HistoryIncomplete, match="JOURNAL_S3_URL"):
        c.read(tenant, thread)
    with Replayer(PostgresSource.connect(migrated)) as r:
        for call in (lambda: r.replay(tenant, thread, at_seq=3), lambda: r.verify(tenant, thread),
                     lambda: r.history(tenant, thread)):
            with pytest.raises(ConfigError, match="JOURNAL_S3_URL"):
                call()
        assert r.replay(tenant, thread).last_seq == 11  # the head snapshot needs no archive


def test_a_reused_seq_of_an_archived_thread_is_a_conflict_not_a_second_row(migrated: Settings) -> None:
    """A seq issued again below the archive's head (Redis lost its head) is recorded as a conflict and fences."""
    from journal import keys
    from journal.errors import ThreadFenced

    tenant, thread = f"arc-{uuid.uuid4().hex[:8]}", "run-1"
    with JournalClient.from_settings(migrated) as c:
        write_thread(c, tenant, thread, 10, big=False)
        project(migrated, tenant)
        archive(migrated, NOW, tenants=[tenant])
        c.redis.hset(keys.heads(tenant), thread, 2)  # as if Redis restored an old snapshot
        assert c.append(tenant, thread, "message", {"role": "user", "content": "impostor"}).seq == 3
        project(migrated, tenant)
        with psycopg.connect(migrated.database_url or "") as conn:
            conflicts = conn.execute("SELECT seq, existing_body IS NULL FROM journal.conflicts WHERE tenant_id = %s",
                                     (tenant,)).fetchall()
        assert conflicts == [(3, True)]
        assert pg_counts(migrated, tenant, thread)["events"] == 0
        with pytest.raises(ThreadFenced):
            c.append(tenant, thread, "message", {"role": "user", "content": "more"})


def test_a_tenant_reader_sees_its_own_archive_stubs_only(migrated: Settings) -> None:
    """journal.archives is under forced row-level security: tenant A's reader sees A's stub, never B's, writes none."""
    from projections import db

    a, b = f"arc-a-{uuid.uuid4().hex[:8]}", f"arc-b-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        for t in (a, b):
            write_thread(c, t, "run-1", 5, big=False)
    for t in (a, b):
        project(migrated, t)
        archive(migrated, NOW, tenants=[t])
    creds = db.create_tenant_reader(migrated, a)
    try:
        with psycopg.connect(creds.database_url(migrated.database_url or ""), autocommit=True) as conn:
            seen = conn.execute("SELECT tenant_id FROM journal.archives WHERE tenant_id IN (%s, %s) OR true",
                                (a, b)).fetchall()
            assert seen == [(a,)]
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM journal.archives")
    finally:
        db.revoke_tenant_reader(migrated, a)
    with psycopg.connect(migrated.database_url or "") as conn:
        forced = conn.execute("SELECT relrowsecurity, relforcerowsecurity FROM pg_class "
                              "WHERE oid = 'journal.archives'::regclass").fetchone()
    assert forced == (True, True)


@pytest.mark.parametrize(("damage", "says"), [
    ("DELETE FROM journal.events WHERE tenant_id = %s AND thread_id = 'run-1' AND seq = 5", "seq 5 is missing"),
    ("UPDATE journal.events SET hash = sha256(hash) WHERE tenant_id = %s AND thread_id = 'run-1' AND seq = 3",
     "seq 3 of"),
])
def test_a_gap_or_a_broken_chain_is_never_archived(migrated: Settings, damage: str, says: str) -> None:
    """A thread whose rows lack a seq or fail the chain stays in PostgreSQL, with the reason; others still move."""
    tenant = f"arc-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        write_thread(c, tenant, "run-1", 20, big=False)
        write_thread(c, tenant, "run-2", 20, big=False)
    project(migrated, tenant)
    with psycopg.connect(migrated.database_url or "") as conn:
        conn.execute(damage, (tenant,))
    left = pg_counts(migrated, tenant, "run-1")["events"]
    report = Archiver(migrated, per_segment=4).run(candidates(migrated, NOW, tenants=[tenant]))
    outcome = {t.thread: t.error for t in report.threads}
    assert outcome["run-2"] is None and outcome["run-1"] is not None and says in outcome["run-1"], outcome
    assert pg_counts(migrated, tenant, "run-1") == {**pg_counts(migrated, tenant, "run-1"), "events": left,
                                                    "archives": 0}
    assert pg_counts(migrated, tenant, "run-2")["events"] == 0
