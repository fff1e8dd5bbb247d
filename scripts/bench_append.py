#!/usr/bin/env python
"""Benchmark the journal's append path against raw redis-py XADD on the same server.

    python scripts/bench_append.py                       # starts its own embedded Valkey (AOF everysec)
    python scripts/bench_append.py --redis-url redis://127.0.0.1:6379/0 --json out.json

Every figure is measured ``--runs`` times and the MEDIAN of the runs is reported, because this
usually runs on a small shared machine where one noisy run says little. Within a run, the
journal and the raw baseline are interleaved in small blocks, so a burst of foreign load hits
both sides rather than skewing the ratio. The script never asserts: it reports and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from journal import append as protocol
from journal import codec, keys
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.settings import Settings

TOOLS = ("search_orders", "issue_refund", "fetch_invoice", "send_email", "lookup_customer")
WORDS = ("the", "order", "refund", "customer", "invoice", "shipping", "damaged", "policy", "approve", "amount",
         "account", "please", "check", "status", "delivered", "label", "return", "window", "days", "credit")

# Targets from the performance brief.
TARGET_P50_US = 200.0
TARGET_P50_RATIO = 1.5
TARGET_EPS = 50_000.0
TARGET_EPS_RATIO = 0.5
TARGET_BYTES_PER_EVENT = 1024.0

# Latency is interleaved in blocks this long: long enough that each side keeps its connection
# and caches warm, short enough that a few seconds of foreign load lands on both sides.
LATENCY_BLOCK = 250


# -- workload ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Step:
    """One agent step as a writer would append it (thread is filled in by the caller)."""

    type: str
    payload: dict[str, Any]
    node: str | None


def _text(rng: random.Random, lo: int, hi: int) -> str:
    # Word salad of a chosen length: realistic for msgpack (ASCII, no repetition zstd would love).
    target = rng.randint(lo, hi)
    out: list[str] = []
    size = 0
    while size < target:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:target]


def agent_steps(rng: random.Random) -> Iterator[Step]:
    """An endless agent-step mix shaped like journal/demo.py, with 100-400 character messages."""
    yield Step("node_enter", {"node": "planner"}, "planner")
    yield Step("message", {"role": "user", "content": _text(rng, 100, 400)}, None)
    n = 0
    while True:
        n += 1
        call_id = f"call_{n}"
        tool = rng.choice(TOOLS)
        yield Step("message", {"role": "assistant", "content": _text(rng, 100, 400), "tool_calls": [call_id]},
                   "planner")
        yield Step("tool_call", {"call_id": call_id, "tool": tool,
                                 "args": {"order": rng.randint(1, 10**6), "customer": f"cus_{rng.randint(1, 10**5)}",
                                          "include_history": rng.random() < 0.5}}, "tools")
        yield Step("tool_result", {"call_id": call_id, "tool": tool,
                                   "output": {"status": "ok", "rows": rng.randint(0, 20),
                                              "amount": round(rng.uniform(1, 500), 2)}}, "tools")
        yield Step("memory_set", {"path": ["customer", "last_tool"], "value": tool}, "planner")
        if n % 3 == 0:
            yield Step("node_exit", {"node": "planner"}, "planner")
            yield Step("node_enter", {"node": "review"}, "review")
            yield Step("message", {"role": "assistant", "content": _text(rng, 100, 400)}, "review")
            yield Step("node_exit", {"node": "review"}, "review")
            yield Step("node_enter", {"node": "planner"}, "planner")


def actor_for(thread: str, rng: random.Random) -> dict[str, Any]:
    return {"agent_id": f"support-bot-{rng.randint(1, 3)}", "model": "gpt-sim-1", "run_id": thread}


def workload(n: int, threads: list[str], seed: int) -> list[dict[str, Any]]:
    """``n`` Draft mappings round-robin over ``threads``, each thread following its own agent script."""
    rng = random.Random(seed)
    gens = {t: agent_steps(random.Random(rng.random())) for t in threads}
    actors = {t: actor_for(t, rng) for t in threads}
    out = []
    for i in range(n):
        t = threads[i % len(threads)]
        s = next(gens[t])
        out.append({"thread": t, "type": s.type, "payload": s.payload, "node": s.node, "actor": actors[t]})
    return out


def raw_fields(d: dict[str, Any], seq: int) -> dict[str, Any]:
    """The exact stream fields the Lua script writes for draft ``d``, encoded once up front."""
    payload = codec.normalize(d["payload"])
    actor = codec.normalize(dict(d["actor"]))
    body = codec.frame(codec.pack_body(d["type"], payload, d["node"], d.get("idempotency_key"), actor, None))
    return {"t": d["thread"], "s": seq, "ts": int(time.time() * 1000), "b": body}


# -- measurement helpers ------------------------------------------------------------------------------

def pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def time_each(fn: Callable[[Any], object], items: list[Any], out: list[float]) -> None:
    """Call ``fn(item)`` for each item, appending its wall time in µs to ``out``."""
    clock = time.perf_counter_ns
    for item in items:
        t0 = clock()
        fn(item)
        out.append((clock() - t0) / 1000)


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def delete_tenant(r: redis.Redis, tenant: str) -> None:
    """Drop every key of a benchmark tenant, so repeated runs against a shared Redis leave nothing behind."""
    pattern = f"{keys.PREFIX}:{{{tenant}}}:*"
    batch: list[bytes] = []
    for k in r.scan_iter(match=pattern, count=5000):
        batch.append(k)
        if len(batch) >= 5000:
            r.unlink(*batch)
            batch.clear()
    if batch:
        r.unlink(*batch)
    r.srem(keys.TENANT_REGISTRY, tenant)


class Bench:
    """One benchmark session against one server; ``run()`` is one repetition."""

    def __init__(self, url: str, args: argparse.Namespace, console: Console) -> None:
        self.args = args
        self.console = console
        self.settings = Settings(redis_url=url)
        self.client = JournalClient.from_settings(self.settings)
        # A separate connection for the baseline: each side gets one connection, as the brief asks.
        self.raw = redis.Redis.from_url(url)
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}"

    def close(self) -> None:
        self.client.close()
        self.raw.close()

    def server_line(self) -> str:
        info = self.raw.info("server")
        name = info.get("server_name", "redis")
        version = info.get("valkey_version") or info.get("redis_version")
        extra = f" (redis_version {info['redis_version']})" if "valkey_version" in info else ""
        persistence = self.raw.info("persistence")
        aof = "on" if int(persistence.get("aof_enabled", 0)) else "off"
        fsync = self.raw.config_get("appendfsync").get("appendfsync", "?")
        return f"{name} {version}{extra}, AOF {aof}, appendfsync {fsync}"

    # -- 1 + 2: single-append latency vs raw XADD ----------------------------------------------------

    def latency(self, run: int, fig: dict[str, float]) -> None:
        n = self.args.events
        tenant = f"{self.prefix}-lat{run}"
        threads = [f"run-{i:03d}" for i in range(20)]
        drafts = workload(n + self.args.warmup, threads, seed=1000 + run)
        warm, drafts = drafts[: self.args.warmup], drafts[self.args.warmup :]
        stream = f"bench:{{{tenant}}}:raw"
        raws = [raw_fields(d, i + 1) for i, d in enumerate(drafts)]
        c, r = self.client, self.raw

        def journal_one(d: dict[str, Any]) -> object:
            return c.append(tenant, d["thread"], d["type"], d["payload"], node=d["node"], actor=d["actor"])

        # The demo's style: optimistic concurrency plus an idempotency key on every step.
        heads: dict[str, int] = {}

        def journal_guarded(d: dict[str, Any]) -> object:
            th = d["thread"] + "-g"
            seq = heads.get(th, 0)
            rec = c.append(tenant, th, d["type"], d["payload"], node=d["node"], actor=d["actor"],
                           expected_seq=seq, idempotency_key=f"{th}:{seq + 1}")
            heads[th] = rec.seq
            return rec

        def raw_one(f: dict[str, Any]) -> object:
            return r.xadd(stream, f)

        for d in warm:  # connections, script load (EVALSHA cache), allocator and CPU caches
            journal_one(d)
            journal_guarded(d)
            r.xadd(stream, raws[0])
        lat_j: list[float] = []
        lat_g: list[float] = []
        lat_r: list[float] = []
        gc.collect()
        t_j = t_g = t_r = 0.0
        for start in range(0, n, LATENCY_BLOCK):
            block = slice(start, start + LATENCY_BLOCK)
            # Rotate who goes first so neither side always follows the other's cache disturbance.
            order = [("j", drafts[block]), ("g", drafts[block]), ("r", raws[block])]
            k = (start // LATENCY_BLOCK) % 3
            for which, items in order[k:] + order[:k]:
                t0 = time.perf_counter()
                if which == "j":
                    time_each(journal_one, items, lat_j)
                    t_j += time.perf_counter() - t0
                elif which == "g":
                    time_each(journal_guarded, items, lat_g)
                    t_g += time.perf_counter() - t0
                else:
                    time_each(raw_one, items, lat_r)
                    t_r += time.perf_counter() - t0
        for name, lat, total in (("append", lat_j, t_j), ("append_guarded", lat_g, t_g), ("xadd", lat_r, t_r)):
            lat.sort()
            fig[f"{name}_p50_us"] = pct(lat, 50)
            fig[f"{name}_p99_us"] = pct(lat, 99)
            fig[f"{name}_ops_s"] = len(lat) / total
        fig["append_client_us"] = self.client_cpu(tenant, drafts[:2000])
        delete_tenant(r, tenant)
        r.unlink(stream)

    def client_cpu(self, tenant: str, drafts: list[dict[str, Any]]) -> float:
        """µs of pure client work per single append (prepare + parse, no I/O): the journal's Python tax."""
        fake_reply = [b"ok", 0, 1, 1, 0, 1]
        t0 = time.perf_counter()
        for d in drafts:
            p = protocol.prepare(self.settings, tenant, [d])
            protocol.parse_reply(p, fake_reply)
        return (time.perf_counter() - t0) / len(drafts) * 1e6

    # -- 3 + 4: batch throughput vs raw pipelined XADD ---------------------------------------------

    def throughput(self, run: int, batch: int, fig: dict[str, float]) -> None:
        n = max(batch, self.args.batch_events // batch * batch)
        tenant = f"{self.prefix}-tp{batch}-{run}"
        threads = [f"run-{i:03d}" for i in range(20)]
        drafts = workload(n, threads, seed=2000 + run)
        stream = f"bench:{{{tenant}}}:raw"
        raws = [raw_fields(d, i + 1) for i, d in enumerate(drafts)]
        batches = [(drafts[i : i + batch], raws[i : i + batch]) for i in range(0, n, batch)]
        c, r = self.client, self.raw
        pipe = r.pipeline(transaction=False)

        def raw_batch(fields: list[dict[str, Any]]) -> None:
            for f in fields:
                pipe.xadd(stream, f)
            pipe.execute()

        # Warm-up: one call each, outside the clock (creates the stream, registers the tenant).
        c.append_many(tenant, batches[0][0])
        raw_batch(batches[0][1])
        gc.collect()
        t_j = t_r = 0.0
        clock = time.perf_counter
        for i, (jd, rf) in enumerate(batches):
            # Alternate which side goes first, call by call, for the same reason as in latency().
            if i % 2:
                t0 = clock()
                raw_batch(rf)
                t1 = clock()
                c.append_many(tenant, jd)
                t_j += clock() - t1
                t_r += t1 - t0
            else:
                t0 = clock()
                c.append_many(tenant, jd)
                t1 = clock()
                raw_batch(rf)
                t_j += t1 - t0
                t_r += clock() - t1
        fig[f"append_many_{batch}_eps"] = n / t_j
        fig[f"xadd_pipe_{batch}_eps"] = n / t_r
        delete_tenant(r, tenant)
        r.unlink(stream)

    # -- 5: memory per hot event ---------------------------------------------------------------------

    def memory(self, run: int, idem: bool, fig: dict[str, float]) -> None:
        n = self.args.memory_events
        tag = "mi" if idem else "mn"
        tenants = [f"{self.prefix}-{tag}{run}-{k}" for k in range(5)]
        threads = [f"run-{i:03d}" for i in range(20)]  # 5 tenants x 20 threads = 100 agent threads
        drafts = workload(n, [f"{t}/{th}" for t in tenants for th in threads], seed=3000 + run)
        counters: dict[str, int] = {}
        per_tenant: dict[str, list[dict[str, Any]]] = {t: [] for t in tenants}
        for d in drafts:
            tenant, thread = d["thread"].split("/")
            seq = counters[d["thread"]] = counters.get(d["thread"], 0) + 1
            d = {**d, "thread": thread}
            if idem and seq % 2 == 0:  # agents retry with keys on about half their steps
                d["idempotency_key"] = f"{thread}:{seq}:{uuid.uuid4().hex[:12]}"
            per_tenant[tenant].append(d)
        r = self.raw
        gc.collect()
        r.ping()
        before = used_memory(r)
        for tenant, ds in per_tenant.items():
            for i in range(0, len(ds), 200):
                self.client.append_many(tenant, ds[i : i + 200])
        after = used_memory(r)
        fig[f"mem_{tag}_bytes_per_event"] = (after - before) / n
        # Breakdown for the report: where the bytes sit (MEMORY USAGE samples every element with SAMPLES 0).
        stream_b = sum(int(r.memory_usage(keys.stream(t), samples=0) or 0) for t in tenants)
        heads_b = sum(int(r.memory_usage(keys.heads(t), samples=0) or 0) for t in tenants)
        fig[f"mem_{tag}_stream_bytes_per_event"] = stream_b / n
        fig[f"mem_{tag}_heads_bytes_per_event"] = heads_b / n
        if idem:
            # What neither the stream nor the heads hash explains is the idempotency keys (plus their TTL entries).
            fig[f"mem_{tag}_idem_bytes_per_key"] = (after - before - stream_b - heads_b) / (n / 2)
        for t in tenants:
            delete_tenant(r, t)

    def run(self, run: int) -> dict[str, float]:
        fig: dict[str, float] = {}
        self.latency(run, fig)
        for b in self.args.batch_sizes:
            self.throughput(run, b, fig)
        # Alternate which memory variant runs first: allocator state left by one skews the other a little.
        for idem in ((True, False) if run % 2 == 0 else (False, True)):
            self.memory(run, idem, fig)
        return fig


# -- report -------------------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "[green]OK[/green]" if ok else "[red]MISS[/red]"


def report(console: Console, med: dict[str, float], args: argparse.Namespace, header: str) -> None:
    t = Table(title=header)
    t.add_column("measurement")
    t.add_column("value", justify="right")
    t.add_column("target", justify="right")
    t.add_column("ratio / verdict")
    a50, x50 = med["append_p50_us"], med["xadd_p50_us"]
    t.add_row("append p50 (single, 1 conn)", f"{a50:,.0f} µs", f"≤ {TARGET_P50_US:.0f} µs",
              verdict(a50 <= TARGET_P50_US))
    t.add_row("append p99", f"{med['append_p99_us']:,.0f} µs", "", "")
    t.add_row("append rate (sequential)", f"{med['append_ops_s']:,.0f} /s", "", "")
    t.add_row("raw XADD p50 (same bytes)", f"{x50:,.0f} µs", "", "")
    t.add_row("raw XADD p99", f"{med['xadd_p99_us']:,.0f} µs", "", "")
    t.add_row("raw XADD rate (sequential)", f"{med['xadd_ops_s']:,.0f} /s", "", "")
    ratio = med["ratio_p50"]
    t.add_row("append p50 / raw XADD p50", f"{ratio:.2f}×", f"≤ {TARGET_P50_RATIO}×",
              verdict(ratio <= TARGET_P50_RATIO))
    t.add_row("  append p50 w/ expected_seq + idem key", f"{med['append_guarded_p50_us']:,.0f} µs", "", "info")
    t.add_row("  append p99 w/ expected_seq + idem key", f"{med['append_guarded_p99_us']:,.0f} µs", "", "info")
    t.add_row("  client CPU per append (prepare+parse)", f"{med['append_client_us']:,.0f} µs", "", "info")
    for b in args.batch_sizes:
        eps, raw = med[f"append_many_{b}_eps"], med[f"xadd_pipe_{b}_eps"]
        r = med[f"ratio_eps_{b}"]
        t.add_row(f"append_many ×{b} events/s", f"{eps:,.0f} /s", f"≥ {TARGET_EPS:,.0f} /s", verdict(eps >= TARGET_EPS))
        t.add_row(f"raw pipelined XADD ×{b} events/s", f"{raw:,.0f} /s", "", "")
        t.add_row(f"append_many / raw pipelined (×{b})", f"{r:.2f}×", f"≥ {TARGET_EPS_RATIO}×",
                  verdict(r >= TARGET_EPS_RATIO))
    mi, mn = med["mem_mi_bytes_per_event"], med["mem_mn_bytes_per_event"]
    t.add_row("memory / hot event (½ with idem key)", f"{mi:,.0f} B", f"≤ {TARGET_BYTES_PER_EVENT:,.0f} B",
              verdict(mi <= TARGET_BYTES_PER_EVENT))
    t.add_row("  of which stream / heads (per event)", f"{med['mem_mi_stream_bytes_per_event']:,.0f} / "
              f"{med['mem_mi_heads_bytes_per_event']:,.1f} B", "", "info")
    t.add_row("  of which idempotency key (per keyed event)", f"{med['mem_mi_idem_bytes_per_key']:,.0f} B", "", "info")
    t.add_row("memory / hot event (no idem keys)", f"{mn:,.0f} B", f"≤ {TARGET_BYTES_PER_EVENT:,.0f} B",
              verdict(mn <= TARGET_BYTES_PER_EVENT))
    console.print(t)


def medians(runs: list[dict[str, float]], batch_sizes: list[int]) -> dict[str, float]:
    # Ratios are computed per run first and then take the median, so a ratio pairs numbers measured together.
    for fig in runs:
        fig["ratio_p50"] = fig["append_p50_us"] / fig["xadd_p50_us"]
        for b in batch_sizes:
            fig[f"ratio_eps_{b}"] = fig[f"append_many_{b}_eps"] / fig[f"xadd_pipe_{b}_eps"]
    return {k: statistics.median(f[k] for f in runs) for k in runs[0]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=3000, help="single appends timed per run and per contender")
    ap.add_argument("--runs", type=int, default=5, help="repetitions; the median of each figure is reported")
    ap.add_argument("--redis-url", default=os.environ.get("JOURNAL_REDIS_URL"),
                    help="use this server instead of starting an embedded Valkey (default: $JOURNAL_REDIS_URL)")
    ap.add_argument("--json", type=Path, help="write the raw per-run numbers and medians here")
    ap.add_argument("--warmup", type=int, default=300, help="untimed appends per contender before each run")
    ap.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100, 500])
    ap.add_argument("--batch-events", type=int, default=20_000, help="events per batch size per run")
    ap.add_argument("--memory-events", type=int, default=20_000, help="events per memory measurement (≥ 20,000)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # rich falls back to 80 columns when piped, which wraps the table; a log file is better unwrapped.
    console = Console(width=None if sys.stdout.isatty() else 120)
    stack: EmbeddedStack | None = None
    tmp: str | None = None
    url = args.redis_url
    try:
        if not url:
            tmp = tempfile.mkdtemp(prefix="bench-append-")
            stack = EmbeddedStack(tmp)
            url = stack.up(("redis",)).redis_url or ""
        bench = Bench(url, args, console)
        try:
            server = bench.server_line()
            cpus = os.cpu_count() or 0
            affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
            shown = re.sub(r"//[^@/]*@", "//", url)  # never print credentials
            console.print(f"server: {server} at {shown}{' (embedded)' if stack else ''}")
            console.print(f"client: Python {sys.version.split()[0]}, redis-py {redis.__version__}, "
                          f"{cpus} CPUs ({affinity} usable), load average {os.getloadavg()[0]:.2f}")
            runs: list[dict[str, float]] = []
            started = time.perf_counter()
            for i in range(args.runs):
                t0 = time.perf_counter()
                runs.append(bench.run(i))
                f = runs[-1]
                console.print(f"run {i + 1}/{args.runs} ({time.perf_counter() - t0:.1f}s): append p50 "
                              f"{f['append_p50_us']:.0f} µs vs XADD {f['xadd_p50_us']:.0f} µs; append_many "
                              + ", ".join(f"×{b} {f[f'append_many_{b}_eps']:,.0f}/s" for b in args.batch_sizes)
                              + f"; {f['mem_mi_bytes_per_event']:.0f} B/event", highlight=False)
            med = medians(runs, args.batch_sizes)
            header = (f"append benchmark: median of {args.runs} runs, {args.events} single appends, "
                      f"{args.batch_events} batched and {args.memory_events} memory events per run")
            report(console, med, args, header)
            console.print(f"server: {server}; CPUs: {cpus}; load average now "
                          f"{os.getloadavg()[0]:.2f}; total {time.perf_counter() - started:.0f}s", highlight=False)
            if args.json:
                args.json.write_text(json.dumps({
                    "server": server, "url": url, "embedded": stack is not None, "cpu_count": cpus,
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "median": med, "runs": runs,
                }, indent=2))
        finally:
            bench.close()
    finally:
        if stack is not None:
            stack.down(("redis",))
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
