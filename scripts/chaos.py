#!/usr/bin/env python
"""Chaos soak: load on a private embedded stack while servers and the projector are killed at random.

    python scripts/chaos.py --minutes 10                  # the soak
    python scripts/chaos.py --minutes 2 --seed 7 --json chaos.json
    python scripts/chaos.py --minutes 2 --seed 2 --final-outage 30   # end on a fault: catch-up speed

Starts its own EmbeddedStack (Valkey, PostgreSQL, S3) in a temporary folder, migrates it, runs one
projector worker as a subprocess (``python -m journal.cli project --no-migrate --claim-idle-ms 2000``,
so it can be SIGKILLed), and writer threads appending over a few tenants and threads: durability mixed
("memory" and "fsync"; one writer "projected"), some payloads over the blob threshold (S3), some appends with an
idempotency key retried after a failure and replayed after a success. Meanwhile, one fault at a time:

* ``projector_kill``  SIGKILL the projector process, start a new one;
* ``redis_kill``      SIGKILL Valkey, restart it 0.5-2 s later (same port, same AOF);
* ``postgres_stop``   stop PostgreSQL for 5-20 s;
* ``s3_stop``         stop the S3 server for 2-5 s.

With ``--final-outage S`` the load ends with PostgreSQL stopped for S seconds and the projector
SIGKILLed with its round delivered, so the final drain measures catch-up after a fault from a
backlog of known size (reported with its events/s).

At the end the servers are all up, the load stops, one in-process projector drains everything, and
the script checks every acknowledged event against PostgreSQL (and the conflicts table, and the Redis
tail), every thread's hash chain, and prints a table. Loopback only; it stops by itself and removes
its folder (``--keep`` keeps it). Exit code 1 if an event acknowledged with "fsync" or "projected" is
lost, an idempotent replay got another seq, an event references a blob missing from S3, or a chain
does not verify; 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.table import Table

from journal import codec, keys
from journal.chain import GENESIS, key_bytes, link
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.errors import BlobError, JournalError, ThreadFenced
from journal.redis_store import connect as redis_connect
from journal.settings import Settings
from projections import db
from projections.metrics import measure_lag
from projections.worker import Projector, WorkerOptions

console = Console()
LEVELS = ("memory", "fsync", "projected")
FAULTS = ("projector_kill", "redis_kill", "postgres_stop", "s3_stop")
BIG_BYTES = 150_000  # over the default 100 kB blob threshold


@dataclass
class Ledger:
    """Everything the writers were told, shared by the writer threads under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    attempted: int = 0
    calls: int = 0
    big_attempted: int = 0
    #: (tenant, thread, seq) -> (payload id, level) of every acknowledged append
    acked: dict[tuple[str, str, int], tuple[str, str]] = field(default_factory=dict)
    #: the same seq acknowledged again with another payload id (a reissued seq)
    reacked: list[tuple[tuple[str, str, int], str, str]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    gave_up: int = 0
    idem_retries: int = 0
    idem_replays: int = 0
    idem_mismatch: list[str] = field(default_factory=list)
    fenced: set[tuple[str, str]] = field(default_factory=set)


@dataclass
class Chaos:
    stack: EmbeddedStack
    settings: Settings
    tenants: list[str]
    rng: random.Random
    log_dir: Path
    ledger: Ledger = field(default_factory=Ledger)
    faults: Counter[str] = field(default_factory=Counter)
    restart_failures: Counter[str] = field(default_factory=Counter)
    fault_seconds: Counter[str] = field(default_factory=Counter)
    projector_exits: list[str] = field(default_factory=list)
    max_lag_events: int = 0
    max_lag_seconds: float = 0.0
    lag_samples: int = 0
    #: (seconds since start, entries not yet acknowledged by the projector), one per sample
    lag_series: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    proc: subprocess.Popen[bytes] | None = None
    proc_lock: threading.Lock = field(default_factory=threading.Lock)
    restarts: int = 0
    writers: int = 6

    # -- the projector subprocess --------------------------------------------------------------------

    def start_projector(self) -> None:
        env = {**os.environ, "JOURNAL_REDIS_URL": self.settings.redis_url or "",
               "JOURNAL_DATABASE_URL": self.settings.database_url or "", "JOURNAL_S3_URL": self.settings.s3_url or "",
               "JOURNAL_DATA_DIR": str(self.stack.data_dir)}
        self.restarts += 1
        err = open(self.log_dir / f"projector-{self.restarts}.log", "wb")  # noqa: SIM115 (the child owns it)
        self.proc = subprocess.Popen([sys.executable, "-m", "journal.cli", "--log-level", "info", "project",
                                      "--no-migrate", "--claim-idle-ms", "2000"], env=env, stdout=subprocess.DEVNULL,
                                     stderr=err, stdin=subprocess.DEVNULL)
        err.close()

    def kill_projector(self) -> None:
        with self.proc_lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
            self.start_projector()

    def watch_projector(self) -> None:
        """A projector that exits by itself is a finding: record its exit and the tail of its log, restart it."""
        with self.proc_lock:
            if self.proc is not None and self.proc.poll() is not None:
                log = self.log_dir / f"projector-{self.restarts}.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
                self.projector_exits.append(f"exit {self.proc.returncode}: {' | '.join(tail)[-600:]}")
                self.start_projector()

    def stop_projector(self) -> None:
        with self.proc_lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)

    # -- load --------------------------------------------------------------------------------------------

    def writer(self, w: int) -> None:
        rng = random.Random(self.rng.random())
        led = self.ledger
        threads = [f"w{w}-th{k}" for k in range(4)]
        client = JournalClient.from_settings(self.settings)
        i = 0
        try:
            while not self.stop.is_set():
                k = rng.randrange(len(threads))
                tenant = self.tenants[(w + k) % len(self.tenants)]
                pid = f"{w}-{i}"
                i += 1
                # One writer waits for "projected" (it stalls while PostgreSQL is down); the others mix memory/fsync.
                level = "projected" if w == self.writers - 1 else rng.choice(("memory", "fsync"))
                big = rng.random() < 0.02
                keyed = rng.random() < 0.3
                payload: dict[str, Any] = {"role": "user", "content": "x" * rng.randrange(400), "id": pid, "w": w}
                if big:
                    payload["doc"] = secrets.token_hex(BIG_BYTES // 2)
                with led.lock:
                    led.attempted += 1
                    led.big_attempted += big
                tries = 4 if keyed else 1  # only a keyed append may be retried safely
                for attempt in range(tries):
                    if self.stop.is_set():
                        break
                    with led.lock:
                        led.calls += 1
                        led.idem_retries += attempt > 0
                    try:
                        ev = client.append(tenant, threads[k], "message", payload,
                                           idempotency_key=pid if keyed else None, durability=level)
                    except ThreadFenced as e:
                        with led.lock:
                            led.fenced.add((tenant, e.thread))
                            led.errors["ThreadFenced"] += 1
                        threads[k] = f"w{w}-th{k}-n{i}"  # the operator's now; continue on a new thread
                        break
                    except JournalError as e:
                        with led.lock:
                            led.errors[type(e).__name__] += 1
                        time.sleep(0.2)
                        continue
                    self._ack(tenant, ev.thread, ev.seq, pid, level)
                    if keyed and rng.random() < 0.1:  # replay a success: the same seq, nothing written
                        try:
                            again = client.append(tenant, threads[k], "message", payload, idempotency_key=pid,
                                                  durability="memory")
                        except JournalError as e:
                            with led.lock:
                                led.errors[type(e).__name__] += 1
                        else:
                            with led.lock:
                                led.idem_replays += 1
                                if again.seq != ev.seq:
                                    led.idem_mismatch.append(f"{tenant}/{ev.thread} {pid}: {ev.seq} then {again.seq}")
                    break
                else:
                    with led.lock:
                        led.gave_up += 1
                time.sleep(rng.uniform(0.002, 0.01))
        finally:
            client.close()

    def _ack(self, tenant: str, thread: str, seq: int, pid: str, level: str) -> None:
        led = self.ledger
        with led.lock:
            prev = led.acked.get((tenant, thread, seq))
            if prev is not None and prev[0] != pid:
                led.reacked.append(((tenant, thread, seq), prev[0], pid))
            if prev is None or prev[0] != pid or LEVELS.index(level) > LEVELS.index(prev[1]):
                led.acked[(tenant, thread, seq)] = (pid, level)

    # -- faults and lag -------------------------------------------------------------------------------

    def injector(self, deadline: float) -> None:
        weights = {"projector_kill": 3, "redis_kill": 3, "postgres_stop": 2, "s3_stop": 2}
        while not self.stop.wait(self.rng.uniform(2.0, 8.0)):
            if time.monotonic() > deadline - 25:  # leave the end of the run calm
                return
            kind = self.rng.choices(list(weights), weights=list(weights.values()))[0]
            t0 = time.monotonic()
            try:
                self.inject(kind)
            except Exception as e:  # a server that will not come back is a finding, not the end of the soak
                self.restart_failures[kind] += 1
                console.log(f"[red]fault {kind}: restart failed: {e}[/]")
                time.sleep(1.0)
                self.stack.up()
            self.faults[kind] += 1
            self.fault_seconds[kind] += time.monotonic() - t0
            console.log(f"fault {kind} ({time.monotonic() - t0:.1f}s)")

    def inject(self, kind: str) -> None:
        if kind == "projector_kill":
            self.kill_projector()
        elif kind == "redis_kill":
            self.stack.kill("redis")
            time.sleep(self.rng.uniform(0.5, 2.0))
            self.stack.start("redis")
        elif kind == "postgres_stop":
            self.stack.stop("postgres")
            time.sleep(self.rng.uniform(5.0, 20.0))
            self.stack.start("postgres")
        else:
            self.stack.stop("s3")
            time.sleep(self.rng.uniform(2.0, 5.0))
            self.stack.start("s3")

    def sampler(self) -> None:
        assert self.settings.redis_url
        r = redis_connect(self.settings.redis_url)
        t0 = time.monotonic()
        try:
            while not self.stop.wait(1.0):
                self.watch_projector()
                try:
                    lags = measure_lag(r, self.tenants)
                except Exception:  # Valkey is down right now: no sample
                    continue
                self.lag_samples += 1
                backlog = sum(x.undelivered + x.pending for x in lags)
                self.lag_series.append((round(time.monotonic() - t0, 1), backlog))
                self.max_lag_events = max(self.max_lag_events, backlog)
                self.max_lag_seconds = max([self.max_lag_seconds, *(x.seconds for x in lags)])
        finally:
            r.close()


# -- the final check ------------------------------------------------------------------------------------


def check(c: Chaos) -> dict[str, Any]:
    """Compare what was acknowledged with PostgreSQL, the conflicts table and the Redis tail; verify chains."""
    hash_key = key_bytes(c.settings.hash_key)
    with db.connect(c.settings, role=None, autocommit=True) as pg:
        rows = pg.execute("SELECT tenant_id, thread_id, seq, ts_ms, body, prev_hash, hash FROM journal.events "
                          "WHERE tenant_id = ANY(%s) ORDER BY tenant_id, thread_id, seq", (c.tenants,)).fetchall()
        conflict_rows = pg.execute("SELECT tenant_id, thread_id, seq, existing_body, incoming_body FROM "
                                   "journal.conflicts WHERE tenant_id = ANY(%s)", (c.tenants,)).fetchall()
        dead = pg.execute("SELECT count(*) FROM journal.dead_letters WHERE tenant_id = ANY(%s)",
                          (c.tenants,)).fetchone()[0]
        thread_rows = pg.execute("SELECT tenant_id, thread_id, last_seq, event_count, fenced FROM journal.threads "
                                 "WHERE tenant_id = ANY(%s)", (c.tenants,)).fetchall()
    client = JournalClient.from_settings(c.settings)
    missing_blobs: list[str] = []

    def pid_of(ev: Any) -> Any:
        """The payload id of an event, its offloaded payload fetched from S3 (a missing blob is a finding)."""
        if ev.blob is not None:
            try:
                ev = client.resolve(ev)
            except BlobError as e:
                missing_blobs.append(f"{ev.tenant}/{ev.thread}#{ev.seq}: {e}")
                return None
        return ev.payload.get("id") if isinstance(ev.payload, dict) else None

    try:
        stored: dict[tuple[str, str, int], str] = {}
        per_thread: dict[tuple[str, str], list[Any]] = defaultdict(list)
        pids: Counter[str] = Counter()
        for t, th, s, ts, body, prev, h in rows:
            ev = codec.decode_body(t, th, s, ts, bytes(body))
            pid = pid_of(ev)
            stored[(t, th, s)] = pid
            pids[pid] += 1
            per_thread[(t, th)].append((s, ev, None if prev is None else bytes(prev),
                                        None if h is None else bytes(h)))
        in_conflicts: dict[tuple[str, str, int], set[str]] = defaultdict(set)
        for t, th, s, old, new in conflict_rows:
            for body in (old, new):
                in_conflicts[(t, th, s)].add(pid_of(codec.decode_body(t, th, s, 0, bytes(body))))
        hot: set[tuple[str, str, int, str]] = set()
        for t in c.tenants:
            for sid, fields in client.redis.xrange(keys.stream(t)):
                ev = codec.decode_entry(t, fields, sid.decode())
                hot.add((t, ev.thread, ev.seq, pid_of(ev)))
    finally:
        client.close()

    led = c.ledger
    acked_by: Counter[str] = Counter(level for _, level in led.acked.values())
    lost: dict[str, list[str]] = defaultdict(list)
    only_conflicts: Counter[str] = Counter()
    only_redis: Counter[str] = Counter()
    for key, (pid, level) in led.acked.items():
        if stored.get(key) == pid:
            continue
        if pid in in_conflicts.get(key, ()):
            only_conflicts[level] += 1
        elif (*key, pid) in hot:
            only_redis[level] += 1
        else:
            lost[level].append(f"{key[0]}/{key[1]}#{key[2]} {pid}")

    chain_failures: list[str] = []
    unchained = 0
    for (t, th), evs in per_thread.items():
        h = GENESIS
        for n, (s, ev, prev, stored_hash) in enumerate(evs, start=1):
            if stored_hash is None:
                unchained += len(evs) - n + 1
                break
            if s != n or prev != h or link(h, ev, hash_key) != stored_hash:
                chain_failures.append(f"{t}/{th} first bad seq {s}")
                break
            h = stored_hash
    heads_wrong = [f"{t}/{th}: last_seq {last} count {count}" for t, th, last, count, _ in thread_rows
                   if last != sum(1 for s, *_ in per_thread.get((t, th), []) if s <= last) or count < last]
    return {
        "attempted": led.attempted,
        "calls": led.calls,
        "big_attempted": led.big_attempted,
        "acked": {lvl: acked_by.get(lvl, 0) for lvl in LEVELS},
        "projected": len(stored),
        "lost": {lvl: len(lost.get(lvl, [])) for lvl in LEVELS},
        "lost_examples": {lvl: v[:5] for lvl, v in lost.items()},
        "acked_only_in_conflicts": dict(only_conflicts),
        "acked_only_in_redis": dict(only_redis),
        "reissued_seqs_acked": len(led.reacked),
        "duplicate_payloads_in_pg": sum(1 for pid, n in pids.items() if n > 1 and pid is not None),
        "conflicts": len(conflict_rows),
        "fenced_threads": sum(1 for *_, fenced in thread_rows if fenced),
        "dead_letters": dead,
        "missing_blobs": missing_blobs[:10],
        "chain_failures": chain_failures,
        "unchained_events": unchained,
        "thread_rows_inconsistent": heads_wrong[:10],
        "idempotent_retries": led.idem_retries,
        "idempotent_replays": led.idem_replays,
        "idempotent_mismatches": led.idem_mismatch[:10],
        "appends_given_up": led.gave_up,
        "writer_errors": dict(led.errors),
        "faults": {k: c.faults.get(k, 0) for k in FAULTS},
        "restart_failures": {k: c.restart_failures.get(k, 0) for k in FAULTS},
        "fault_seconds": {k: round(c.fault_seconds.get(k, 0.0), 1) for k in FAULTS},
        "projector_unexpected_exits": c.projector_exits,
        "max_lag_events": c.max_lag_events,
        "max_lag_seconds": round(c.max_lag_seconds, 1),
        "lag_samples": c.lag_samples,
        "lag_at_end_of_load": c.lag_series[-1][1] if c.lag_series else None,
        "lag_series": c.lag_series,
    }


def table(r: dict[str, Any], title: str) -> Table:
    t = Table(title=title)
    t.add_column("measure")
    t.add_column("value", justify="right")
    for kind in FAULTS:
        failed = r["restart_failures"][kind]
        t.add_row(f"faults: {kind}", f"{r['faults'][kind]} ({r['fault_seconds'][kind]:.0f}s)"
                  + (f", {failed} restart(s) failed" if failed else ""))
    t.add_row("projector exits (unexpected)", str(len(r["projector_unexpected_exits"])))
    t.add_row("events appended (attempted)", f"{r['attempted']} ({r['calls']} calls, {r['big_attempted']} blobs)")
    for lvl in LEVELS:
        t.add_row(f"acknowledged: {lvl}", str(r["acked"][lvl]))
    t.add_row("appends given up (not acknowledged)", str(r["appends_given_up"]))
    t.add_row("projected (rows in PostgreSQL)", str(r["projected"]))
    for lvl in LEVELS:
        style = "bold red" if r["lost"][lvl] and lvl != "memory" else ""
        t.add_row(f"lost: {lvl}", f"[{style}]{r['lost'][lvl]}[/]" if style else str(r["lost"][lvl]))
    t.add_row("acked, kept only in journal.conflicts", str(sum(r["acked_only_in_conflicts"].values())))
    t.add_row("acked, only in the Redis tail", str(sum(r["acked_only_in_redis"].values())))
    t.add_row("seqs acknowledged twice (reissued)", str(r["reissued_seqs_acked"]))
    t.add_row("payloads stored twice in PostgreSQL", str(r["duplicate_payloads_in_pg"]))
    t.add_row("conflicts / fenced threads", f"{r['conflicts']} / {r['fenced_threads']}")
    t.add_row("dead letters", str(r["dead_letters"]))
    t.add_row("events whose blob is missing from S3", str(len(r["missing_blobs"])))
    t.add_row("idempotent retries / replays / mismatches",
              f"{r['idempotent_retries']} / {r['idempotent_replays']} / {len(r['idempotent_mismatches'])}")
    t.add_row("chains failing / unchained events", f"{len(r['chain_failures'])} / {r['unchained_events']}")
    t.add_row("max lag observed", f"{r['max_lag_events']} entries, {r['max_lag_seconds']}s "
              f"({r['lag_samples']} samples)")
    t.add_row("backlog at end of load / drain time", f"{r['lag_at_end_of_load']} entries / {r['drain_seconds']:.1f}s")
    t.add_row("final drain: backlog / events per second",
              f"{r['backlog_at_drain_start']} entries / {r['drain_events_per_s'] or 0:,} ev/s"
              + (f" (after a final {r['final_outage']:g}s PostgreSQL outage)" if r["final_outage"] else ""))
    t.add_row("final drain: snapshots it made due written after", f"{r['snapshots_seconds']:.1f}s")
    errs = ", ".join(f"{k} {v}" for k, v in sorted(r["writer_errors"].items())) or "none"
    t.add_row("writer errors (not acknowledged)", errs)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    ap.add_argument("--seed", type=int, default=None, help="seed of the fault schedule and load (default random)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    ap.add_argument("--writers", type=int, default=6)
    ap.add_argument("--tenants", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (server data and logs)")
    ap.add_argument("--final-outage", type=float, default=0.0,
                    help="end the load with a PostgreSQL outage of this many seconds and a projector SIGKILL, "
                         "so the final drain measures catch-up after a fault (default 0: a calm end)")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    logging.basicConfig(level=logging.ERROR)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

    folder = Path(tempfile.mkdtemp(prefix="agent-journal-chaos-"))
    stack = EmbeddedStack(folder / "stack")
    console.log(f"seed {seed}, {args.minutes} min, folder {folder}")
    c: Chaos | None = None
    try:
        settings = stack.up().with_(durability_timeout=10.0)
        db.migrate(settings)
        run = uuid.uuid4().hex[:6]
        c = Chaos(stack, settings, [f"chaos-{run}-{i}" for i in range(args.tenants)], random.Random(seed), folder,
                  writers=args.writers)
        c.start_projector()
        deadline = time.monotonic() + args.minutes * 60
        workers = [threading.Thread(target=c.writer, args=(w,), daemon=True) for w in range(args.writers)]
        helpers = [threading.Thread(target=c.injector, args=(deadline,), daemon=True),
                   threading.Thread(target=c.sampler, daemon=True)]
        for t in workers + helpers:
            t.start()
        while time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
            with c.ledger.lock:
                acked = len(c.ledger.acked)
            now_lag = c.lag_series[-1][1] if c.lag_series else None
            console.log(f"{acked} acknowledged, faults {dict(c.faults)}, lag {now_lag} (max {c.max_lag_events})")
        if args.final_outage:
            # The load goes on through a PostgreSQL outage, and the projector dies at its end with its
            # round delivered: the drain below is then a catch-up after a fault, at a known backlog.
            console.log(f"final outage: PostgreSQL stopped for {args.final_outage:g}s under load")
            stack.stop("postgres")
            time.sleep(args.final_outage)
            with c.proc_lock:
                if c.proc is not None and c.proc.poll() is None:
                    c.proc.send_signal(signal.SIGKILL)
                    c.proc.wait(10)
            stack.start("postgres")
        c.stop.set()
        for t in helpers + workers:
            t.join(120)
        stack.up()  # whatever a fault left down comes back
        c.stop_projector()
        assert settings.redis_url
        probe = redis_connect(settings.redis_url)
        backlog = sum(x.undelivered + x.pending for x in measure_lag(probe, c.tenants))
        probe.close()
        t0 = time.monotonic()
        finisher = Projector(settings, WorkerOptions(claim_idle_ms=100, maintenance_every=0.2))
        try:
            # Caught up = every event committed and acknowledged; the snapshots it made due come after.
            if "snapshots" in inspect.signature(finisher.drain).parameters:
                finisher.drain(tenants=c.tenants, timeout=600, snapshots=False)
            else:  # a projector of before the snapshot writer (compared by PYTHONPATH) folds them in its batches
                finisher.drain(tenants=c.tenants, timeout=600)
            drain_seconds = time.monotonic() - t0
            finisher.drain(tenants=c.tenants, timeout=600)
            snapshots_seconds = time.monotonic() - t0
        finally:
            finisher.close()
        result = check(c)
        result.update(seed=seed, minutes=args.minutes, writers=args.writers, tenants=args.tenants,
                      final_outage=args.final_outage, backlog_at_drain_start=backlog,
                      drain_seconds=round(drain_seconds, 1), snapshots_seconds=round(snapshots_seconds, 1),
                      drain_events_per_s=round(backlog / drain_seconds) if drain_seconds else None)
    finally:
        if c is not None:
            c.stop.set()
            with contextlib.suppress(Exception):
                c.stop_projector()
        stack.down()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    console.print(table(result, f"chaos: {args.minutes:g} min, seed {seed}, {args.writers} writers, "
                               f"{args.tenants} tenants"))
    for name in ("lost_examples", "missing_blobs", "projector_unexpected_exits", "chain_failures",
                 "idempotent_mismatches", "thread_rows_inconsistent"):
        if result[name]:
            console.print(f"{name}: {result[name]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    failed = (result["lost"]["fsync"] or result["lost"]["projected"] or result["chain_failures"]
              or result["idempotent_mismatches"] or result["missing_blobs"])
    if failed:
        console.print("[bold red]FAIL[/]: an acknowledged durable event is lost, a chain fails, or an idempotent "
                      "replay got another seq")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
