"""The thread state the fold produces: immutable records, their plain-data form, and diff.

``ThreadState.to_dict``/``from_dict`` are the snapshot format (exact round trip, versioned by
``STATE_FORMAT``); ``diff`` says what changed between two states for the audit CLI. The rules
that build states live in :mod:`journal.reducer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from journal import codec
from journal.errors import CodecError, JournalError

#: Version of the ``to_dict`` layout; a snapshot with another version is refused.
STATE_FORMAT = 1

ACTIVE, PAUSED, COMPLETED, FAILED, ABANDONED = "active", "paused", "completed", "failed", "abandoned"
STATUSES = (ACTIVE, PAUSED, COMPLETED, FAILED, ABANDONED)
ENTER, EXIT = "enter", "exit"

_EMPTY: Mapping[str, Any] = MappingProxyType({})


# -- immutable plain data --------------------------------------------------------------------------


def freeze(value: Any, path: str = "value") -> Any:
    """An immutable, canonical copy of plain data: maps key-sorted as ``MappingProxyType``, lists as tuples.

    Raises ``UnserializableValue`` (via ``codec.normalize``) for anything a payload may not hold,
    so whatever a state contains is guaranteed to survive ``to_dict`` → ``codec.pack``.
    """
    return _deep_freeze(codec.normalize(value, path))


def _deep_freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _deep_freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_deep_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Plain mutable data (dicts and lists) from a frozen value, for serialization."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


# -- the state -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One conversational message."""

    seq: int
    role: str | None
    content: Any
    tool_calls: tuple[str, ...] = ()
    node: str | None = None


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of a tool call."""

    seq: int
    tool: str | None
    output: Any
    error: Any
    node: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool invocation; ``seq`` is None for a result whose call was never journalled."""

    call_id: str
    seq: int | None
    tool: str | None
    args: Any
    node: str | None = None
    result: ToolResult | None = None


@dataclass(frozen=True, slots=True)
class OpaqueEntry:
    """A custom event that no registered reducer interprets, kept verbatim."""

    seq: int
    type: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Something odd the fold tolerated (malformed payload, unknown call id, seq gap, …)."""

    seq: int
    type: str
    message: str


#: (seq, node, "enter" | "exit")
NodeStep = tuple[int, str, str]


@dataclass(frozen=True, slots=True)
class ThreadState:
    """The folded state of one agent thread after ``last_seq`` events."""

    tenant: str
    thread: str
    last_seq: int = 0
    event_count: int = 0
    created_ms: int | None = None
    updated_ms: int | None = None
    status: str = ACTIVE
    pause_reason: Any = None
    resumed_by: Any = None
    #: The resume payload without ``by`` (e.g. ``{"decision": "approved"}``).
    resume_detail: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    summary: Any = None
    error: Any = None
    messages: tuple[Message, ...] = ()
    #: Keyed by call id, in order of first appearance.
    tool_calls: Mapping[str, ToolCall] = field(default_factory=lambda: _EMPTY)
    node: str | None = None
    node_history: tuple[NodeStep, ...] = ()
    #: Nodes entered and not yet exited, oldest first (a stack for nested graphs).
    pending_branches: tuple[str, ...] = ()
    memory: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    opaque: tuple[OpaqueEntry, ...] = ()
    #: State kept by custom reducers, one key per extension (see :meth:`with_custom`).
    custom: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    anomalies: tuple[Anomaly, ...] = ()

    @property
    def pending_calls(self) -> tuple[str, ...]:
        """Call ids that have no result yet, in call order."""
        return tuple(cid for cid, call in self.tool_calls.items() if call.result is None)

    def with_custom(self, name: str, value: Any) -> ThreadState:
        """A copy with ``custom[name] = value`` (frozen); the way custom reducers keep their state."""
        return replace(self, custom=_set_key(self.custom, name, freeze(value, f"custom.{name}")))

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        # MappingProxyType cannot be pickled; going through plain data makes pickle, deepcopy and
        # process pools work, and is exact because from_dict inverts to_dict.
        return (ThreadState.from_dict, (self.to_dict(),))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON- and ``codec.pack``-friendly); :meth:`from_dict` inverts it exactly."""
        return {
            "format": STATE_FORMAT,
            "tenant": self.tenant,
            "thread": self.thread,
            "last_seq": self.last_seq,
            "event_count": self.event_count,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "status": self.status,
            "pause_reason": thaw(self.pause_reason),
            "resumed_by": thaw(self.resumed_by),
            "resume_detail": thaw(self.resume_detail),
            "summary": thaw(self.summary),
            "error": thaw(self.error),
            "messages": [_message_dict(m) for m in self.messages],
            # A list, not a map: call order is meaningful and a map would be key-sorted by normalize.
            "tool_calls": [_call_dict(c) for c in self.tool_calls.values()],
            "node": self.node,
            "node_history": [list(step) for step in self.node_history],
            "pending_branches": list(self.pending_branches),
            "memory": thaw(self.memory),
            "opaque": [{"seq": o.seq, "type": o.type, "payload": thaw(o.payload)} for o in self.opaque],
            "custom": thaw(self.custom),
            "anomalies": [{"seq": a.seq, "type": a.type, "message": a.message} for a in self.anomalies],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThreadState:
        """Rebuild a state from :meth:`to_dict` output (possibly after ``codec.normalize``/msgpack)."""
        if not isinstance(d, Mapping):
            raise CodecError(f"snapshot state must be a map, got {type(d).__name__}")
        if d.get("format") != STATE_FORMAT:
            raise CodecError(
                f"snapshot state format {d.get('format')!r} is not supported by this reader (knows {STATE_FORMAT}); "
                "upgrade agent-journal or rebuild the snapshot"
            )
        for name in ("memory", "custom", "resume_detail"):
            if not isinstance(d.get(name), Mapping):
                raise CodecError(f"snapshot state is malformed: {name} must be a map; rebuild the snapshot")
        try:
            calls = (_call_from(c) for c in d["tool_calls"])
            return cls(
                tenant=str(d["tenant"]),
                thread=str(d["thread"]),
                last_seq=int(d["last_seq"]),
                event_count=int(d["event_count"]),
                created_ms=_opt_int(d["created_ms"]),
                updated_ms=_opt_int(d["updated_ms"]),
                status=str(d["status"]),
                pause_reason=freeze(d["pause_reason"]),
                resumed_by=freeze(d["resumed_by"]),
                resume_detail=freeze(d["resume_detail"]),
                summary=freeze(d["summary"]),
                error=freeze(d["error"]),
                messages=tuple(
                    Message(int(m["seq"]), _opt_str(m["role"]), freeze(m["content"]),
                            tuple(str(c) for c in m["tool_calls"]), _opt_str(m["node"]))
                    for m in d["messages"]
                ),
                tool_calls=MappingProxyType({c.call_id: c for c in calls}),
                node=_opt_str(d["node"]),
                node_history=tuple((int(s), str(n), str(a)) for s, n, a in d["node_history"]),
                pending_branches=tuple(str(n) for n in d["pending_branches"]),
                memory=freeze(d["memory"]),
                opaque=tuple(OpaqueEntry(int(o["seq"]), str(o["type"]), freeze(o["payload"])) for o in d["opaque"]),
                custom=freeze(d["custom"]),
                anomalies=tuple(Anomaly(int(a["seq"]), str(a["type"]), str(a["message"])) for a in d["anomalies"]),
            )
        except (KeyError, TypeError, ValueError, JournalError) as e:
            raise CodecError(f"snapshot state is malformed ({type(e).__name__}: {e}); rebuild the snapshot") from e


def _message_dict(m: Message) -> dict[str, Any]:
    return {"seq": m.seq, "role": m.role, "content": thaw(m.content), "tool_calls": list(m.tool_calls),
            "node": m.node}


def _result_dict(r: ToolResult | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"seq": r.seq, "tool": r.tool, "output": thaw(r.output), "error": thaw(r.error), "node": r.node}


def _call_dict(c: ToolCall) -> dict[str, Any]:
    return {"call_id": c.call_id, "seq": c.seq, "tool": c.tool, "args": thaw(c.args), "node": c.node,
            "result": _result_dict(c.result)}


def _call_from(c: Mapping[str, Any]) -> ToolCall:
    r = c["result"]
    result = None if r is None else ToolResult(int(r["seq"]), _opt_str(r["tool"]), freeze(r["output"]),
                                               freeze(r["error"]), _opt_str(r["node"]))
    return ToolCall(str(c["call_id"]), _opt_int(c["seq"]), _opt_str(c["tool"]), freeze(c["args"]),
                    _opt_str(c["node"]), result)


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _opt_str(v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise TypeError(f"expected a str or null, got {type(v).__name__}")
    return v


def encode_state(state: ThreadState) -> bytes:
    """The snapshot format: the state's plain-data form, normalized, packed and framed (exact round trip)."""
    return codec.frame(codec.pack(codec.normalize(state.to_dict(), "state")))


def decode_state(data: bytes) -> ThreadState:
    return ThreadState.from_dict(codec.unframe(bytes(data)))


def empty(tenant: str, thread: str) -> ThreadState:
    """The state of a thread before its first event."""
    return ThreadState(tenant=tenant, thread=thread)


# -- diff ------------------------------------------------------------------------------------------


def diff(a: ThreadState, b: ThreadState) -> dict[str, Any]:
    """What changed from ``a`` to ``b``, as JSON-friendly data; only non-empty sections are present."""
    out: dict[str, Any] = {"from_seq": a.last_seq, "to_seq": b.last_seq}
    a_msgs = {m.seq for m in a.messages}
    b_msgs = {m.seq for m in b.messages}
    _section(out, "messages_added", [_message_dict(m) for m in b.messages if m.seq not in a_msgs])
    _section(out, "messages_removed", [_message_dict(m) for m in a.messages if m.seq not in b_msgs])
    _section(out, "tool_calls_added", [_call_dict(c) for cid, c in b.tool_calls.items() if cid not in a.tool_calls])
    _section(out, "tool_calls_removed", [cid for cid in a.tool_calls if cid not in b.tool_calls])
    resolved = []
    for cid, c in b.tool_calls.items():
        old = a.tool_calls.get(cid)
        if c.result is not None and (old is None or old.result is None):
            resolved.append({"call_id": cid, **(_result_dict(c.result) or {})})
    _section(out, "tool_calls_resolved", resolved)
    old_mem, new_mem = _leaves(a.memory), _leaves(b.memory)
    _section(out, "memory_set", [
        {"path": list(k), "old": thaw(old_mem.get(k)), "new": thaw(v)}
        for k, v in new_mem.items() if k not in old_mem or not _same(old_mem[k], v)
    ])
    _section(out, "memory_removed", [{"path": list(k), "old": thaw(v)} for k, v in old_mem.items() if k not in new_mem])
    for name in ("node", "status", "pause_reason", "resumed_by", "summary", "error"):
        old, new = getattr(a, name), getattr(b, name)
        if not _same(old, new):
            out[name] = {"old": thaw(old), "new": thaw(new)}
    if a.pending_branches != b.pending_branches:
        out["pending_branches"] = {"old": list(a.pending_branches), "new": list(b.pending_branches)}
    a_steps = {step[0] for step in a.node_history}
    _section(out, "node_steps_added", [list(step) for step in b.node_history if step[0] not in a_steps])
    a_opaque = {o.seq for o in a.opaque}
    _section(out, "opaque_added", [{"seq": o.seq, "type": o.type, "payload": thaw(o.payload)}
                                   for o in b.opaque if o.seq not in a_opaque])
    custom = {k: {"old": thaw(a.custom.get(k)), "new": thaw(b.custom.get(k))}
              for k in sorted(set(a.custom) | set(b.custom)) if not _same(a.custom.get(k), b.custom.get(k))}
    _section(out, "custom_changed", custom)
    a_anom = set(a.anomalies)
    _section(out, "anomalies_added", [{"seq": x.seq, "type": x.type, "message": x.message}
                                      for x in b.anomalies if x not in a_anom])
    return out


def _section(out: dict[str, Any], name: str, value: Any) -> None:
    if value:
        out[name] = value


def _leaves(m: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Flatten memory to path → leaf value; an empty map is itself a leaf (so creating one shows)."""
    out: dict[tuple[str, ...], Any] = {}
    for k, v in m.items():
        if isinstance(v, Mapping) and v:
            out.update(_leaves(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def _same(x: Any, y: Any) -> bool:
    # Python's == says True == 1 == 1.0; a change of type is a change for an auditor.
    return codec.pack(thaw(x)) == codec.pack(thaw(y))


def _set_key(m: Mapping[str, Any], key: str, value: Any) -> Mapping[str, Any]:
    d = dict(m)
    d[key] = value
    return MappingProxyType(dict(sorted(d.items())))
