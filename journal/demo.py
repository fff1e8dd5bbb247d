"""``agent-journal demo``: a simulated multi-tenant agent workload, then a summary.

Each agent thread plans, calls tools (one result is over the blob threshold and goes to S3),
moves between graph nodes, writes working memory, pauses for a human and resumes, and
completes. Packages built on the journal add stages (projection, replay) through the
``agent_journal.demo`` entry point group: ``stage(settings, summary, console) -> None``.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from rich.console import Console
from rich.table import Table

from journal.client import JournalClient
from journal.settings import Settings

TOOLS = ("search_orders", "issue_refund", "fetch_invoice", "send_email")


@dataclass
class DemoSummary:
    """What the demo wrote, for later stages to check against."""

    run_id: str
    tenants: list[str]
    threads: dict[str, list[str]]
    per_tenant: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    blobs: int = 0
    heads: dict[tuple[str, str], int] = field(default_factory=dict)


def agent_run(client: JournalClient, tenant: str, thread: str, steps: int, rng: random.Random,
              big_result: bool) -> tuple[list[float], int, int]:
    """One agent thread's life; returns (latencies in ms, blobs written, last seq)."""
    lat: list[float] = []
    blobs = 0
    actor = {"agent_id": f"support-bot-{rng.randint(1, 3)}", "model": "gpt-sim-1", "run_id": thread}
    seq = 0

    def step(type_: str, payload: object, node: str | None = None) -> None:
        nonlocal seq
        t = time.perf_counter()
        rec = client.append(tenant, thread, type_, payload, node=node, actor=actor, expected_seq=seq,
                            idempotency_key=f"{thread}:{seq + 1}")
        lat.append((time.perf_counter() - t) * 1000)
        seq = rec.seq

    step("node_enter", {"node": "planner"}, "planner")
    step("message", {"role": "user", "content": f"Order #{rng.randint(1000, 9999)} arrived damaged, refund?"})
    n = 0
    while seq < steps:
        n += 1
        call_id = f"call_{n}"
        tool = rng.choice(TOOLS)
        step("message", {"role": "assistant", "content": f"Let me use {tool}.", "tool_calls": [call_id]}, "planner")
        step("tool_call", {"call_id": call_id, "tool": tool, "args": {"order": rng.randint(1, 10**6)}}, "tools")
        if big_result and n == 1:
            # A scanned invoice: far over the 100 KB blob threshold, offloaded to S3.
            result: object = {"call_id": call_id, "tool": tool, "output": "PDF:" + "x" * 150_000}
            blobs += 1
        else:
            result = {"call_id": call_id, "tool": tool, "output": {"status": "ok", "rows": rng.randint(0, 20)}}
        step("tool_result", result, "tools")
        step("memory_set", {"path": ["customer", "last_tool"], "value": tool}, "planner")
        if n == 2:
            step("node_exit", {"node": "planner"}, "planner")
            step("node_enter", {"node": "approval"}, "approval")
            step("pause", {"reason": "refund over $100 needs a human"}, "approval")
            step("resume", {"by": "human:alice", "decision": "approved"}, "approval")
            step("node_exit", {"node": "approval"}, "approval")
            step("node_enter", {"node": "planner"}, "planner")
    step("memory_delete", {"path": ["customer", "last_tool"]}, "planner")
    step("node_exit", {"node": "planner"}, "planner")
    step("complete", {"summary": "refund issued"})
    return lat, blobs, seq


def run_workload(client: JournalClient, *, tenants: int, threads: int, steps: int, seed: int = 7) -> DemoSummary:
    run_id = uuid.uuid4().hex[:8]
    rng = random.Random(seed)
    names = [f"demo-{run_id}-{t}" for t in ("acme", "globex", "initech", "umbrella", "hooli", "stark")[:tenants]]
    names += [f"demo-{run_id}-t{i}" for i in range(len(names), tenants)]
    summary = DemoSummary(run_id, names, {t: [f"run-{i:03d}" for i in range(threads)] for t in names})
    jobs = [(t, th, random.Random(rng.random()), i == 0) for t in names for i, th in enumerate(summary.threads[t])]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda j: (j[0], j[1], agent_run(client, j[0], j[1], steps, j[2], j[3])), jobs)
        for tenant, thread, (lat, blobs, last) in results:
            summary.latencies_ms.extend(lat)
            summary.blobs += blobs
            summary.per_tenant[tenant] += last
            summary.heads[(tenant, thread)] = last
    return summary


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1]


def run_demo(settings: Settings, *, tenants: int, threads: int, steps: int, console: Console) -> int:
    with JournalClient.from_settings(settings) as client:
        t0 = time.perf_counter()
        with console.status(f"{tenants} tenants × {threads} agent threads appending …"):
            summary = run_workload(client, tenants=tenants, threads=threads, steps=steps)
        elapsed = time.perf_counter() - t0
        total = sum(summary.per_tenant.values())
        table = Table(title=f"demo run {summary.run_id}: append path")
        table.add_column("tenant")
        table.add_column("threads", justify="right")
        table.add_column("events", justify="right")
        for tenant in summary.tenants:
            table.add_row(tenant, str(len(summary.threads[tenant])), str(summary.per_tenant[tenant]))
        table.add_row("[bold]total", str(sum(len(v) for v in summary.threads.values())), f"[bold]{total}")
        console.print(table)
        console.print(
            f"appended {total} events in {elapsed:.2f}s with 4 concurrent writers; "
            f"{summary.blobs} payload(s) offloaded to S3; append latency p50 "
            f"{percentile(summary.latencies_ms, 50):.2f} ms, p99 {percentile(summary.latencies_ms, 99):.2f} ms"
        )
        for ep in entry_points(group="agent_journal.demo"):
            ep.load()(settings, summary, console)
    return 0
