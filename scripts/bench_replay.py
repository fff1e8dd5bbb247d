#!/usr/bin/env python
"""Benchmark replay: latest and mid-history state of 1,000 / 10,000 / 100,000-event threads,
with snapshots (every 100 events; cache of decoded chunks warm and cold) and without (fold from
seq 1); ``JournalClient.resume`` p50/p99 at 500 steps and at 10,000 events; snapshot bytes per
event; PostgreSQL bytes per step against LangGraph's ``PostgresSaver`` on the same server.

    python scripts/bench_replay.py                          # starts its own embedded stack in a temp dir
    python scripts/bench_replay.py --sizes 1000,10000 --workload conversation --runs 7 --json replay.json

"Cold cache" clears the process's cache of decoded snapshots and chunks
(``journal.state.clear_chunk_cache``) before each timed run: the cost of the first read of a
snapshot in a process, or just after a new one was written.

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
import json
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

try:
    from journal.state import clear_chunk_cache
except ImportError:  # a tree before incremental snapshots: run this script against it for before/after figures
    def clear_chunk_cache() -> None:
        pass

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


#: A conversation step: message → tool_call → tool_result → memory_set (4 events; the issue's
#: "message + tool result + memory" with the call it answers).
EVENTS_PER_STEP = 4
#: The journal's PostgreSQL tables a thread writes to (sizes include indexes and TOAST).
JOURNAL_TABLES = ("events", "threads", "snapshots", "snapshot_chunks")
LANGGRAPH_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")


def table_bytes(conn: Any, schema: str, names: tuple[str, ...]) -> int:
    """Total size (heap, indexes, TOAST; every partition) of the tables that exist, in bytes."""
    row = conn.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_inherits i ON i.inhrelid = c.oid "
        "LEFT JOIN pg_class p ON p.oid = i.inhparent "
        "WHERE n.nspname = %s AND c.relkind = 'r' AND coalesce(p.relname, c.relname) = ANY(%s)",
        (schema, list(names))).fetchone()
    return int(row[0] if not isinstance(row, dict) else next(iter(row.values())))  # the saver's rows are dicts


def snapshot_bytes(conn: Any, tenant: str, thread: str) -> tuple[int, int, int]:
    """(bytes of the thread's snapshot records, of its sealed chunks, number of snapshots)."""
    snaps = conn.execute("SELECT coalesce(sum(octet_length(state)), 0), count(*) FROM journal.snapshots "
                         "WHERE tenant_id = %s AND thread_id = %s", (tenant, thread)).fetchone()
    chunks = (0,)
    if conn.execute("SELECT to_regclass('journal.snapshot_chunks')").fetchone()[0] is not None:
        chunks = conn.execute("SELECT coalesce(sum(octet_length(body)), 0) FROM journal.snapshot_chunks "
                              "WHERE tenant_id = %s AND thread_id = %s", (tenant, thread)).fetchone()
    return int(snaps[0]), int(chunks[0]), int(snaps[1])


def event_bytes(conn: Any, tenant: str, thread: str) -> dict[str, int]:
    """Column bytes of the thread's event rows: the hashed body, the JSONB payload copy, whole rows."""
    row = conn.execute("SELECT coalesce(sum(octet_length(body)), 0), coalesce(sum(pg_column_size(payload)), 0), "
                       "coalesce(sum(pg_column_size(e.*)), 0) FROM journal.events e "
                       "WHERE tenant_id = %s AND thread_id = %s", (tenant, thread)).fetchone()
    return {"body": int(row[0]), "payload_jsonb": int(row[1]), "rows": int(row[2])}


def percentile_ms(fn: Callable[[], Any], runs: int, q: float = 0.5, before: Callable[[], Any] | None = None) -> float:
    fn()
    samples = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return samples[min(len(samples) - 1, int(q * len(samples)))]


def bench_langgraph_bytes(database_url: str) -> dict[str, float] | str:
    """PostgresSaver on the same server: PostgreSQL bytes per step of a 500-step conversation, get_tuple."""
    try:
        from langgraph.checkpoint.postgres import PostgresSaver
    except ImportError:
        return "langgraph-checkpoint-postgres is not installed (pip install langgraph-checkpoint-postgres); skipped"
    with PostgresSaver.from_conn_string(database_url) as saver:
        saver.setup()
        before = table_bytes(saver.conn, "public", LANGGRAPH_TABLES)
    got = bench_langgraph(database_url, 7)
    if isinstance(got, str):
        return got
    with PostgresSaver.from_conn_string(database_url) as saver:
        after = table_bytes(saver.conn, "public", LANGGRAPH_TABLES)
    older_ms, latest_ms, blob_bytes = got
    return {"steps": LANGGRAPH_STEPS, "bytes": after - before, "bytes_per_step": (after - before) / LANGGRAPH_STEPS,
            "channel_blob_bytes": blob_bytes, "get_tuple_older_ms": older_ms, "get_tuple_latest_ms": latest_ms}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="thread lengths (comma-separated)")
    ap.add_argument("--workload", choices=("memory", "conversation"), default="memory")
    ap.add_argument("--runs", type=int, default=7, help="timed runs per figure (median reported)")
    ap.add_argument("--slow-runs", type=int, default=3, help="timed runs for folds from seq 1 over 50,000+ events")
    ap.add_argument("--resume-runs", type=int, default=101, help="timed resumes per resume figure")
    ap.add_argument("--interleaved-runs", type=int, default=51,
                    help="rounds of mid-history replays, one per size per round, for the ratio")
    ap.add_argument("--resume-steps", type=int, default=500, help="steps of the short resume thread")
    ap.add_argument("--resume-events", type=int, default=10_000, help="events of the long resume thread")
    ap.add_argument("--snapshot-every", type=int, default=100)
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    logs.configure("warning")  # the projector's info lines would interleave with the progress bars
    out: dict[str, Any] = {"workload": args.workload, "snapshot_every": args.snapshot_every, "runs": args.runs,
                           "replay": [], "resume": [], "bytes": {}}

    tmp = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    stack = EmbeddedStack(tmp)
    try:
        with console.status("starting embedded Valkey, PostgreSQL and S3 …"):
            settings = stack.up(("redis", "postgres", "s3")).with_(snapshot_every=args.snapshot_every)
            db.migrate(settings)
        assert settings.database_url
        tenant = f"bench-{uuid.uuid4().hex[:6]}"
        admin = db.connect(settings, role=None, autocommit=True)
        with JournalClient.from_settings(settings) as client, Replayer.from_settings(settings) as r:
            # -- PostgreSQL bytes per step (first, so nothing else grows the tables meanwhile) --------
            steps = args.resume_steps
            before = table_bytes(admin, "journal", JOURNAL_TABLES)
            build(settings, client, tenant, "resume-short", steps * EVENTS_PER_STEP, "conversation")
            total = table_bytes(admin, "journal", JOURNAL_TABLES) - before
            snap, chunk, count = snapshot_bytes(admin, tenant, "resume-short")
            out["bytes"] = {"steps": steps, "events": steps * EVENTS_PER_STEP, "bytes": total,
                            "bytes_per_step": total / steps, "snapshot_records": snap, "snapshot_chunks": chunk,
                            "snapshots": count, **{f"event_{k}": v for k, v in
                                                   event_bytes(admin, tenant, "resume-short").items()}}

            # -- replay table ----------------------------------------------------------------------
            table = Table(title=f"replay latency, median of {args.runs} runs (workload: {args.workload}; "
                                f"snapshot every {args.snapshot_every})")
            for col in ("thread", "target", "with snapshots", "cold cache", "without (fold from 1)", "speed-up",
                        "snapshot B/event"):
                table.add_column(col, justify="left" if col in ("thread", "target") else "right")
            flat: dict[int, float] = {}
            for n in sizes:
                thread = f"t{n}"
                secs = build(settings, client, tenant, thread, n, args.workload)
                console.print(f"built {n:,}-event thread in {secs:.1f}s")
                snap, chunk, count = snapshot_bytes(admin, tenant, thread)
                per_event = (snap + chunk) / n
                slow_runs = args.slow_runs if n >= 50_000 else args.runs
                for label, at in (("latest", None), ("middle", n // 2 + 37)):
                    fast = median_ms(lambda at=at, th=thread: r.replay(tenant, th, at_seq=at), args.runs)
                    cold = percentile_ms(lambda at=at, th=thread: r.replay(tenant, th, at_seq=at), args.runs,
                                         before=clear_chunk_cache)
                    slow = median_ms(lambda at=at, th=thread: r.replay(tenant, th, at_seq=at, use_snapshots=False),
                                     slow_runs)
                    if label == "middle":
                        flat[n] = fast
                    target = f"{label} (seq {at if at else n:,})"
                    table.add_row(f"agent-journal, {n:,} events", target, f"{fast:.2f} ms", f"{cold:.1f} ms",
                                  f"{slow:.1f} ms", f"{slow / fast:.0f}×", f"{per_event:.0f}")
                    out["replay"].append({"events": n, "target": label, "seq": at or n, "ms": fast, "cold_ms": cold,
                                          "fold_from_1_ms": slow, "snapshot_bytes": snap, "chunk_bytes": chunk,
                                          "snapshots": count, "snapshot_bytes_per_event": per_event})
            console.print(table)
            if len(flat) >= 2:
                # The ratio again, the sizes interleaved run by run: on a busy machine, figures taken
                # minutes apart (above) drift with the load more than with the thread's length.
                samples: dict[int, list[float]] = {n: [] for n in sizes}
                for _ in range(args.interleaved_runs):
                    for n in sizes:
                        t0 = time.perf_counter()
                        r.replay(tenant, f"t{n}", at_seq=n // 2 + 37)
                        samples[n].append((time.perf_counter() - t0) * 1000)
                inter = {n: statistics.median(v) for n, v in samples.items()}
                lo = min(flat)
                out["mid_history_ratio"] = {str(n): flat[n] / flat[lo] for n in sorted(flat)}
                out["mid_history_interleaved_ms"] = {str(n): inter[n] for n in sorted(inter)}
                out["mid_history_interleaved_ratio"] = {str(n): inter[n] / inter[lo] for n in sorted(inter)}
                console.print("mid-history replay with snapshots: " + ", ".join(
                    f"{flat[n]:.2f} ms at {n:,} events ({flat[n] / flat[lo]:.2f}× {lo:,})" for n in sorted(flat)))
                console.print(f"interleaved, median of {args.interleaved_runs} rounds: " + ", ".join(
                    f"{inter[n]:.2f} ms at {n:,} events ({inter[n] / inter[lo]:.2f}×)" for n in sorted(inter)))

            # -- resume ----------------------------------------------------------------------------
            long_thread = f"t{args.resume_events}"
            if args.workload != "conversation" or args.resume_events not in sizes:
                long_thread = "resume-long"
                build(settings, client, tenant, long_thread, args.resume_events, "conversation")
            rtable = Table(title=f"JournalClient.resume of the latest state (pooled PostgreSQL reads), "
                                 f"{args.resume_runs} runs")
            for col in ("thread", "p50", "p99", "p50 cold cache"):
                rtable.add_column(col, justify="left" if col == "thread" else "right")
            for label, th, n in ((f"{steps} steps", "resume-short", steps * EVENTS_PER_STEP),
                                 (f"{args.resume_events:,} events", long_thread, args.resume_events)):
                p50 = percentile_ms(lambda th=th: client.resume(tenant, th), args.resume_runs)
                p99 = percentile_ms(lambda th=th: client.resume(tenant, th), args.resume_runs, 0.99)
                cold = percentile_ms(lambda th=th: client.resume(tenant, th), max(5, args.resume_runs // 10),
                                     before=clear_chunk_cache)
                rtable.add_row(f"{label} ({n:,} events)", f"{p50:.2f} ms", f"{p99:.2f} ms", f"{cold:.1f} ms")
                out["resume"].append({"thread": label, "events": n, "p50_ms": p50, "p99_ms": p99, "cold_p50_ms": cold})
            console.print(rtable)
        admin.close()

        # -- bytes per step vs PostgresSaver -----------------------------------------------------------
        lg = bench_langgraph_bytes(settings.database_url)
        b = out["bytes"]
        btable = Table(title=f"PostgreSQL bytes per step, {b['steps']}-step conversation (same server)")
        for col in ("store", "bytes per step", "of which"):
            btable.add_column(col, justify="left" if col != "bytes per step" else "right")
        btable.add_row("agent-journal", f"{b['bytes_per_step']:,.0f}",
                       f"event bodies {b['event_body'] / b['steps']:,.0f}, JSONB payloads "
                       f"{b['event_payload_jsonb'] / b['steps']:,.0f}, snapshots "
                       f"{(b['snapshot_records'] + b['snapshot_chunks']) / b['steps']:,.0f} (tables + indexes)")
        if isinstance(lg, str):
            console.print(btable)
            console.print(f"note: {lg}")
            out["langgraph"] = {"skipped": lg}
        else:
            out["langgraph"] = lg
            btable.add_row("LangGraph PostgresSaver", f"{lg['bytes_per_step']:,.0f}",
                           f"get_tuple latest {lg['get_tuple_latest_ms']:.2f} ms, older "
                           f"{lg['get_tuple_older_ms']:.2f} ms")
            console.print(btable)
            out["bytes_ratio_vs_postgres_saver"] = lg["bytes_per_step"] / b["bytes_per_step"]
            console.print(f"PostgresSaver stores {out['bytes_ratio_vs_postgres_saver']:.1f}× the bytes per step.")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
            console.print(f"figures written to {args.json}")
    finally:
        with console.status("stopping the embedded servers …"):
            stack.down()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
