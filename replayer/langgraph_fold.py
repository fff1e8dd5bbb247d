"""Reducers for the LangGraph savers' events: set ``JOURNAL_REDUCERS=replayer.langgraph_fold``.

Without them the one fold keeps every ``x.langgraph.*`` event verbatim in the state's opaque part,
so the projector's snapshots of a LangGraph thread carry each checkpoint's packed channel values a
second time (the savers never read snapshots: they fold their own index from the events). With
them, a thread's state holds a summary in ``custom["langgraph"]`` instead, which is what ``replay``,
``resume`` and the audit console show for it:

    {"checkpoints": 502, "writes": 501, "pruned": 0, "deleted": 0,
     "latest": {"id": "1f1f…", "ns": "", "step": 500, "source": "loop", "seq": 1004}}

Like every reducer setting, every process that folds (projector, replay, audit, rebuild) must see
the same value. This module imports no LangGraph: the projector can load it without the extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from journal.events import Event
from journal.state import ThreadState

#: The savers' event types (here, so modules that must not import LangGraph can name them).
CHECKPOINT = "x.langgraph.checkpoint"
WRITES = "x.langgraph.writes"
DELETED = "x.langgraph.deleted"
PRUNED = "x.langgraph.pruned"
THREAD = "x.langgraph.thread"

#: The key of the summary in ``ThreadState.custom``.
KEY = "langgraph"


def _summary(state: ThreadState) -> dict[str, Any]:
    found = state.custom.get(KEY)
    out = {"checkpoints": 0, "writes": 0, "pruned": 0, "deleted": 0, "latest": None}
    if isinstance(found, Mapping):
        out.update(found)
    return out


def _payload(event: Event) -> Mapping[str, Any]:
    # A malformed payload is counted, not refused: the saver reports it when it reads the thread.
    return event.payload if isinstance(event.payload, Mapping) else {}


def checkpoint(state: ThreadState, event: Event) -> ThreadState:
    p, s = _payload(event), _summary(state)
    s["checkpoints"] += 1
    s["latest"] = {"id": p.get("id"), "ns": p.get("ns"), "step": p.get("step"), "source": p.get("source"),
                   "seq": event.seq}
    return state.with_custom(KEY, s)


def writes(state: ThreadState, event: Event) -> ThreadState:
    s = _summary(state)
    s["writes"] += 1
    return state.with_custom(KEY, s)


def pruned(state: ThreadState, event: Event) -> ThreadState:
    drop = _payload(event).get("drop")
    s = _summary(state)
    s["pruned"] += len(drop) if isinstance(drop, list) else 0
    return state.with_custom(KEY, s)


def deleted(state: ThreadState, event: Event) -> ThreadState:
    s = _summary(state)
    s.update(checkpoints=0, writes=0, pruned=0, latest=None, deleted=s["deleted"] + 1)
    return state.with_custom(KEY, s)


def registered(state: ThreadState, event: Event) -> ThreadState:
    """The tenant's registry thread (``_lg.threads``): how many LangGraph threads it names."""
    return state.with_custom("langgraph_threads", int(state.custom.get("langgraph_threads") or 0) + 1)


REDUCERS = {CHECKPOINT: checkpoint, WRITES: writes, PRUNED: pruned, DELETED: deleted, THREAD: registered}
