"""The one fold: ``apply(state, event) -> state`` (invariant 7).

Snapshots (``projections``) and replays (``replayer``) both call :func:`fold` and nothing
else, so ``state(at_seq=n)`` is the same whichever path computed it.

Rules that keep the fold trustworthy:

* **Pure and deterministic.** ``apply`` reads only its arguments and returns a new
  :class:`ThreadState`; the old one never changes. Every container inside a state is
  immutable (tuples, ``MappingProxyType``) and every payload value is copied through
  :func:`freeze`, so no caller can alias into a state and mutate it later.
* **Lenient with built-in types.** A built-in event with an odd payload (missing field,
  wrong type) is applied as far as it makes sense and the oddity is recorded in
  ``state.anomalies``; a built-in reducer never raises, because a raise would stop
  projection of the whole tenant. New events cannot be odd that way: the client checks
  their payloads against :mod:`journal.payloads` before writing; this leniency is for
  history written before that check, or by other writers.
* **Status and node by one rule set.** :mod:`journal.lifecycle` moves them, here as in the
  projector's ``threads`` row and the audit timeline.
* **Strict with custom reducers.** A reducer of the registry (:func:`load_registry`) for a custom type
  (``x.acme.refund_issued``) that raises is wrapped in :class:`ReducerError` naming the seq
  and type, so the projector can dead-letter that one event and keep going. Custom types
  without a reducer are kept in ``state.opaque``, never a crash.
* **Idempotent on redelivery.** An event whose seq is not above ``state.last_seq`` is
  already folded in and is ignored; a seq that skips ahead is applied and recorded as an
  anomaly (the gap is the verifier's business, not the fold's).

Canonical form: every mapping inside a state is key-sorted (as ``codec.normalize`` sorts),
so a state restored from a snapshot (which went through ``normalize``) equals, field by
field and in iteration order, the state computed by a full fold.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from journal import events as ev
from journal import lifecycle
from journal.errors import ConfigError, InvalidEvent, JournalError
from journal.events import Event
from journal.keys import validate_type
from journal.state import (
    _EMPTY,
    ABANDONED,
    ACTIVE,
    COMPLETED,
    ENTER,
    EXIT,
    FAILED,
    PAUSED,
    Anomaly,
    Message,
    OpaqueEntry,
    ThreadState,
    ToolCall,
    ToolResult,
    _set_key,
    empty,
    freeze,
    put_key,
)

Reducer = Callable[["ThreadState", Event], "ThreadState"]
#: Custom event type -> its reducer.
Registry = Mapping[str, Reducer]

class ReducerError(JournalError):
    """A custom reducer failed on an event; the projector dead-letters that event."""

    def __init__(self, event: Event, reason: str) -> None:
        self.seq = event.seq
        self.type = event.type
        self.tenant = event.tenant
        self.thread = event.thread
        self.reason = reason
        super().__init__(
            f"reducer for event type {event.type!r} failed at seq {event.seq} of {event.tenant}/{event.thread}: "
            f"{reason}. The event is kept (dead-lettered); fix or unregister the reducer, then rebuild the "
            "thread's projections."
        )


# -- registry --------------------------------------------------------------------------------------
# There is no process-global registry: a snapshot folded by the projector and a replay in another
# process must use the same reducers, so every process loads them from one setting
# (JOURNAL_REDUCERS, see load_registry) and passes the mapping explicitly.

#: No custom reducers: custom events are kept verbatim in ``state.opaque``.
NO_CUSTOM: Registry = MappingProxyType({})


def register(type_name: str, fn: Reducer, registry: dict[str, Reducer]) -> Reducer:
    """Add ``fn(state, event) -> state`` to ``registry`` for a namespaced custom type such as ``x.acme.refund_issued``.

    Built-in types cannot be overridden: there is exactly one fold for them. Returns ``fn``.
    """
    validate_type(type_name)
    if not type_name.startswith("x."):
        raise InvalidEvent(
            f"cannot register a reducer for {type_name!r}: only namespaced custom types ('x.<org>.<name>') "
            "take custom reducers; built-in types have exactly one fold"
        )
    if not callable(fn):
        raise InvalidEvent(f"reducer for {type_name!r} must be callable, got {type(fn).__name__}")
    registry[type_name] = fn
    return fn


def load_registry(modules: str | Iterable[str]) -> Registry:
    """The custom reducers named by ``JOURNAL_REDUCERS`` (``Settings.reducers``): comma-separated modules.

    Each module defines ``REDUCERS``, a mapping of custom type (``x.<org>.<name>``) to reducer.
    Every process that folds (the projector's snapshots, replay, resume, audit, bundle checks)
    calls this with the same setting, so they all fold with the same reducers. An empty setting
    means no custom reducers.
    """
    names = [m.strip() for m in (modules.split(",") if isinstance(modules, str) else modules) if m.strip()]
    registry: dict[str, Reducer] = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception as e:
            raise ConfigError(f"JOURNAL_REDUCERS names module {name!r}, which cannot be imported ({type(e).__name__}: "
                              f"{e}); install it or correct the setting") from e
        found = getattr(module, "REDUCERS", None)
        if not isinstance(found, Mapping):
            raise ConfigError(f"module {name!r} (JOURNAL_REDUCERS) must define REDUCERS, a mapping of custom event "
                              f"type to reducer, e.g. {{'x.acme.refund_issued': refund_issued}}")
        for type_name, fn in found.items():
            if type_name in registry:
                raise ConfigError(f"custom type {type_name!r} has two reducers in JOURNAL_REDUCERS ({name!r} and an "
                                  "earlier module); keep one")
            try:
                register(type_name, fn, registry)
            except JournalError as e:
                raise ConfigError(f"module {name!r} (JOURNAL_REDUCERS): {e}") from e
    return MappingProxyType(registry) if registry else NO_CUSTOM


# -- the fold --------------------------------------------------------------------------------------


def fold(events: Iterable[Event], state: ThreadState | None = None, registry: Registry | None = None) -> ThreadState:
    """Apply ``events`` in order to ``state`` (or to the empty state of the first event's thread).

    ``registry`` holds the custom reducers (:func:`load_registry`); ``None`` means none.
    """
    it = iter(events)
    if state is None:
        first = next(it, None)
        if first is None:
            raise InvalidEvent("fold of no events needs a starting state: pass state=empty(tenant, thread)")
        state = apply(empty(first.tenant, first.thread), first, registry)
    for event in it:
        state = apply(state, event, registry)
    return state


def apply(state: ThreadState, event: Event, registry: Registry | None = None) -> ThreadState:
    """The state after ``event``; ``state`` is left unchanged."""
    if event.tenant != state.tenant or event.thread != state.thread:
        raise ReducerError(event, f"event belongs to {event.tenant}/{event.thread}, not to the state's "
                                  f"{state.tenant}/{state.thread}")
    if event.seq <= state.last_seq:
        return state  # already folded in: redelivery after a crash, or a snapshot overlapping its tail
    notes: list[str] = []
    if event.seq != state.last_seq + 1:
        notes.append(f"seq gap: expected {state.last_seq + 1}, got {event.seq}")
    if state.status in (COMPLETED, FAILED):
        notes.append(f"event after the thread was {state.status}")
    handler = _BUILTIN.get(event.type)
    if handler is not None:
        payload = _payload(event, notes)
        try:
            new = handler(state, event, payload, notes)
        except Exception as e:  # a built-in rule must never stop projection; the oddity is recorded instead
            notes.append(f"could not apply ({type(e).__name__}: {e})")
            new = state
        if event.type in lifecycle.MOVES or state.status == ABANDONED:
            # Status and node follow journal.lifecycle, the rules the threads row and the audit timeline use too.
            pos = lifecycle.step(lifecycle.Position(state.status, state.pending_branches), event.type, payload,
                                 event.node)
            new = replace(new, status=pos.status, node=pos.node, pending_branches=pos.branches)
    else:
        fn = None if registry is None else registry.get(event.type)
        new = _opaque(state, event, notes) if fn is None else _custom(fn, state, event)
        if new.status == ABANDONED:  # the agent came back: journal.lifecycle's rule, for custom types too
            new = replace(new, status=ACTIVE)
    anomalies = new.anomalies
    if notes:
        anomalies += tuple(Anomaly(event.seq, event.type, n) for n in notes)
    return replace(
        new,
        last_seq=event.seq,
        event_count=state.event_count + 1,
        created_ms=event.ts_ms if state.created_ms is None else state.created_ms,
        updated_ms=event.ts_ms,
        anomalies=anomalies,
    )


def _custom(fn: Reducer, state: ThreadState, event: Event) -> ThreadState:
    try:
        new = fn(state, event)
    except Exception as e:
        raise ReducerError(event, f"{type(e).__name__}: {e}") from e
    if not isinstance(new, ThreadState):
        raise ReducerError(event, f"reducer returned {type(new).__name__}, not a ThreadState")
    if (new.tenant, new.thread) != (state.tenant, state.thread):
        raise ReducerError(event, "reducer changed the state's tenant or thread")
    try:
        # A reducer may have used dataclasses.replace with a plain dict; re-freeze so the state stays immutable.
        return replace(new, custom=freeze(new.custom, "custom"))
    except JournalError as e:
        raise ReducerError(event, f"reducer stored non-plain data in custom state: {e}") from e


def _opaque(state: ThreadState, event: Event, notes: list[str]) -> ThreadState:
    payload = _plain(event.payload, "payload", notes)
    return replace(state, opaque=(*state.opaque, OpaqueEntry(event.seq, event.type, payload)))


def _payload(event: Event, notes: list[str]) -> Mapping[str, Any]:
    p = event.payload
    if isinstance(p, Mapping):
        return p
    if p is None and event.blob is not None:
        notes.append(f"payload is offloaded to blob {event.blob.sha256} and was not resolved before folding")
    else:
        notes.append(f"payload is {type(p).__name__}, expected a map")
    return {}


def _plain(value: Any, where: str, notes: list[str]) -> Any:
    try:
        return freeze(value, where)
    except JournalError as e:
        notes.append(f"{where} is not plain data and was dropped ({e})")
        return None


def _str_field(payload: Mapping[str, Any], key: str, notes: list[str], required: bool = True) -> str | None:
    v = payload.get(key)
    if isinstance(v, str):
        return v
    if v is not None or required:
        notes.append(f"{key} is {'missing' if v is None else type(v).__name__}, expected a str")
    return None


# -- built-in rules --------------------------------------------------------------------------------

_Handler = Callable[[ThreadState, Event, Mapping[str, Any], list[str]], ThreadState]


def _message(s: ThreadState, e: Event, p: Mapping[str, Any], notes: list[str]) -> ThreadState:
    role = _str_field(p, "role", notes)
    if "content" not in p:
        notes.append("content is missing")
    content = _plain(p.get("content"), "content", notes)
    raw_calls = p.get("tool_calls") or ()
    calls: list[str] = []
    if isinstance(raw_calls, list | tuple):
        for c in raw_calls:
            if isinstance(c, str):
                calls.append(c)
            else:
                notes.append(f"tool_calls entry {c!r} is not a call id str")
    else:
        notes.append(f"tool_calls is {type(raw_calls).__name__}, expected a list of call ids")
    return replace(s, messages=(*s.messages, Message(e.seq, role, content, tuple(calls), e.node)))


def _tool_call(s: ThreadState, e: Event, p: Mapping[str, Any], notes: list[str]) -> ThreadState:
    call_id = _str_field(p, "call_id", notes)
    if call_id is None:
        call_id = f"#seq-{e.seq}"  # still tracked (and pending), under a name that cannot clash with real ids
        notes.append(f"tool call recorded as {call_id}")
    tool = _str_field(p, "tool", notes)
    args = _plain(p.get("args"), "args", notes)
    old = s.tool_calls.get(call_id)
    if old is not None and old.seq is not None:
        notes.append(f"duplicate tool call id {call_id!r} (first at seq {old.seq}); the first is kept")
        return s
    # A result may have arrived first (old.seq is None): keep it and fill in the call.
    call = ToolCall(call_id, e.seq, tool, args, e.node, old.result if old else None)
    return replace(s, tool_calls=_put_call(s.tool_calls, call))


def _tool_result(s: ThreadState, e: Event, p: Mapping[str, Any], notes: list[str]) -> ThreadState:
    call_id = _str_field(p, "call_id", notes)
    if call_id is None:
        notes.append("tool result without a call id cannot be matched to a call")
        return s
    tool = _str_field(p, "tool", notes, required=False)
    if "output" not in p and "error" not in p:
        notes.append("tool result has neither output nor error")
    result = ToolResult(e.seq, tool, _plain(p.get("output"), "output", notes), _plain(p.get("error"), "error", notes),
                        e.node)
    old = s.tool_calls.get(call_id)
    if old is None:
        notes.append(f"result for unknown tool call {call_id!r}")
        call = ToolCall(call_id, None, tool, None, None, result)
    elif old.result is not None:
        notes.append(f"second result for tool call {call_id!r} (first at seq {old.result.seq}); the first is kept")
        return s
    else:
        if tool is not None and old.tool is not None and tool != old.tool:
            notes.append(f"result names tool {tool!r} but call {call_id!r} was to {old.tool!r}")
        call = replace(old, result=result)
    return replace(s, tool_calls=_put_call(s.tool_calls, call))


def _put_call(calls: Mapping[str, ToolCall], call: ToolCall) -> Mapping[str, ToolCall]:
    # Insertion order = order of first appearance; an update keeps its place. put_key shares the
    # bulk of the map with the previous state: a copy per call made long threads fold slowly.
    return put_key(calls, call.call_id, call)


def _node_name(e: Event, p: Mapping[str, Any], notes: list[str]) -> str | None:
    raw = p.get("node")
    if raw is not None and not (isinstance(raw, str) and raw):
        notes.append(f"node is {type(raw).__name__}, expected a str")
    node = lifecycle.node_named(p, e.node)
    if node is None:
        notes.append("no node in the payload or on the event")
    return node


# node_enter/node_exit record the step here; the stack of open nodes and the current node are moved
# by journal.lifecycle in apply().
def _node_enter(s: ThreadState, e: Event, p: Mapping[str, Any], notes: list[str]) -> ThreadState:
    node = _node_name(e, p, notes)
    if node is None:
        return s
    return replace(s, node_history=(*s.node_history, (e.seq, node, ENTER)))


def _node_exit(s: ThreadState, e: Event, p: Mapping[str, Any], notes: list[str]) -> ThreadState:
    node = _node_name(e, p, notes)
    if node is None:
        return s
    if node not in s.pending_branches:
        notes.append(f"exit from node {node!r} that was not entered")
    return replace(s, node_history=(*s.node_history, (e.seq, node, EXIT)))


def _memory_path(p: Mapping[str, Any], notes: list[str]) -> tuple[str, ...] | None:
    raw = p.get("path")
    if isinstance(raw, str):
        parts: tuple[Any, ...] = tuple(raw.split("."))
    elif isinstance(raw, list | tuple):
        parts = tuple(raw)
    else:
        notes.append(f"path is {'missing' if raw is None else type(raw).__name__}, expected a list or dotted str")
        return None
    if not parts or not all(isinstance(k, str) and k for k in parts):
        notes.append(f"path {raw!r} must be a non-empty list of non-empty str keys")
        return None
    return parts


def _memory_set(s: ThreadState, e: Event, p: Mapping[str, Any], notes: list[str]) -> ThreadState:
    path = _memory_path(p, notes)
    if path is None:
        return s
    if "value" not in p:
        notes.append("value is missing; null is stored")
    value = _plain(p.get("value"), "value", notes)
    return replace(s, memory=_mem_set(s.memory, path, value, notes))


def _mem_set(m: Mapping[str, Any], path: tuple[str, ...], value: Any, notes: list[str]) -> Mapping[str, Any]:
    head, rest = path[0], path[1:]
    if rest:
        child = m.get(head)
        if not isinstance(child, Mapping):
            if child is not None:
                notes.append(f"memory key {head!r} held a {type(child).__name__}; replaced by a map")
            child = _EMPTY
        value = _mem_set(child, rest, value, notes)
    return _set_key(m, head, value)


def _memory_delete(s: ThreadState, e: Event, p: Mapping[str, Any], notes: list[str]) -> ThreadState:
    path = _memory_path(p, notes)
    if path is None:
        return s
    # Deleting a key that is not there is a no-op: deletes are idempotent.
    return replace(s, memory=_mem_delete(s.memory, path))


def _mem_delete(m: Mapping[str, Any], path: tuple[str, ...]) -> Mapping[str, Any]:
    head, rest = path[0], path[1:]
    if head not in m:
        return m
    d = dict(m)
    if rest:
        child = m[head]
        if not isinstance(child, Mapping):
            return m
        d[head] = _mem_delete(child, rest)
    else:
        del d[head]
    return MappingProxyType(d)


# The status itself moves in apply(), by journal.lifecycle; these keep what the event says about it.
def _pause(s: ThreadState, e: Event, p: Mapping[str, Any], notes: list[str]) -> ThreadState:
    if s.status == PAUSED:
        notes.append("pause while already paused")
    return replace(s, pause_reason=_plain(p.get("reason"), "reason", notes))


def _resume(s: ThreadState, e: Event, p: Mapping[str, Any], notes: list[str]) -> ThreadState:
    if s.status != PAUSED:
        notes.append(f"resume while {s.status}, not paused")
    detail = _plain({k: v for k, v in p.items() if k != "by"}, "resume", notes)
    return replace(s, pause_reason=None, resumed_by=_plain(p.get("by"), "by", notes),
                   resume_detail=detail if detail is not None else _EMPTY)


def _complete(s: ThreadState, e: Event, p: Mapping[str, Any], notes: list[str]) -> ThreadState:
    return replace(s, summary=_plain(p.get("summary"), "summary", notes))


def _fail(s: ThreadState, e: Event, p: Mapping[str, Any], notes: list[str]) -> ThreadState:
    return replace(s, error=_plain(p.get("error"), "error", notes))


def _abandon(s: ThreadState, e: Event, p: Mapping[str, Any], notes: list[str]) -> ThreadState:
    # Nothing to keep beyond the status: the payload (idle days, reason) stays in the event itself.
    return s


_BUILTIN: dict[str, _Handler] = {
    ev.MESSAGE: _message,
    ev.TOOL_CALL: _tool_call,
    ev.TOOL_RESULT: _tool_result,
    ev.NODE_ENTER: _node_enter,
    ev.NODE_EXIT: _node_exit,
    ev.MEMORY_SET: _memory_set,
    ev.MEMORY_DELETE: _memory_delete,
    ev.PAUSE: _pause,
    ev.RESUME: _resume,
    ev.COMPLETE: _complete,
    ev.FAIL: _fail,
    ev.ABANDON: _abandon,
}
if set(_BUILTIN) != ev.BUILTIN_TYPES:  # a new built-in type must get its rule here, not fall into opaque
    raise RuntimeError(f"reducer rules out of date: {sorted(ev.BUILTIN_TYPES ^ set(_BUILTIN))}")

