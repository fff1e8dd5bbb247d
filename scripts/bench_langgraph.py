#!/usr/bin/env python
"""Benchmark the LangGraph checkpointer on the journal: a graph whose ``messages`` channel grows each step.

One thread runs ``--steps`` supersteps (each appends one ~200-byte message and bumps a counter),
checkpointed by ``JournalSaver`` and, for comparison, LangGraph's ``InMemorySaver``. Reported:

* ms per superstep (whole ``invoke``, divided by the steps) for both savers;
* journal bytes per checkpoint event (the payload as JSON): the first, the last and the total, which
  shows what a growing channel costs: each checkpoint stores the whole new value of every channel
  that changed (no deltas), so the total grows with the square of the steps;
* ``get_tuple`` of the latest checkpoint, warm (the saver's cached index: one read of nothing new)
  and cold (a new saver folding the whole thread), the MEDIAN of ``--runs``.

    python scripts/bench_langgraph.py                 # starts its own embedded stack in a temp dir
    python scripts/bench_langgraph.py --steps 500 --runs 7

The script never asserts: it reports and exits 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from rich.console import Console
from rich.table import Table

from journal import logs
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from projections import db
from replayer.langgraph import CHECKPOINT, JournalSaver, decode_value


class State(TypedDict):
    messages: list[str]
    n: int


def graph(saver: BaseCheckpointSaver[Any], steps: int) -> Any:
    def step(state: State) -> dict[str, Any]:
        # A new list each step, as add_messages does: the channel's value grows by one message.
        return {"messages": [*state["messages"], f"message {state['n']}: " + "x" * 180], "n": state["n"] + 1}

    g = StateGraph(State)
    g.add_node("step", step)
    g.add_edge(START, "step")
    g.add_conditional_edges("step", lambda s: "step" if s["n"] < steps else END, ["step", END])
    return g.compile(checkpointer=saver)


def run(saver: BaseCheckpointSaver[Any], thread: str, steps: int) -> float:
    t0 = time.perf_counter()
    graph(saver, steps).invoke({"messages": [], "n": 0},
                               {"configurable": {"thread_id": thread}, "recursion_limit": steps * 2 + 10})
    return (time.perf_counter() - t0) * 1000 / steps


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    logs.configure()
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="bench-langgraph-"))
    stack = EmbeddedStack(tmp)
    try:
        settings = stack.up(("redis", "postgres", "s3"))
        db.migrate(settings)
        tenant, thread = f"bench-{uuid.uuid4().hex[:8]}", "lg-bench"
        with JournalClient.from_settings(settings) as client:
            journal_ms = run(JournalSaver(client, tenant=tenant), thread, args.steps)
            memory_ms = run(InMemorySaver(), thread, args.steps)
            checkpoints = [e.payload for e in client.read(tenant, thread) if e.type == CHECKPOINT]
            sizes = [len(json.dumps(p)) for p in checkpoints]
            last = checkpoints[-1]
            stored = [b["value"] for b in last["blobs"].values() if b["value"]] + [last["checkpoint"], last["metadata"]]
            raw = sum(len(decode_value(v)[1]) for v in stored)
            events = client.head(tenant, thread)
            config: RunnableConfig = {"configurable": {"thread_id": thread}}
            warm_saver = JournalSaver(client, tenant=tenant)
            warm = median_ms(lambda: warm_saver.get_tuple(config), args.runs)
            cold = median_ms(lambda: JournalSaver(client, tenant=tenant).get_tuple(config), args.runs)
        table = Table(title=f"LangGraph on the journal: {args.steps} supersteps, one growing channel")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_row("ms / superstep, JournalSaver", f"{journal_ms:.2f}")
        table.add_row("ms / superstep, InMemorySaver", f"{memory_ms:.2f}")
        table.add_row("journal events (checkpoints + writes)", f"{events} ({len(sizes)} checkpoints)")
        table.add_row("bytes, first / last checkpoint event", f"{sizes[0]:,} / {sizes[-1]:,}")
        table.add_row("serializer bytes in the last one (stored as base64)", f"{raw:,}")
        table.add_row("bytes, all checkpoint events", f"{sum(sizes):,}")
        table.add_row(f"get_tuple latest, warm (median of {args.runs}) ms", f"{warm:.2f}")
        table.add_row(f"get_tuple latest, cold: fold {events} events (median) ms", f"{cold:.2f}")
        console.print(table)
    finally:
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
