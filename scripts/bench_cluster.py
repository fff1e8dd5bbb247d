#!/usr/bin/env python
"""One Valkey node against a 3-primary Valkey Cluster, side by side in one run.

    python scripts/bench_cluster.py                       # starts its own node, cluster and PostgreSQLs
    python scripts/bench_cluster.py --procs 4 --runs 5 --json out.json

For each side: append events/s with one event per call and in batches (``--procs`` client
processes, each its own JournalClient), then projection events/s (one projector process
draining what the appends wrote into PostgreSQL). On the cluster, the cost of
``durability='replicated'`` against ``'memory'`` per append (p50/p99, interleaved in blocks
so foreign load hits both). Every throughput figure is the median of ``--runs`` runs: the
machine this runs on is usually small and shared, so read the ratios, not the absolutes.
The script never asserts: it reports and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from journal import logs
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.events import Draft
from journal.settings import Settings
from projections import db
from projections.worker import Projector, WorkerOptions

MSG = {"role": "assistant", "content": "Checked order 1234: delivered on the 3rd, the refund window is 30 days."}
#: Latency is interleaved in blocks this long (memory, replicated, memory, ...).
BLOCK = 100


def _appender(url_settings: Settings, tenants: list[str], events: int, batch: int, out: Any) -> None:
    """One client process: ``events`` appends over ``tenants`` (``batch`` per call), its wall time to ``out``."""
    with JournalClient.from_settings(url_settings) as c:
        c.append(tenants[0], "warm", "message", MSG)
        start = time.perf_counter()
        done, i = 0, 0
        while done < events:
            tenant = tenants[i % len(tenants)]
            i += 1
            if batch == 1:
                c.append(tenant, f"th{i % 10}", "message", MSG)
            else:
                c.append_many(tenant, [Draft(f"th{(i + k) % 10}", "message", MSG) for k in range(batch)])
            done += batch
        out.put(time.perf_counter() - start)


def append_rate(settings: Settings, tenants: list[str], events: int, batch: int, procs: int) -> float:
    """Events/s of ``procs`` client processes appending ``events`` in all (the slowest process's wall time)."""
    ctx = multiprocessing.get_context("fork")
    out: Any = ctx.Queue()
    share = [tenants[p::procs] for p in range(procs)]
    workers = [ctx.Process(target=_appender, args=(settings, share[p], events // procs, batch, out))
               for p in range(procs)]
    for w in workers:
        w.start()
    walls = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join(60)
    return events / max(walls)


def _projector(settings: Settings, tenants: list[str], out: Any) -> None:
    p = Projector(settings, WorkerOptions(), consumer=f"bench-{uuid.uuid4().hex[:6]}")
    try:
        start, cpu = time.perf_counter(), time.process_time()
        p.drain(timeout=600, tenants=tenants)
        out.put((time.perf_counter() - start, time.process_time() - cpu))
    finally:
        p.close()


def projection_rate(settings: Settings, tenants: list[str], events: int) -> tuple[float, float]:
    """Events/s one projector process drains of ``events`` of ``tenants`` into PostgreSQL, and its CPU µs/event."""
    ctx = multiprocessing.get_context("fork")
    out: Any = ctx.Queue()
    proc = ctx.Process(target=_projector, args=(settings, tenants, out))
    proc.start()
    wall, cpu = out.get(timeout=900)
    proc.join(60)
    return events / wall, cpu / events * 1e6


def latencies(settings: Settings, tenant: str, n: int) -> dict[str, list[float]]:
    """Microseconds per append, memory and replicated interleaved in blocks of BLOCK."""
    out: dict[str, list[float]] = {"memory": [], "replicated": []}
    with JournalClient.from_settings(settings) as c:
        for level in out:
            c.append(tenant, "warm", "message", MSG, durability=level)
        for block in range(0, n, BLOCK):
            for level, times in out.items():
                for _ in range(min(BLOCK, n - block)):
                    t0 = time.perf_counter()
                    c.append(tenant, f"lat-{level}", "message", MSG, durability=level)
                    times.append((time.perf_counter() - t0) * 1e6)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` and their children, live and exited (PostgreSQL's backends come and go)."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system
        except psutil.Error:
            continue
    return total


def server_pids(stack: EmbeddedStack, service: str) -> list[int]:
    """The processes of ``service`` in ``stack`` (every node of a cluster)."""
    if service == "redis" and stack.cluster_nodes():
        return [n["pid"] for n in stack.cluster_nodes()]
    return [s.pid for s in stack.status() if s.name == service and s.pid]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000, help="events per throughput measurement (default 20,000)")
    ap.add_argument("--tenants", type=int, default=200, help="tenants the load spreads over (default 200)")
    ap.add_argument("--batch", type=int, default=50, help="events per append_many in the batched figure")
    ap.add_argument("--procs", type=int, default=2, help="client processes appending (default 2)")
    ap.add_argument("--runs", type=int, default=3, help="runs per throughput figure; the median is reported")
    ap.add_argument("--latency", type=int, default=2000, help="appends per durability level for p50/p99")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    logs.configure("warning")
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    single, cluster = EmbeddedStack(tmp / "single"), EmbeddedStack(tmp / "cluster")
    try:
        with console.status("starting one Valkey node and a 3-primary cluster, each with a PostgreSQL …"):
            # A PostgreSQL each: a projector trusts the tenants its database knows, and would take the
            # other side's for tenants whose Redis lost its tail.
            base = single.up(("redis", "postgres"))
            clustered = cluster.up(("redis", "postgres"), cluster=3)
            db.migrate(base)
            db.migrate(clustered)
        sides = {"one node": base, "3-primary cluster": clustered}
        stacks = {"one node": single, "3-primary cluster": cluster}
        figures: dict[str, dict[str, float]] = {name: {} for name in sides}
        for run in range(args.runs):
            for name, settings in sides.items():
                fig: dict[str, list[float]] = {}
                valkey, postgres = server_pids(stacks[name], "redis"), server_pids(stacks[name], "postgres")
                for batch, label in ((1, "append_single"), (args.batch, "append_batched")):
                    tenants = [f"b{run}-{label[7]}-{uuid.uuid4().hex[:8]}" for _ in range(args.tenants)]
                    cpu = cpu_seconds(valkey)
                    fig.setdefault(label, []).append(append_rate(settings, tenants, args.events, batch, args.procs))
                    # Server CPU per event (every node of a cluster, replicas included), in µs.
                    fig.setdefault(f"{label}_valkey_cpu_us", []).append((cpu_seconds(valkey) - cpu) / args.events * 1e6)
                    if batch == 1:
                        # Projection: drain what the single appends wrote (plus each process's warm-up event).
                        cpu_v, cpu_pg = cpu_seconds(valkey), cpu_seconds(postgres)
                        rate, projector_cpu = projection_rate(settings, tenants, args.events + args.procs)
                        fig.setdefault("projection", []).append(rate)
                        fig.setdefault("projection_projector_cpu_us", []).append(projector_cpu)
                        fig.setdefault("projection_valkey_cpu_us", []).append(
                            (cpu_seconds(valkey) - cpu_v) / args.events * 1e6)
                        fig.setdefault("projection_postgres_cpu_us", []).append(
                            (cpu_seconds(postgres) - cpu_pg) / args.events * 1e6)
                for k, v in fig.items():
                    figures[name][f"_{k}_{run}"] = v[0]
                console.print(f"run {run + 1}/{args.runs} {name}: " + ", ".join(
                    f"{k} {v[0]:,.1f}" for k, v in fig.items()))
        measured = ("append_single", "append_batched", "projection", "append_single_valkey_cpu_us",
                    "append_batched_valkey_cpu_us", "projection_valkey_cpu_us", "projection_postgres_cpu_us",
                    "projection_projector_cpu_us")
        for name in sides:
            for k in measured:
                figures[name][k] = statistics.median(figures[name][f"_{k}_{r}"] for r in range(args.runs))
        lat = latencies(clustered, f"lat-{uuid.uuid4().hex[:8]}", args.latency)
        lat_fig = {f"{level}_{q}": pct(v, p) for level, v in lat.items() for q, p in (("p50", 0.5), ("p99", 0.99))}
        table = Table(title=f"one node vs 3-primary cluster, {args.procs} client processes, median of {args.runs} "
                            f"runs ({os.cpu_count()} cores, shared)")
        for col in ("events/s", *sides, "cluster / node"):
            table.add_column(col, justify="right")
        for k, label in (("append_single", "append, 1 per call"), ("append_batched", f"append, {args.batch} per call"),
                         ("projection", "projection (1 projector process)")):
            a, b = figures["one node"][k], figures["3-primary cluster"][k]
            table.add_row(label, f"{a:,.0f}", f"{b:,.0f}", f"{b / a:.2f}")
        for k, label in (("append_single_valkey_cpu_us", "Valkey CPU µs/event, 1 per call"),
                         ("append_batched_valkey_cpu_us", f"Valkey CPU µs/event, {args.batch} per call"),
                         ("projection_valkey_cpu_us", "Valkey CPU µs/event, projection"),
                         ("projection_postgres_cpu_us", "PostgreSQL CPU µs/event, projection"),
                         ("projection_projector_cpu_us", "projector CPU µs/event")):
            a, b = figures["one node"][k], figures["3-primary cluster"][k]
            table.add_row(label, f"{a:,.1f}", f"{b:,.1f}", f"{b / a:.2f}" if a else "-")
        console.print(table)
        lt = Table(title=f"per append on the cluster, {args.latency} each, interleaved")
        for col in ("durability", "p50 µs", "p99 µs"):
            lt.add_column(col, justify="right")
        for level in lat:
            lt.add_row(level, f"{lat_fig[f'{level}_p50']:,.0f}", f"{lat_fig[f'{level}_p99']:,.0f}")
        console.print(lt)
        if args.json:
            result = {"args": {k: str(v) for k, v in vars(args).items()}, "cores": os.cpu_count(),
                      "throughput": {n: {k: v for k, v in f.items() if not k.startswith("_")}
                                     for n, f in figures.items()},
                      "runs": {n: {k: v for k, v in f.items() if k.startswith("_")} for n, f in figures.items()},
                      "latency_us": lat_fig}
            args.json.write_text(json.dumps(result, indent=2))
    finally:
        cluster.down()
        single.down()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
