"""The thread state the fold produces: immutable records, their plain-data form, and diff.

``ThreadState.to_dict``/``from_dict`` are the snapshot format (exact round trip, versioned by
``STATE_FORMAT``); ``diff`` says what changed between two states for the audit CLI. The rules
that build states live in :mod:`journal.reducer`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from math import isqrt
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
        return self._plain({name: list_items(self, name) for name in CHUNKED})

    def _plain(self, lists: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        """``to_dict`` with the growing lists (:data:`CHUNKED`) given: all of them, or a snapshot's inline part."""
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
            "messages": [_message_dict(m) for m in lists["messages"]],
            # A list, not a map: call order is meaningful and a map would be key-sorted by normalize.
            "tool_calls": [_call_dict(c) for c in lists["tool_calls"]],
            "node": self.node,
            "node_history": [list(step) for step in lists["node_history"]],
            "pending_branches": list(self.pending_branches),
            "memory": thaw(self.memory),
            "opaque": [_opaque_dict(o) for o in lists["opaque"]],
            "custom": thaw(self.custom),
            "anomalies": [_anomaly_dict(a) for a in lists["anomalies"]],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThreadState:
        """Rebuild a state from :meth:`to_dict` output (possibly after ``codec.normalize``/msgpack)."""
        return cls._from_plain(d, STATE_FORMAT, {})

    @classmethod
    def _from_plain(cls, d: Mapping[str, Any], version: int, prefixes: Mapping[str, Any]) -> ThreadState:
        """``from_dict``, with sealed chunks' items (already decoded) in front of each growing list."""
        if not isinstance(d, Mapping):
            raise CodecError(f"snapshot state must be a map, got {type(d).__name__}")
        if d.get("format") != version:
            raise CodecError(
                f"snapshot state format {d.get('format')!r} is not supported by this reader (knows {STATE_FORMAT}); "
                "upgrade agent-journal or rebuild the snapshot"
            )
        for name in ("memory", "custom", "resume_detail"):
            if not isinstance(d.get(name), Mapping):
                raise CodecError(f"snapshot state is malformed: {name} must be a map; rebuild the snapshot")
        try:
            calls = [_call_from(c) for c in d["tool_calls"]]
            base = prefixes.get("tool_calls")
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
                messages=prefixes.get("messages", ()) + tuple(_message_from(m) for m in d["messages"]),
                tool_calls=(MappingProxyType({c.call_id: c for c in calls}) if base is None
                            else LayeredMap(base, {c.call_id: c for c in calls})),
                node=_opt_str(d["node"]),
                node_history=prefixes.get("node_history", ()) + tuple(_step_from(x) for x in d["node_history"]),
                pending_branches=tuple(str(n) for n in d["pending_branches"]),
                memory=freeze(d["memory"]),
                opaque=prefixes.get("opaque", ()) + tuple(_opaque_from(o) for o in d["opaque"]),
                custom=freeze(d["custom"]),
                anomalies=prefixes.get("anomalies", ()) + tuple(_anomaly_from(a) for a in d["anomalies"]),
            )
        except (KeyError, TypeError, ValueError, JournalError) as e:
            raise CodecError(f"snapshot state is malformed ({type(e).__name__}: {e}); rebuild the snapshot") from e


def _message_from(m: Mapping[str, Any]) -> Message:
    return Message(int(m["seq"]), _opt_str(m["role"]), freeze(m["content"]), tuple(str(c) for c in m["tool_calls"]),
                   _opt_str(m["node"]))


def _step_from(x: Any) -> NodeStep:
    s, n, a = x
    return (int(s), str(n), str(a))


def _opaque_dict(o: OpaqueEntry) -> dict[str, Any]:
    return {"seq": o.seq, "type": o.type, "payload": thaw(o.payload)}


def _opaque_from(o: Mapping[str, Any]) -> OpaqueEntry:
    return OpaqueEntry(int(o["seq"]), str(o["type"]), freeze(o["payload"]))


def _anomaly_dict(a: Anomaly) -> dict[str, Any]:
    return {"seq": a.seq, "type": a.type, "message": a.message}


def _anomaly_from(a: Mapping[str, Any]) -> Anomaly:
    return Anomaly(int(a["seq"]), str(a["type"]), str(a["message"]))


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
    """The whole state in one record: the plain-data form, normalized, packed and framed (exact round trip).

    Snapshots use :func:`encode_snapshot`, which seals the growing lists in chunks instead.
    """
    return codec.frame(codec.pack(codec.normalize(state.to_dict(), "state")))


def decode_state(data: bytes, tenant: str | None = None, thread: str | None = None,
                 load: ChunkLoader | None = None) -> ThreadState:
    """A state from :func:`encode_state` or :func:`encode_snapshot` bytes (``load`` fetches a snapshot's chunks)."""
    return decode_snapshot(data, tenant, thread, load).state


# -- incremental snapshots -------------------------------------------------------------------------
# A state that keeps every message grows with its history; a snapshot holding all of it costs, to
# write, store and decode, in proportion to the history. The growing lists are append-only in the
# built-in fold, so a snapshot stores their old items once, in sealed chunks (immutable, named by
# the SHA-256 of their bytes, shared by every later snapshot), and only the newest items inline
# with the rest of the state. Whether a list was really appended to is checked item by item
# against the chunks of the previous snapshot, never assumed: a custom reducer may replace a list,
# and the first item that differs starts new chunks.

#: The snapshot record that references chunks (``encode_state``'s whole-state record is format 1).
SNAPSHOT_FORMAT = 2
#: The state's growing lists, in ``to_dict`` order: the parts a snapshot seals in chunks.
CHUNKED = ("messages", "tool_calls", "node_history", "opaque", "anomalies")
#: Items per sealed chunk.
CHUNK_ITEMS = 128
#: Chunk names per index chunk: a snapshot lists index chunks (each naming this many chunks) and
#: fewer than this many chunks besides, so its size stays bounded as the lists grow.
INDEX_FANOUT = 64
#: The newest items of a list stay inline: a recent tool call still gets its result, and sealing it
#: first would make the next snapshot start a new chunk where this one ended.
KEEP_INLINE = 16
#: Decoded chunk items (and assembled prefixes) kept in memory per process, counted in list items.
CACHE_ITEMS = 400_000

#: ``load(ids) -> {id: stored bytes}``: the chunks of one thread, read in the caller's transaction.
ChunkLoader = Callable[[list[bytes]], Mapping[bytes, bytes]]


class LayeredMap(Mapping[str, Any]):
    """An immutable insertion-ordered map that shares its bulk with the maps it was made from.

    ``tool_calls`` grows by one call and changes one call per event; copying a whole dict per
    event made the fold cost grow with the history. ``set`` copies only a small top layer; once
    that exceeds max(256, √n) entries the layers merge (amortized O(√n) per update). Order is a dict's:
    an updated key keeps its place, a new one goes last.
    """

    __slots__ = ("_base", "_len", "_top")

    def __init__(self, base: Mapping[str, Any], top: Mapping[str, Any] | None = None, size: int | None = None) -> None:
        # Neither dict is ever mutated after this: every map made by ``set`` gets fresh top layers.
        self._base = base
        self._top = top or {}
        self._len = size if size is not None else len(base) + sum(1 for k in self._top if k not in base)

    def __getitem__(self, key: str) -> Any:
        top = self._top
        return top[key] if key in top else self._base[key]

    def __contains__(self, key: object) -> bool:
        return key in self._top or key in self._base

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        base = self._base
        for k in self._top:
            if k not in base:
                yield k

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"LayeredMap({dict(self.items())!r})"

    def set(self, key: str, value: Any) -> LayeredMap:
        """A new map with ``key`` set to ``value`` (this one unchanged)."""
        size = self._len if key in self else self._len + 1
        top = dict(self._top)
        top[key] = value
        if len(top) > max(256, isqrt(len(self._base))):
            return LayeredMap({**self._base, **top}, None, size)  # existing keys keep their place, new ones follow
        return LayeredMap(self._base, top, size)


def put_key(m: Mapping[str, Any], key: str, value: Any) -> Mapping[str, Any]:
    """``m`` with ``key`` set, insertion order kept, without copying all of a large ``m``."""
    if isinstance(m, LayeredMap):
        return m.set(key, value)
    return LayeredMap(dict(m)).set(key, value)


def list_items(state: ThreadState, name: str) -> Sequence[Any]:
    """One of the growing lists (:data:`CHUNKED`) of a state, as a sequence of its items."""
    value = getattr(state, name)
    return tuple(value.values()) if name == "tool_calls" else value


_ITEM_PLAIN: dict[str, Callable[[Any], Any]] = {
    "messages": lambda m: _message_dict(m),
    "tool_calls": lambda c: _call_dict(c),
    "node_history": list,
    "opaque": lambda o: _opaque_dict(o),
    "anomalies": lambda a: _anomaly_dict(a),
}
_ITEM_FROM: dict[str, Callable[[Any], Any]] = {
    "messages": lambda m: _message_from(m),
    "tool_calls": lambda c: _call_from(c),
    "node_history": lambda x: _step_from(x),
    "opaque": lambda o: _opaque_from(o),
    "anomalies": lambda a: _anomaly_from(a),
}


@dataclass(frozen=True, slots=True)
class Chunk:
    """A sealed run of one list's items (or, if ``index``, of chunk names): ``id`` names ``body``, the bytes stored."""

    id: bytes
    field: str
    items: tuple[Any, ...]
    body: bytes
    index: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A decoded snapshot: the state, the sealed chunks it references (per list, in order) and the
    index chunks that name the first of them."""

    state: ThreadState
    chunks: Mapping[str, tuple[Chunk, ...]] = field(default_factory=lambda: _EMPTY)
    index: Mapping[str, tuple[bytes, ...]] = field(default_factory=lambda: _EMPTY)


def seal(name: str, items: Sequence[Any]) -> Chunk:
    """A chunk of ``items`` of the list ``name``."""
    body = codec.frame(codec.pack(codec.normalize(
        {"field": name, "items": [_ITEM_PLAIN[name](x) for x in items]}, f"state.{name}")))
    return Chunk(chunk_name(body), name, tuple(items), body)


def seal_index(name: str, chunks: Sequence[Chunk]) -> Chunk:
    """An index chunk naming ``chunks`` of the list ``name``, in order."""
    ids = tuple(c.id for c in chunks)
    body = codec.frame(codec.pack({"field": name, "index": list(ids)}))
    return Chunk(chunk_name(body), name, ids, body, index=True)


def chunk_name(body: bytes) -> bytes:
    """A chunk's name: the first 128 bits of the SHA-256 of its bytes (a snapshot lists many of them)."""
    return hashlib.sha256(body).digest()[:16]


def _same_item(name: str, a: Any, b: Any) -> bool:
    # Identity is the common case (the fold keeps the objects it was given); otherwise compare the
    # bytes, since == says 1 == True == 1.0 and the chunk must decode to exactly this item.
    return a is b or codec.pack(_ITEM_PLAIN[name](a)) == codec.pack(_ITEM_PLAIN[name](b))


def encode_snapshot(state: ThreadState, previous: Snapshot | None = None) -> tuple[bytes, list[Chunk], Snapshot]:
    """The snapshot record of ``state``, the chunks it references that ``previous`` did not, and the
    snapshot as decoded (the ``previous`` of the next one).

    Each growing list keeps the longest run of ``previous``'s chunks that is still, item for item,
    its prefix; from the first item that differs (or is new), full chunks of :data:`CHUNK_ITEMS`
    are sealed while more than :data:`KEEP_INLINE` items would remain; the rest stays inline.
    Store the new chunks with the record: the record is unreadable without them.
    """
    before = previous.chunks if previous is not None else _EMPTY
    refs: dict[str, tuple[Chunk, ...]] = {}
    inline: dict[str, Sequence[Any]] = {}
    new: list[Chunk] = []
    for name in CHUNKED:
        items = list_items(state, name)
        pos = 0
        kept: list[Chunk] = []
        for ch in before.get(name, ()):
            n = len(ch.items)
            if pos + n > len(items) or not all(_same_item(name, a, b) for a, b in zip(items[pos:pos + n], ch.items,
                                                                                       strict=True)):
                break
            kept.append(ch)
            pos += n
        while len(items) - pos >= CHUNK_ITEMS + KEEP_INLINE:
            ch = seal(name, items[pos:pos + CHUNK_ITEMS])
            new.append(ch)
            kept.append(ch)
            pos += CHUNK_ITEMS
        if kept:
            refs[name] = tuple(kept)
        inline[name] = items[pos:]
    index: dict[str, tuple[bytes, ...]] = {}
    leaves: dict[str, list[bytes]] = {}
    before_index = previous.index if previous is not None else _EMPTY
    for name, chunks in sorted(refs.items()):
        groups = len(chunks) // INDEX_FANOUT
        ids = []
        for g in range(groups):
            ix = seal_index(name, chunks[g * INDEX_FANOUT:(g + 1) * INDEX_FANOUT])
            known = before_index.get(name, ())
            if g >= len(known) or known[g] != ix.id:
                new.append(ix)
            ids.append(ix.id)
        if ids:
            index[name] = tuple(ids)
        leaves[name] = [ch.id for ch in chunks[groups * INDEX_FANOUT:]]
    # Chunk names are raw bytes (msgpack bin), which normalize refuses in payloads: only the state goes through it.
    record = {"format": SNAPSHOT_FORMAT, "state": codec.normalize(state._plain(inline), "state"),
              "index": {name: list(ids) for name, ids in index.items()}, "chunks": leaves}
    for ch in new:
        # Named by their content, so caching before the transaction commits cannot serve wrong items.
        _CACHE.add(state.tenant, state.thread, replace(ch, body=b""))
    return (codec.frame(codec.pack(record)), new,
            Snapshot(state, MappingProxyType(refs), MappingProxyType(index)))


def decode_snapshot(data: bytes, tenant: str | None = None, thread: str | None = None,
                    load: ChunkLoader | None = None) -> Snapshot:
    """A snapshot record (or a whole-state record of :func:`encode_state`) with its chunks.

    Chunks come from the process's cache of decoded chunks, else from ``load`` (verified against
    their SHA-256 names); ``CodecError`` if one is missing, altered or no loader was given.
    """
    data = bytes(data)
    # A stored snapshot never changes: one decoded in this process is reused (resume between two
    # snapshots reads the same one again and again). Keyed by content, like the chunks.
    key = ("s", tenant, thread, hashlib.sha256(data).digest())
    cached: Snapshot | None = _CACHE._get(key)
    if cached is not None:
        return cached
    raw = codec.unframe(data)
    if not isinstance(raw, Mapping) or raw.get("format") != SNAPSHOT_FORMAT:
        whole = Snapshot(ThreadState.from_dict(raw))
        return whole if tenant is None else _CACHE._put(key, whole, 1 + whole.state.event_count // 4)
    rest, refs, index = raw.get("state"), raw.get("chunks"), raw.get("index", {})
    if not isinstance(rest, Mapping) or not isinstance(refs, Mapping) or not isinstance(index, Mapping):
        raise CodecError("snapshot record is malformed (state, chunks or index is not a map); rebuild the snapshot")
    tenant = str(rest.get("tenant")) if tenant is None else tenant
    thread = str(rest.get("thread")) if thread is None else thread
    if (rest.get("tenant"), rest.get("thread")) != (tenant, thread):
        raise CodecError(f"snapshot record of {rest.get('tenant')}/{rest.get('thread')} read for {tenant}/{thread}; "
                         "rebuild the snapshot")
    indexed = _chunks(tenant, thread, index, load, index=True)
    full = {name: [i for ix in indexed.get(name, ()) for i in ix.items] + list(ids) for name, ids in refs.items()}
    for name, ixs in indexed.items():
        full.setdefault(name, [i for ix in ixs for i in ix.items])
    chunks = _chunks(tenant, thread, full, load)
    prefixes = {name: _CACHE.prefix(tenant, thread, name, found) for name, found in chunks.items()}
    state = ThreadState._from_plain(rest, STATE_FORMAT, prefixes)
    inline = sum(len(v) for k, v in rest.items() if k in CHUNKED and isinstance(v, list))
    snapshot = Snapshot(state, MappingProxyType(chunks),
                        MappingProxyType({name: tuple(ix.id for ix in ixs) for name, ixs in indexed.items()}))
    return _CACHE._put(key, snapshot, 1 + inline)  # type: ignore[no-any-return]


def referenced_chunks(data: bytes, load: ChunkLoader) -> set[bytes]:
    """The names of every chunk a stored snapshot record needs: its index chunks, the chunks they name
    and the chunks it names itself (none for a whole-state record).

    ``CodecError`` if the record or one of its index chunks cannot be read: whoever deletes chunks
    by this answer must then keep them all.
    """
    raw = codec.unframe(bytes(data))
    if not isinstance(raw, Mapping) or raw.get("format") != SNAPSHOT_FORMAT:
        return set()
    index, leaves = raw.get("index", {}), raw.get("chunks")
    if not isinstance(index, Mapping) or not isinstance(leaves, Mapping):
        raise CodecError("snapshot record is malformed (chunks or index is not a map); rebuild the snapshot")
    named = [ids for ids in (*index.values(), *leaves.values())]
    if not all(isinstance(ids, list) and all(isinstance(i, bytes) for i in ids) for ids in named):
        raise CodecError("snapshot record is malformed (a chunk list is not a list of names); rebuild the snapshot")
    out = {i for ids in named for i in ids}
    wanted = sorted({i for ids in index.values() for i in ids})
    bodies = load(wanted) if wanted else {}
    for i in wanted:
        body = bodies.get(i)
        if body is None:
            raise CodecError(f"snapshot index chunk {i.hex()[:16]} is missing from journal.snapshot_chunks; "
                             "rebuild the thread's snapshots")
        ix = _unseal(i, bytes(body))
        if not ix.index:
            raise CodecError(f"snapshot chunk {i.hex()[:16]} is named as an index but holds items; "
                             "rebuild the thread's snapshots")
        out.update(ix.items)
    return out


def _chunks(tenant: str, thread: str, refs: Mapping[str, Any], load: ChunkLoader | None,
            index: bool = False) -> dict[str, tuple[Chunk, ...]]:
    wanted: dict[str, list[bytes]] = {}
    for name, ids in refs.items():
        if name not in CHUNKED or not isinstance(ids, list) or not all(isinstance(i, bytes) for i in ids):
            raise CodecError(f"snapshot record is malformed (chunk list {name!r}); rebuild the snapshot")
        if ids:
            wanted[name] = ids
    found = {i: c for ids in wanted.values() for i in ids if (c := _CACHE.chunk(tenant, thread, i)) is not None}
    missing = sorted({i for ids in wanted.values() for i in ids} - found.keys())
    if missing:
        if load is None:
            raise CodecError("this snapshot references sealed chunks but no reader of journal.snapshot_chunks was "
                             "given; decode it with the PostgreSQL reader that read it")
        bodies = load(missing)
        for i in missing:
            body = bodies.get(i)
            if body is None:
                raise CodecError(f"snapshot chunk {i.hex()[:16]} of {tenant}/{thread} is missing from "
                                 "journal.snapshot_chunks; rebuild the thread's snapshots")
            found[i] = _CACHE.add(tenant, thread, _unseal(i, bytes(body)))
    out: dict[str, tuple[Chunk, ...]] = {}
    for name, ids in wanted.items():
        out[name] = tuple(found[i] for i in ids)
        # Names come from the record and from index chunks alike: a leaf where an index belongs (or
        # the reverse) is as wrong as a chunk of another list.
        if any(c.field != name or c.index != index for c in out[name]):
            raise CodecError(f"snapshot chunk list {name!r} of {tenant}/{thread} names a chunk of another list; "
                             "rebuild the thread's snapshots")
    return out


def _unseal(chunk_id: bytes, body: bytes) -> Chunk:
    if chunk_name(body) != chunk_id:
        raise CodecError(f"snapshot chunk {chunk_id.hex()[:16]} does not match its SHA-256 name (altered); "
                         "rebuild the thread's snapshots")
    raw = codec.unframe(body)
    try:
        name = raw["field"]
        if name not in CHUNKED:
            raise ValueError(f"unknown list {name!r}")
        if "index" in raw:
            ids = tuple(raw["index"])
            if not all(isinstance(i, bytes) for i in ids):
                raise TypeError("index entries must be chunk names (bytes)")
            return Chunk(chunk_id, name, ids, b"", index=True)
        items = tuple(_ITEM_FROM[name](x) for x in raw["items"])
    except (KeyError, TypeError, ValueError, JournalError) as e:
        raise CodecError(f"snapshot chunk {chunk_id.hex()[:16]} is malformed ({type(e).__name__}: {e}); "
                         "rebuild the thread's snapshots") from e
    return Chunk(chunk_id, name, items, b"")


class _ChunkCache:
    """Decoded chunks and the lists assembled from them, LRU, bounded by :data:`CACHE_ITEMS` items.

    Safe to share between tenants and readers: entries are keyed by tenant and thread, a chunk
    is only looked up by a name read from a snapshot row the reader was allowed to see, and a
    name is the hash of the chunk's bytes. Everything cached is immutable.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[Any, ...], tuple[Any, int]] = OrderedDict()
        self._weight = 0

    def _get(self, key: tuple[Any, ...]) -> Any:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            self._entries.move_to_end(key)
            return hit[0]

    def _put(self, key: tuple[Any, ...], value: Any, weight: int) -> Any:
        with self._lock:
            if key not in self._entries:
                self._entries[key] = (value, weight)
                self._weight += weight
                while self._weight > self.limit and len(self._entries) > 1:
                    _, (_, w) = self._entries.popitem(last=False)
                    self._weight -= w
        return value

    def chunk(self, tenant: str, thread: str, chunk_id: bytes) -> Chunk | None:
        found: Chunk | None = self._get(("c", tenant, thread, chunk_id))
        return found

    def add(self, tenant: str, thread: str, chunk: Chunk) -> Chunk:
        put: Chunk = self._put(("c", tenant, thread, chunk.id), chunk, len(chunk.items))
        return put

    def prefix(self, tenant: str, thread: str, name: str, chunks: tuple[Chunk, ...]) -> Any:
        """The chunks' items joined: a tuple, or for ``tool_calls`` a dict by call id (shared, never mutated)."""
        key = ("p", tenant, thread, name, tuple(c.id for c in chunks))
        joined = self._get(key)
        if joined is None:
            items = tuple(x for c in chunks for x in c.items)
            joined = self._put(key, {c.call_id: c for c in items} if name == "tool_calls" else items, len(items))
        return joined

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._weight = 0


_CACHE = _ChunkCache(CACHE_ITEMS)


def clear_chunk_cache() -> None:
    """Forget the decoded chunks of this process (benchmarks of cold reads; tests)."""
    _CACHE.clear()


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
