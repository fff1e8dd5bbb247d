#!/usr/bin/env python
"""Benchmark the operators' tools, one section each, printed as one table.

    python scripts/bench_ops.py                         # every section, its own embedded stack in a temp dir
    python scripts/bench_ops.py --only archive --runs 5 --json ops.json
    python scripts/bench_ops.py --only burst --burst-events 200000

Sections (``--only``, comma-separated; each is a function returning rows):

* ``archive``: ``agent-journal archive`` over completed conversation threads (message → tool_call →
  tool_result → memory_set cycles): archive events/s; bytes per event in PostgreSQL
  (``journal.events`` with its indexes and TOAST: the growth of ``pg_total_relation_size`` over the
  partitions while the threads are projected) against bytes per event in S3 (segments plus manifests);
  and the replay latency of one thread before archiving (PostgreSQL) and after (S3 segments), as a
  ratio, both for a full fold from seq 1 and for a replay at a mid-history seq (which, in PostgreSQL,
  starts from a snapshot; archived, from the segments: the archiver keeps only the head snapshot).

* ``rebuild``: ``--events`` events (default 1,000,000) of one big tenant over ``--threads`` threads,
  loaded with ``append_many`` and drained by a projector (not timed); then ``agent-journal rebuild
  --tenant big`` runs ``--runs`` times, each as its own process and each a full refold, while the
  projector (a thread of this process) keeps running and a steady writer appends to a few other
  tenants with ``durability="projected"`` (append call to the ``projected`` marker): the rebuild's
  events/s (median) and the other tenants' lag p50/p99/max during the rebuilds, beside the same
  writer's lag just before them (the baseline).

* ``burst``: a projector runs (``agent-journal project``, its own process) while a steady writer
  appends to ``--lag-tenants`` other tenants with ``durability="projected"``, each call timed from its
  start to its return (the append, then the wait for the ``projected`` marker). After a baseline, a
  loader process appends ``--burst-events`` events (default 1,000,000) of one tenant as fast as it can
  (``append_many`` of 1,000). Reported: the other tenants' lag p50/p99/max before and during the burst
  (until the burst is projected), and the burst's drain events/s (one run, not ``--runs``).

Every figure is the median over ``--runs`` runs (each run archives a fresh set of threads; replay
latencies are themselves medians of ``--reps`` timed calls). The replay comparison is side by side:
each run writes the same threads to two tenants, archives one, and times the archived thread and its
identical twin in PostgreSQL alternately. The machine may be shared and noisy: compare ratios, not absolute times.
The script never asserts: it reports and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from journal import keys, logs
from journal.blobs import s3_client
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.errors import DurabilityError
from journal.events import Draft
from journal.settings import Settings
from projections import db
from projections.archive import Archiver, candidates
from projections.worker import GROUP, Projector, WorkerOptions
from replayer.replay import Replayer

#: Wide when piped (rich's default is 80 columns), so the table stays one line per row in a log or README.
console = Console() if sys.stdout.isatty() else Console(width=160)
Row = dict[str, Any]

#: Average stored body (the hashed msgpack, zstd-framed above 512 B) and the snapshots' bytes of a tenant.
TENANT_BYTES_SQL = ("SELECT (SELECT avg(octet_length(body)) FROM journal.events WHERE tenant_id = %(t)s), "
                    "(SELECT COALESCE(sum(pg_column_size(s.*)), 0) FROM journal.snapshots s WHERE tenant_id = %(t)s)")
#: Bytes of ``journal.events`` and its partitions, indexes and TOAST (owner's view: sizes are revoked from readers).
EVENTS_BYTES_SQL = ("SELECT COALESCE(sum(pg_total_relation_size(i.inhrelid)), 0) FROM pg_inherits i "
                    "WHERE i.inhparent = 'journal.events'::regclass")


def conversation(thread: str, n: int) -> list[Draft]:
    """``n`` events of an agent conversation, then ``complete`` (so the thread is archivable)."""
    out: list[Draft] = []
    for seq in range(1, n + 1):
        i, kind = divmod(seq - 1, 4)
        cid = f"call_{i}"
        if kind == 0:
            out.append(Draft(thread, "message", {"role": "assistant", "content": f"Step {i}: let me check the "
                                                 "order history before deciding.", "tool_calls": [cid]}))
        elif kind == 1:
            out.append(Draft(thread, "tool_call", {"call_id": cid, "tool": "search_orders", "args": {"order": i}},
                             node="tools"))
        elif kind == 2:
            out.append(Draft(thread, "tool_result", {"call_id": cid, "tool": "search_orders",
                                                     "output": {"rows": i % 20, "status": "ok"}}, node="tools"))
        else:
            out.append(Draft(thread, "memory_set", {"path": ["customer", "last_order"], "value": i}))
    out.append(Draft(thread, "complete", {"summary": "done"}))
    return out


def _events_bytes(settings: Settings) -> int:
    with db.connect(settings, role=None) as conn:
        return int(conn.execute(EVENTS_BYTES_SQL).fetchone()[0])  # type: ignore[index]


def _tenant_bytes(settings: Settings, tenant: str) -> tuple[float, int]:
    with db.connect(settings, role=None) as conn:
        body, snaps = conn.execute(TENANT_BYTES_SQL, {"t": tenant}).fetchone()  # type: ignore[misc]
    return float(body or 0), int(snaps)


def _archive_bytes(settings: Settings, tenant: str) -> int:
    s3 = s3_client(settings)
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket, Prefix=f"{tenant}/archive/"):
        total += sum(int(o["Size"]) for o in page.get("Contents", []))
    return total


def _interleaved_ms(a: Callable[[], object], b: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median ms of ``a`` and of ``b``, called alternately (a, b, a, b, …) so that noise hits both alike."""
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(reps):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ta), statistics.median(tb)


def _write(settings: Settings, tenant: str, threads: int, n: int) -> None:
    with JournalClient.from_settings(settings) as client:
        for t in range(threads):
            drafts = conversation(f"t{t}", n)
            for start in range(0, len(drafts), 500):
                client.append_many(tenant, drafts[start:start + 500])
    projector = Projector(settings, WorkerOptions())
    projector.drain(timeout=600, tenants=[tenant])
    projector.close()


def _replay_pair(settings: Settings, cold: str, warm: str, mid: int, reps: int) -> tuple[float, float, float, float]:
    """Thread t0 of ``cold`` (archived) and of ``warm`` (the same events in PostgreSQL), timed alternately:
    (archived, PostgreSQL) ms for a fold from seq 1, then for a replay at ``mid``."""
    with Replayer.from_settings(settings) as r:
        for tenant in (cold, warm):  # warm the connection and caches
            r.replay(tenant, "t0", use_snapshots=False)
        full = _interleaved_ms(lambda: r.replay(cold, "t0", use_snapshots=False),
                               lambda: r.replay(warm, "t0", use_snapshots=False), reps)
        at_mid = _interleaved_ms(lambda: r.replay(cold, "t0", at_seq=mid), lambda: r.replay(warm, "t0", at_seq=mid),
                                 reps)
    return full[0], full[1], at_mid[0], at_mid[1]


def archive_section(settings: Settings, args: argparse.Namespace) -> list[Row]:
    """Archive rate, bytes per event in each tier, and replay latency archived vs in PostgreSQL.

    Each run writes the same threads to two tenants and archives one of them: the replay latency
    of a thread archived and of the identical thread still in PostgreSQL is then timed alternately.
    """
    runs: list[dict[str, float]] = []
    n, threads = args.archive_events, args.archive_threads
    events = threads * (n + 1)
    # Every run's tenants are written before anything is archived: once rows are deleted, new rows fill the
    # freed space and the relation stops growing, so a size delta would no longer measure the rows.
    written = []
    for run in range(args.runs):
        cold, warm = f"arc{run}-{uuid.uuid4().hex[:6]}", f"pg{run}-{uuid.uuid4().hex[:6]}"
        before = _events_bytes(settings)
        _write(settings, cold, threads, n)
        pg_bytes = _events_bytes(settings) - before
        _write(settings, warm, threads, n)
        written.append((cold, warm, pg_bytes, *_tenant_bytes(settings, cold)))
        console.print(f"archive run {run + 1}/{args.runs}: wrote and projected 2 × {events:,} events")
    for run, (cold, warm, pg_bytes, body, snaps_before) in enumerate(written):
        report = Archiver(settings).run(candidates(settings, timedelta(0), tenants=[cold]))
        if report.failed or report.events != events:
            console.print(f"[red]run {run}: archived {report.events} of {events} events; failed: {report.failed}")
        s3_bytes = _archive_bytes(settings, cold)
        snaps_after = _tenant_bytes(settings, cold)[1]
        mid = n // 2 + 37
        s3_full, pg_full, s3_mid, pg_mid = _replay_pair(settings, cold, warm, mid, args.reps)
        runs.append({"rate": report.events / report.seconds, "pg": pg_bytes / events, "s3": s3_bytes / events,
                     "body": body, "snaps": snaps_before / events, "snaps_after": snaps_after / events,
                     "pg_full": pg_full, "s3_full": s3_full, "pg_mid": pg_mid, "s3_mid": s3_mid})
        console.print(f"archive run {run + 1}/{args.runs}: {report.events:,} events in {report.seconds:.2f}s")

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    what = f"{threads} threads × {n + 1:,} events, median of {len(runs)} runs"
    thread = f"one {n + 1:,}-event thread and its twin in PostgreSQL, alternately, median of {args.reps} calls per run"
    return [
        {"section": "archive", "measure": "archive rate", "value": f"{med('rate'):,.0f} events/s", "detail": what},
        {"section": "archive", "measure": "bytes/event in PostgreSQL", "value": f"{med('pg'):,.0f} B",
         "detail": "journal.events rows + indexes + TOAST (pg_total_relation_size growth)"},
        {"section": "archive", "measure": "bytes/event in the archive", "value": f"{med('s3'):,.0f} B",
         "detail": f"S3 segments + manifests; {med('pg') / med('s3'):.1f}× smaller (stored body alone: "
                   f"{med('body'):,.0f} B; a segment compresses 10,000 similar events together)"},
        {"section": "archive", "measure": "snapshot bytes/event in PostgreSQL",
         "value": f"{med('snaps'):,.0f} B → {med('snaps_after'):,.0f} B",
         "detail": "journal.snapshots (a full state every K events) before → after: only the head snapshot stays"},
        {"section": "archive", "measure": "replay, full fold from seq 1",
         "value": f"{med('s3_full') / med('pg_full'):.2f}× (archive / PostgreSQL)",
         "detail": f"{med('pg_full'):.1f} ms in PostgreSQL, {med('s3_full'):.1f} ms archived; {thread}"},
        {"section": "archive", "measure": f"replay at seq {n // 2 + 37:,}",
         "value": f"{med('s3_mid') / med('pg_mid'):.2f}× (archive / PostgreSQL)",
         "detail": f"{med('pg_mid'):.1f} ms from a snapshot in PostgreSQL, {med('s3_mid'):.1f} ms from the segments"},
    ]


#: The other tenants' projection lag p99 the rebuild must keep them under.
LAG_TARGET_S = 1.0


# -- rebuild ---------------------------------------------------------------------------------------


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNAL_")}
    env |= {"JOURNAL_REDIS_URL": settings.redis_url or "", "JOURNAL_DATABASE_URL": settings.database_url or "",
            "JOURNAL_S3_URL": settings.s3_url or ""}
    return env


def _cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "journal.cli", *argv]


def _stored(settings: Settings, tenant: str) -> int:
    with db.connect(settings, role=None, autocommit=True) as conn:
        row = conn.execute("SELECT COALESCE(sum(last_seq), 0) FROM journal.threads WHERE tenant_id = %s",
                           (tenant,)).fetchone()
    return int(row[0]) if row else 0


class LagWriter:
    """Appends to a few tenants with durability='projected' and records each call's latency (seconds)."""

    def __init__(self, settings: Settings, tenants: list[str], interval: float) -> None:
        self.settings = settings
        self.tenants = tenants
        self.interval = interval
        self.samples: list[float] = []
        self.mark = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in tenants]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _run(self, tenant: str) -> None:
        with JournalClient.from_settings(self.settings) as c:
            i = 0
            while not self._stop.is_set():
                t0 = time.perf_counter()
                # Not projected within the client's timeout: the sample is that timeout.
                with contextlib.suppress(DurabilityError):
                    c.append(tenant, f"th{i % 4}", "message", {"role": "user", "content": f"ping {i}"},
                             durability="projected")
                self.samples.append(time.perf_counter() - t0)
                i += 1
                self._stop.wait(self.interval)

    def take(self) -> list[float]:
        """The samples since the last take."""
        out, self.mark = self.samples[self.mark:], len(self.samples)
        return out

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _lag_rows(section: str, label: str, xs: list[float]) -> list[Row]:
    p99 = _pct(xs, 0.99)
    return [_row(*r) for r in [
        (section, f"other tenants' lag p50, {label}", f"{_pct(xs, 0.5) * 1000:,.0f} ms", f"{len(xs)} appends"),
        (section, f"other tenants' lag p99, {label}", f"{p99 * 1000:,.0f} ms",
         f"target < {LAG_TARGET_S * 1000:.0f} ms: {'met' if p99 < LAG_TARGET_S else 'MISSED'}"),
        (section, f"other tenants' lag max, {label}", f"{max(xs, default=float('nan')) * 1000:,.0f} ms", ""),
    ]]


def _row(section: str, measure: str, value: str, detail: str) -> Row:
    return {"section": section, "measure": measure, "value": value, "detail": detail}


# -- sections --------------------------------------------------------------------------------------


def rebuild_section(settings: Settings, args: argparse.Namespace) -> list[Row]:
    """Rebuild events/s over ``--events`` events, and the other tenants' projection lag meanwhile."""
    env = _env(settings)
    big = f"big-{os.getpid()}"
    threads = max(1, args.threads)
    # The projector runs in this process (the rebuild in its own): it needs no S3 for these payloads.
    projector = Projector(settings, WorkerOptions())
    running = threading.Thread(target=projector.run, daemon=True)
    running.start()
    writer: LagWriter | None = None
    try:
        t0 = time.perf_counter()
        with JournalClient.from_settings(settings) as c:
            batch: list[Draft] = []
            for i in range(args.events):
                batch.append(Draft(f"th{i % threads}", "message", {"role": "user", "content": f"step {i}"}))
                if len(batch) == 1000:
                    c.append_many(big, batch)
                    batch = []
            if batch:
                c.append_many(big, batch)
        loaded = time.perf_counter() - t0
        while _stored(settings, big) < args.events:
            time.sleep(1)
        drained = time.perf_counter() - t0 - loaded
        console.print(f"rebuild: loaded {args.events:,} events in {loaded:.0f}s, projected in {drained:.0f}s more",
                      highlight=False)
        others = [f"other-{os.getpid()}-{i}" for i in range(args.lag_tenants)]
        writer = LagWriter(settings, others, args.lag_interval)
        writer.start()
        time.sleep(args.baseline_seconds)
        baseline = writer.take()
        argv = ["rebuild", "--tenant", big, "--format", "json"]
        if args.throttle:
            argv += ["--throttle", str(args.throttle)]
        rates: list[float] = []
        walls: list[float] = []
        during: list[float] = []
        for run in range(args.runs):  # every run folds everything again: a finished rebuild leaves no shadow
            t1 = time.perf_counter()
            done = subprocess.run(_cli(*argv), env=env, capture_output=True, text=True, check=False)
            walls.append(time.perf_counter() - t1)
            during += writer.take()
            if done.returncode != 0:
                return [_row("rebuild", "rebuild failed", f"exit {done.returncode}", done.stderr.strip()[-200:])]
            (report,) = json.loads(done.stdout)
            rates.append(report["events"] / walls[-1])
            console.print(f"rebuild run {run + 1}: {rates[-1]:,.0f} events/s ({walls[-1]:.1f}s)", highlight=False)
    finally:
        if writer is not None:
            writer.stop()
        projector.stop()
        running.join(30)
    rate = statistics.median(rates)
    return [_row(*r) for r in [
        ("rebuild", "events rebuilt", f"{report['events']:,}", f"{threads} threads of one tenant, snapshot every "
                                                               f"{settings.snapshot_every}"),
        ("rebuild", "rebuild events/s", f"{rate:,.0f}",
         f"median of {len(rates)} ({', '.join(f'{r:,.0f}' for r in rates)}), process start to swap, throttle "
         f"{args.throttle or 'off'}, projector running"),
        ("rebuild", "rows changed by the swap",
         f"{report['threads_changed']} threads, {report['snapshots_added']} snapshots", "expected 0"),
    ]] + _lag_rows("rebuild", "no rebuild (baseline)", baseline) + _lag_rows(
        "rebuild", f"during the rebuild{'s' if len(rates) > 1 else ''}", during)


# -- burst ---------------------------------------------------------------------------------------


def _backlog(r: redis.Redis, tenant: str) -> int | None:
    """Entries of ``tenant``'s stream not yet acknowledged by the projector (None before its group exists)."""
    try:
        groups = r.xinfo_groups(keys.stream(tenant))
    except redis.ResponseError:
        return None
    for g in groups:
        if g["name"] in (GROUP, GROUP.encode()):
            return int(g.get("lag") or 0) + int(g.get("pending") or 0)
    return None


def _load_burst(settings: Settings, tenant: str, events: int, threads: int) -> None:
    """The burst, from its own process (spawned): the lag writer's threads share no GIL with it."""
    with JournalClient.from_settings(settings) as c:
        batch: list[Draft] = []
        for i in range(events):
            batch.append(Draft(f"th{i % threads}", "message",
                               {"role": "assistant", "content": f"step {i}: the order shipped; refund approved"}))
            if len(batch) == 1000:
                c.append_many(tenant, batch)
                batch = []
        if batch:
            c.append_many(tenant, batch)


def burst_section(settings: Settings, args: argparse.Namespace) -> list[Row]:
    """One tenant's burst of ``--burst-events`` with a projector running: the other tenants' lag, and the drain."""
    big = f"burst-{os.getpid()}"
    others = [f"steady-{os.getpid()}-{i}" for i in range(args.burst_lag_tenants)]
    plog = (settings.data_dir / "burst-projector.log").open("wb")
    projector = subprocess.Popen(_cli("project", "--no-migrate"), env=_env(settings), stdout=plog,
                                 stderr=subprocess.STDOUT)
    writer = LagWriter(settings, others, args.lag_interval)
    loader: BaseProcess | None = None
    r = redis.Redis.from_url(settings.redis_url or "")
    try:
        writer.start()
        time.sleep(3)  # the projector discovers the new tenants (it looks once a second): not measured
        writer.take()
        time.sleep(args.baseline_seconds)
        baseline = writer.take()
        t0 = time.perf_counter()
        # spawn, not fork: a forked child would share this process's connections.
        loader = mp.get_context("spawn").Process(
            target=_load_burst, args=(settings, big, args.burst_events, args.burst_threads), daemon=True)
        loader.start()
        loader.join(args.timeout)
        loaded = time.perf_counter() - t0
        deadline = t0 + args.timeout
        while (_backlog(r, big) or 0) > 0 or _stored(settings, big) < args.burst_events:
            if time.perf_counter() > deadline or projector.poll() is not None:
                return [{"section": "burst", "measure": "burst not projected",
                         "value": f"{_stored(settings, big):,} of {args.burst_events:,}",
                         "detail": f"within --timeout {args.timeout:.0f}s, or the projector exited"}]
            time.sleep(0.2)
        drained = time.perf_counter() - t0
        during = writer.take()
    finally:
        writer.stop()
        if loader is not None and loader.is_alive():
            loader.terminate()  # our own child, by its handle
        projector.terminate()
        try:
            projector.wait(60)
        except subprocess.TimeoutExpired:
            projector.kill()  # our own child, by its handle
            projector.wait(10)
        plog.close()
        r.close()
    console.print(f"burst: {args.burst_events:,} events appended in {loaded:.1f}s, all projected after "
                  f"{drained:.1f}s", highlight=False)
    return [
        {"section": "burst", "measure": "burst events", "value": f"{args.burst_events:,}",
         "detail": f"one tenant, {args.burst_threads} threads, appended in {loaded:.1f}s (append_many of 1,000)"},
        {"section": "burst", "measure": "burst drain events/s", "value": f"{args.burst_events / drained:,.0f}",
         "detail": f"{drained:.1f}s from the burst's first append to its last event projected, one projector"},
        *_lag_rows("burst", "no burst (baseline)", baseline),
        *_lag_rows("burst", "during the burst", during),
    ]


SECTIONS: dict[str, Callable[[Settings, argparse.Namespace], list[Row]]] = {
    "archive": archive_section,
    "rebuild": rebuild_section,
    "burst": burst_section,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections, comma-separated: {', '.join(SECTIONS)}")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the rows as JSON to FILE")
    ap.add_argument("--runs", type=int, default=3, help="runs per section (medians reported)")
    ap.add_argument("--reps", type=int, default=5, help="timed calls per latency figure within a run")
    ap.add_argument("--archive-threads", type=int, default=20)
    ap.add_argument("--archive-events", type=int, default=2500, help="events per archived thread")
    ap.add_argument("--events", type=int, default=1_000_000, help="events of the big tenant (rebuild)")
    ap.add_argument("--threads", type=int, default=1000, help="threads of the big tenant (rebuild)")
    ap.add_argument("--throttle", type=float, default=None, help="rebuild --throttle EV/S (default off)")
    ap.add_argument("--lag-tenants", type=int, default=3, help="other tenants the steady writer appends to (rebuild)")
    ap.add_argument("--lag-interval", type=float, default=0.05, help="seconds between a lag writer's appends")
    ap.add_argument("--baseline-seconds", type=float, default=10.0, help="lag measured before the rebuild")
    ap.add_argument("--burst-events", type=int, default=1_000_000, help="events of the burst's tenant (burst)")
    ap.add_argument("--burst-threads", type=int, default=1000, help="threads of the burst's tenant (burst)")
    ap.add_argument("--burst-lag-tenants", type=int, default=5, help="other tenants the steady writer appends to "
                    "(burst)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before a burst is declared stuck")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown or not only:
        ap.error(f"--only {args.only}: choose among {', '.join(SECTIONS)}")
    logs.configure("warning")

    tmp = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    stack = EmbeddedStack(tmp)
    rows: list[Row] = []
    try:
        with console.status("starting embedded Valkey, PostgreSQL and S3 …"):
            settings = stack.up(("redis", "postgres", "s3"))
            db.migrate(settings)
        for name in only:
            rows += SECTIONS[name](settings, args)
    finally:
        with console.status("stopping the embedded servers …"):
            stack.down()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    table = Table(title="operators' tools (bench_ops.py; medians; a shared machine: compare ratios)")
    for col in ("section", "measure", "value", "detail"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for row in rows:
        table.add_row(row["section"], row["measure"], row["value"], row["detail"])
    console.print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
