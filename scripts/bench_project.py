#!/usr/bin/env python
"""Benchmark the projector (Redis Streams -> PostgreSQL) against a raw COPY of the same rows.

    python scripts/bench_project.py                          # embedded Valkey + PostgreSQL in a temp dir
    python scripts/bench_project.py --events 20000 --tenants 500 --runs 1 --skip-lag   # smoke run
    JOURNAL_REDIS_URL=... JOURNAL_DATABASE_URL=... python scripts/bench_project.py --json out.json

Measured, side by side in one run:

1. backlog drain by ONE projector worker: a backlog of realistic agent events (``--events`` over
   ``--tenants`` x ``--threads-per-tenant`` threads) is loaded into Redis first (loading is not
   timed), then one worker process runs ``Projector.run()`` until every entry is acknowledged;
2. the same backlog (fresh tenant ids) drained by TWO worker processes in parallel;
3. the raw ceiling: psycopg binary COPY of exactly the rows the one-worker run wrote (read back from
   ``journal.events``, re-keyed under other tenant ids) in batches of the projector's batch size;
4. end-to-end lag: one worker running while this process appends at a steady rate over all threads;
   per sampled event, the time from the append's return until the per-thread ``projected`` marker
   (raised by the projector right after its commit) covers it.

Throughput figures are the MEDIAN of ``--runs`` runs. Each run uses fresh tenants and deletes them
from Redis and PostgreSQL afterwards, so every run starts from the same state. Against external
servers (``JOURNAL_*_URL``) use dedicated ones: a projector projects every registered tenant, not
only the bench's. The script never asserts: it reports and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import psutil
import psycopg
import redis
import structlog
from psycopg.types.json import Jsonb
from rich.console import Console
from rich.table import Table

from journal import keys
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.settings import Settings
from projections import db
from projections.worker import GROUP, Projector, WorkerOptions

TARGET_EPS = 25_000.0
TARGET_RATIO = 0.2
TARGET_P99_MS = 500.0
#: append_many with durability "projected", one conversation step (issue 14).
TARGET_SMALL_P50_MS = 2.0
TARGET_SMALL_P99_MS = 10.0

TOOLS = ("search_orders", "issue_refund", "fetch_invoice", "send_email", "lookup_customer")
WORDS = ("the", "order", "refund", "customer", "invoice", "shipping", "damaged", "policy", "approve", "amount",
         "account", "please", "check", "status", "delivered", "label", "return", "window", "days", "credit")

#: The columns the projector fills (recorded_at keeps its default in both paths), with binary COPY types.
COPY_COLUMNS = ("tenant_id", "thread_id", "seq", "type", "node", "tool", "agent_id", "actor", "ts_ms",
                "appended_at", "payload", "blob_sha256", "blob_size", "idempotency_key", "version", "body",
                "stream_id", "prev_hash", "hash")
COPY_TYPES = ("text", "text", "int8", "text", "text", "text", "text", "jsonb", "int8", "timestamptz", "jsonb",
              "text", "int8", "text", "int2", "bytea", "text", "bytea", "bytea")
TENANT_TABLES = ("events", "threads", "snapshots", "dead_letters", "conflicts", "offsets")


# -- workload ---------------------------------------------------------------------------------------

class TextPool:
    """Pre-built word salad of 100-400 characters: building it per event would dominate generation time."""

    def __init__(self, rng: random.Random, size: int = 2000) -> None:
        self.items = [self._make(rng, rng.randint(100, 400)) for _ in range(size)]

    @staticmethod
    def _make(rng: random.Random, target: int) -> str:
        out: list[str] = []
        n = 0
        while n < target:
            w = rng.choice(WORDS)
            out.append(w)
            n += len(w) + 1
        return " ".join(out)[:target]

    def pick(self, rng: random.Random) -> str:
        return self.items[rng.randrange(len(self.items))]


def agent_steps(rng: random.Random, texts: TextPool) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """An endless agent loop shaped like journal/demo.py; payloads pack to roughly 100-400 bytes."""
    yield "node_enter", {"node": "planner", "reason": texts.pick(rng)[:120]}, "planner"
    yield "message", {"role": "user", "content": texts.pick(rng)}, None
    n = 0
    while True:
        n += 1
        call_id = f"call_{n}"
        tool = rng.choice(TOOLS)
        yield "message", {"role": "assistant", "content": texts.pick(rng), "tool_calls": [call_id]}, "planner"
        yield "tool_call", {"call_id": call_id, "tool": tool,
                            "args": {"order": rng.randint(1, 10**6), "customer": f"cus_{rng.randint(1, 10**5)}",
                                     "include_history": rng.random() < 0.5, "note": texts.pick(rng)[:80]}}, "tools"
        yield "tool_result", {"call_id": call_id, "tool": tool,
                              "output": {"status": "ok", "amount": round(rng.uniform(1, 500), 2),
                                         "rows": [{"id": rng.randint(1, 10**6), "state": rng.choice(WORDS)}
                                                  for _ in range(rng.randint(1, 6))]}}, "tools"
        yield "memory_set", {"path": ["customer", "last_tool"],
                             "value": {"tool": tool, "summary": texts.pick(rng)[:150]}}, "planner"
        if n % 3 == 0:
            yield "node_exit", {"node": "planner", "steps": n}, "planner"
            yield "node_enter", {"node": "review", "reason": texts.pick(rng)[:120]}, "review"
            yield "message", {"role": "assistant", "content": texts.pick(rng)}, "review"
            yield "node_exit", {"node": "review", "verdict": "approved"}, "review"
            yield "node_enter", {"node": "planner", "reason": texts.pick(rng)[:120]}, "planner"


def make_backlog(n_events: int, n_tenants: int, threads_per_tenant: int, seed: int) -> list[list[dict[str, Any]]]:
    """Per tenant index, its Draft mappings (tenant-agnostic, so one backlog can be loaded under several ids).

    Within a tenant the threads interleave round-robin, as concurrent agent runs of one customer would.
    """
    rng = random.Random(seed)
    texts = TextPool(rng)
    threads = [f"run-{j:03d}" for j in range(threads_per_tenant)]
    base, extra = divmod(n_events, n_tenants)
    out: list[list[dict[str, Any]]] = []
    for i in range(n_tenants):
        gens = [agent_steps(random.Random(rng.random()), texts) for _ in threads]
        actors = [{"agent_id": f"support-bot-{rng.randint(1, 3)}", "model": "gpt-sim-1", "run_id": th}
                  for th in threads]
        drafts = []
        for k in range(base + (1 if i < extra else 0)):
            j = k % len(threads)
            type_, payload, node = next(gens[j])
            drafts.append({"thread": threads[j], "type": type_, "payload": payload, "node": node,
                           "actor": actors[j]})
        out.append(drafts)
    return out


def load(client: JournalClient, names: list[str], backlog: list[list[dict[str, Any]]]) -> float:
    """Append each tenant's drafts with append_many (≤ 1000 per call); returns seconds (reported, not scored)."""
    t0 = time.perf_counter()
    for name, drafts in zip(names, backlog, strict=True):
        for i in range(0, len(drafts), 1000):
            client.append_many(name, drafts[i : i + 1000])
    return time.perf_counter() - t0


# -- Redis / PostgreSQL helpers ---------------------------------------------------------------------

def backlog_left(r: redis.Redis, tenants: list[str]) -> int:
    """Undelivered + pending entries of the group over ``tenants``, pipelined (Projector.backlog is 1 RTT/tenant)."""
    total = 0
    for i in range(0, len(tenants), 1000):
        chunk = tenants[i : i + 1000]
        pipe = r.pipeline(transaction=False)
        for t in chunk:
            pipe.xinfo_groups(keys.stream(t))
        for res in pipe.execute(raise_on_error=False):
            if isinstance(res, Exception):
                continue
            for g in res:
                if _text(g["name"]) == GROUP:
                    total += int(g.get("lag") or 0) + int(g.get("pending") or 0)
    return total


def admin_connect(settings: Settings) -> psycopg.Connection:
    """Autocommit connection that may delete any tenant's rows: journal_owner if granted, else the login user."""
    try:
        return db.connect(settings, role=db.OWNER, autocommit=True)
    except Exception:
        return db.connect(settings, role=None, autocommit=True)


def cleanup(r: redis.Redis, admin: psycopg.Connection, tenants: list[str], vacuum: bool = True) -> None:
    """Remove the bench tenants everywhere, so the next run's worker sees exactly its own backlog."""
    for i in range(0, len(tenants), 1000):
        chunk = tenants[i : i + 1000]
        pipe = r.pipeline(transaction=False)
        for t in chunk:
            pipe.unlink(keys.stream(t), keys.heads(t), keys.fences(t), keys.projected(t))
        pipe.srem(keys.TENANT_REGISTRY, *chunk)
        pipe.execute()
    for table in TENANT_TABLES:
        admin.execute(f"DELETE FROM journal.{table} WHERE tenant_id = ANY(%s)", (tenants,))
    if vacuum:
        # Dead tuples and bloated indexes from the previous run would otherwise slow the next one.
        with contextlib.suppress(psycopg.Error):
            admin.execute("VACUUM (ANALYZE) journal.events, journal.threads, journal.offsets")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def server_versions(r: redis.Redis, admin: psycopg.Connection) -> tuple[str, str]:
    info = r.info("server")
    if "valkey_version" in info:
        rv = f"Valkey {info['valkey_version']}"
    else:
        rv = f"{str(info.get('server_name') or 'Redis').capitalize()} {info.get('redis_version')}"
    row = admin.execute("SHOW server_version").fetchone()
    return rv, f"PostgreSQL {row[0] if row else '?'}"


class CpuMeter:
    """CPU seconds used by the worker processes, PostgreSQL (postmaster and its children) and Valkey/Redis.

    Servers are found through the connections (INFO's process_id, the backend's parent), so this works
    for the embedded stack and for external servers on this machine; elsewhere it reports nothing.
    """

    def __init__(self, r: redis.Redis, admin: psycopg.Connection) -> None:
        self.servers: dict[str, psutil.Process] = {}
        with contextlib.suppress(Exception):
            self.servers["Valkey/Redis"] = psutil.Process(int(r.info("server")["process_id"]))
        with contextlib.suppress(Exception):
            row = admin.execute("SELECT pg_backend_pid()").fetchone()
            parent = psutil.Process(int(row[0])).parent() if row else None
            if parent is not None:
                self.servers["PostgreSQL"] = parent

    def sample(self, workers: list[int]) -> dict[str, dict[int, float]]:
        groups: dict[str, list[psutil.Process]] = {"worker": []}
        for pid in workers:
            with contextlib.suppress(psutil.Error):
                groups["worker"].append(psutil.Process(pid))
        for name, proc in self.servers.items():
            with contextlib.suppress(psutil.Error):
                groups[name] = [proc, *proc.children()]
        out: dict[str, dict[int, float]] = {}
        for name, procs in groups.items():
            out[name] = {}
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    c = proc.cpu_times()
                    out[name][proc.pid] = c.user + c.system
        return out

    @staticmethod
    def used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
        """Seconds per group between two samples (a process that exited in between is not counted)."""
        return {name: sum(t - before.get(name, {}).get(pid, 0.0) for pid, t in procs.items())
                for name, procs in after.items()}


# -- worker processes --------------------------------------------------------------------------------

class _Clock:
    """Accumulated seconds per label; cheap enough to wrap per-event calls (two clock reads each)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        seconds, calls, clock = self.seconds, self.calls, time.perf_counter

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = clock()
            try:
                return fn(*a, **kw)
            finally:
                seconds[label] += clock() - t0
                calls[label] += 1

        return timed


def _worker_main(urls: tuple[str, str], data_dir: str, options: dict[str, Any], counter: Any, target: Any,
                 reached: MpEvent, ready: MpEvent, go: MpEvent, stop: MpEvent, results: Any,
                 profile_path: str | None) -> None:
    """One projector worker process: the stock ``Projector.run()``, plus timers around its stages."""
    import cProfile

    from projections import committer as committer_mod
    from projections import worker as worker_mod

    # Per-tenant "tenant_discovered" lines would flood the bench output; warnings and errors still show.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    settings = Settings(redis_url=urls[0], database_url=urls[1], data_dir=Path(data_dir))
    clock = _Clock()
    batches: list[int] = []
    # Timers wrap functions in this process only; the rest is subtracted out in the parent. A batch is
    # decoded either directly or, for all but a round's first, inside write_batch while PostgreSQL runs
    # the previous batch's statements (its overlap's ``while_writing``): that part is timed separately.
    write_batch = clock.wrap("write_batch", committer_mod.write_batch)
    # while_locking acknowledges the batch before; while_writing decodes the next and parses a read-ahead reply.
    lock_wait = clock.wrap("lock_wait_acks", lambda overlap: overlap.while_locking())
    meanwhile = clock.wrap("meanwhile", lambda overlap: overlap.while_writing())

    class TimedOverlap:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def while_locking(self) -> None:
            lock_wait(self.inner)

        def while_writing(self) -> None:
            meanwhile(self.inner)

    def timed_write_batch(*a: Any, overlap: Any = None, **kw: Any) -> Any:
        return write_batch(*a, overlap=overlap and TimedOverlap(overlap), **kw)

    committer_mod.write_batch = timed_write_batch  # type: ignore[assignment]

    p = Projector(settings, WorkerOptions(**options))
    after_commit = clock.wrap("_after_commit", p.committer.after_commit)

    def counted_after_commit(result: Any, acked: list[tuple[str, str]]) -> None:
        after_commit(result, acked)
        batches.append(len(acked))
        with counter.get_lock():  # the parent's "all acknowledged" clock waits for this
            counter.value += len(acked)
            if 0 < target.value <= counter.value:
                reached.set()

    # Instance attributes shadow the methods, and the rooms call them through self.
    p.committer.after_commit = counted_after_commit  # type: ignore[method-assign]
    p.reader.parse_ahead = clock.wrap("parse_ahead", p.reader.parse_ahead)  # type: ignore[method-assign]
    p.committer.decode = clock.wrap("decode", p.committer.decode)  # type: ignore[method-assign]
    for name in ("read_and_project", "check_tail", "claim", "trim", "refresh_tenants"):
        setattr(p, name, clock.wrap(name, getattr(p, name)))
    worker_mod.tune_gc()  # as `agent-journal project` does
    p.refresh_tenants()  # connect, discover tenants and create groups before the parent starts the clock
    clock.seconds.clear()
    clock.calls.clear()
    ready.set()
    go.wait()
    threading.Thread(target=lambda: (stop.wait(), p.stop()), daemon=True).start()
    prof = cProfile.Profile() if profile_path else None
    t0 = time.perf_counter()
    if prof is not None:
        prof.enable()
    p.run()
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile_path)
    results.put({"seconds": dict(clock.seconds), "calls": dict(clock.calls), "batches": batches,
                 "wall": time.perf_counter() - t0, "pid": os.getpid()})


class Workers:
    """``n`` projector processes started together; ``counter`` is the entries they have acknowledged."""

    def __init__(self, n: int, settings: Settings, options: WorkerOptions, profile_path: str | None = None) -> None:
        # spawn, not fork: a forked child would share this process's Redis/PostgreSQL sockets.
        ctx = mp.get_context("spawn")
        self.counter = ctx.Value("q", 0)
        #: Set by the worker that brings ``counter`` to ``target``: the parent sleeps on it rather than
        #: polling, which on 2 cores took CPU from the workers it measures (2 ms polls: 10.6 s vs 8.7 s drains).
        self.target = ctx.Value("q", 0, lock=False)
        self.reached = ctx.Event()
        self.ready = [ctx.Event() for _ in range(n)]
        self.go = ctx.Event()
        self.stop_event = ctx.Event()
        self.results: Any = ctx.Queue()
        urls = (settings.redis_url or "", settings.database_url or "")
        self.procs = [
            ctx.Process(target=_worker_main, daemon=True,
                        args=(urls, str(settings.data_dir), asdict(options), self.counter, self.target, self.reached,
                              self.ready[i], self.go,
                              self.stop_event, self.results, f"{profile_path}.{i}" if profile_path else None))
            for i in range(n)]
        for p in self.procs:
            p.start()
        for e in self.ready:
            if not e.wait(120):
                raise RuntimeError("a projector worker did not start within 120 s")

    def start(self) -> float:
        t0 = time.perf_counter()
        self.go.set()
        return t0

    @property
    def done(self) -> int:
        return int(self.counter.value)

    def wait_for(self, n: int, timeout: float) -> bool:
        """Sleep until the workers have acknowledged ``n`` entries in all (False after ``timeout``)."""
        with self.counter.get_lock():
            self.reached.clear()
            self.target.value = n
            if self.counter.value >= n:
                return True
        return self.reached.wait(timeout)

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def stop(self) -> list[dict[str, Any]]:
        self.stop_event.set()
        out = []
        for _ in self.procs:
            with contextlib.suppress(Exception):
                out.append(self.results.get(timeout=60))
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.terminate()  # only our own child, by its handle
        return out


def wait_drained(r: redis.Redis, workers: Workers, tenants: list[str], expected: int, timeout: float) -> float:
    """perf_counter when all ``expected`` entries are acknowledged and the group backlog is 0."""
    deadline = time.perf_counter() + timeout
    while True:
        # The workers' counter wakes this process; XINFO over thousands of streams only confirms.
        if workers.wait_for(expected, 0.5):
            t = time.perf_counter()
            if backlog_left(r, tenants) == 0:
                return t
            time.sleep(0.05)  # acknowledgements still in flight
        if time.perf_counter() > deadline or not workers.alive():
            raise RuntimeError(f"backlog not drained: {workers.done}/{expected} acknowledged, "
                               f"{backlog_left(r, tenants)} left")


# -- the benchmark ---------------------------------------------------------------------------------

class Bench:
    def __init__(self, settings: Settings, args: argparse.Namespace, console: Console) -> None:
        self.settings = settings
        self.args = args
        self.console = console
        self.client = JournalClient.from_settings(settings)
        self.r = self.client.redis
        self.admin = admin_connect(settings)
        self.prefix = f"bp{uuid.uuid4().hex[:6]}"
        self.cpu = CpuMeter(self.r, self.admin)
        self.options = WorkerOptions(**({"batch_size": args.batch_size} if args.batch_size else {}),
                                     **({"streams_per_read": args.streams_per_read} if args.streams_per_read else {}))

    def close(self) -> None:
        self.client.close()
        self.admin.close()

    def log(self, msg: str) -> None:
        self.console.print(f"  [dim]{time.strftime('%H:%M:%S')}[/] {msg}", highlight=False)

    def projector_batch(self, n_tenants: int) -> int:
        """Entries per projector transaction on a deep backlog: worker.py reads ``per_stream`` entries
        from each of up to ``streams_per_read`` streams per XREADGROUP and projects each reply at once."""
        o = self.options
        streams = max(1, min(n_tenants, o.streams_per_read))
        per_stream = max(10, o.batch_size // streams)
        return per_stream * streams

    def drain(self, n_workers: int, names: list[str], expected: int, profile: str | None) -> dict[str, Any]:
        workers = Workers(n_workers, self.settings, self.options, profile)
        pids = [p.pid for p in workers.procs if p.pid]
        try:
            before = self.cpu.sample(pids)
            t0 = workers.start()
            t1 = wait_drained(self.r, workers, names, expected, timeout=self.args.timeout)
            cpu = CpuMeter.used(before, self.cpu.sample(pids))
        finally:
            stats = workers.stop()
        return {"seconds": t1 - t0, "eps": expected / (t1 - t0), "workers": stats, "cpu": cpu}

    def copy_ceiling(self, names: list[str], observed: list[int]) -> dict[str, Any]:
        """Binary COPY of the rows the one-worker run wrote, under other tenant ids, batch by batch."""
        rename = {n: n.replace("-w1-", "-cp-", 1) for n in names}
        cols = ", ".join(f"{c}::text" if c in ("actor", "payload") else c for c in COPY_COLUMNS)
        with self.admin.cursor(binary=True) as cur:
            rows = cur.execute(f"SELECT {cols} FROM journal.events WHERE tenant_id = ANY(%s)", (names,)).fetchall()

        def identity(s: Any) -> Any:
            return s

        # Order rows as the projector read them: per_stream entries of each stream per XREADGROUP,
        # streams_per_read streams per call, in sorted tenant order (worker.read_and_project).
        order = {n: i for i, n in enumerate(sorted(names))}
        spr = max(1, min(len(names), self.options.streams_per_read))
        per_stream = max(10, self.options.batch_size // spr)
        rank: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for r in rows:
            ms, _, sq = r[16].partition("-")
            rank[r[0]].append((int(ms), int(sq)))
        pos = {t: {sid: i for i, sid in enumerate(sorted(v))} for t, v in rank.items()}

        def key(r: tuple[Any, ...]) -> tuple[int, int, int, int]:
            ms, _, sq = r[16].partition("-")
            i = pos[r[0]][(int(ms), int(sq))]
            return (i // per_stream, order[r[0]] // spr, order[r[0]], i)

        rows.sort(key=key)
        # jsonb goes in as the text PostgreSQL returned (identity dumps): the ceiling pays no json.dumps.
        prepared = [(rename[r[0]], *r[1:7], Jsonb(r[7], dumps=identity), r[8], r[9],
                     None if r[10] is None else Jsonb(r[10], dumps=identity), *r[11:]) for r in rows]
        del rows
        # The one-worker run's mean transaction size: "the same batches" whatever the worker's read policy.
        batch = round(statistics.mean(observed)) if observed else self.projector_batch(len(names))
        # PostgreSQL refuses COPY FROM under row-level security ("use INSERT"), and journal_writer has it
        # forced: the ceiling runs as the login user (a superuser on the embedded stack), which bypasses it.
        conn = db.connect(self.settings, role=None)
        try:
            stmt = f"COPY journal.events ({', '.join(COPY_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
            gc.collect()
            t0 = time.perf_counter()
            for i in range(0, len(prepared), batch):
                with conn.transaction(), conn.cursor() as cur, cur.copy(stmt) as cp:
                    cp.set_types(list(COPY_TYPES))
                    for row in prepared[i : i + batch]:
                        cp.write_row(row)
            seconds = time.perf_counter() - t0
        finally:
            conn.close()
        return {"seconds": seconds, "eps": len(prepared) / seconds, "rows": len(prepared), "batch": batch,
                "tenants": list(rename.values())}

    def run(self, run: int) -> dict[str, Any]:
        a = self.args
        backlog = make_backlog(a.events, a.tenants, a.threads_per_tenant, seed=1000 + run)
        n = sum(len(b) for b in backlog)
        fig: dict[str, Any] = {"events": n}

        # 1. one worker
        w1 = [f"{self.prefix}-r{run}-w1-{i}" for i in range(a.tenants)]
        fig["load_seconds"] = load(self.client, w1, backlog)
        self.log(f"run {run + 1}: loaded {n:,} events into {a.tenants:,} tenants in {fig['load_seconds']:.1f}s")
        one = self.drain(1, w1, n, a.profile and str(Path(a.profile) / f"worker1-run{run}.prof"))
        fig["w1_eps"], fig["w1_seconds"], fig["w1_stats"] = one["eps"], one["seconds"], one["workers"]
        fig["w1_cpu"] = one["cpu"]
        self.log(f"run {run + 1}: one worker drained it in {one['seconds']:.2f}s = {one['eps']:,.0f} events/s")

        # 3. raw COPY of the same rows (before the one-worker rows are deleted)
        cp = self.copy_ceiling(w1, [b for w in one["workers"] for b in w["batches"]])
        fig["copy_eps"], fig["copy_seconds"], fig["copy_batch"] = cp["eps"], cp["seconds"], cp["batch"]
        self.log(f"run {run + 1}: binary COPY of the same {cp['rows']:,} rows in batches of {cp['batch']:,}: "
                 f"{cp['seconds']:.2f}s = {cp['eps']:,.0f} rows/s")
        cleanup(self.r, self.admin, w1 + cp["tenants"])

        fig["ratio"] = fig["w1_eps"] / fig["copy_eps"]
        if a.skip_two_workers:
            fig["w2_eps"] = fig["w2_seconds"] = fig["w2_speedup"] = float("nan")
            return fig

        # 2. two workers, same backlog under fresh tenant ids
        w2 = [f"{self.prefix}-r{run}-w2-{i}" for i in range(a.tenants)]
        load(self.client, w2, backlog)
        del backlog
        two = self.drain(2, w2, n, None)
        fig["w2_eps"], fig["w2_seconds"], fig["w2_stats"] = two["eps"], two["seconds"], two["workers"]
        self.log(f"run {run + 1}: two workers drained it in {two['seconds']:.2f}s = {two['eps']:,.0f} events/s "
                 f"(split {', '.join(str(sum(s['batches'])) for s in two['workers'])})")
        cleanup(self.r, self.admin, w2)
        fig["w2_speedup"] = fig["w2_eps"] / fig["w1_eps"]
        return fig

    # -- 5. small-batch latency ------------------------------------------------------------------------

    def small(self) -> dict[str, Any]:
        """``append_many`` of one conversation step (message + tool result + memory update) with durability
        ``projected``, one call at a time, one worker running: the time until the call returns."""
        a = self.args
        tenant = f"{self.prefix}-small"
        actor = {"agent_id": "support-bot-1", "model": "gpt-sim-1", "run_id": "small"}
        rng = random.Random(7)
        texts = TextPool(rng)

        def step(n: int) -> list[dict[str, Any]]:
            call_id = f"call_{n}"
            return [
                {"thread": "conv", "type": "message", "node": "planner", "actor": actor,
                 "payload": {"role": "assistant", "content": texts.pick(rng), "tool_calls": [call_id]}},
                {"thread": "conv", "type": "tool_result", "node": "tools", "actor": actor,
                 "payload": {"call_id": call_id, "tool": "search_orders", "output": {"status": "ok", "n": n}}},
                {"thread": "conv", "type": "memory_set", "node": "planner", "actor": actor,
                 "payload": {"path": ["customer", "last_tool"], "value": {"summary": texts.pick(rng)[:150]}}},
            ]

        workers = Workers(1, self.settings, self.options)
        workers.start()
        out: dict[str, Any] = {}
        try:
            self.client.append_many(tenant, step(0))  # the worker discovers the tenant (not timed)
            wait_drained(self.r, workers, [tenant], 3, timeout=a.timeout)
            for n in range(1, 21):  # warm-up: connections, prepared statements
                self.client.append_many(tenant, step(n), durability="projected")
            times: list[float] = []
            for n in range(a.small_steps):
                t0 = time.perf_counter()
                self.client.append_many(tenant, step(100 + n), durability="projected")
                times.append(time.perf_counter() - t0)
            times.sort()
            out = {"steps": len(times), "p50_ms": pct(times, 50) * 1000, "p90_ms": pct(times, 90) * 1000,
                   "p99_ms": pct(times, 99) * 1000, "max_ms": times[-1] * 1000 if times else float("nan")}
        finally:
            out["worker"] = workers.stop()
            cleanup(self.r, self.admin, [tenant])
        self.log(f"small: {out.get('steps', 0)} steps, append_many(projected) p50 {out.get('p50_ms', 0):.2f} ms, "
                 f"p99 {out.get('p99_ms', 0):.2f} ms, max {out.get('max_ms', 0):.1f} ms")
        return out

    # -- 4. end-to-end lag ---------------------------------------------------------------------------

    def lag(self) -> dict[str, Any]:
        a = self.args
        names = [f"{self.prefix}-lag-{i}" for i in range(a.tenants)]
        threads = [f"run-{j:03d}" for j in range(a.threads_per_tenant)]
        per_call = a.lag_batch
        calls_total = int(a.lag_rate * a.lag_seconds / per_call)
        # All drafts are built before the clock so the appender only appends.
        rng = random.Random(99)
        texts = TextPool(rng)
        steps = agent_steps(rng, texts)
        actor = {"agent_id": "support-bot-1", "model": "gpt-sim-1", "run_id": "lag"}
        calls: list[tuple[str, list[dict[str, Any]]]] = []
        for k in range(calls_total):
            visit, t = divmod(k, len(names))
            drafts = []
            for j in range(per_call):
                type_, payload, node = next(steps)
                drafts.append({"thread": threads[(visit * per_call + j) % len(threads)], "type": type_,
                               "payload": payload, "node": node, "actor": actor})
            calls.append((names[t], drafts))
        gc.collect()
        gc.freeze()  # the appender's timing should not include collections over these long-lived drafts

        workers = Workers(1, self.settings, self.options)
        workers.start()
        out: dict[str, Any] = {}
        try:
            # Warm-up, not measured: every tenant's stream exists and is known to the worker (it
            # discovers new tenants once a second), so the clock measures steady state, not discovery.
            for t in names:
                self.client.append_many(t, [{"thread": threads[0], "type": "node_enter",
                                             "payload": {"node": "planner"}, "node": "planner", "actor": actor}])
            wait_drained(self.r, workers, names, len(names), timeout=a.timeout)
            base = workers.done
            self.log(f"lag: worker caught up with {len(names):,} warm-up events; appending "
                     f"{a.lag_rate:,}/s for {a.lag_seconds}s in calls of {per_call}")

            outstanding: dict[tuple[str, str, int], float] = {}
            lags: list[float] = []
            sweeps: list[float] = []
            lock = threading.Lock()
            appending = threading.Event()
            appending.set()
            poller = redis.Redis.from_url(self.settings.redis_url or "")

            def sampler() -> None:
                # Polls only threads with a sampled event still outstanding, so the cost stays small.
                deadline: float | None = None
                while True:
                    with lock:
                        items = list(outstanding.items())
                    if not appending.is_set():
                        if not items:
                            return
                        deadline = deadline or time.perf_counter() + 60
                        if time.perf_counter() > deadline:
                            return
                    if not items:
                        time.sleep(0.001)
                        continue
                    by_tenant: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
                    for (t, th, seq), t_ret in items:
                        by_tenant[t].append((th, seq, t_ret))
                    pipe = poller.pipeline(transaction=False)
                    groups = list(by_tenant.items())
                    for t, lst in groups:
                        pipe.hmget(keys.projected(t), [th for th, _, _ in lst])
                    t_send = time.perf_counter()
                    replies = pipe.execute()
                    t_obs = time.perf_counter()  # upper bound of when the marker was seen: lag is not flattered
                    sweeps.append(t_obs - t_send)
                    seen = []
                    for (t, lst), vals in zip(groups, replies, strict=True):
                        for (th, seq, t_ret), v in zip(lst, vals, strict=True):
                            if v is not None and int(v) >= seq:
                                lags.append(t_obs - t_ret)
                                seen.append((t, th, seq))
                    with lock:
                        for k in seen:
                            outstanding.pop(k, None)
                    time.sleep(0.001)

            sampler_thread = threading.Thread(target=sampler, daemon=True)
            old_switch = sys.getswitchinterval()
            sys.setswitchinterval(0.0005)  # the sampler must not wait 5 ms for the GIL behind the appender
            sampler_thread.start()
            interval = per_call / a.lag_rate
            slip_max = 0.0
            t_start = time.perf_counter()
            for k, (tenant, drafts) in enumerate(calls):
                target = t_start + k * interval
                now = time.perf_counter()
                if now < target:
                    time.sleep(target - now)
                else:
                    slip_max = max(slip_max, now - target)
                evs = self.client.append_many(tenant, drafts)
                t_ret = time.perf_counter()
                last = evs[-1]  # one sample per call: the call's last event
                with lock:
                    outstanding[(tenant, last.thread, last.seq)] = t_ret
            t_end = time.perf_counter()
            appending.clear()
            sampler_thread.join(90)
            sys.setswitchinterval(old_switch)
            appended = calls_total * per_call
            wait_drained(self.r, workers, names, base + appended, timeout=a.timeout)
            lags.sort()
            out = {"appended": appended, "achieved_rate": appended / (t_end - t_start),
                   "append_seconds": t_end - t_start, "max_slip_ms": slip_max * 1000, "samples": len(lags),
                   "unseen": len(outstanding), "p50_ms": pct(lags, 50) * 1000, "p95_ms": pct(lags, 95) * 1000,
                   "p99_ms": pct(lags, 99) * 1000, "max_ms": (lags[-1] * 1000) if lags else float("nan"),
                   "sweep_p50_ms": pct(sorted(sweeps), 50) * 1000}
            poller.close()
        finally:
            out["worker"] = workers.stop()
            gc.unfreeze()
            cleanup(self.r, self.admin, names)
        self.log(f"lag: {out.get('samples', 0):,} samples, p50 {out.get('p50_ms', float('nan')):.0f} ms, "
                 f"p99 {out.get('p99_ms', float('nan')):.0f} ms at {out.get('achieved_rate', 0):,.0f} events/s")
        return out


def pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


# -- report -------------------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "[green]OK[/green]" if ok else "[red]MISS[/red]"


def split(stats: list[dict[str, Any]]) -> dict[str, float]:
    """Worker wall time by stage, as fractions (one worker: its own; several: summed over workers)."""
    s: dict[str, float] = defaultdict(float)
    wall = 0.0
    for w in stats:
        wall += w["wall"]
        for k, v in w["seconds"].items():
            s[k] += v
    if not wall:
        return {}
    decode, overlapped = s["decode"], s["meanwhile"] - s["parse_ahead"]
    in_waits = s["lock_wait_acks"] + s["meanwhile"]
    maintenance = s["check_tail"] + s["claim"] + s["trim"]
    return {
        "XREADGROUP + reply parsing, outside PostgreSQL waits":
            (s["read_and_project"] - (decode - overlapped) - s["write_batch"]
             - (s["_after_commit"] - s["lock_wait_acks"])) / wall,
        "decode + canonical bytes + row columns, alone": (decode - overlapped) / wall,
        "decode + canonical bytes + row columns, while PostgreSQL writes and commits": overlapped / wall,
        "write_batch (SQL, chain hashing, COPY, COMMIT; minus the work done in its waits)":
            (s["write_batch"] - in_waits) / wall,
        "XACK + projected marker (all)": s["_after_commit"] / wall,
        "  of which during the next batch's lock wait": s["lock_wait_acks"] / wall,
        "read-ahead reply parsed while PostgreSQL writes": s["parse_ahead"] / wall,
        "maintenance: trim / claim / check_tail": maintenance / wall,
        "tenant refresh": s["refresh_tenants"] / wall,
        "_detail_trim": s["trim"] / wall,
        "_detail_claim": s["claim"] / wall,
        "_detail_check_tail": s["check_tail"] / wall,
    }


def report(console: Console, runs: list[dict[str, Any]], med: dict[str, float], lag: dict[str, Any] | None,
           small: dict[str, Any] | None, title: str) -> None:
    t = Table(title=title)
    t.add_column("measurement")
    t.add_column("value", justify="right")
    t.add_column("target", justify="right")
    t.add_column("verdict")
    t.add_column("per run / detail")

    def each(k: str, fmt: str = "{:,.0f}") -> str:
        return " / ".join(fmt.format(f[k]) for f in runs)

    if runs:  # --runs 0: the lag measurement alone
        throughput_rows(t, runs, med, each)
    if lag:
        lag_rows(t, lag)
    if small and "p50_ms" in small:
        t.add_row("append_many(durability='projected'), 3-event step, p50", f"{small['p50_ms']:.2f} ms",
                  f"≤ {TARGET_SMALL_P50_MS:.0f} ms", verdict(small["p50_ms"] <= TARGET_SMALL_P50_MS),
                  f"{small['steps']} steps one at a time, 1 worker")
        t.add_row("append_many(durability='projected'), 3-event step, p99", f"{small['p99_ms']:.2f} ms",
                  f"≤ {TARGET_SMALL_P99_MS:.0f} ms", verdict(small["p99_ms"] <= TARGET_SMALL_P99_MS),
                  f"p90 {small['p90_ms']:.2f} ms, max {small['max_ms']:.1f} ms")
    console.print(t)


def throughput_rows(t: Table, runs: list[dict[str, Any]], med: dict[str, float], each: Callable[..., str]) -> None:
    w1 = med["w1_eps"]
    t.add_row("backlog drain, 1 worker process", f"{w1:,.0f} ev/s", f"≥ {TARGET_EPS:,.0f} ev/s",
              verdict(w1 >= TARGET_EPS), f"{each('w1_eps')}  ({each('w1_seconds', '{:.1f}')} s)")
    t.add_row("backlog drain, 2 worker processes", f"{med['w2_eps']:,.0f} ev/s", "", "",
              f"{each('w2_eps')}  ({each('w2_seconds', '{:.1f}')} s)")
    t.add_row("  2 workers / 1 worker", f"{med['w2_speedup']:.2f}×", "", "info", each("w2_speedup", "{:.2f}"))
    t.add_row("raw binary COPY, same rows & batches", f"{med['copy_eps']:,.0f} ev/s", "", "",
              f"{each('copy_eps')}  (batch {runs[0]['copy_batch']:,})")
    t.add_row("1 worker / raw COPY", f"{med['ratio']:.3f}×", f"≥ {TARGET_RATIO}×",
              verdict(med["ratio"] >= TARGET_RATIO), each("ratio", "{:.3f}"))
    batches = [b for f in runs for w in f["w1_stats"] for b in w["batches"]]
    if batches:
        t.add_row("  1-worker transactions / mean entries", f"{len(batches) / len(runs):,.0f} / "
                  f"{statistics.mean(batches):,.0f}", "", "info", "per run / per transaction")
    sp = split(runs[len(runs) // 2]["w1_stats"]) if runs else {}
    for k, v in sp.items():
        if not k.startswith("_"):
            t.add_row(f"  1-worker time: {k}", f"{v * 100:.1f} %", "", "info",
                      f"trim {sp['_detail_trim'] * 100:.1f} %, claim {sp['_detail_claim'] * 100:.1f} %, "
                      f"check_tail {sp['_detail_check_tail'] * 100:.1f} %" if k.startswith("maintenance") else "")
    mid = runs[len(runs) // 2]
    if mid.get("w1_cpu"):
        cpu, wall = mid["w1_cpu"], mid["w1_seconds"]
        t.add_row("  1-worker CPU seconds: " + " / ".join(cpu), " / ".join(f"{v:.1f}" for v in cpu.values()),
                  "", "info", "of wall: " + " / ".join(f"{v / wall * 100:.0f} %" for v in cpu.values()))
    t.add_row("  backlog load (append_many, not scored)", f"{med['load_seconds']:.1f} s", "", "info",
              f"{runs[0]['events']:,} events")


def lag_rows(t: Table, lag: dict[str, Any]) -> None:
    if "p99_ms" in lag:
        p99 = lag["p99_ms"]
        t.add_row("end-to-end lag p50", f"{lag['p50_ms']:,.0f} ms", "", "", "")
        t.add_row("end-to-end lag p95", f"{lag['p95_ms']:,.0f} ms", "", "", "")
        t.add_row("end-to-end lag p99", f"{p99:,.0f} ms", f"< {TARGET_P99_MS:.0f} ms", verdict(p99 < TARGET_P99_MS),
                  f"max {lag['max_ms']:,.0f} ms")
        t.add_row("  lag: achieved append rate", f"{lag['achieved_rate']:,.0f} ev/s", "", "info",
                  f"{lag['appended']:,} events in {lag['append_seconds']:.1f}s, max slip {lag['max_slip_ms']:.0f} ms")
        t.add_row("  lag: samples / never seen", f"{lag['samples']:,} / {lag['unseen']}", "", "info",
                  f"poll round trip p50 {lag['sweep_p50_ms']:.2f} ms")
        ws = lag.get("worker") or []
        if ws:
            sl = split(ws)
            t.add_row("  lag worker: maintenance share", f"{sl['maintenance: trim / claim / check_tail'] * 100:.1f} %",
                      "", "info", f"trim {sl['_detail_trim'] * 100:.1f} %")


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    # Ratios are computed per run and their median taken, so a ratio pairs numbers measured together.
    names = ("w1_eps", "w2_eps", "copy_eps", "ratio", "w2_speedup", "load_seconds")
    return {k: statistics.median(f[k] for f in runs) for k in names}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="backlog events per run")
    ap.add_argument("--tenants", type=int, default=5_000)
    ap.add_argument("--threads-per-tenant", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3, help="repetitions; the median of each throughput is reported")
    ap.add_argument("--skip-lag", action="store_true", help="skip the end-to-end lag measurement")
    ap.add_argument("--lag-rate", type=int, default=5_000, help="events/s appended during the lag measurement")
    ap.add_argument("--lag-seconds", type=float, default=20.0)
    ap.add_argument("--lag-batch", type=int, default=5, help="events per append_many call during the lag run")
    ap.add_argument("--small-steps", type=int, default=500,
                    help="conversation steps (3 events) appended with durability 'projected' one call at a time, "
                         "timed (0: skip)")
    ap.add_argument("--skip-two-workers", action="store_true", help="quick iterations: one worker and COPY only")
    ap.add_argument("--batch-size", type=int, default=0, help="WorkerOptions.batch_size (default: the worker's)")
    ap.add_argument("--streams-per-read", type=int, default=0, help="WorkerOptions.streams_per_read")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a drain is declared stuck")
    ap.add_argument("--profile", type=Path, help="cProfile the one-worker process; .prof files go in this folder")
    ap.add_argument("--json", type=Path, help="write the raw per-run numbers and medians here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    console = Console(width=None if sys.stdout.isatty() else 160)
    tmp = tempfile.mkdtemp(prefix="bench-project-")
    base = Settings.from_env(data_dir=Path(tmp))
    stack: EmbeddedStack | None = None
    started: tuple[str, ...] = tuple(s for s in ("redis", "postgres") if s in base.missing_urls)
    try:
        settings = base
        if started:
            stack = EmbeddedStack(tmp)
            emb = stack.up(started)
            settings = base.with_(redis_url=base.redis_url or emb.redis_url,
                                  database_url=base.database_url or emb.database_url)
        db.migrate(settings)
        bench = Bench(settings, args, console)
        try:
            rv, pv = server_versions(bench.r, bench.admin)
            cpus = os.cpu_count() or 0
            where = f"embedded {', '.join(started)}" if started else "external"
            console.print(f"servers: {rv}, {pv} ({where}); {cpus} CPUs; load average {os.getloadavg()[0]:.2f}; "
                          f"Python {sys.version.split()[0]}, psycopg {psycopg.__version__} "
                          f"({psycopg.pq.__impl__}), redis-py {redis.__version__}", highlight=False)
            console.print(f"worker options: {asdict(bench.options)}; projector batch on this backlog per "
                          f"worker.py's formula: {bench.projector_batch(args.tenants):,} entries", highlight=False)
            t_all = time.perf_counter()
            runs: list[dict[str, Any]] = []
            for i in range(args.runs):
                runs.append(bench.run(i))
            med = medians(runs) if runs else {}
            lag = None if args.skip_lag else bench.lag()
            small = bench.small() if args.small_steps else None
            title = (f"projector benchmark: median of {args.runs} run(s), {args.events:,} events over "
                     f"{args.tenants:,} tenants × {args.threads_per_tenant} threads | {rv}, {pv}, {cpus} CPUs")
            report(console, runs, med, lag, small, title)
            console.print(f"total {time.perf_counter() - t_all:.0f}s; load average now {os.getloadavg()[0]:.2f}",
                          highlight=False)
            if args.json:
                args.json.write_text(json.dumps({
                    "redis": rv, "postgres": pv, "cpu_count": cpus, "embedded": list(started),
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "worker_options": asdict(bench.options), "median": med, "runs": runs, "lag": lag,
                    "small": small,
                }, indent=2, default=str))
        finally:
            bench.close()
    finally:
        if stack is not None:
            stack.down(started)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
