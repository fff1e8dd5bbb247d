"""Fault: PostgreSQL stopped under load. Appends keep flowing into Redis; the projector backs off and catches up.

Runs on the module's private stack (``private_stack``): it stops PostgreSQL.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from conftest import assert_exactly_once

from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.settings import Settings
from projections.worker import Projector, WorkerOptions

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}

OUTAGE_SECONDS = 20.0


class Load:
    """Writer threads appending continuously (memory and fsync); every failure is kept, every head recorded."""

    def __init__(self, settings: Settings, tenants: list[str], writers: int = 4) -> None:
        self.settings = settings
        self.tenants = tenants
        self.heads: dict[tuple[str, str], int] = {}
        self.failures: list[str] = []
        self.acked = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, args=(w,)) for w in range(writers)]

    def _write(self, w: int) -> None:
        rng = random.Random(w)
        level = "fsync" if w % 2 else "memory"
        tenant = self.tenants[w % len(self.tenants)]
        with JournalClient.from_settings(self.settings) as client:
            i = 0
            while not self.stop.is_set():
                try:
                    ev = client.append(tenant, f"w{w}-th{rng.randrange(4)}", "message", {**MSG, "w": w, "i": i},
                                       durability=level)
                except Exception as e:  # any refusal at all is a failure of this test
                    with self.lock:
                        self.failures.append(f"{type(e).__name__}: {e}")
                    time.sleep(0.05)
                    continue
                i += 1
                with self.lock:
                    self.acked += 1
                    self.heads[(tenant, ev.thread)] = ev.seq
                time.sleep(0.004)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self.lock:
            return dict(self.heads)


def verified_heads(pg: Any, tenants: list[str]) -> dict[tuple[str, str], int]:
    return {(t, th): s for t, th, s in pg.execute(
        "SELECT tenant_id, thread_id, last_seq FROM journal.threads WHERE tenant_id = ANY(%s)", (tenants,))}


def wait_caught_up(pg: Any, tenants: list[str], target: dict[tuple[str, str], int], timeout: float) -> float:
    """Seconds until PostgreSQL's verified head reaches ``target`` on every thread."""
    t0 = time.monotonic()
    while True:
        have = verified_heads(pg, tenants)
        if all(have.get(k, 0) >= v for k, v in target.items()):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            behind = {k: (have.get(k, 0), v) for k, v in target.items() if have.get(k, 0) < v}
            raise AssertionError(f"projector did not catch up within {timeout}s; behind (have, want): {behind}")
        time.sleep(0.1)


def run_projector(settings: Settings, options: WorkerOptions) -> tuple[Projector, threading.Thread]:
    p = Projector(settings, options)
    t = threading.Thread(target=p.run, daemon=True)
    t.start()
    return p, t


def test_postgres_stopped_20s_appends_flow_and_projector_catches_up(
        private_stack: EmbeddedStack, fault_settings: Settings, admin_connect: Callable[..., Any],
        record_property: Callable[[str, object], None]) -> None:
    """PostgreSQL down for 20 s under load: no append fails, the projector backs off, then every event is in
    PostgreSQL exactly once with verifying chains; the catch-up time is reported."""
    run = uuid.uuid4().hex[:6]
    tenants = [f"pgdown-{run}-{i}" for i in range(2)]
    # Default claim_idle_ms (30 s): catching up must not wait for a claim of the batch held when PostgreSQL went.
    projector, worker = run_projector(fault_settings, WorkerOptions(maintenance_every=1.0))
    peak = 0
    try:
        with Load(fault_settings, tenants) as load:
            time.sleep(2.0)
            private_stack.stop("postgres")
            down_at = time.monotonic()
            while time.monotonic() - down_at < OUTAGE_SECONDS:
                time.sleep(0.5)
                peak = max(peak, projector.backlog(tenants))
            acked_during = load.acked
            private_stack.start("postgres")
            target = load.snapshot()  # everything acknowledged before PostgreSQL came back
            pg = admin_connect(fault_settings)
            try:
                catch_up = wait_caught_up(pg, tenants, target, timeout=90)
            finally:
                pg.close()
            time.sleep(0.5)
        final = load.snapshot()
        pg = admin_connect(fault_settings)
        try:
            wait_caught_up(pg, tenants, final, timeout=60)
            for t in tenants:
                assert_exactly_once(pg, t, {th: h for (tt, th), h in final.items() if tt == t})
        finally:
            pg.close()
        assert projector.backlog(tenants) == 0
    finally:
        projector.stop()
        worker.join(30)
    assert not worker.is_alive(), "the projector did not stop"
    assert load.failures == [], f"{len(load.failures)} appends failed while PostgreSQL was down: {load.failures[:5]}"
    assert peak > 0, "no backlog built up: the outage was not seen"
    print(f"\npostgres down {OUTAGE_SECONDS:.0f}s: {acked_during} appends acknowledged by then, peak backlog {peak}, "
          f"catch-up {catch_up:.2f}s after PostgreSQL was back, {load.acked} events in all")
    record_property("catch_up_seconds", round(catch_up, 2))
    record_property("peak_backlog", peak)
    record_property("events", load.acked)


def test_postgres_blip_projector_retries_its_own_batch_without_claim(
        private_stack: EmbeddedStack, fault_settings: Settings, admin_connect: Callable[..., Any]) -> None:
    """After a short PostgreSQL outage the projector re-projects the batch it held, without waiting for a claim."""
    run = uuid.uuid4().hex[:6]
    tenants = [f"pgblip-{run}"]
    projector, worker = run_projector(fault_settings, WorkerOptions(claim_idle_ms=3_600_000, maintenance_every=1.0))
    try:
        with Load(fault_settings, tenants, writers=2) as load:
            time.sleep(1.0)
            private_stack.stop("postgres")
            time.sleep(2.0)
            private_stack.start("postgres")
            time.sleep(1.0)
        final = load.snapshot()
        pg = admin_connect(fault_settings)
        try:
            wait_caught_up(pg, tenants, final, timeout=8)
        finally:
            pg.close()
    finally:
        projector.stop()
        worker.join(30)
