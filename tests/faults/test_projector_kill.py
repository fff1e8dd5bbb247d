"""Fault: the projector process is SIGKILLed at random instants under load."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from conftest import assert_exactly_once

from journal.client import JournalClient
from journal.events import Draft
from journal.settings import Settings
from projections.worker import Projector, WorkerOptions

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}

EVENTS = 20_000
KILLS = 10


def start_projector(settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, "JOURNAL_REDIS_URL": settings.redis_url or "", "JOURNAL_DATABASE_URL":
           settings.database_url or "", "JOURNAL_S3_URL": settings.s3_url or ""}
    return subprocess.Popen([sys.executable, "-m", "journal.cli", "project", "--no-migrate", "--claim-idle-ms", "300",
                             "--batch-size", "500"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_projector_sigkilled_ten_times_loses_and_duplicates_nothing(migrated: Settings, admin_pg: Any) -> None:
    """20,000 events, the projector SIGKILLed at 10 random instants: every event exactly once, chains verify."""
    run = uuid.uuid4().hex[:6]
    tenants = [f"kill-{run}-{i}" for i in range(8)]
    heads: dict[tuple[str, str], int] = {}
    done = threading.Event()

    def load() -> None:
        rng = random.Random(1)
        with JournalClient.from_settings(migrated) as c:
            written = 0
            while written < EVENTS:
                tenant = rng.choice(tenants)
                batch = [Draft(f"th{rng.randrange(5)}", "message",
                               {**MSG, "i": written + k, "text": "x" * rng.randrange(200)})
                         for k in range(50)]
                for r in c.append_many(tenant, batch):
                    heads[(tenant, r.thread)] = max(heads.get((tenant, r.thread), 0), r.seq)
                written += len(batch)
                time.sleep(0.004)  # spread the load over the kills
        done.set()

    loader = threading.Thread(target=load)
    loader.start()
    rng = random.Random(run)
    kills = 0
    proc = start_projector(migrated)
    try:
        while kills < KILLS:
            time.sleep(rng.uniform(0.2, 0.9))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            proc = start_projector(migrated)
        loader.join(120)
        assert done.is_set()
        # Let the last live projector claim the dead ones' entries and catch up.
        finisher = Projector(migrated, WorkerOptions(claim_idle_ms=300, maintenance_every=0.5))
        finisher.drain(tenants=tenants, timeout=120)
        finisher.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
    assert sum(heads.values()) == EVENTS
    for t in tenants:
        assert_exactly_once(admin_pg, t, {th: h for (tt, th), h in heads.items() if tt == t})
