#!/usr/bin/env python
"""Benchmark replay: latest and mid-history state of 1,000 / 10,000 / 100,000-event threads,
with snapshots (every 100 events) and without (fold from seq 1), plus LangGraph's
``PostgresSaver.get_tuple`` for an older checkpoint of a 500-step thread for comparison.

    python scripts/bench_replay.py                          # starts its own embedded stack in a temp dir
    python scripts/bench_replay.py --sizes 1000,10000 --workload conversation --runs 7

Workloads (``--workload``):

* ``memory`` (default): an agent's working memory — ``memory_set`` over 64 keys with node
  enter/exit markers every 50 steps, so the *state* stays a bounded size however long the
  history grows. This isolates what snapshots buy: the cost of reaching a seq.
* ``conversation``: message → tool_call → tool_result → memory_set cycles. The reducer keeps
  every message and call, so the state itself grows with history and decoding a snapshot
  costs in proportion to the state (as LangGraph's checkpoint blobs do).

Every figure is the MEDIAN of ``--runs`` timed runs after one warm-up. The LangGraph row needs
``pip install langgraph-checkpoint-postgres`` (not a dependency of agent-journal); without it the
row is skipped with a note. The script never asserts: it reports and exits 0.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from journal import logs
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.events import Draft
from journal.settings import Settings
from projections import db
from projections.worker import Projector, WorkerOptions
from replayer.replay import Replayer

console = Console()
BATCH = 500
LANGGRAPH_STEPS = 500


def drafts(thread: str, start: int, n: int, workload: str) -> list[Draft]:
    """Events ``start+1..start+n`` of the benchmark thread (deterministic in the seq)."""
    out: list[Draft] = []
    for seq in range(start + 1, start + n + 1):
        if workload == "memory":
            if seq % 50 == 1:
                out.append(Draft(thread, "node_enter", {"node": "work"}, node="work"))
            elif seq % 50 == 0:
                out.append(Draft(thread, "node_exit", {"node": "work"}, node="work"))
            else:
                out.append(Draft(thread, "memory_set", {"path": ["scratch", f"k{seq % 64}"],
                                                        "value": {"step": seq, "note": f"observation {seq}"}}))
        else:
            i, kind = divmod(seq - 1, 4)
            cid = f"call_{i}"
            if kind == 0:
                out.append(Draft(thread, "message", {"role": "assistant", "content": f"Step {i}: let me check the "
                                                     "order history before deciding.", "tool_calls": [cid]}))
            elif kind == 1:
                out.append(Draft(thread, "tool_call", {"call_id": cid, "tool": "search_orders",
                                                       "args": {"order": i}}, node="tools"))
            elif kind == 2:
                out.append(Draft(thread, "tool_result", {"call_id": cid, "tool": "search_orders",
                                                         "output": {"rows": i % 20, "status": "ok"}}, node="tools"))
            else:
                out.append(Draft(thread, "memory_set", {"path": ["customer", "last_order"], "value": i}))
    return out


def build(settings: Settings, client: JournalClient, tenant: str, thread: str, n: int, workload: str) -> float:
    """Append ``n`` events to one thread in batches of 500 and project them; returns seconds."""
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task(f"appending {n:,} events", total=n)
        for start in range(0, n, BATCH):
            client.append_many(tenant, drafts(thread, start, min(BATCH, n - start), workload))
            progress.advance(task, min(BATCH, n - start))
    with console.status(f"projecting {n:,} events (snapshot every {settings.snapshot_every}) …"):
        p = Projector(settings, WorkerOptions(batch_size=5000))
        p.drain(tenants=[tenant], timeout=3600)
        p.close()
    return time.perf_counter() - t0


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up: connection, plan cache, page cache
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def bench_langgraph(database_url: str, runs: int) -> tuple[float, float, int] | str:
    """(get_tuple of an older checkpoint ms, of the latest ms, bytes of the older state) or a note why skipped."""
    try:
        from langgraph.checkpoint.base import empty_checkpoint
        from langgraph.checkpoint.postgres import PostgresSaver
    except ImportError:
        return "langgraph-checkpoint-postgres is not installed (pip install langgraph-checkpoint-postgres); skipped"
    thread = f"lg-{uuid.uuid4().hex[:8]}"
    with PostgresSaver.from_conn_string(database_url) as saver:
        saver.setup()
        config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        messages: list[dict[str, Any]] = []
        memory: dict[str, Any] = {}
        ids: list[str] = []
        with console.status(f"LangGraph: writing {LANGGRAPH_STEPS} checkpoints with growing message state …"):
            for step in range(1, LANGGRAPH_STEPS + 1):
                # A realistic agent step: one more message, the working memory updated, every channel versioned.
                messages.append({"type": "ai" if step % 2 else "human", "id": f"m{step}",
                                 "content": f"Step {step}: let me check the order history before deciding.",
                                 "tool_calls": [{"id": f"call_{step}", "name": "search_orders",
                                                 "args": {"order": step}}] if step % 2 else []})
                memory[f"k{step % 16}"] = {"step": step}
                ck = empty_checkpoint()
                ck["channel_values"] = {"messages": list(messages), "memory": dict(memory), "step": step}
                ck["channel_versions"] = {"messages": step, "memory": step, "step": step}
                config = saver.put(config, ck, {"source": "loop", "step": step, "parents": {}},  # type: ignore[arg-type]
                                   {"messages": step, "memory": step, "step": step})
                ids.append(config["configurable"]["checkpoint_id"])
        older = {"configurable": {"thread_id": thread, "checkpoint_ns": "", "checkpoint_id": ids[len(ids) // 2 - 1]}}
        latest = {"configurable": {"thread_id": thread, "checkpoint_ns": "", "checkpoint_id": ids[-1]}}
        got = saver.get_tuple(older)  # type: ignore[arg-type]
        assert got is not None and len(got.checkpoint["channel_values"]["messages"]) == LANGGRAPH_STEPS // 2
        older_ms = median_ms(lambda: saver.get_tuple(older), runs)  # type: ignore[arg-type]
        latest_ms = median_ms(lambda: saver.get_tuple(latest), runs)  # type: ignore[arg-type]
        row = saver.conn.execute("SELECT coalesce(sum(octet_length(blob)), 0) AS n FROM checkpoint_blobs "
                                 "WHERE thread_id = %s", (thread,)).fetchone()
        return older_ms, latest_ms, int(row["n"])  # the saver's connection returns dict rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="thread lengths (comma-separated)")
    ap.add_argument("--workload", choices=("memory", "conversation"), default="memory")
    ap.add_argument("--runs", type=int, default=7, help="timed runs per figure (median reported)")
    ap.add_argument("--slow-runs", type=int, default=3, help="timed runs for folds from seq 1 over 50,000+ events")
    ap.add_argument("--snapshot-every", type=int, default=100)
    ap.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    logs.configure("warning")  # the projector's info lines would interleave with the progress bars

    tmp = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    stack = EmbeddedStack(tmp)
    try:
        with console.status("starting embedded Valkey, PostgreSQL and S3 …"):
            settings = stack.up(("redis", "postgres", "s3")).with_(snapshot_every=args.snapshot_every)
            db.migrate(settings)
        assert settings.database_url
        tenant = f"bench-{uuid.uuid4().hex[:6]}"
        table = Table(title=f"replay latency, median of {args.runs} runs (workload: {args.workload}; "
                            f"snapshot every {args.snapshot_every})")
        for col in ("thread", "target", "with snapshots", "without (fold from 1)", "speed-up"):
            table.add_column(col, justify="left" if col in ("thread", "target") else "right")
        flat: dict[int, float] = {}
        with JournalClient.from_settings(settings) as client, Replayer.from_settings(settings) as r:
            for n in sizes:
                thread = f"t{n}"
                secs = build(settings, client, tenant, thread, n, args.workload)
                console.print(f"built {n:,}-event thread in {secs:.1f}s")
                slow_runs = args.slow_runs if n >= 50_000 else args.runs
                for label, at in (("latest", None), ("middle", n // 2 + 37)):
                    fast = median_ms(lambda at=at, th=thread: r.replay(tenant, th, at_seq=at), args.runs)
                    slow = median_ms(lambda at=at, th=thread: r.replay(tenant, th, at_seq=at, use_snapshots=False),
                                     slow_runs)
                    if label == "middle":
                        flat[n] = fast
                    target = f"{label} (seq {at if at else n:,})"
                    table.add_row(f"agent-journal, {n:,} events", target, f"{fast:.2f} ms", f"{slow:.1f} ms",
                                  f"{slow / fast:.0f}×")
        lg = bench_langgraph(settings.database_url, args.runs)
        if isinstance(lg, str):
            note = lg
        else:
            older_ms, latest_ms, size = lg
            table.add_row(f"LangGraph PostgresSaver, {LANGGRAPH_STEPS} checkpoints",
                          f"get_tuple older (step {LANGGRAPH_STEPS // 2})", f"{older_ms:.2f} ms", "-", "-")
            table.add_row(f"LangGraph PostgresSaver, {LANGGRAPH_STEPS} checkpoints",
                          f"get_tuple latest (step {LANGGRAPH_STEPS})", f"{latest_ms:.2f} ms", "-", "-")
            note = (f"LangGraph stores a full copy of every changed channel per checkpoint ({size / 1e6:.1f} MB of "
                    f"channel blobs for its {LANGGRAPH_STEPS}-step thread); agent-journal stores each event once "
                    "plus a snapshot every K events.")
        console.print(table)
        if len(flat) >= 2:
            lo, hi = min(flat), max(flat)
            console.print(f"mid-history replay with snapshots: {flat[hi]:.2f} ms at {hi:,} events vs "
                          f"{flat[lo]:.2f} ms at {lo:,} ({flat[hi] / flat[lo]:.2f}×).")
        console.print(f"note: {note}")
    finally:
        with console.status("stopping the embedded servers …"):
            stack.down()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
