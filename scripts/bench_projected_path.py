#!/usr/bin/env python
"""Where a ``durability="projected"`` append's time goes, with and without the one-pipeline batch, side by side.

One client appends ``--steps`` steps of one conversation (4 events each: an assistant message with a
tool call, the call, its result, a memory update) with ``durability="projected"`` while one
projector process runs. The projector is this script in worker mode, with timestamps added around
its stages (the stream read's reply parsed, the batch's start, its plan — after the row locks when
it reads the heads, at once when it knows them —, its commit, its acknowledgement sent), so each
append splits into:

* client → read: the client's encoding, the append script, the projector woken with the entries;
* decode: the projector's decoding of the entries before its batch starts;
* locks: reading the heads under row locks (one round trip; none when the heads are known);
* plan + write + commit: the chain, the pipelined writes and the COMMIT;
* commit → ack: the acknowledgement built and sent to Valkey;
* ack → client: Valkey's feed wakes the waiting client, which returns.

Modes, alternated run by run on the same servers: ``known heads`` (``store.KnownHeads``, as the
projector runs) and ``two round trips`` (the same projector with the known heads disabled).
Medians of the per-append p50 of ``--runs`` runs per mode. Timestamps are ``time.monotonic_ns``,
one clock for every process of the machine.

    python scripts/bench_projected_path.py                 # 300 steps x 3 runs per mode, embedded stack
    python scripts/bench_projected_path.py --steps 500 --runs 5 --json out.json

The script never asserts: it reports and exits 0.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SEGMENTS = ["client → read", "decode", "locks", "plan + write + commit", "commit → ack", "ack → client", "total"]
MODES = {"known heads": "known", "two round trips": "two"}


def worker(mode: str, stamps: str) -> None:
    """The projector (``agent-journal project``) with stamps written to ``stamps`` ("label seq ns" lines)."""
    from journal import cli
    from projections import acks, reader, store

    out = open(stamps, "a", buffering=1)  # noqa: SIM115 - open for the process's life

    def stamp(label: str, n: int) -> None:
        out.write(f"{label} {n} {time.monotonic_ns()}\n")

    def top(by_thread: dict[Any, list[Any]]) -> int:
        return max((it.event.seq for its in by_thread.values() for it in its), default=0)

    parse, run_batch, plan, send = (reader.stream_entries, store._run_batch, store._plan_threads,
                                    acks.DeferredAcks.send)

    def stream_entries(reply: Any, **kw: Any) -> Any:
        entries = parse(reply, **kw)
        if entries:
            stamp("read", len(entries))
        return entries

    def timed_batch(conn: Any, by_thread: Any, *args: Any, **kwargs: Any) -> Any:
        stamp("batch", top(by_thread))
        try:
            return run_batch(conn, by_thread, *args, **kwargs)
        finally:
            stamp("committed", top(by_thread))

    def timed_plan(conn: Any, by_thread: Any, *args: Any, **kwargs: Any) -> Any:
        stamp("planning", top(by_thread))
        return plan(conn, by_thread, *args, **kwargs)

    def timed_send(self: Any, calls: Any) -> Any:
        stale = send(self, calls)
        if calls:
            stamp("acked", 0)
        return stale

    reader.stream_entries = stream_entries
    store._run_batch = timed_batch
    store._plan_threads = timed_plan
    acks.DeferredAcks.send = timed_send  # type: ignore[method-assign]
    if mode == "two":
        store.KnownHeads.of = lambda self, by_thread: None  # type: ignore[method-assign]
    cli.main(["project", "--no-migrate"])


def step(thread: str, n: int, rng: random.Random) -> list[dict[str, Any]]:
    words = ["order", "refund", "shipped", "carrier", "invoice", "delayed", "address", "parcel", "label"]
    say = " ".join(rng.choice(words) for _ in range(24))
    call = f"call-{n}"
    return [{"thread": thread, "type": "message", "node": "agent",
             "payload": {"role": "assistant", "content": say, "tool_calls": [call]}},
            {"thread": thread, "type": "tool_call", "node": "tools",
             "payload": {"call_id": call, "tool": "search_orders", "args": {"order": n}}},
            {"thread": thread, "type": "tool_result", "node": "tools",
             "payload": {"call_id": call, "tool": "search_orders", "output": say[:120]}},
            {"thread": thread, "type": "memory_set", "payload": {"path": [f"k{n % 16}"], "value": {"step": n}}}]


def one_run(settings: Any, mode: str, steps: int, tmp: Path) -> dict[str, float]:
    """One projector process in ``mode``, ``steps`` projected appends; the p50 of each segment (ms)."""
    from journal.client import JournalClient

    stamps = tmp / f"stamps-{mode}-{time.monotonic_ns()}.txt"
    stamps.touch()
    env = {**os.environ, **dict(line.removeprefix("export ").split("=", 1) for line in settings.env_lines())}
    proc = subprocess.Popen([sys.executable, __file__, "--worker", mode, str(stamps)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    rng = random.Random(7)
    thread = f"conv-{mode}-{time.monotonic_ns()}"
    calls: list[tuple[int, int, int]] = []
    try:
        with JournalClient.from_settings(settings) as client:
            for n in range(20):  # warm-up: the tenant discovered, connections, prepared statements
                client.append_many("bench", step(thread, n, rng), durability="projected")
            for n in range(20, 20 + steps):
                t0 = time.monotonic_ns()
                client.append_many("bench", step(thread, n, rng), durability="projected")
                calls.append((4 * (n + 1), t0, time.monotonic_ns()))
    finally:
        proc.terminate()
        proc.wait()
    seen: dict[str, list[tuple[int, int]]] = {}
    for line in stamps.read_text().splitlines():
        label, num, ns = line.split()
        seen.setdefault(label, []).append((int(num), int(ns)))
    batch, planning, committed = ({n: t for n, t in seen.get(k, [])} for k in ("batch", "planning", "committed"))
    reads = sorted(t for _, t in seen.get("read", []))
    acked = sorted(t for _, t in seen.get("acked", []))
    rows = []
    for seq, t0, t1 in calls:
        if seq not in batch or seq not in committed or seq not in planning:
            continue  # the step went in a batch with another (a read that caught two appends)
        i, j = bisect.bisect_left(reads, t0), bisect.bisect_left(acked, committed[seq])
        if i == len(reads) or j == len(acked) or reads[i] > batch[seq]:
            continue
        read, ack = reads[i], acked[j]
        rows.append((read - t0, batch[seq] - read, planning[seq] - batch[seq], committed[seq] - planning[seq],
                     ack - committed[seq], t1 - ack, t1 - t0))
    out = {name: statistics.median(r[k] for r in rows) / 1e6 for k, name in enumerate(SEGMENTS)} if rows else {}
    out["appends"] = len(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3, help="runs per mode, alternated")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--worker", nargs=2, metavar=("MODE", "STAMPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    from journal import logs
    from journal.embedded import EmbeddedStack
    from projections import db

    logs.configure()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="bench-projected-"))
    stack = EmbeddedStack(tmp)
    try:
        settings = stack.up(("redis", "postgres", "s3"))
        db.migrate(settings)
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in MODES}
        for r in range(args.runs):
            for label, mode in MODES.items():
                with console.status(f"{label}, run {r + 1} of {args.runs} …"):
                    runs[label].append(one_run(settings, mode, args.steps, tmp))
    finally:
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)
    medians = {label: {name: statistics.median(run[name] for run in found if name in run) for name in SEGMENTS}
               for label, found in runs.items()}
    table = Table(title=f"durability='projected' append of a 4-event step, p50 per segment (ms), median of "
                        f"{args.runs} runs x {args.steps} appends per mode")
    table.add_column("segment")
    for label in MODES:
        table.add_column(label, justify="right")
    table.add_column("two round trips / known heads", justify="right")
    known, two = medians["known heads"], medians["two round trips"]
    for name in SEGMENTS:
        ratio = f"{two[name] / known[name]:.2f}×" if known[name] > 0.05 else ""
        table.add_row(name, f"{known[name]:.3f}", f"{two[name]:.3f}", ratio)
    console.print(table)
    counts = "; ".join(f"{label}: {[run.get('appends') for run in found]}" for label, found in runs.items())
    console.print(f"appends measured per run (the others shared a batch): {counts}")
    if args.json:
        Path(args.json).write_text(json.dumps({"steps": args.steps, "runs": runs, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
