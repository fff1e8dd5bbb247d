"""Race: 16 writers append to the same few threads with ``expected_seq``, retrying on conflict.

Kills nothing, so it runs on the session-wide servers (the shared ``migrated`` settings).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from typing import Any

from conftest import assert_exactly_once

from journal.client import JournalClient
from journal.errors import ConflictError
from journal.settings import Settings
from projections.worker import Projector, WorkerOptions

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}

WRITERS = 16
THREADS = 3
SECONDS = 3.0


def test_sixteen_writers_racing_on_expected_seq_one_winner_per_seq(migrated: Settings, admin_pg: Any) -> None:
    """16 writers append with expected_seq=head over 3 threads for 3 s: one winner per seq (1..N, no gap, no
    duplicate), every loser's ConflictError carries the real head, and PostgreSQL holds each event once."""
    tenant = f"race-{uuid.uuid4().hex[:8]}"
    threads = [f"th{i}" for i in range(THREADS)]
    wins: list[tuple[str, int, str]] = []  # (thread, seq, payload id)
    conflicts: list[tuple[str, int, int]] = []  # (thread, expected, actual)
    bad: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(WRITERS)
    deadline_box: list[float] = []

    def race(w: int, client: JournalClient) -> None:
        rng = random.Random(w)
        start.wait()
        i = 0
        while time.monotonic() < deadline_box[0]:
            thread = threads[rng.randrange(THREADS)]
            expected = client.head(tenant, thread)
            while time.monotonic() < deadline_box[0]:
                pid = f"{w}-{i}"
                try:
                    ev = client.append(tenant, thread, "message", {**MSG, "id": pid}, expected_seq=expected)
                except ConflictError as e:
                    with lock:
                        conflicts.append((thread, e.expected, e.actual))
                        if e.expected != expected or e.actual < expected + 1 or e.thread != thread:
                            bad.append(f"{thread}: expected {expected}, error says {e.expected} -> {e.actual}")
                    expected = e.actual  # the real head: retry on top of it
                    continue
                i += 1
                with lock:
                    wins.append((thread, ev.seq, pid))
                    if ev.seq != expected + 1:
                        bad.append(f"{thread}: appended at {ev.seq} with expected_seq={expected}")
                break

    with JournalClient.from_settings(migrated) as client:
        workers = [threading.Thread(target=race, args=(w, client)) for w in range(WRITERS)]
        deadline_box.append(time.monotonic() + SECONDS + 1.0)  # the barrier releases them all at once
        for t in workers:
            t.start()
        for t in workers:
            t.join(60)
        final = {th: client.head(tenant, th) for th in threads}

    assert bad == []
    per_thread: Counter[str] = Counter(th for th, _, _ in wins)
    for th in threads:
        seqs = sorted(s for t, s, _ in wins if t == th)
        assert seqs == list(range(1, final[th] + 1)), f"{th}: winners are not exactly 1..{final[th]}"
    assert len(wins) == sum(final.values()) == sum(per_thread.values())
    assert conflicts, "no writer ever lost a race: the test did not race"
    # Each loser was told a head that really existed by then, never beyond the final one.
    assert all(expected + 1 <= actual <= final[th] for th, expected, actual in conflicts)

    p = Projector(migrated, WorkerOptions())
    try:
        p.drain(tenants=[tenant], timeout=60)
    finally:
        p.close()
    assert_exactly_once(admin_pg, tenant, final)
    stored = dict(((th, s), pid) for th, s, pid in admin_pg.execute(
        "SELECT thread_id, seq, payload->>'id' FROM journal.events WHERE tenant_id = %s", (tenant,)).fetchall())
    assert stored == {(th, s): pid for th, s, pid in wins}
    print(f"\n{WRITERS} writers, {THREADS} threads: {len(wins)} appends won, {len(conflicts)} conflicts retried, "
          f"heads {final}")
