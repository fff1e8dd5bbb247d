"""What the payload of each built-in event type must hold, checked when it is appended.

The fold (:mod:`journal.reducer`) is lenient: a ``tool_result`` without ``call_id`` or a
``memory_set`` without ``path`` is applied as far as it goes and becomes an entry in
``state.anomalies``, because a fold that raised would stop projection of a whole tenant.
That leniency is for history already written; new events are checked here, at the client,
so the mistake is the writer's exception (:class:`InvalidPayload`) instead of a quiet anomaly
found weeks later. ``journal.append.prepare`` calls :func:`check` on every normalized payload.

Only what the fold needs is required; any other field is allowed and kept (agents put more
in). Custom types (``x.<org>.<name>``) are not checked: their reducers own their payloads.
:data:`SPECS` documents every type; the README's table is tested against it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from journal import events as ev
from journal.errors import InvalidEvent


class InvalidPayload(InvalidEvent):
    """A built-in event's payload lacks a field the fold needs, or holds it in the wrong shape."""

    def __init__(self, type_: str, field: str, expected: str, got: str, where: str = "payload") -> None:
        self.type = type_
        self.field = field
        self.expected = expected
        name = f"{where}.{field}" if field else where
        super().__init__(
            f"{name} of a {type_!r} event must be {expected}, got {got}; nothing was written. "
            f"Fix the payload (see the README's table of built-in payloads), or use a custom type "
            f"('x.<org>.<name>') for a payload of your own shape."
        )


def _got(payload: Mapping[str, Any], field: str) -> str:
    if field not in payload:
        return "nothing (the field is missing)"
    v = payload[field]
    return "null" if v is None else f"{type(v).__name__} {_short(v)}"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:39] + "…"


# -- field rules -----------------------------------------------------------------------------------
# Each mirrors the reducer's reading of the field (journal.reducer), so an accepted payload folds
# without a payload anomaly; tests/test_payloads.py checks that property on generated payloads.

_Check = Callable[[str, Mapping[str, Any], "str | None", str], None]


def _str(field: str) -> _Check:
    def check(type_: str, p: Mapping[str, Any], node: str | None, where: str) -> None:
        v = p.get(field)
        if not isinstance(v, str) or not v:
            raise InvalidPayload(type_, field, "a non-empty str", _got(p, field), where)
    return check


def _opt_str(field: str) -> _Check:
    def check(type_: str, p: Mapping[str, Any], node: str | None, where: str) -> None:
        v = p.get(field)
        if v is not None and (not isinstance(v, str) or not v):
            # An empty name is as wrong here as in the call it answers (the fold would flag the mismatch).
            raise InvalidPayload(type_, field, "a non-empty str or null when given", _got(p, field), where)
    return check


def _present(field: str) -> _Check:
    def check(type_: str, p: Mapping[str, Any], node: str | None, where: str) -> None:
        if field not in p:
            raise InvalidPayload(type_, field, "present (any value, null included)", _got(p, field), where)
    return check


def _call_ids(type_: str, p: Mapping[str, Any], node: str | None, where: str) -> None:
    v = p.get("tool_calls")
    # The fold reads ``tool_calls or ()``: absent, null and [] all mean "no calls".
    if v and not (isinstance(v, list) and all(isinstance(c, str) for c in v)):
        raise InvalidPayload(type_, "tool_calls", "a list of call id strs when given", _got(p, "tool_calls"), where)


def _outcome(type_: str, p: Mapping[str, Any], node: str | None, where: str) -> None:
    if "output" not in p and "error" not in p:
        raise InvalidPayload(type_, "output", "present, or an 'error' field instead (a result has one of them)",
                             "neither output nor error", where)


def _node(type_: str, p: Mapping[str, Any], node: str | None, where: str) -> None:
    v = p.get("node")
    if v is None and node:
        return  # the fold takes the event's node= when the payload names none
    if not isinstance(v, str) or not v:
        raise InvalidPayload(type_, "node", "a non-empty str (or leave it out and pass node= to append)",
                             _got(p, "node"), where)


def _path(type_: str, p: Mapping[str, Any], node: str | None, where: str) -> None:
    v = p.get("path")
    parts = v.split(".") if isinstance(v, str) else v
    if not (isinstance(parts, list) and parts and all(isinstance(k, str) and k for k in parts)):
        raise InvalidPayload(type_, "path", "a non-empty list of non-empty str keys, or a dotted str such as "
                             "'customer.tier'", _got(p, "path"), where)


# -- the table -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PayloadSpec:
    """The documented payload of one built-in type (rendered as the README's table)."""

    type: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    #: What the fold does with the event, in a sentence.
    folds: str
    #: A payload that passes, as the README shows it.
    example: Mapping[str, Any]
    checks: tuple[_Check, ...]


SPECS: dict[str, PayloadSpec] = {s.type: s for s in (
    PayloadSpec(ev.MESSAGE, ("role", "content"), ("tool_calls",),
                "appends to `messages` (role, content, the call ids it announces, node, seq)",
                {"role": "user", "content": "refund order 1234?"},
                (_str("role"), _present("content"), _call_ids)),
    PayloadSpec(ev.TOOL_CALL, ("call_id", "tool"), ("args",),
                "adds a pending call to `tool_calls` under `call_id`",
                {"call_id": "c1", "tool": "issue_refund", "args": {"order": 1234}},
                (_str("call_id"), _str("tool"))),
    PayloadSpec(ev.TOOL_RESULT, ("call_id", "output or error"), ("tool",),
                "attaches the result to the call `call_id`; with an `error` the call is marked failed",
                {"call_id": "c1", "tool": "issue_refund", "output": {"refund_id": "r-9"}},
                (_str("call_id"), _outcome, _opt_str("tool"))),
    PayloadSpec(ev.NODE_ENTER, ("node (or the event's node=)",), (),
                "pushes the node: it becomes the thread's `node`",
                {"node": "planner"},
                (_node,)),
    PayloadSpec(ev.NODE_EXIT, ("node (or the event's node=)",), (),
                "pops the innermost entry of that node: `node` goes back to the enclosing one (or none)",
                {"node": "planner"},
                (_node,)),
    PayloadSpec(ev.MEMORY_SET, ("path", "value"), (),
                "sets `memory` at `path` (a list of keys or a dotted str), creating maps on the way",
                {"path": ["customer", "tier"], "value": "gold"},
                (_path, _present("value"))),
    PayloadSpec(ev.MEMORY_DELETE, ("path",), (),
                "removes the key at `path` from `memory` (no-op if absent)",
                {"path": "customer.tier"},
                (_path,)),
    PayloadSpec(ev.PAUSE, (), ("reason",),
                "status `paused`, `pause_reason` = reason",
                {"reason": "refund over $100 needs a human"},
                ()),
    PayloadSpec(ev.RESUME, (), ("by", "any other field"),
                "status `active`; `resumed_by` = by, the other fields go to `resume_detail`",
                {"by": "human:alice", "decision": "approved"},
                ()),
    PayloadSpec(ev.COMPLETE, (), ("summary",),
                "status `completed`, `summary` = summary",
                {"summary": "refund issued"},
                ()),
    PayloadSpec(ev.FAIL, (), ("error",),
                "status `failed`, `error` = error",
                {"error": {"kind": "timeout"}},
                ()),
    PayloadSpec(ev.ABANDON, (), ("idle_days", "reason"),
                "status `abandoned` (written by `agent-journal maintain`; any later event makes it `active`)",
                {"idle_days": 7, "reason": "idle 7 days or more"},
                ()),
)}
if set(SPECS) != ev.BUILTIN_TYPES:  # a new built-in type must be documented and checked here
    raise RuntimeError(f"payload specs out of date: {sorted(ev.BUILTIN_TYPES ^ set(SPECS))}")


def check(type_: str, payload: Any, node: str | None = None, where: str = "payload") -> None:
    """Raise :class:`InvalidPayload` if ``payload`` (already normalized) is not what the fold of ``type_`` needs.

    ``node`` is the event's ``node=``, which stands in for a missing ``node`` field of
    ``node_enter``/``node_exit``. Custom types pass unchecked.
    """
    spec = SPECS.get(type_)
    if spec is None:
        return
    if not isinstance(payload, Mapping):
        got = "null" if payload is None else f"{type(payload).__name__} {_short(payload)}"
        raise InvalidPayload(type_, "", "a map such as " + _short(dict(spec.example)), got, where)
    for c in spec.checks:
        c(type_, payload, node, where)
