"""A thread's status and graph position: the one rule set, for every process that shows them.

The fold (:mod:`journal.reducer`), the projector's ``journal.threads`` row
(``projections.store``) and the audit timeline (``replayer.audit``) all move a thread with
:func:`step`, so ``threads.status``/``threads.node`` cannot drift from the replayed state again
(they did: the row kept the node of the last event carrying one, while the fold returns to the
enclosing node after ``node_exit``). ``step`` is pure and cheap, so the projector applies it per
event of a batch from the row's stored position, without folding the thread.

Rules:

* ``pause`` → paused, ``resume`` → active, ``complete`` → completed, ``fail`` → failed, ``abandon``
  → abandoned, whatever the status was (the fold records the oddities, e.g. a resume while active,
  as anomalies).
* Any other event on an abandoned thread makes it active again: the agent came back (``abandon`` is
  written by ``agent-journal maintain`` for threads idle too long, not by the agent).
* ``node_enter`` pushes its node on the stack of open nodes; ``node_exit`` removes the innermost
  entry of its node (an exit of a node never entered changes nothing). The thread's node is the
  top of the stack, or none.
* A node event names its node in ``payload["node"]`` (a non-empty str), else by the event's node.
* Every other type leaves the position alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from journal import events as ev
from journal.state import ABANDONED, ACTIVE, COMPLETED, FAILED, PAUSED

STATUS_AFTER: Mapping[str, str] = {ev.PAUSE: PAUSED, ev.RESUME: ACTIVE, ev.COMPLETE: COMPLETED, ev.FAIL: FAILED,
                                   ev.ABANDON: ABANDONED}
#: The types that can move a thread; any other leaves its position unchanged.
MOVES = frozenset({*STATUS_AFTER, ev.NODE_ENTER, ev.NODE_EXIT})


@dataclass(frozen=True, slots=True)
class Position:
    """Where a thread is: its status and the nodes entered and not yet exited (oldest first)."""

    status: str = ACTIVE
    branches: tuple[str, ...] = ()

    @property
    def node(self) -> str | None:
        """The innermost open node: the thread's current node."""
        return self.branches[-1] if self.branches else None


def node_named(payload: Any, event_node: str | None) -> str | None:
    """The node a ``node_enter``/``node_exit`` is about: ``payload["node"]`` if a non-empty str, else the event's."""
    name = payload.get("node") if isinstance(payload, Mapping) else None
    if isinstance(name, str) and name:
        return name
    return event_node or None


def step(pos: Position, type_: str, payload: Any, event_node: str | None) -> Position:
    """The position after an event of ``type_`` (``payload`` as stored; ``None`` if offloaded and not fetched)."""
    if pos.status == ABANDONED and type_ != ev.ABANDON:
        pos = Position(ACTIVE, pos.branches)
    if type_ not in MOVES:
        return pos
    status = STATUS_AFTER.get(type_)
    if status is not None:
        return pos if status == pos.status else Position(status, pos.branches)
    name = node_named(payload, event_node)
    if name is None:
        return pos
    branches = pos.branches
    if type_ == ev.NODE_ENTER:
        return Position(pos.status, (*branches, name))
    if name not in branches:
        return pos
    i = len(branches) - 1 - branches[::-1].index(name)
    return Position(pos.status, branches[:i] + branches[i + 1:])
