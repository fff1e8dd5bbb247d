"""The fold: a thread's LangGraph events → what the savers answer (:class:`ThreadIndex`), and the delta check
of a list or dict channel against its last stored version (:class:`_Decoded`)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, TypeGuard, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from journal.events import Event
from replayer.langgraph.format import (
    READABLE,
    TYPES,
    CheckpointCorrupt,
    check_value,
    decode_value,
    encode_value,
    payload_fields,
)
from replayer.langgraph_fold import CHECKPOINT, DELETED, WRITES

#: A dict's delta chain longer than this is cut by storing the dict whole, so a read applies at most
#: this many patches after one whole value. (A list's chain is not cut: its tails decode as one array.)
MAX_DELTA_DEPTH = 64

#: How many of a stored list's items a put compares field by field with the graph's, besides checking every
#: item's identity: the newest this many, and as many older ones in turn (:class:`_Decoded`). A put's cost
#: stays flat as a conversation grows; an item changed in place is stored at the next put if it is among
#: the newest, else within (length / this) + 1 puts.
CHECK_WINDOW = 16

#: An index's memory per event folded is about this plus 1.5x its packed data: fitted to what tracemalloc
#: counts on two workloads, bench_langgraph's conversation (3,348 B per event, 1,822 B of data) and
#: tests/test_langgraph_history.py's chat (1,572 B per event, 581 B of data); both within 5%.
EVENT_WEIGHT = 768
#: A format 1/2 event (fields unpacked, no ``data`` bytes to measure): counted as this many bytes of data.
UNPACKED_WEIGHT = 4096


def _weight(ev: Event) -> int:
    """What folding ``ev`` adds to an index's memory, estimated from its packed data (:data:`EVENT_WEIGHT`;
    an older format's unpacked fields count as :data:`UNPACKED_WEIGHT` bytes of data)."""
    data = ev.payload.get("data") if isinstance(ev.payload, dict) else None
    return EVENT_WEIGHT + (len(data) if isinstance(data, bytes) else UNPACKED_WEIGHT) * 3 // 2


# -- the fold: a thread's events → what the saver answers ------------------------------------------

_Write = tuple[str, str, dict[str, Any], str, int]
#: (ns, channel, version): where a channel's value is stored
_Key = tuple[str, str, Any]
#: One list call's rebuilt list values, by key
_Memo = dict[_Key, Any]
#: (the blob's delta fields, the new value as decoded from them)
_Delta = tuple[dict[str, Any], "_Decoded | None"]
_FIELDS = attrgetter("__dict__")
_EXTRA = attrgetter("__pydantic_extra__")

#: The pydantic models of a list as :func:`_model_fields` returns them: their types, ``__dict__`` and extras
_Fields = tuple[list[type], list[Any], list[Any]]


@dataclass
class _Decoded:
    """A list or dict channel's last stored version: the base of the next delta.

    For a list, ``items`` are the graph's own objects once a put has stored them (decoded ones before),
    and ``stored`` what was stored of each, not an object the graph can change. A put's check
    (:meth:`prefix_of`) costs the same at step 1 and at step 10,000: the whole prefix by identity,
    which is how LangGraph changes a list (its reducer appends, replaces by id, removes: each a
    new object); and each item's fields against what was stored for the newest ``CHECK_WINDOW``
    items and, in turn, ``CHECK_WINDOW`` older ones, for a graph that changes a stored message
    in place (which LangGraph does not ask for: its state changes through the nodes' updates).
    """

    version: Any
    #: the list's or dict's items (a dict's are decoded from what was stored, and compared key by key)
    items: Any
    #: a list's items as stored: for pydantic models (LangChain's messages) their fields (three lists compared
    #: in C, at a third of the cost of ``_same`` for each), copied where mutable; for other items, decoded
    stored: _Fields | list[Any] | None = None
    #: the first of the older items the next put compares
    turn: int = 0
    #: whether ``items`` are the graph's own objects (put by this process), not decoded ones
    owned: bool = False

    @classmethod
    def of(cls, version: Any, items: Any) -> _Decoded:
        """``items`` decoded from what was stored (nobody else holds them: they are their own record)."""
        if type(items) is not list:
            return cls(version, items)
        return cls(version, items, _model_fields(items) or items)

    def extended(self, version: Any, value: list[Any], decode: Callable[[], list[Any]]) -> _Decoded | None:
        """The next version: ``value``, the graph's list that :meth:`prefix_of` found to extend this one, stored as
        the delta of its tail; ``decode`` what was stored of the tail. None: the next put decodes the stored value.

        Models of the tail are recorded as they are now (:func:`_snapshot`), other items as decoded. The next
        version takes over this one's lists, extended in place (copying them cost a put O(length): 0.2 ms at
        10,000 messages), so this one is spent: the index keeps only the version it returns. Decoded items
        are replaced by the graph's once (a copy of ``value``), so that the identity check finds them.
        """
        n = len(self.items)
        tail = value[n:]
        hi = self._older_window()[1]
        turn = hi if hi < n - CHECK_WINDOW else 0  # the last older items compared: start again
        if isinstance(self.stored, tuple):
            more = _snapshot(tail)
            if more is None:  # a list of models that stops being one: not worth a mixed representation
                return None
            for mine, added in zip(self.stored, more, strict=True):
                mine.extend(added)
            stored: _Fields | list[Any] = self.stored
        else:
            # Decoded items are their own record (:meth:`of`) until the graph's objects take their place.
            stored = cast(list[Any], self.stored)
            if stored is self.items:
                stored = list(stored)
            stored.extend(decode())
        if self.owned:
            self.items.extend(tail)
            items = self.items
        else:
            items = list(value)
        return _Decoded(version, items, stored, turn, owned=True)

    def prefix_of(self, value: list[Any]) -> bool:
        """Whether ``value`` starts with these items, unchanged (see the class for what is compared)."""
        n = len(self.items)
        if len(value) < n:
            return False
        prefix = value[:n]
        # Identity first (C's list compare): an item that is not the stored one is compared whole (``==``).
        if prefix != self.items:
            return False
        return all(self._same_as_stored(prefix, lo, hi)
                   for lo, hi in ((max(0, n - CHECK_WINDOW), n), self._older_window()) if lo < hi)

    def _older_window(self) -> tuple[int, int]:
        """The older items this put compares: from ``turn`` (or the first, once the last was reached) on."""
        older = max(0, len(self.items) - CHECK_WINDOW)
        lo = self.turn if self.turn < older else 0
        return lo, min(lo + CHECK_WINDOW, older)

    def _same_as_stored(self, prefix: list[Any], lo: int, hi: int) -> bool:
        live = prefix[lo:hi]
        if not isinstance(self.stored, tuple):
            return all(map(_same, cast(list[Any], self.stored)[lo:hi], live))
        types, dicts, extras = self.stored
        return (list(map(type, live)) == types[lo:hi] and list(map(_FIELDS, live)) == dicts[lo:hi]
                and list(map(_EXTRA, live)) == extras[lo:hi])


#: Value types shared, not copied, by :func:`_snapshot`: nothing can change them in place.
_ATOMS = frozenset({str, int, float, bool, type(None), bytes})


def _snapshot(models: list[Any]) -> _Fields | None:
    """:func:`_model_fields` of the graph's live models as they are now: each field's value shared if immutable,
    else deep-copied, so a later comparison with the live models finds any change, in place or by assignment."""
    found = _model_fields(models)
    if found is None:
        return None
    types, fields, extras = found
    return (types, [{k: v if type(v) in _ATOMS else _copy(v) for k, v in f.items()} for f in fields],
            [_copy(e) for e in extras])


def _copy(value: Any, depth: int = 0) -> Any:
    """``copy.deepcopy`` for what a message's fields hold (dicts, lists and atoms: tool calls, metadata), at a
    third of its cost; anything else, or deeper than 32 levels (a cycle), goes to ``deepcopy`` itself."""
    kind = type(value)
    if kind in _ATOMS:
        return value
    if depth < 32:
        if kind is dict:
            return {k: _copy(v, depth + 1) for k, v in value.items()}
        if kind is list:
            return [_copy(v, depth + 1) for v in value]
    return copy.deepcopy(value)


def _model_fields(items: list[Any]) -> _Fields | None:
    types = list(map(type, items))
    if not all(hasattr(t, "__pydantic_fields__") and hasattr(t, "__pydantic_extra__") for t in set(types)):
        return None
    try:
        return types, list(map(_FIELDS, items)), list(map(_EXTRA, items))
    except AttributeError:  # a model without a __dict__ (slots): compared item by item
        return None
#: Channel value types stored as deltas of their previous version
_DELTA_TYPES = (list, dict)


@dataclass
class _Stored:
    checkpoint: bytes | dict[str, Any]
    metadata: bytes | dict[str, Any]
    parent: str | None
    thread_id: str
    ts_ms: int = 0


@dataclass
class ThreadIndex:
    """What one journal thread holds for LangGraph, folded from its events in seq order."""

    seq: int = 0
    epoch: int = 0
    #: ns -> checkpoint id -> stored checkpoint (ids are uuid6: their order is creation order)
    checkpoints: dict[str, dict[str, _Stored]] = field(default_factory=dict)
    #: (ns, channel, version) -> stored value, a delta (``base``, ``n``, ``tail``), or None (stored as empty)
    blobs: dict[tuple[str, str, Any], bytes | dict[str, Any] | None] = field(default_factory=dict)
    #: (ns, checkpoint id) -> (task id, idx) -> (task id, channel, stored value, task path, idx)
    writes: dict[tuple[str, str], dict[tuple[str, int], _Write]] = field(default_factory=dict)
    #: (ns, channel) -> the version stored last: the base a put tries to extend
    last: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: checkpoint ids a tombstone removed: a put or write against one of them is a late write
    dead: set[str] = field(default_factory=set)
    #: (ns, channel) -> its last stored list or dict, with what was stored of it: a put compares the new value
    #: with this (:class:`_Decoded`) without decoding again
    decoded: dict[tuple[str, str], _Decoded] = field(default_factory=dict)
    #: (ns, channel) -> (version, :meth:`depth` of it), the channel's last asked
    depths: dict[tuple[str, str], tuple[Any, int]] = field(default_factory=dict)
    #: the memory the index holds, estimated (:func:`_weight`) for the savers' cache budget
    weight: int = 0

    def apply(self, events: Sequence[Event]) -> None:
        """Fold ``events`` (seq order); ``seq`` advances only past an event folded whole.

        An event at or below ``seq`` is already folded and is skipped: a read that raced the saver's own
        fold of its append (:func:`fold_appended`) returns events the index has, and folding a tombstone
        twice would count two deletes.
        """
        for ev in events:
            if ev.seq <= self.seq:
                continue
            if ev.type in TYPES:
                self.weight += _weight(ev)
                try:
                    self._apply(ev)
                except CheckpointCorrupt as e:
                    raise CheckpointCorrupt(f"seq {ev.seq} ({ev.type}): {e}") from e
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    # The index stays before this event, so every later read fails the same way, naming it.
                    raise CheckpointCorrupt(f"seq {ev.seq} ({ev.type}): malformed payload: {e!r}") from e
            # Other agent steps may share the thread: they are not LangGraph's, and are skipped.
            self.seq = ev.seq

    def _apply(self, ev: Event) -> None:
        p = ev.payload
        if not isinstance(p, dict) or p.get("v") not in READABLE:
            found = p.get("v") if isinstance(p, dict) else p
            raise CheckpointCorrupt(f"payload format {found!r:.40} is not one of {READABLE}")
        p = payload_fields(p)
        if ev.type == DELETED:
            for space in self.checkpoints.values():
                self.dead.update(space)
            self.checkpoints.clear()
            self.blobs.clear()
            self.writes.clear()
            self.last.clear()
            self.decoded.clear()
            self.depths.clear()
            self.epoch += 1
            self.weight = EVENT_WEIGHT * len(self.dead)
        elif p.get("epoch") != self.epoch:
            # Written by one who had not seen a delete that came before it: deleted too, and so is
            # whatever is later put on top of it.
            if ev.type == CHECKPOINT and isinstance(p.get("id"), str):
                self.dead.add(p["id"])
        elif ev.type == CHECKPOINT:
            self._put(p, ev.ts_ms)
        elif ev.type == WRITES:
            self._put_writes(p)
        else:
            self._prune(p)

    def _put(self, p: dict[str, Any], ts_ms: int) -> None:
        # Everything read and checked first, then stored: a malformed event changes nothing.
        ns, cid, parent, thread_id = str(p["ns"]), str(p["id"]), p["parent"], str(p["thread_id"])
        blobs: list[tuple[tuple[str, str, Any], bytes | dict[str, Any] | None]] = []
        for channel, blob in p["blobs"].items():
            key = (ns, str(channel), blob["version"])
            if "base" in blob:
                base = self.blobs.get((ns, str(channel), blob["base"]), None)
                if base is None and not any(k == (ns, str(channel), blob["base"]) for k, _ in blobs):
                    raise CheckpointCorrupt(f"channel {channel!r} version {blob['version']!r} is stored as a delta "
                                            f"of version {blob['base']!r}, which this thread does not hold")
                if "tail" in blob:
                    if type(blob["n"]) is not int or blob["n"] < 0:
                        raise CheckpointCorrupt(f"channel {channel!r}: a delta's 'n' must be a length, "
                                                f"got {blob['n']!r}")
                    check_value(blob["tail"])
                    blobs.append((key, {"base": blob["base"], "n": blob["n"], "tail": blob["tail"]}))
                else:
                    check_value(blob["set"])
                    if "del" in blob:
                        check_value(blob["del"])
                    blobs.append((key, {"base": blob["base"], "set": blob["set"], "del": blob.get("del")}))
            else:
                value = blob.get("value")
                if value is not None:
                    check_value(value)
                blobs.append((key, value))
        stored = _Stored(check_value(p["checkpoint"]), check_value(p["metadata"]),
                         None if parent is None else str(parent), thread_id, ts_ms)
        for key, value in blobs:
            self.blobs[key] = value
            self.last[key[:2]] = key[2]
        self.checkpoints.setdefault(ns, {})[cid] = stored

    def _put_writes(self, p: dict[str, Any]) -> None:
        task_id, task_path = str(p["task_id"]), str(p["task_path"])
        writes = [(int(idx), str(channel), value) for idx, channel, value in p["writes"]]
        for _, _, value in writes:
            check_value(value)
        stored = self.writes.setdefault((str(p["ns"]), str(p["checkpoint_id"])), {})
        for idx, channel, value in writes:
            key = (task_id, idx)
            # As LangGraph's savers do: a regular write (idx >= 0) is kept once, the first time; the
            # special channels (error, interrupt, resume…: negative idx) are replaced by the latest.
            if idx >= 0 and key in stored:
                continue
            stored[key] = (task_id, channel, value, task_path, idx)

    def _prune(self, p: dict[str, Any]) -> None:
        drop = [(str(ns), str(cid)) for ns, cid in p["drop"]]
        for ns, cid in drop:
            # The channel values stay: a later checkpoint's delta may be built on them.
            self.checkpoints.get(ns, {}).pop(cid, None)
            self.writes.pop((ns, cid), None)
        for ns in [ns for ns, space in self.checkpoints.items() if not space]:
            del self.checkpoints[ns]

    # -- queries -------------------------------------------------------------------------------

    def latest_id(self, ns: str) -> str | None:
        return max(self.checkpoints.get(ns, {}), default=None)

    def value(self, serde: SerializerProtocol, ns: str, channel: str, version: Any,
              memo: _Memo | None = None) -> tuple[bool, Any]:
        """``(True, value)`` of a channel's stored version, rebuilt from its delta chain; ``(False, None)`` if empty.

        ``memo`` (one ``list`` call's) holds the list versions already rebuilt, so a chain shared by
        many checkpoints is decoded once: each version costs its tail, not its whole length.
        """
        tails: list[tuple[_Key, dict[str, Any]]] = []
        key = (ns, channel, version)
        stored = self.blobs.get(key)
        value: Any = None
        while is_delta(stored):
            if memo is not None and key in memo:
                value = memo[key]
                break
            tails.append((key, stored))
            key = (ns, channel, stored["base"])
            stored = self.blobs.get(key)
        else:
            if stored is None:
                if tails:
                    raise CheckpointCorrupt(f"channel {channel!r} version {version!r}: "
                                            "its delta chain has no whole value")
                return False, None
            if memo is not None and key in memo:
                value = memo[key]
            else:
                # One read: the whole chain decoded at once. (A list call decodes each tail once, into its memo.)
                joined = _join_lists(stored, [d for _, d in reversed(tails)]) if tails and memo is None else None
                if joined is not None:
                    return True, serde.loads_typed(joined)
                value = serde.loads_typed(decode_value(stored))
                if memo is not None and type(value) in _DELTA_TYPES:
                    memo[key] = value
        for key, delta in reversed(tails):
            value = _patch(serde, channel, value, delta)
            if memo is not None:
                memo[key] = value
        if memo is not None and type(value) in _DELTA_TYPES:
            value = type(value)(value)  # each tuple gets its own list or dict (items shared within one call)
        return True, value

    def depth(self, ns: str, channel: str, version: Any) -> int:
        """How many deltas lie between this version and the whole value it is built on.

        The answer is kept for the channel's version asked last: each put asks for the one before it, so
        the walk stops one step down instead of going the chain's length (up to ``MAX_DELTA_DEPTH``)."""
        known = self.depths.get((ns, channel))
        n, at = 0, version
        stored = self.blobs.get((ns, channel, at))
        while is_delta(stored):
            if known is not None and known[0] == at:
                n += known[1]
                break
            n += 1
            at = stored["base"]
            stored = self.blobs.get((ns, channel, at))
        self.depths[(ns, channel)] = (version, n)
        return n

    def tuple(self, serde: SerializerProtocol, ns: str, checkpoint_id: str) -> CheckpointTuple | None:
        stored = self.checkpoints.get(ns, {}).get(checkpoint_id)
        if stored is None:
            return None
        return self._tuple(serde, ns, checkpoint_id, stored, serde.loads_typed(decode_value(stored.metadata)))

    def _tuple(self, serde: SerializerProtocol, ns: str, checkpoint_id: str, stored: _Stored,
               metadata: CheckpointMetadata,
               memo: _Memo | None = None) -> CheckpointTuple:
        checkpoint: Checkpoint = serde.loads_typed(decode_value(stored.checkpoint))
        values: dict[str, Any] = {}
        for channel, version in checkpoint["channel_versions"].items():
            found, value = self.value(serde, ns, channel, version, memo)
            if found:
                values[channel] = value
        pending: list[PendingWrite] = [(t, c, serde.loads_typed(decode_value(v)))
                                       for t, c, v, _, _ in self.ordered_writes(ns, checkpoint_id)]

        def conf(cid: str) -> RunnableConfig:
            return {"configurable": {"thread_id": stored.thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}}

        return CheckpointTuple(
            config=conf(checkpoint_id),
            checkpoint={**checkpoint, "channel_values": values},
            metadata=metadata,
            parent_config=conf(stored.parent) if stored.parent else None,
            pending_writes=pending,
        )

    def ordered_writes(self, ns: str, checkpoint_id: str) -> list[_Write]:
        writes = self.writes.get((ns, checkpoint_id), {})
        return sorted(writes.values(), key=lambda w: writes_sort_key(w[3], w[0], w[4]))

    def select(self, serde: SerializerProtocol, ns: str | None, checkpoint_id: str | None,
               filter: dict[str, Any] | None, before: str | None, limit: int | None) -> list[CheckpointTuple]:
        """``list``'s answer for this thread: newest first within a namespace."""
        out: list[CheckpointTuple] = []
        memo: _Memo = {}
        for space in sorted(self.checkpoints) if ns is None else [ns]:
            for cid in sorted(self.checkpoints.get(space, {}), reverse=True):
                if limit is not None and len(out) >= limit:
                    return out
                if (checkpoint_id and cid != checkpoint_id) or (before and cid >= before):
                    continue
                stored = self.checkpoints[space][cid]
                metadata: CheckpointMetadata = serde.loads_typed(decode_value(stored.metadata))
                if filter and not all(metadata.get(k) == v for k, v in filter.items()):
                    continue
                out.append(self._tuple(serde, space, cid, stored, metadata, memo))
        return out

    # -- what a put stores -----------------------------------------------------------------------

    def encode_blobs(self, serde: SerializerProtocol, ns: str, values: dict[str, Any],
                     new_versions: ChannelVersions) -> dict[str, dict[str, Any]]:
        """The ``blobs`` of a checkpoint event: each changed channel whole, or as the delta of its last version."""
        blobs: dict[str, dict[str, Any]] = {}
        for channel, version in new_versions.items():
            if channel not in values:
                blobs[channel] = {"version": version, "value": None}
                continue
            value = values[channel]
            delta = self._delta(serde, ns, channel, version, value) if type(value) in _DELTA_TYPES and value else None
            if delta is not None:
                fields, decoded = delta
                blobs[channel] = {"version": version, **fields}
                if decoded is None:
                    self.decoded.pop((ns, channel), None)
                else:
                    self.decoded[(ns, channel)] = decoded
                continue
            typed = serde.dumps_typed(value)
            blobs[channel] = {"version": version, "value": encode_value(typed)}
            if type(value) in _DELTA_TYPES:
                self.decoded[(ns, channel)] = _Decoded.of(version, serde.loads_typed(typed))
        return blobs

    def _delta(self, serde: SerializerProtocol, ns: str, channel: str, version: Any, value: Any) -> _Delta | None:
        """The delta fields of ``value`` against the channel's last stored version, if it is one worth storing.

        A list that extends the stored one (:meth:`_Decoded.prefix_of`): its new items. A dict of which at
        most half the keys changed: the changed keys' values and the removed keys, compared key by key
        with the stored version as decoded from what was stored.
        """
        base_version = self.last.get((ns, channel))
        if base_version is None or (type(value) is dict
                                    and self.depth(ns, channel, base_version) >= MAX_DELTA_DEPTH):
            return None
        known = self.decoded.get((ns, channel))
        if known is None or known.version != base_version:
            found, base_value = self.value(serde, ns, channel, base_version)
            if not found or type(base_value) not in _DELTA_TYPES:
                return None
            known = self.decoded[(ns, channel)] = _Decoded.of(base_version, base_value)
        base = known.items
        if type(base) is not type(value) or not base:
            return None
        if type(value) is list:
            if not known.prefix_of(value):
                return None
            tail = value[len(base):]
            typed_tail = serde.dumps_typed(tail)
            return ({"base": base_version, "n": len(base), "tail": encode_value(typed_tail)},
                    known.extended(version, value, lambda: list(serde.loads_typed(typed_tail))))
        new = cast(dict[Any, Any], value)
        changed = {k: v for k, v in new.items() if k not in base or not _same(base[k], v)}
        removed = [k for k in base if k not in new]
        if 2 * (len(changed) + len(removed)) > len(new):
            return None
        fields = {"base": base_version, "set": encode_value(serde.dumps_typed(changed))}
        if removed:
            fields["del"] = encode_value(serde.dumps_typed(removed))
        return fields, _Decoded.of(version, _patch(serde, channel, base, fields))


def is_delta(stored: Any) -> TypeGuard[dict[str, Any]]:
    """Whether an index entry is a delta (a dict naming its ``base``) rather than a value stored whole."""
    return isinstance(stored, dict) and "base" in stored


def _join_lists(whole: bytes | dict[str, Any], deltas: Sequence[dict[str, Any]]) -> tuple[str, bytes] | None:
    """One msgpack array of the items of a list stored ``whole`` and of its ``deltas``' tails (oldest first).

    Decoded with one ``loads_typed``: a chain of hundreds of two-message tails then costs what one
    list of as many messages does, not a decoder call per tail. None when a part is not a msgpack
    array (another serializer, a tail that is not a list tail) or the counts disagree with the
    deltas' ``n``: the caller applies the tails one by one, which checks and reports.
    """
    items: list[bytes] = []
    count = 0
    for i, part in enumerate([whole] + [d.get("tail") for d in deltas]):
        if isinstance(part, dict) and part.get("t") == "msgpack":
            part = part.get("b")  # format 2
        if not isinstance(part, bytes) or (i and deltas[i - 1].get("n") != count):
            return None
        found = _array(part)
        if found is None:
            return None
        n, start = found
        count += n
        items.append(part[start:])
    if count < 16:
        head = bytes((0x90 | count,))
    elif count < 1 << 16:
        head = b"\xdc" + count.to_bytes(2, "big")
    else:
        head = b"\xdd" + count.to_bytes(4, "big")
    return "msgpack", head + b"".join(items)


def _array(data: bytes) -> tuple[int, int] | None:
    """``(item count, offset of the first item)`` of a msgpack array, or None if ``data`` is not one."""
    if not data:
        return None
    first = data[0]
    if 0x90 <= first <= 0x9F:
        return first & 0x0F, 1
    if first == 0xDC and len(data) >= 3:
        return int.from_bytes(data[1:3], "big"), 3
    if first == 0xDD and len(data) >= 5:
        return int.from_bytes(data[1:5], "big"), 5
    return None


def _patch(serde: SerializerProtocol, channel: str, value: Any, delta: dict[str, Any]) -> Any:
    """``value`` (a list or dict) with ``delta`` applied: a new object, ``value`` is left as it was."""
    if "tail" in delta:
        if not isinstance(value, list) or len(value) != delta["n"]:
            size = len(value) if isinstance(value, list) else "?"
            raise CheckpointCorrupt(f"channel {channel!r}: a delta extends a list of {delta['n']} items, "
                                    f"its base is {type(value).__name__} of {size}")
        return value + list(serde.loads_typed(decode_value(delta["tail"])))
    if not isinstance(value, dict):
        raise CheckpointCorrupt(f"channel {channel!r}: a delta updates a dict, its base is {type(value).__name__}")
    out = {**value, **serde.loads_typed(decode_value(delta["set"]))}
    for k in serde.loads_typed(decode_value(delta["del"])) if delta.get("del") is not None else ():
        out.pop(k, None)
    return out


def _same(a: Any, b: Any) -> bool:
    """``a == b``; for two pydantic models of one type (LangChain's messages) their fields and extras compared
    directly, which is what their ``__eq__`` does for them, at a third of its cost (it runs for every
    message of the list at every put)."""
    if type(a) is type(b) and hasattr(a, "__pydantic_fields__") and hasattr(a, "__dict__"):
        return bool(a.__dict__ == b.__dict__ and getattr(a, "__pydantic_extra__", None)
                    == getattr(b, "__pydantic_extra__", None))
    return bool(a == b)


def fold_appended(index: ThreadIndex, events: Sequence[Event], jthread: str) -> None:
    """Fold the events this saver just appended to ``jthread``, when they directly follow what the index holds.

    The next read then finds nothing new (one HGET, no stream walk); events after a gap (another
    writer's in between) are left for that read, which folds everything in order. Events of other
    threads (the registry's) are not the index's.
    """
    for ev in events:
        if ev.thread != jthread:
            continue
        if ev.seq != index.seq + 1:
            return
        index.apply([ev])
