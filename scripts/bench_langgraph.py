#!/usr/bin/env python
"""Benchmark the LangGraph checkpointers side by side: JournalSaver vs LangGraph's PostgresSaver, one run.

Both savers checkpoint the same small graph on the same servers (the embedded Valkey + PostgreSQL
started here, or ``--database-url``/``--redis-url`` … via the usual settings): one ``invoke`` of
``--steps`` supersteps, each a conversation agent step: one AI message with a tool call, its tool
result (``add_messages``) and a working-memory update (16 keys, one set per step). The text is
drawn from a small vocabulary (seeded), so it compresses about as real text does. Reported, for each saver:

* the saver's own CPU per superstep in the ``async`` run (thread CPU time of ``put`` and ``put_writes``);
* per-superstep checkpoint overhead: (ms per superstep with the saver − without a checkpointer),
  for LangGraph's ``durability="sync"`` (the put is waited for: JournalSaver appends with
  ``projected`` as the mode maps, a projector process running throughout, and again with the saver's
  ``durability="memory"``; PostgresSaver commits) and ``"async"`` (JournalSaver: ``memory``);
* ``put`` p50 at step 1 and at the last step (the median of the 10 puts around each, sync runs);
* each of those from ``--invokes`` invokes per saver and mode (default 3), their median: one invoke of
  500 steps moved by a third between runs on a shared machine;
* bytes stored per step at the last step: PostgresSaver's rows (``checkpoints``,
  ``checkpoint_blobs``, ``checkpoint_writes``); the journal's ``journal.events`` rows of the
  thread after the projector drained it (body + JSONB copy), the projector's ``journal.snapshots``
  of the thread (``pg_column_size`` of each row, TOAST-compressed as stored; indexes not counted,
  nor the Redis tail, trimmed once projected), and the tenant's offloaded payloads in object
  storage (S3 objects under ``{tenant}/``). The projector folds with ``JOURNAL_REDUCERS=replayer.langgraph_fold``,
  as the README tells LangGraph users to run it;
* the journal's own client on the same conversation (no LangGraph): each step appended as native
  events (``message`` with its tool call, ``tool_call``, ``tool_result``, ``memory_set``: the same
  text) with ``append_many(durability="projected")`` (p50 / p99 while the projector runs), then
  ``resume`` of the latest state (warm: the steady state of a service), and its bytes per step in
  PostgreSQL counted as for the saver;
* ``get_tuple`` of the latest checkpoint and of the one at the middle step; ``list()`` of the whole
  thread. JournalSaver warm (its in-process index, the steady state of a running service) and
  cold (a new saver folding the thread from PostgreSQL). Medians of ``--runs``;
* with ``--long N``, JournalSaver alone on one thread of N supersteps (PostgresSaver's puts grow with
  the thread, so N = 5,000 would take it hours): its ``put`` p50 (wall and thread CPU) at steps 1-10,
  around the middle and at the last 10, LangGraph's ``"sync"`` with the saver at ``memory``, and the
  no-checkpointer ms per superstep over the same N steps.

    python scripts/bench_langgraph.py                       # 500 steps, embedded stack in a temp dir
    python scripts/bench_langgraph.py --steps 500 --runs 7 --json out.json
    python scripts/bench_langgraph.py --long 5000        # also: put latency along a 5,000-step thread

The machine may be shared: compare the ratios of one run, and several runs' medians. The script
never asserts: it reports and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypedDict

import psycopg
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from rich.console import Console
from rich.table import Table

from journal import logs
from journal.blobs import s3_client
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.events import Draft
from projections import db
from projections.worker import Projector, WorkerOptions
from replayer.langgraph import JournalSaver

try:
    from langgraph.checkpoint.postgres import PostgresSaver
except ImportError:  # pragma: no cover - the dev extra installs it
    PostgresSaver = None


#: Words for the agent's text: real model output compresses about 2-3×, a repeated phrase 50×, which
#: would flatter a saver that stores whole message lists (PostgreSQL compresses them).
WORDS = ["order", "customer", "shipped", "warehouse", "refund", "invoice", "delayed", "tracking", "carrier",
         "address", "parcel", "confirmed", "payment", "pending", "escalate", "policy", "exception", "weekend",
         "express", "standard", "return", "label", "inventory", "backorder", "replacement", "discount",
         "apology", "estimate", "courier", "signature", "damaged"]


def text(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)) + f" #{seed}"


class State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]
    memory: dict[str, Any]
    n: int


def graph(saver: BaseCheckpointSaver[Any] | None, steps: int) -> Any:
    def agent(state: State) -> dict[str, Any]:
        n = state["n"]
        call = {"id": f"call-{n}", "name": "search_orders", "args": {"order": n}}
        return {
            "messages": [AIMessage(content=text(2 * n, 24), id=f"ai-{n}", tool_calls=[call]),
                         ToolMessage(content=text(2 * n + 1, 20), tool_call_id=f"call-{n}", id=f"tool-{n}")],
            "memory": {**state["memory"], f"k{n % 16}": {"step": n, "note": text(-n, 6)}},
            "n": n + 1,
        }

    g = StateGraph(State)
    g.add_node("agent", agent)
    g.add_edge(START, "agent")
    g.add_conditional_edges("agent", lambda s: "agent" if s["n"] < steps else END, ["agent", END])
    return g.compile(checkpointer=saver)


def first_input() -> dict[str, Any]:
    return {"messages": [HumanMessage(content="Where is my order?", id="q-0")], "memory": {}, "n": 0}


def invoke_ms(saver: BaseCheckpointSaver[Any] | None, thread: str, steps: int, durability: str) -> float:
    config: RunnableConfig = {"configurable": {"thread_id": thread}, "recursion_limit": steps * 2 + 10}
    g = graph(saver, steps)
    t0 = time.perf_counter()
    if saver is None:  # durability means nothing without a checkpointer (and "sync" fails there in LangGraph 1.2)
        g.invoke(first_input(), config)
    else:
        g.invoke(first_input(), config, durability=durability)  # type: ignore[arg-type]
    return (time.perf_counter() - t0) * 1000 / steps


@contextmanager
def timed(saver: BaseCheckpointSaver[Any], names: tuple[str, ...], clock: Callable[[], float],
          record: Callable[[float], None]) -> Iterator[None]:
    """Each call of the instance's methods ``names`` timed with ``clock`` and its ms given to ``record``, for the
    block; then the methods are restored (nestable)."""
    before = {name: saver.__dict__.get(name) for name in names}

    def timing(inner: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                record((clock() - t0) * 1000)
        return call

    for name in names:
        setattr(saver, name, timing(getattr(saver, name)))
    try:
        yield
    finally:
        for name, method in before.items():
            if method is None:
                delattr(saver, name)
            else:
                setattr(saver, name, method)


@contextmanager
def timed_puts(saver: BaseCheckpointSaver[Any]) -> Iterator[list[float]]:
    """Time every ``put`` the graph makes (ms, in order)."""
    times: list[float] = []
    with timed(saver, ("put",), time.perf_counter, times.append):
        yield times


@contextmanager
def cpu_of(saver: BaseCheckpointSaver[Any]) -> Iterator[list[float]]:
    """The thread CPU time (ms) the saver's ``put`` and ``put_writes`` take, summed into the list's one item.

    CPU, not wall time: in ``async`` mode they run beside the graph, and what they cost it is the
    CPU they hold (the GIL), not the round trips they wait for.
    """
    total = [0.0]
    lock = threading.Lock()

    def add(ms: float) -> None:
        with lock:
            total[0] += ms

    with timed(saver, ("put", "put_writes"), time.thread_time, add):
        yield total


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up: connections, caches
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def native_step(thread: str, n: int) -> list[Draft]:
    """One step of the same conversation as the graph's, as the journal's own events."""
    call = f"call-{n}"
    return [Draft(thread, "message", {"role": "assistant", "content": text(2 * n, 24), "tool_calls": [call]},
                  node="agent"),
            Draft(thread, "tool_call", {"call_id": call, "tool": "search_orders", "args": {"order": n}}, node="tools"),
            Draft(thread, "tool_result", {"call_id": call, "tool": "search_orders", "output": text(2 * n + 1, 20)},
                  node="tools"),
            Draft(thread, "memory_set", {"path": [f"k{n % 16}"], "value": {"step": n, "note": text(-n, 6)}})]


def measure_client(client: JournalClient, tenant: str, steps: int, runs: int) -> dict[str, Any]:
    """The journal's own client on the graph's conversation: projected appends, then warm resumes."""
    thread = f"c-{uuid.uuid4().hex[:10]}"
    client.append_many(tenant, native_step(thread, 0), durability="projected")  # warm-up: connections, the tenant
    lat = []
    for n in range(1, steps):
        t0 = time.perf_counter()
        client.append_many(tenant, native_step(thread, n), durability="projected")
        lat.append((time.perf_counter() - t0) * 1000)
    q = statistics.quantiles(lat, n=100)
    state = client.resume(tenant, thread).state
    assert len(state.messages) == steps, len(state.messages)
    return {"thread": thread, "append_projected_p50_ms": q[49], "append_projected_p99_ms": q[98],
            "resume_latest_ms": median_ms(lambda: client.resume(tenant, thread), max(runs, 20))}


def row_bytes(conn: Any, table: str, where: str, params: tuple[Any, ...]) -> int:
    row = conn.execute(f"SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {table} t WHERE {where}", params).fetchone()
    return int(row[0])


def s3_bytes(settings: Any, prefix: str) -> int:
    """The size of every object under ``prefix`` in the journal's bucket (offloaded payloads, archives)."""
    total = 0
    for page in s3_client(settings).get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket,
                                                                              Prefix=prefix):
        total += sum(o["Size"] for o in page.get("Contents", []))
    return total


def snapshot_bytes(conn: Any, tenant: str, thread: str) -> int:
    """The thread's snapshot rows and the sealed chunks they reference (``pg_column_size`` of each row)."""
    where = "tenant_id = %s AND thread_id = %s"
    return (row_bytes(conn, "journal.snapshots", where, (tenant, thread))
            + row_bytes(conn, "journal.snapshot_chunks", where, (tenant, thread)))


def timed_invokes(saver: BaseCheckpointSaver[Any], thread: str, steps: int, durability: str,
                  invokes: int) -> tuple[float, float, float, float]:
    """``invokes`` invokes (the first on ``thread``, the others on threads of their own): the medians of their
    ms per superstep, of their put p50 at steps 1-10 and at the last 10, and of the saver's thread CPU (ms per
    superstep; measured in every mode, reported for ``async``)."""
    ms, first, last, cpu_ms = [], [], [], []
    for i in range(invokes):
        with timed_puts(saver) as puts, cpu_of(saver) as cpu:
            ms.append(invoke_ms(saver, thread if i == 0 else f"{thread}-{i}", steps, durability))
        first.append(statistics.median(puts[:10]))
        last.append(statistics.median(puts[-10:]))
        cpu_ms.append(cpu[0] / steps)
    return (statistics.median(ms), statistics.median(first), statistics.median(last), statistics.median(cpu_ms))


def measure_long(saver: JournalSaver, steps: int) -> dict[str, Any]:
    """JournalSaver's put along one thread of ``steps`` supersteps (LangGraph's "sync", the saver at ``memory``)."""
    saver.durability = "memory"
    wall: list[float] = []
    cpu: list[float] = []
    try:
        with timed(saver, ("put",), time.perf_counter, wall.append), \
                timed(saver, ("put",), time.thread_time, cpu.append):
            ms = invoke_ms(saver, f"long-{uuid.uuid4().hex[:8]}", steps, "sync")
    finally:
        saver.durability = None
    mid = len(wall) // 2
    out: dict[str, Any] = {"steps": steps, "ms_per_step": ms, "baseline_ms_per_step": invoke_ms(None, "x", steps, "")}
    for name, window in (("first", slice(0, 10)), ("middle", slice(mid - 5, mid + 5)), ("last", slice(-10, None))):
        out[f"put_p50_ms_{name}"] = statistics.median(wall[window])
        out[f"put_cpu_p50_ms_{name}"] = statistics.median(cpu[window])
    return out


def measure(saver: BaseCheckpointSaver[Any], fresh: Callable[[], BaseCheckpointSaver[Any]] | None, steps: int,
            runs: int, baseline: dict[str, float], invokes: int) -> dict[str, Any]:
    """The figures of one saver (``fresh`` makes a new one for the cold reads, if that means something)."""
    out: dict[str, Any] = {}
    thread = f"t-{uuid.uuid4().hex[:10]}"
    out["ms_per_step_sync"], out["put_p50_ms_first"], out["put_p50_ms_last"], _ = timed_invokes(
        saver, thread, steps, "sync", invokes)
    out["overhead_ms_per_step_sync"] = out["ms_per_step_sync"] - baseline["sync"]
    if isinstance(saver, JournalSaver):
        # LangGraph's "sync" with the journal's "memory" level (the saver's override): the run waits for
        # Redis to have each checkpoint, not for the AOF fsync (embedded Valkey: appendfsync everysec).
        saver.durability = "memory"
        out["ms_per_step_sync_memory"], out["put_p50_ms_first_memory"], out["put_p50_ms_last_memory"], _ = \
            timed_invokes(saver, f"{thread}-m", steps, "sync", invokes)
        saver.durability = None
        out["overhead_ms_per_step_sync_memory"] = out["ms_per_step_sync_memory"] - baseline["sync"]
    out["ms_per_step_async"], _, _, out["saver_cpu_ms_per_step_async"] = timed_invokes(
        saver, f"{thread}-a", steps, "async", invokes)
    out["overhead_ms_per_step_async"] = out["ms_per_step_async"] - baseline["async"]
    config: RunnableConfig = {"configurable": {"thread_id": thread}}
    history = list(saver.list(config))
    out["checkpoints"] = len(history)
    # The checkpoint written after the middle step (list is newest first; step numbers are the loop's).
    middle = next(t for t in history if t.metadata.get("step") == steps // 2)
    at_middle: RunnableConfig = {"configurable": {**middle.config["configurable"]}}
    out["get_tuple_latest_ms"] = median_ms(lambda: saver.get_tuple(config), runs)
    out["get_tuple_middle_ms"] = median_ms(lambda: saver.get_tuple(at_middle), runs)
    out["list_all_ms"] = median_ms(lambda: list(saver.list(config)), runs)
    if fresh is not None:
        out["cold_get_tuple_latest_ms"] = median_ms(lambda: fresh().get_tuple(config), runs)
        out["cold_list_all_ms"] = median_ms(lambda: list(fresh().list(config)), runs)
    out["thread"] = thread
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--invokes", type=int, default=3, help="invokes per saver and mode (medians)")
    ap.add_argument("--long", type=int, default=0, metavar="N",
                    help="also time JournalSaver's puts along one thread of N supersteps (alone; e.g. 5000)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    logs.configure()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="bench-langgraph-"))
    stack = EmbeddedStack(tmp)
    try:
        # The projector folds LangGraph's events with their reducers, as the README says to run it.
        settings = dataclasses.replace(stack.up(("redis", "postgres", "s3")), reducers="replayer.langgraph_fold")
        db.migrate(settings)
        results: dict[str, Any] = {"steps": args.steps, "runs": args.runs, "invokes": args.invokes}
        with console.status("no checkpointer (baseline) …"):
            none = statistics.median(invoke_ms(None, "x", args.steps, "") for _ in range(3))
            baseline = {"sync": none, "async": none}
        results["baseline_ms_per_step"] = baseline
        tenant = f"bench-{uuid.uuid4().hex[:8]}"
        with JournalClient.from_settings(settings) as client:
            # A projector process runs throughout, as in service: LangGraph's "sync" maps to "projected",
            # which waits for its commit (and PostgresSaver's figures include PostgreSQL's work too).
            env = {**os.environ, **dict(line.removeprefix("export ").split("=", 1) for line in settings.env_lines()),
                   "JOURNAL_REDUCERS": settings.reducers}
            worker = subprocess.Popen([sys.executable, "-m", "journal.cli", "project", "--no-migrate"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            try:
                with console.status("JournalSaver …"):
                    journal = measure(JournalSaver(client, tenant=tenant),
                                      lambda: JournalSaver(client, tenant=tenant), args.steps, args.runs, baseline,
                                      args.invokes)
                with console.status("the journal's own client, native events …"):
                    native = measure_client(client, tenant, args.steps, args.runs)
                if args.long:
                    with console.status(f"JournalSaver along one thread of {args.long} supersteps …"):
                        results["long"] = measure_long(JournalSaver(client, tenant=tenant), args.long)
            finally:
                worker.terminate()
                worker.wait(30)
            with console.status("projecting the journal into PostgreSQL …"):
                p = Projector(settings, WorkerOptions())
                try:
                    p.drain(tenants=[tenant])
                finally:
                    p.close()
                # Cold reads again, now from PostgreSQL (the Redis tail trimmed as a long-lived thread would be).
                from journal import keys
                client.redis.xtrim(keys.stream(tenant), maxlen=0, approximate=False)
                config: RunnableConfig = {"configurable": {"thread_id": journal["thread"]}}
                journal["cold_pg_get_tuple_latest_ms"] = median_ms(
                    lambda: JournalSaver(client, tenant=tenant).get_tuple(config), args.runs)
                journal["cold_pg_list_all_ms"] = median_ms(
                    lambda: list(JournalSaver(client, tenant=tenant).list(config)), args.runs)
        with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
            where = "tenant_id = %s AND thread_id = %s"
            journal["pg_event_bytes"] = row_bytes(conn, "journal.events", where, (tenant, journal["thread"]))
            journal["pg_snapshot_bytes"] = snapshot_bytes(conn, tenant, journal["thread"])
            native["pg_event_bytes"] = row_bytes(conn, "journal.events", where, (tenant, native["thread"]))
            native["pg_snapshot_bytes"] = snapshot_bytes(conn, tenant, native["thread"])
        native["bytes_per_step"] = (native["pg_event_bytes"] + native["pg_snapshot_bytes"]) / args.steps
        results["native"] = native
        journal["s3_bytes"] = s3_bytes(settings, f"{tenant}/")
        journal["event_bytes_per_step"] = journal["pg_event_bytes"] / args.steps
        journal["bytes_per_step_with_snapshots"] = (
            journal["pg_event_bytes"] + journal["pg_snapshot_bytes"]) / args.steps
        journal["bytes_per_step_all"] = (
            journal["pg_event_bytes"] + journal["pg_snapshot_bytes"] + journal["s3_bytes"]) / args.steps
        results["journal"] = journal
        if PostgresSaver is None:
            results["postgres"] = "langgraph-checkpoint-postgres is not installed (pip install -e '.[dev]')"
        else:
            with PostgresSaver.from_conn_string(str(settings.database_url)) as pg_saver:
                pg_saver.setup()
                with console.status("PostgresSaver …"):
                    pgr = measure(pg_saver, None, args.steps, args.runs, baseline, args.invokes)
                with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
                    pgr["pg_bytes"] = sum(row_bytes(conn, t, "thread_id = %s", (pgr["thread"],))
                                          for t in ("checkpoints", "checkpoint_blobs", "checkpoint_writes"))
                pgr["bytes_per_step"] = pgr["pg_bytes"] / args.steps
            results["postgres"] = pgr
        report(console, results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)


def report(console: Console, r: dict[str, Any]) -> None:
    j, p = r["journal"], r["postgres"]
    have_pg = isinstance(p, dict)
    table = Table(title=f"LangGraph checkpointers, {r['steps']} supersteps of a conversation agent "
                        f"(reads: medians of {r['runs']}; invokes: of {r['invokes']}; no checkpointer: "
                        f"{r['baseline_ms_per_step']['sync']:.2f} ms/step)")
    for col in ("measure", "JournalSaver", "PostgresSaver", "PostgresSaver / Journal"):
        table.add_column(col, justify="left" if col == "measure" else "right")

    def row(name: str, ours: float, theirs: float | None, unit: str = "ms") -> None:
        fmt = (lambda v: f"{v:,.0f} B") if unit == "B" else (lambda v: f"{v:.2f} ms")
        ratio = f"{theirs / ours:.1f}×" if theirs is not None and ours > 0 else "–"
        table.add_row(name, fmt(ours), fmt(theirs) if theirs is not None else "–", ratio)

    def their(key: str) -> float | None:
        return p[key] if have_pg else None

    row("checkpoint overhead / superstep (sync; journal projected)", j["overhead_ms_per_step_sync"],
        their("overhead_ms_per_step_sync"))
    row("checkpoint overhead / superstep (sync; journal memory)", j["overhead_ms_per_step_sync_memory"],
        their("overhead_ms_per_step_sync"))
    row("checkpoint overhead / superstep (async)", j["overhead_ms_per_step_async"],
        their("overhead_ms_per_step_async"))
    row("saver CPU / superstep (async; put + put_writes, thread CPU)", j["saver_cpu_ms_per_step_async"],
        their("saver_cpu_ms_per_step_async"))
    row("put p50, steps 1-10 (sync; journal projected)", j["put_p50_ms_first"], their("put_p50_ms_first"))
    row(f"put p50, last 10 steps (to {r['steps']}; journal projected)", j["put_p50_ms_last"], their("put_p50_ms_last"))
    row("put p50, steps 1-10 (sync; journal memory)", j["put_p50_ms_first_memory"], their("put_p50_ms_first"))
    row(f"put p50, last 10 steps (to {r['steps']}; journal memory)", j["put_p50_ms_last_memory"],
        their("put_p50_ms_last"))
    row("bytes / step in PostgreSQL (events | checkpoint rows)", j["event_bytes_per_step"], their("bytes_per_step"),
        "B")
    row("bytes / step incl. the projector's snapshots", j["bytes_per_step_with_snapshots"], their("bytes_per_step"),
        "B")
    row("bytes / step incl. snapshots and S3 objects", j["bytes_per_step_all"], their("bytes_per_step"), "B")
    row("get_tuple latest (warm)", j["get_tuple_latest_ms"], their("get_tuple_latest_ms"))
    row(f"get_tuple at step {r['steps'] // 2} (warm)", j["get_tuple_middle_ms"], their("get_tuple_middle_ms"))
    row(f"list() of {j['checkpoints']} (warm)", j["list_all_ms"], their("list_all_ms"))
    row("get_tuple latest, cold (new saver, PostgreSQL)", j["cold_pg_get_tuple_latest_ms"],
        their("get_tuple_latest_ms"))
    row(f"list() of {j['checkpoints']}, cold (new saver, PostgreSQL)", j["cold_pg_list_all_ms"], their("list_all_ms"))
    console.print(table)
    n = r["native"]
    native = Table(title="The journal's own client on the same conversation (native events, 4 per step)")
    for col in ("measure", "journal client", "target"):
        native.add_column(col, justify="left" if col == "measure" else "right")
    native.add_row("append_many p50 / p99, durability projected", f"{n['append_projected_p50_ms']:.2f} / "
                   f"{n['append_projected_p99_ms']:.2f} ms", "≤ 2 / ≤ 10 ms")
    native.add_row(f"resume latest p50 at {r['steps']} steps (warm)", f"{n['resume_latest_ms']:.2f} ms", "≤ 2 ms")
    ratio = f" ({p['bytes_per_step'] / n['bytes_per_step']:.1f}× under PostgresSaver)" if have_pg else ""
    native.add_row("bytes / step in PostgreSQL (events + snapshots)", f"{n['bytes_per_step']:,.0f} B{ratio}", "≥ 10×")
    console.print(native)
    if "long" in r:
        lg = r["long"]
        long = Table(title=f"JournalSaver along one thread of {lg['steps']:,} supersteps (\"sync\", saver at memory; "
                           f"{lg['ms_per_step']:.2f} ms/step, no checkpointer {lg['baseline_ms_per_step']:.2f})")
        for col in ("put p50", "steps 1-10", f"around step {lg['steps'] // 2:,}", f"last 10 (to {lg['steps']:,})"):
            long.add_column(col, justify="left" if col == "put p50" else "right")
        for label, key in (("wall", "put_p50_ms"), ("thread CPU", "put_cpu_p50_ms")):
            long.add_row(label, *(f"{lg[f'{key}_{w}']:.2f} ms" for w in ("first", "middle", "last")))
        console.print(long)
    if not have_pg:
        console.print(str(p))


if __name__ == "__main__":
    main()
