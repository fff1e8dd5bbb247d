#!/usr/bin/env python
"""Benchmark the audit console: server time of its pages over a 100,000-event thread.

    python scripts/bench_console.py                  # starts its own embedded stack in a temp dir
    python scripts/bench_console.py --events 20000 --runs 15 --json out.json

Builds one thread of ``--events`` events (message → tool_call → tool_result → memory_set cycles,
projected, snapshot every 100), signs in as the tenant's reader (its own PostgreSQL login, so
row-level security is on the path) and requests each page in-process through Starlette's
TestClient. "server" is the app's own ``Server-Timing`` (from the request entering the app to
the response starting: every query, the fold and the template rendering); "wall" adds the
in-process HTTP round trip. Figures are MEDIANS of ``--runs`` timed requests after one warm-up;
p90 and min show the spread on a shared machine. The script never asserts: it reports and exits 0.
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
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from journal import logs
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.events import Draft
from journal.settings import Settings
from projections import db
from projections.worker import Projector, WorkerOptions
from replayer.console import Sessions, create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette 1.x suggests httpx2 for its TestClient; httpx works
    from starlette.testclient import TestClient

console = Console(width=150)
BATCH = 500
TARGET_MS = 300.0


def drafts(thread: str, start: int, n: int, workload: str) -> list[Draft]:
    """Events ``start+1..start+n`` (deterministic in the seq; the workloads of bench_replay.py)."""
    out: list[Draft] = []
    actor = {"agent_id": "bench-bot", "model": "sim"}
    for seq in range(start + 1, start + n + 1):
        if workload == "memory":
            if seq % 50 == 1:
                out.append(Draft(thread, "node_enter", {"node": "work"}, node="work", actor=actor))
            elif seq % 50 == 0:
                out.append(Draft(thread, "node_exit", {"node": "work"}, node="work", actor=actor))
            else:
                out.append(Draft(thread, "memory_set", {"path": ["scratch", f"k{seq % 64}"],
                                                        "value": {"step": seq, "note": f"observation {seq}"}},
                                 actor=actor))
            continue
        i, kind = divmod(seq - 1, 4)
        cid = f"call_{i}"
        if kind == 0:
            out.append(Draft(thread, "message", {"role": "assistant", "content": f"Step {i}: let me check the order "
                                                 "history before deciding.", "tool_calls": [cid]}, actor=actor))
        elif kind == 1:
            out.append(Draft(thread, "tool_call", {"call_id": cid, "tool": "search_orders", "args": {"order": i}},
                             node="tools", actor=actor))
        elif kind == 2:
            out.append(Draft(thread, "tool_result", {"call_id": cid, "tool": "search_orders",
                                                     "output": {"rows": i % 20, "status": "ok"}}, node="tools",
                             actor=actor))
        else:
            out.append(Draft(thread, "memory_set", {"path": ["customer", "last_order"], "value": i}, actor=actor))
    return out


def build(settings: Settings, tenant: str, thread: str, n: int, workload: str) -> float:
    t0 = time.perf_counter()
    with JournalClient.from_settings(settings) as client, console.status(f"appending {n:,} events …"):
        for start in range(0, n, BATCH):
            client.append_many(tenant, drafts(thread, start, min(BATCH, n - start), workload))
    with console.status(f"projecting {n:,} events …"):
        p = Projector(settings, WorkerOptions(batch_size=5000))
        p.drain(tenants=[tenant], timeout=3600)
        p.close()
    return time.perf_counter() - t0


def measure(http: TestClient, url: str, runs: int) -> tuple[list[float], list[float], int]:
    """Server-Timing and wall milliseconds of ``runs`` requests (after one warm-up), and the page size."""
    r = http.get(url)
    assert r.status_code == 200, (url, r.status_code, r.text[-500:])
    server: list[float] = []
    wall: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = http.get(url)
        wall.append((time.perf_counter() - t0) * 1000)
        server.append(float(r.headers["server-timing"].split("dur=")[1]))
    return server, wall, len(r.content)


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, round(0.9 * len(xs)) - 1)]


def bench(settings: Settings, sessions: Sessions, workload: str, n: int, runs: int) -> dict[str, Any]:
    """Build one ``n``-event thread of ``workload``, print the table of its pages' times and return its figures."""
    tenant, thread = f"bench-{uuid.uuid4().hex[:6]}", "long-run"
    built = build(settings, tenant, thread, n, workload)
    console.print(f"built a {n:,}-event {workload} thread in {built:.1f}s")
    reader = db.create_tenant_reader(settings, tenant)
    base = f"/t/{tenant}/threads/{thread}"
    mid = n // 2 + 37
    slow = max(1, min(3, runs))
    pages: list[tuple[str, str, int]] = [
        ("timeline, first screen (seq 1–100)", base, runs),
        (f"timeline, middle page (keyset after={n // 2:,})", f"{base}?after={n // 2}", runs),
        ("timeline, last page", f"{base}?after={n - 100}", runs),
        (f"timeline, jump to seq {mid:,}", f"{base}?seq={mid}", runs),
        (f"state at seq {mid:,} (snapshot + fold)", f"{base}/state?seq={mid}", slow),
        ("state, latest", f"{base}/state", slow),
        (f"diff seq {mid - 1:,} → {mid:,}", f"{base}/diff?from={mid - 1}&to={mid}", slow),
        ("threads of the tenant", f"/t/{tenant}/threads", runs),
        ("threads that called search_orders in 30 days", f"/t/{tenant}/threads?tool=search_orders&days=30", runs),
        (f"chain verdict (recomputes all {n:,} hashes)", f"{base}/verify", slow),
    ]
    table = Table(title=f"audit console, {n:,}-event {workload} thread, as the tenant's reader: median of runs "
                        f"(target: first screen < {TARGET_MS:.0f} ms server time)")
    for col in ("page", "runs", "server median", "server p90", "server min", "wall median", "HTML"):
        table.add_column(col, justify="left" if col == "page" else "right")
    rows: dict[str, float] = {}
    figures: dict[str, Any] = {"events": n, "build_s": built, "target_ms": TARGET_MS, "pages": {}}
    with TestClient(create_app(settings, sessions=sessions), follow_redirects=False) as http:
        r = http.post("/login", data={"user": reader.role, "password": reader.password})
        assert r.status_code == 303, r.text
        for label, url, k in pages:
            with console.status(f"{label} …"):
                server, wall, size = measure(http, url, k)
            rows[label] = statistics.median(server)
            figures["pages"][label] = {"url": url, "runs": k, "server_median_ms": statistics.median(server),
                                       "server_p90_ms": p90(server), "server_min_ms": min(server),
                                       "wall_median_ms": statistics.median(wall), "html_bytes": size}
            table.add_row(label, str(k), f"{statistics.median(server):.1f} ms", f"{p90(server):.1f} ms",
                          f"{min(server):.1f} ms", f"{statistics.median(wall):.1f} ms", f"{size / 1024:,.0f} KB")
    console.print(table)
    first = rows[pages[0][0]]
    verdict = "meets" if first < TARGET_MS else "MISSES"
    console.print(f"first screen of the {n:,}-event {workload} timeline: {first:.1f} ms server time (median), "
                  f"{verdict} the {TARGET_MS:.0f} ms target.")
    figures["first_screen_ms"] = first
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=9, help="timed requests per page (median reported)")
    ap.add_argument("--workloads", default="conversation,memory",
                    help="conversation (the state keeps every message: it grows with the thread) and/or memory "
                         "(bounded working memory)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    logs.configure("warning")
    n = args.events
    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    stack = EmbeddedStack(tmp)
    try:
        with console.status("starting embedded Valkey, PostgreSQL and S3 …"):
            settings = stack.up(("redis", "postgres", "s3"))
            db.migrate(settings)
        sessions = Sessions(settings)
        results = {w: bench(settings, sessions, w, n, args.runs) for w in args.workloads.split(",")}
        sessions.close()
        if args.json:
            Path(args.json).write_text(json.dumps({"events": n, "runs": args.runs, "workloads": results}, indent=2))
    finally:
        with console.status("stopping the embedded servers …"):
            stack.down()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
