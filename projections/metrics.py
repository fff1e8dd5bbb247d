"""Prometheus metrics of the projector and the lag measurement shared with `agent-journal status`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import Counter, Gauge, Histogram

from journal import keys

PROJECTED = Counter("journal_events_projected_total", "Events committed to PostgreSQL")
DUPLICATES = Counter("journal_duplicates_skipped_total", "Redelivered events already in PostgreSQL")
CONFLICTS = Counter("journal_conflicts_total", "Reused sequence numbers with different content")
DEAD_LETTERS = Counter("journal_dead_letters_total", "Entries moved to dead_letters")
CLAIMED = Counter("journal_entries_claimed_total", "Pending entries taken over from dead workers")
KNOWN_HEADS = Counter("journal_known_heads_batches_total",
                      "Small batches planned on remembered thread heads and sent in one round trip, by outcome "
                      "(committed; moved: another writer had moved a head, run again the usual way)", ["outcome"])
TAIL_REPAIRS = Counter("journal_tail_repairs_total", "Times Redis was found behind PostgreSQL and heads raised")
BATCH_SECONDS = Histogram("journal_batch_seconds", "Time to write and commit one batch",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
REBUILD_EVENTS = Counter("journal_rebuild_events_total", "Events folded by `agent-journal rebuild`", ["tenant"])
REBUILD_REMAINING = Gauge("journal_rebuild_remaining_events", "Events the running rebuild has still to fold")
REBUILD_SWAPS = Counter("journal_rebuild_swaps_total", "Tenants whose rebuilt rows were swapped in")
LAG_EVENTS = Gauge("journal_lag_events", "Entries appended but not yet acknowledged by the projector", ["tenant"])
LAG_SECONDS = Gauge("journal_lag_seconds", "Age of the oldest entry not yet projected", ["tenant"])


@dataclass(frozen=True, slots=True)
class Lag:
    tenant: str
    undelivered: int
    pending: int
    seconds: float
    length: int


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def measure_lag(r: redis.Redis, tenants: Iterable[str], group: str = "projector") -> list[Lag]:
    """Per tenant: entries not delivered, delivered but not acknowledged, and the oldest one's age."""
    tenants = sorted(tenants)
    pipe = r.pipeline(transaction=False)
    for t in tenants:
        pipe.xinfo_groups(keys.stream(t))
        pipe.xlen(keys.stream(t))
    replies = pipe.execute(raise_on_error=False)
    now_ms = time.time() * 1000
    out = []
    for i, t in enumerate(tenants):
        groups, length = replies[2 * i], replies[2 * i + 1]
        if isinstance(groups, Exception):
            continue
        g = next((g for g in groups if _text(g["name"]) == group), None)
        if g is None:
            out.append(Lag(t, int(length or 0), 0, 0.0, int(length or 0)))
            continue
        undelivered, pending = int(g.get("lag") or 0), int(g.get("pending") or 0)
        oldest = None
        if pending:
            summary = r.xpending(keys.stream(t), group)
            oldest = _text(summary["min"])
        elif undelivered:
            nxt = r.xrange(keys.stream(t), min="(" + _text(g["last-delivered-id"]), max="+", count=1)
            oldest = _text(nxt[0][0]) if nxt else None
        seconds = max(0.0, (now_ms - int(oldest.split("-")[0])) / 1000) if oldest else 0.0
        out.append(Lag(t, undelivered, pending, seconds, int(length or 0)))
    return out


def observe_lag(r: redis.Redis, tenants: Iterable[str], group: str = "projector") -> None:
    for lag in measure_lag(r, tenants, group):
        LAG_EVENTS.labels(lag.tenant).set(lag.undelivered + lag.pending)
        LAG_SECONDS.labels(lag.tenant).set(lag.seconds)
