"""LangGraph checkpointers on the journal: every checkpoint and every batch of pending writes is an event.

``JournalSaver`` (on ``JournalClient``) and ``AsyncJournalSaver`` (on ``AsyncJournalClient``) implement
LangGraph's ``BaseCheckpointSaver``. One LangGraph ``thread_id`` is one journal thread of the tenant
named by ``config["configurable"]["tenant_id"]`` (or the saver's default); subgraph namespaces
(``checkpoint_ns``) share their root thread's journal thread, as LangGraph shares the ``thread_id``.

Event types (custom, so the journal stores them verbatim and the fold keeps them in ``opaque``):

- ``x.langgraph.checkpoint``: one ``put``. The checkpoint without its values, its metadata, its
  parent id, and the values of the channels in ``new_versions`` only: a channel that did not change
  keeps pointing at the value stored by an earlier checkpoint (by ``(ns, channel, version)``). A
  list channel whose new value extends the previous stored version of that channel (the
  ``messages`` list) is stored as a delta: ``{"version", "base": previous version, "n": its length,
  "tail": the new items}``; a dict channel of which at most half the keys changed as
  ``{"version", "base", "set": the changed keys' values, "del": the removed keys}``; rebuilt on
  read. Anything else (and a dict every ``MAX_DELTA_DEPTH + 1``-th version, so a read applies a
  bounded chain of patches) is stored whole. A list is never stored whole again while it only
  grows: a read joins the stored items of its whole value and of every tail into one msgpack array
  and decodes that once (:func:`_join_lists`), which costs what decoding the list whole would.
- ``x.langgraph.writes``: one ``put_writes`` (a task's writes against one checkpoint), appended in the
  same append as the thread's next checkpoint when that comes within ``WRITES_LINGER``, else alone.
- ``x.langgraph.deleted``: ``delete_thread``'s tombstone. The journal is append-only, so deletion
  is a fact in the log: a reader forgets everything before it, and every checkpoint or write event
  carries the ``epoch`` (tombstones its writer had seen), so one that raced the delete (written
  after the tombstone by a writer that had not seen it) is ignored too; and a put or write whose
  parent checkpoint a tombstone removed is written as stale (``epoch`` -1): a graph still running
  when its thread was deleted cannot bring it back.
- ``x.langgraph.pruned``: a retention record (``prune``, ``expire``): the checkpoints it names, and
  their pending writes, are gone for the saver from then on. Nothing is deleted from the log.
- ``x.langgraph.thread`` in the tenant's journal thread ``_lg.threads``: the first put of a thread
  registers it there, so ``list(None)`` can find every LangGraph thread of the tenant.

In format 3 the fields only the saver reads (a checkpoint's ``checkpoint``, ``metadata`` and ``blobs``, a
write's ``writes``) are packed together as one msgpack ``data`` field (:func:`payload_fields` unpacks
them): the projector's queryable JSONB copy of the payload keeps the fields people query (``id``,
``parent``, ``step``, ``source``, ``ns``, a write's ``channels``) and shows ``data`` as its length,
instead of a nested map of versions and ``{"$bytes": n}`` stand-ins that cost more than the values.

Values are the serializer's bytes, stored as bytes (the journal's payloads carry msgpack bin): the
bytes alone for its usual ``"msgpack"`` type, else ``{"t": type, "b": bytes}``, or ``{"t": "json",
"s": text}`` when the serializer produced JSON. (Format 2 events, which wrapped every value as
``{"t", "b"}`` and always wrote a dict delta's ``del``, and format 1 events, which base64'd values as
``{"t", "b64"}``, are still read.)

Reads fold the thread's events into an in-process index, kept per thread (LRU) and brought up to
date on each call by reading only the events after the last seq it folded, so a ``get_tuple`` costs
one read of what is new, from whichever tier holds it.

Import this module explicitly (``from replayer.langgraph import JournalSaver``): ``import replayer``
does not import LangGraph.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import hashlib
import random
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from operator import attrgetter
from typing import Any, TypeGuard, TypeVar, cast

import msgpack
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from journal.aio import AsyncJournalClient
from journal.client import JournalClient
from journal.errors import ConflictError, InvalidIdentifier, JournalError
from journal.events import Draft, Event
from journal.keys import validate_id
from journal.settings import DURABILITY_LEVELS as JOURNAL_LEVELS
from replayer.langgraph_fold import CHECKPOINT, DELETED, PRUNED, THREAD, WRITES

TYPES = (CHECKPOINT, WRITES, DELETED, PRUNED)

#: The tenant's journal thread where each LangGraph thread is registered once (for ``list(None)``).
#: Ids starting with "_" are the journal's; "_lg." + 64 hex digits are hashed thread ids, so no
#: LangGraph thread maps onto this one.
REGISTRY = "_lg.threads"

#: Version of the payloads below; a reader refuses others rather than misread them.
FORMAT = 3
#: Formats this reader folds (1: values base64'd in ``b64``, no deltas, no retention records; 2: every value
#: as ``{"t", "b"}``).
READABLE = (1, 2, 3)

#: Epoch written by a put/put_writes whose parent checkpoint a tombstone removed: never current.
STALE_EPOCH = -1

#: A put whose expected head keeps moving (writes racing it) reads and retries this many times, then
#: raises the ConflictError.
PUT_ATTEMPTS = 16

#: How long a ``put_writes`` waits for the thread's next ``put`` to carry its writes in the same append (one
#: round trip and one script run for both) before appending them alone. LangGraph submits a superstep's
#: writes and then its checkpoint within about a millisecond; a run that stops after writes (an
#: interrupt, an error) pays this once. Nothing waits on it in the graph: LangGraph runs ``put_writes`` in
#: the background and waits for it only when the run ends.
WRITES_LINGER = 0.005
#: How much longer writes against a checkpoint the saver has not seen yet wait for its ``put``: LangGraph
#: puts in the background, each after the one before, so a put can start after its step's writes linger
#: out (a busy machine); appended alone, the writes would come before their checkpoint in the log.
WRITES_AWAIT_PUT = 1.0

#: A dict's delta chain longer than this is cut by storing the dict whole, so a read applies at most
#: this many patches after one whole value. (A list's chain is not cut: its tails decode as one array.)
MAX_DELTA_DEPTH = 64

#: How many of a stored list's items a put compares field by field with the graph's, besides checking every
#: item's identity: the newest this many, and as many older ones in turn (:class:`_Decoded`). A put's cost
#: stays flat as a conversation grows; an item changed in place is stored at the next put if it is among
#: the newest, else within (length / this) + 1 puts.
CHECK_WINDOW = 16

#: Default memory budget of a saver's thread indexes (``cache_bytes``), as :func:`_weight` estimates it.
CACHE_BYTES = 256 * 2**20
#: An index's memory per event folded is about this plus 1.5x its packed data: fitted to what tracemalloc
#: counts on two workloads, bench_langgraph's conversation (3,348 B per event, 1,822 B of data) and
#: tests/test_langgraph_history.py's chat (1,572 B per event, 581 B of data); both within 5%.
EVENT_WEIGHT = 768
#: A format 1/2 event (fields unpacked, no ``data`` bytes to measure): counted as this many bytes of data.
UNPACKED_WEIGHT = 4096

#: LangGraph's ``durability`` (``graph.invoke(..., durability=...)``) → the journal's level for the
#: saver's appends. "sync" waits for the checkpoint before the next step: what LangGraph's own
#: PostgresSaver promises there is a committed PostgreSQL row, and "projected" is that promise
#: (about 1.5 ms with a projector running: scripts/bench_project.py --small-steps; "fsync" would
#: wait for Valkey's once-a-second AOF fsync, about 200 ms per put with ``appendfsync everysec``).
#: "async" writes while the next step runs: Redis having it ("memory") is the promise. "exit" writes
#: once when the run ends, made durable like "sync". ``durability=`` given to the saver overrides
#: this for every append; "projected" needs a projector running (``agent-journal project``), or the
#: put raises ``DurabilityError`` after ``JOURNAL_DURABILITY_TIMEOUT`` with the checkpoint written.
DURABILITY_LEVELS: dict[str, str] = {"sync": "projected", "async": "memory", "exit": "projected"}
#: Where LangGraph puts a run's durability mode in the config it hands the saver (private to LangGraph,
#: ``langgraph._internal._constants.CONFIG_KEY_DURABILITY``; its public alias is deprecated).
CONFIG_KEY_DURABILITY = "__pregel_durability"

#: Journal thread ids that are not a LangGraph thread id verbatim start with this (ids starting
#: with "_" are reserved by the journal, e.g. "_tenant", so no verbatim id can start with it).
HASHED_PREFIX = "_lg."


class CheckpointConfigError(JournalError, ValueError):
    """A config the saver cannot use: no ``thread_id``, or a put/put_writes without a checkpoint."""


class CheckpointCorrupt(JournalError):
    """A stored checkpoint event the saver cannot read (unknown format, malformed payload)."""


# -- ids and encoding ------------------------------------------------------------------------------

def journal_thread(thread_id: object) -> str:
    """The journal thread of a LangGraph ``thread_id``.

    A valid journal id (1–128 of ``A-Za-z0-9_.-``) not starting with ``_`` is used verbatim, so
    ``agent-journal audit timeline T <thread_id>`` finds it. Anything else (spaces, ``/``, unicode,
    too long, a leading ``_``) becomes ``_lg.`` + SHA-256 of the id: injective in practice and valid,
    and the original id is kept in every payload.
    """
    if isinstance(thread_id, int) and not isinstance(thread_id, bool):
        thread_id = str(thread_id)  # LangGraph accepts int thread ids and compares them as str
    if not isinstance(thread_id, str) or not thread_id:
        raise CheckpointConfigError(f"thread_id must be a non-empty str, got {thread_id!r}")
    if not thread_id.startswith("_"):
        try:
            return validate_id(thread_id, "thread")
        except InvalidIdentifier:
            pass
    return HASHED_PREFIX + hashlib.sha256(thread_id.encode("utf-8", "surrogatepass")).hexdigest()


def encode_value(typed: tuple[str, bytes]) -> bytes | dict[str, Any]:
    """A serializer's ``(type, bytes)`` as a payload: msgpack as the bytes alone, JSON as text, others typed."""
    type_, data = typed
    if type_ == "msgpack":
        return bytes(data)
    if type_ == "json":
        try:
            return {"t": type_, "s": data.decode("utf-8")}
        except UnicodeDecodeError:
            pass
    return {"t": type_, "b": bytes(data)}


def check_value(stored: Any) -> bytes | dict[str, Any]:
    """``stored`` if it has :func:`encode_value`'s shape (checked when folded; decoded only when asked for)."""
    if isinstance(stored, bytes):
        return stored
    if (isinstance(stored, dict) and isinstance(stored.get("t"), str)
            and (isinstance(stored.get("b"), bytes) or isinstance(stored.get("s"), str)
                 or isinstance(stored.get("b64"), str))):
        return cast(dict[str, Any], stored)
    raise CheckpointCorrupt(f"a stored value must be bytes or {{'t': str, 'b': bytes or 's': str}}, "
                            f"got {stored!r:.80}")


def decode_value(stored: Any) -> tuple[str, bytes]:
    """The serializer's ``(type, bytes)`` back from :func:`encode_value`'s form (or format 1's base64)."""
    check_value(stored)
    if isinstance(stored, bytes):
        return "msgpack", stored
    if isinstance(stored.get("b"), bytes):
        return stored["t"], stored["b"]
    if isinstance(stored.get("s"), str):
        return stored["t"], stored["s"].encode("utf-8")
    try:
        return stored["t"], base64.b64decode(stored["b64"], validate=True)
    except binascii.Error as e:
        raise CheckpointCorrupt(f"a stored {stored['t']!r} value is not base64: {e}") from e


def next_version(current: str | int | None) -> str:
    """The channel version after ``current``: its counter + 1, zero-padded (versions compare as strings), and a
    random suffix, so a fork (``update_state`` on an old checkpoint) never reuses a version its other branch
    stored: values are stored by ``(ns, channel, version)``, and an int counter would repeat across branches.

    Ten digits and six hex (17 characters, each written several times per put in the checkpoint and its
    blobs). Earlier versions had sixteen digits and eight hex; one of them still compares below any later
    one here, whose counter is higher: its extra leading zeros sit where the shorter one has a digit."""
    if current is None:
        n = 0
    elif isinstance(current, int):
        n = current
    else:
        n = int(current.split(".")[0])
    return f"{n + 1:010}.{random.getrandbits(24):06x}"  # not a secret: only unlike its sibling's


#: The fields each event type packs into ``data`` (format 3).
PACKED: dict[str, tuple[str, ...]] = {CHECKPOINT: ("checkpoint", "metadata", "blobs"), WRITES: ("writes",)}


def _packed(type_: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with the fields of :data:`PACKED` moved into one msgpack ``data`` field."""
    inner = {k: payload.pop(k) for k in PACKED[type_]}
    payload["data"] = msgpack.packb(inner, use_bin_type=True)
    return payload


def payload_fields(payload: Any) -> Any:
    """An event's payload as the saver reads it: a format-3 payload's packed ``data`` unpacked into it."""
    if isinstance(payload, dict) and isinstance(payload.get("data"), bytes):
        inner = msgpack.unpackb(payload["data"], raw=False)
        if not isinstance(inner, dict):
            raise CheckpointCorrupt(f"a payload's data must pack a map, got {type(inner).__name__}")
        return {**payload, **inner}
    return payload


def _weight(ev: Event) -> int:
    """What folding ``ev`` adds to an index's memory, estimated from its packed data (:data:`EVENT_WEIGHT`;
    an older format's unpacked fields count as :data:`UNPACKED_WEIGHT` bytes of data)."""
    data = ev.payload.get("data") if isinstance(ev.payload, dict) else None
    return EVENT_WEIGHT + (len(data) if isinstance(data, bytes) else UNPACKED_WEIGHT) * 3 // 2


def _configurable(config: RunnableConfig | None) -> dict[str, Any]:
    return (config or {}).get("configurable") or {}


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

    @classmethod
    def of(cls, version: Any, items: Any) -> _Decoded:
        """``items`` decoded from what was stored (nobody else holds them: they are their own record)."""
        if type(items) is not list:
            return cls(version, items)
        return cls(version, items, _model_fields(items) or items)

    def extended(self, version: Any, value: list[Any], decode: Callable[[], list[Any]]) -> _Decoded | None:
        """The next version: ``value``, the graph's list that :meth:`prefix_of` found to extend this one, stored as
        the delta of its tail; ``decode`` what was stored of the tail. None: the next put decodes the stored value.

        Models of the tail are recorded as they are now (:func:`_snapshot`), other items as decoded.
        """
        tail = value[len(self.items):]
        hi = self._older_window()[1]
        turn = hi if hi < len(self.items) - CHECK_WINDOW else 0  # the last older items compared: start again
        if not isinstance(self.stored, tuple):
            return _Decoded(version, list(value), cast(list[Any], self.stored) + decode(), turn)
        more = _snapshot(tail)
        if more is None:  # a list of models that stops being one: not worth a mixed representation
            return None
        types, dicts, extras = self.stored
        return _Decoded(version, list(value), (types + more[0], dicts + more[1], extras + more[2]), turn)

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
        fold of its append (:func:`_fold_own`) returns events the index has, and folding a tombstone
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
        while _is_delta(stored):
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
        while _is_delta(stored):
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


def _is_delta(stored: Any) -> TypeGuard[dict[str, Any]]:
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


# -- what put / put_writes / prune / copy_thread append --------------------------------------------

def _checkpoint_draft(serde: SerializerProtocol, index: ThreadIndex, jthread: str, config: RunnableConfig,
                      checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions,
                      ahead: int = 0) -> tuple[Draft, RunnableConfig]:
    """The checkpoint event of a put; ``ahead``: how many events of the thread the same append writes before it."""
    conf = _configurable(config)
    ns: str = conf.get("checkpoint_ns", "") or ""
    thread_id = str(conf["thread_id"])
    parent = conf.get("checkpoint_id")
    c: dict[str, Any] = dict(checkpoint)
    values: dict[str, Any] = c.pop("channel_values", None) or {}
    full_metadata = get_checkpoint_metadata(config, metadata)
    late = parent is not None and parent in index.dead
    payload = {
        "v": FORMAT, "epoch": STALE_EPOCH if late else index.epoch, "thread_id": thread_id, "ns": ns,
        "id": checkpoint["id"], "parent": parent,
        # Plain copies for people reading the journal (audit timeline, replay); the saver reads the
        # serialized forms only.
        "step": full_metadata.get("step"), "source": full_metadata.get("source"),
        "checkpoint": encode_value(serde.dumps_typed(c)),
        "metadata": encode_value(serde.dumps_typed(full_metadata)),
        # A late put stores its values whole: its deltas would name versions of a deleted past.
        "blobs": (ThreadIndex() if late else index).encode_blobs(serde, ns, values, new_versions),
    }
    # Appended only if the thread's head is still the one the index folded (plus the writes carried in the same
    # append): a put never lands on top of something it has not seen (a tombstone, another writer's checkpoint);
    # on a conflict it reads and retries.
    draft = Draft(thread=jthread, type=CHECKPOINT, payload=_packed(CHECKPOINT, payload), node=_node(full_metadata),
                  expected_seq=index.seq + ahead)
    return draft, {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}


def _node(metadata: CheckpointMetadata) -> str | None:
    source = metadata.get("source")
    return f"langgraph:{source}" if isinstance(source, str) else None


def _writes_draft(serde: SerializerProtocol, jthread: str, index: ThreadIndex, config: RunnableConfig,
                  writes: Sequence[tuple[str, Any]], task_id: str, task_path: str) -> Draft:
    conf = _configurable(config)
    checkpoint_id = conf.get("checkpoint_id")
    if not checkpoint_id:
        raise CheckpointConfigError("put_writes needs config['configurable']['checkpoint_id']")
    payload = {
        "v": FORMAT, "epoch": STALE_EPOCH if checkpoint_id in index.dead else index.epoch,
        "thread_id": str(conf["thread_id"]), "ns": conf.get("checkpoint_ns", "") or "",
        "checkpoint_id": checkpoint_id, "task_id": task_id, "task_path": task_path,
        "channels": sorted({channel for channel, _ in writes}),  # plain, for people reading the journal
        "writes": [[WRITES_IDX_MAP.get(channel, idx), channel, encode_value(serde.dumps_typed(value))]
                   for idx, (channel, value) in enumerate(writes)],
    }
    return Draft(thread=jthread, type=WRITES, payload=_packed(WRITES, payload), node=_task_node(task_path))


def _knows(index: ThreadIndex, checkpoint_id: Any) -> bool:
    """Whether the checkpoint is in the thread's index (put or read by this process, or deleted)."""
    return checkpoint_id in index.dead or any(checkpoint_id in ids for ids in index.checkpoints.values())


def _task_node(task_path: str) -> str | None:
    """The graph node whose task wrote, for the journal's ``node`` column ("~__pregel_pull, tools" → "tools")."""
    kind, _, name = task_path.partition(", ")
    return name[:256] if kind == "~__pregel_pull" and name else None


def _deleted_draft(jthread: str, thread_id: str) -> Draft:
    return Draft(thread=jthread, type=DELETED, payload={"v": FORMAT, "thread_id": thread_id})


def _fold_own(index: ThreadIndex, events: Sequence[Event], jthread: str) -> None:
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


def _unregistered(index: ThreadIndex) -> bool:
    """Whether a put is the thread's first checkpoint, so it registers the thread for ``list(None)``.

    Not "the thread's first event": a task's writes may land before the checkpoint they follow.
    Two first puts racing both register, which is harmless (the registry is read as a set).
    """
    return not index.checkpoints and index.epoch == 0 and not index.dead


def _registration(jthread: str, thread_id: str) -> Draft:
    return Draft(thread=REGISTRY, type=THREAD, payload={"v": FORMAT, "thread_id": thread_id, "thread": jthread})


def _registered(events: Sequence[Event], known: dict[str, str]) -> None:
    """Fold registry events into ``known`` (journal thread → LangGraph thread id), first registration first."""
    for ev in events:
        p = ev.payload
        if ev.type == THREAD and isinstance(p, dict) and isinstance(p.get("thread"), str):
            known.setdefault(p["thread"], str(p.get("thread_id")))


def _prune_draft(index: ThreadIndex, jthread: str, thread_id: str, keep_last: int, older_than_ms: int | None,
                 now_ms: int, reason: str) -> Draft | None:
    """The retention record dropping what ``keep_last``/``older_than_ms`` let go, or None if nothing goes.

    Kept whatever the rule says: the newest ``keep_last`` checkpoints of each namespace, and every
    checkpoint where a run stopped with work pending (pending writes and no child checkpoint: an
    ``interrupt`` waiting for its human, a task that failed or a run that was killed), since a
    resume starts from it and its writes.
    """
    children = {(ns, s.parent) for ns, space in index.checkpoints.items() for s in space.values() if s.parent}
    drop: list[list[str]] = []
    for ns, space in index.checkpoints.items():
        for i, cid in enumerate(sorted(space, reverse=True)):
            if i < keep_last:
                continue
            if older_than_ms is not None and space[cid].ts_ms > now_ms - older_than_ms:
                continue
            if index.writes.get((ns, cid)) and (ns, cid) not in children:
                continue
            drop.append([ns, cid])
    if not drop:
        return None
    return Draft(thread=jthread, type=PRUNED, payload={
        "v": FORMAT, "epoch": index.epoch, "thread_id": thread_id, "reason": reason, "drop": drop})


def _copy_drafts(serde: SerializerProtocol, source: ThreadIndex, target: ThreadIndex, jthread: str,
                 thread_id: str) -> list[Draft]:
    """Every checkpoint of ``source`` (oldest first per namespace) and its writes, as events of ``jthread``.

    Each checkpoint carries the channel versions it needs that the copy has not written yet: a
    delta as stored when its base was copied before it, else the value whole (a pruned checkpoint's
    delta base is not copied, so no copied delta points at it).
    """
    drafts: list[Draft] = []
    for ns in sorted(source.checkpoints):
        written: set[tuple[str, Any]] = set()
        for cid in sorted(source.checkpoints[ns]):
            stored = source.checkpoints[ns][cid]
            checkpoint = serde.loads_typed(decode_value(stored.checkpoint))
            metadata = serde.loads_typed(decode_value(stored.metadata))
            blobs: dict[str, dict[str, Any]] = {}
            for channel, version in checkpoint["channel_versions"].items():
                key = (ns, channel, version)
                if (channel, version) in written or key not in source.blobs:
                    continue
                blob = source.blobs[key]
                if _is_delta(blob) and (channel, blob["base"]) in written:
                    blobs[channel] = {"version": version, **blob}
                elif _is_delta(blob):
                    _, value = source.value(serde, ns, channel, version)
                    blobs[channel] = {"version": version, "value": encode_value(serde.dumps_typed(value))}
                else:
                    blobs[channel] = {"version": version, "value": blob}
                written.add((channel, version))
            drafts.append(Draft(thread=jthread, type=CHECKPOINT, node=_node(metadata), payload=_packed(CHECKPOINT, {
                "v": FORMAT, "epoch": target.epoch, "thread_id": thread_id, "ns": ns, "id": cid,
                "parent": stored.parent, "step": metadata.get("step"), "source": metadata.get("source"),
                "checkpoint": stored.checkpoint, "metadata": stored.metadata, "blobs": blobs})))
            by_task: dict[tuple[str, str], list[list[Any]]] = {}
            for task_id, channel, value, task_path, idx in source.ordered_writes(ns, cid):
                by_task.setdefault((task_id, task_path), []).append([idx, channel, value])
            for (task_id, task_path), writes in by_task.items():
                drafts.append(Draft(thread=jthread, type=WRITES, node=_task_node(task_path), payload=_packed(WRITES, {
                    "v": FORMAT, "epoch": target.epoch, "thread_id": thread_id, "ns": ns, "checkpoint_id": cid,
                    "task_id": task_id, "task_path": task_path, "channels": sorted({w[1] for w in writes}),
                    "writes": writes})))
    return drafts


def _run_ids(serde: SerializerProtocol, index: ThreadIndex, run_ids: set[str]) -> list[list[str]]:
    """``[ns, checkpoint id]`` of every checkpoint whose metadata names one of ``run_ids``."""
    return [[ns, cid] for ns, space in index.checkpoints.items() for cid, stored in space.items()
            if str(serde.loads_typed(decode_value(stored.metadata)).get("run_id")) in run_ids]


def _durability(saver_level: str | None, config: RunnableConfig | None) -> str | None:
    """The journal level of an append: the saver's, else the one LangGraph's ``durability`` mode maps to."""
    if saver_level is not None:
        return saver_level
    mode = _configurable(config).get(CONFIG_KEY_DURABILITY)
    return DURABILITY_LEVELS.get(mode) if isinstance(mode, str) else None


def _ttl_ms(ttl: timedelta | float | None) -> int | None:
    if ttl is None:
        return None
    if not isinstance(ttl, timedelta | int | float) or isinstance(ttl, bool):
        raise CheckpointConfigError(f"a TTL must be a timedelta or a number of seconds, got {ttl!r}")
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else float(ttl)
    if not seconds > 0:
        raise CheckpointConfigError(f"a TTL must be positive (a timedelta or seconds), got {ttl!r}")
    return int(seconds * 1000)


def _saver_options(durability: str | None, cache_threads: int, cache_bytes: int) -> None:
    """Refuse a saver's bad options when it is made, not at its first append."""
    if durability is not None and durability not in JOURNAL_LEVELS:
        raise CheckpointConfigError(f"durability {durability!r} is not a journal level: use one of {JOURNAL_LEVELS}, "
                                    "or None to follow the run's LangGraph durability mode")
    if type(cache_threads) is not int or cache_threads < 1:
        raise CheckpointConfigError(f"cache_threads must be an int >= 1 (thread indexes kept), got {cache_threads!r}")
    if type(cache_bytes) is not int or cache_bytes < 1:
        raise CheckpointConfigError(f"cache_bytes must be an int >= 1 (the thread indexes' memory budget), "
                                    f"got {cache_bytes!r}")


def _thread_ids(ids: Any, what: str = "thread_ids") -> list[Any]:
    """A list of ids, refusing one id where a list belongs (a str would prune each of its characters)."""
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise CheckpointConfigError(f"{what} must be a list of ids, got {ids!r}; for one id pass [{ids!r}]")
    return list(ids)


def _check_list(filter: Any, limit: Any) -> None:
    if filter is not None and not isinstance(filter, Mapping):
        raise CheckpointConfigError(f"filter must be a dict of metadata keys and values, got {filter!r}")
    if limit is not None and (type(limit) is not int):
        raise CheckpointConfigError(f"limit must be an int or None, got {limit!r}")


def _check_copy(source_thread_id: Any, target_thread_id: Any) -> None:
    if journal_thread(source_thread_id) == journal_thread(target_thread_id):
        raise CheckpointConfigError(f"copy_thread needs two threads; source and target are both {source_thread_id!r}")


def _check_prune(strategy: str, keep_last: int) -> None:
    if strategy not in ("keep_latest", "delete"):
        raise CheckpointConfigError(f"prune strategy must be 'keep_latest' or 'delete', got {strategy!r}")
    if type(keep_last) is not int or keep_last < 1:
        raise CheckpointConfigError(f"keep_last must be an int >= 1 (the newest kept per namespace), got {keep_last!r}")


class _Where:
    """The tenant, journal thread and namespace a config names."""

    def __init__(self, config: RunnableConfig | None, default_tenant: str) -> None:
        conf = _configurable(config)
        if "thread_id" not in conf:
            raise CheckpointConfigError("config['configurable'] needs a 'thread_id'")
        #: the tenant the config names, handed back in every config the saver returns so it routes the same way
        self.named_tenant: str | None = conf.get("tenant_id") or None
        self.tenant: str = self.named_tenant or default_tenant
        self.thread_id = str(conf["thread_id"])
        self.jthread = journal_thread(conf["thread_id"])
        self.ns: str | None = conf.get("checkpoint_ns")
        if self.ns is not None and not isinstance(self.ns, str):
            raise CheckpointConfigError(f"checkpoint_ns must be a str, got {self.ns!r}")
        self.checkpoint_id = get_checkpoint_id(cast(RunnableConfig, config))

    def route(self, config: RunnableConfig) -> RunnableConfig:
        if self.named_tenant is None:
            return config
        return {**config, "configurable": {**_configurable(config), "tenant_id": self.named_tenant}}

    def route_tuple(self, tup: CheckpointTuple | None) -> CheckpointTuple | None:
        if tup is None or self.named_tenant is None:
            return tup
        parent = self.route(tup.parent_config) if tup.parent_config else None
        return tup._replace(config=self.route(tup.config), parent_config=parent)


class _Signal:
    """What a sync ``put_writes`` waits on: a ``threading.Event`` set once, on one lock held until it is set.

    An Event's wait allocates a lock and runs a Condition's dozen lock operations in Python; this is one
    C call each way, at every step of an ``async`` run (the wait costs the graph's thread the GIL)."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        self._lock.release()  # once: each pending write is completed by the one append that carried it

    def wait(self, timeout: float | None = None) -> bool:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        self._lock.release()
        return True


@dataclass
class _Pending:
    """A ``put_writes`` waiting in its thread's outbox for the next ``put`` (or its linger) to append it."""

    draft: Draft
    #: set once the writes are appended (or failed): a :class:`_Signal` or an ``asyncio.Event``
    done: Any
    error: BaseException | None = None


def _take_writes(outbox: dict[tuple[str, str], list[_Pending]], key: tuple[str, str], index: ThreadIndex | None,
                 checkpoint_id: str | None = None, own: _Pending | None = None) -> list[_Pending]:
    """The thread's waiting writes an append carries now: ``own``, and those against a checkpoint in ``index``
    or against ``checkpoint_id`` (the one being put); all if no index is at hand. Writes against a checkpoint
    still to come stay for its put, so the log never has writes before their checkpoint."""
    take: list[_Pending] = []
    keep: list[_Pending] = []
    for p in outbox.pop(key, []):
        cid = p.draft.payload.get("checkpoint_id")
        (take if p is own or index is None or cid == checkpoint_id or _knows(index, cid) else keep).append(p)
    if keep:
        outbox[key] = keep
    return take


def _complete(batch: Sequence[_Pending], error: BaseException | None) -> None:
    for pending in batch:
        pending.error = error
        pending.done.set()


class _Cache:
    """Per-thread indexes, least recently used dropped first (a dropped one is rebuilt from the log): at most
    ``size`` of them, and past the first, no more than ``max_bytes`` together (as :func:`_weight` estimates).

    An index grows with its thread's history (3.35 KB per event on bench_langgraph's conversation), so
    a count alone would let a few long threads take the process's memory.
    """

    def __init__(self, size: int, max_bytes: int = CACHE_BYTES) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[str, str], ThreadIndex] = OrderedDict()
        #: each entry's weight when last counted, and their sum (kept up to date, not summed per put)
        self.counted: dict[tuple[str, str], int] = {}
        self.total = 0
        #: tenant -> (registry seq folded, journal thread -> LangGraph thread id)
        self.registry: dict[str, tuple[int, dict[str, str]]] = {}

    def peek(self, key: tuple[str, str]) -> ThreadIndex | None:
        """The index if this process has one (without reading), else None."""
        return self.entries.get(key)

    def get(self, key: tuple[str, str]) -> ThreadIndex:
        index = self.entries.pop(key, None) or ThreadIndex()
        self.entries[key] = index
        while len(self.entries) > self.size:
            self._drop_oldest()
        return index

    def grown(self, key: tuple[str, str], index: ThreadIndex) -> None:
        """Count what ``key``'s ``index`` folded since it was last counted, then drop the least recently used
        indexes until the rest fit ``max_bytes`` (the newest always stays)."""
        if self.entries.get(key) is index:
            self.total += index.weight - self.counted.get(key, 0)
            self.counted[key] = index.weight
        while self.total > self.max_bytes and len(self.entries) > 1:
            self._drop_oldest()

    def forget(self, key: tuple[str, str], index: ThreadIndex) -> None:
        """Drop ``key``'s index, if it is ``index``: it folded events the journal no longer holds (a Redis that
        lost acknowledged ``memory`` appends before they were projected), so the next read folds the thread anew."""
        if self.entries.get(key) is index:
            del self.entries[key]
            self.total -= self.counted.pop(key, 0)

    def fold_own(self, key: tuple[str, str], index: ThreadIndex, events: Sequence[Event], jthread: str) -> None:
        """:func:`_fold_own`, then :meth:`grown`."""
        _fold_own(index, events, jthread)
        self.grown(key, index)

    def _drop_oldest(self) -> None:
        key, _ = self.entries.popitem(last=False)
        self.total -= self.counted.pop(key, 0)


_L = TypeVar("_L")


def _lock_of(locks: weakref.WeakValueDictionary[tuple[str, str], _L], key: tuple[str, str],
             make: Callable[[], _L]) -> _L:
    """``key``'s lock in ``locks``, made if missing. Held weakly: a lock lives while someone holds or awaits it,
    so the table stays as small as the threads in use."""
    lock = locks.get(key)
    if lock is None:
        lock = locks[key] = make()
    return lock


def _put_drafts(serde: SerializerProtocol, index: ThreadIndex, where: _Where, config: RunnableConfig,
                checkpoint: Checkpoint, metadata: CheckpointMetadata, new_versions: ChannelVersions,
                batch: Sequence[_Pending]) -> tuple[list[Draft], RunnableConfig]:
    """What one put appends: the waiting writes, the checkpoint, and the registration of a new thread.

    Writes against earlier checkpoints go before it (the checkpoint follows from them); writes against this very
    checkpoint (a task of the next step that finished while this put waited for the one before) after it, so
    the log reads in order. The fold keys writes by checkpoint id either way.
    """
    before = [p.draft for p in batch if p.draft.payload.get("checkpoint_id") != checkpoint["id"]]
    after = [p.draft for p in batch if p.draft.payload.get("checkpoint_id") == checkpoint["id"]]
    draft, out = _checkpoint_draft(serde, index, where.jthread, config, checkpoint, metadata, new_versions,
                                   ahead=len(before))
    drafts = [*before, draft, *after]
    if _unregistered(index):
        drafts.append(_registration(where.jthread, where.thread_id))
    return drafts, out


def _global_select(threads: Iterable[Callable[[int | None], list[CheckpointTuple]]],
                   limit: int | None) -> list[CheckpointTuple]:
    """``list(None)``: each thread's selection in turn (given how many are still wanted) until ``limit``."""
    out: list[CheckpointTuple] = []
    for select in threads:
        out.extend(select(None if limit is None else limit - len(out)))
        if limit is not None and len(out) >= limit:
            break
    return out


# -- the savers ------------------------------------------------------------------------------------

class JournalSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpointer on a ``JournalClient``; the async methods run the sync ones in a worker thread.

    ``durability``: the journal level of every append (default: the one LangGraph's ``durability``
    mode of the run maps to, :data:`DURABILITY_LEVELS`, else the client's). ``ttl``: how old a
    checkpoint may get before :meth:`expire` records it as pruned (a ``timedelta`` or seconds).
    ``cache_threads`` / ``cache_bytes``: how many thread indexes the saver keeps in memory, and how
    much memory they may take together (estimated; the most recent one is kept whatever its size);
    a thread dropped is folded again from the journal when next used.
    """

    def __init__(self, client: JournalClient, *, tenant: str, serde: SerializerProtocol | None = None,
                 durability: str | None = None, cache_threads: int = 256, cache_bytes: int = CACHE_BYTES,
                 ttl: timedelta | float | None = None) -> None:
        super().__init__(serde=serde)
        _saver_options(durability, cache_threads, cache_bytes)
        self.client = client
        self.tenant = validate_id(tenant, "tenant")
        self.durability = durability
        self.ttl_ms = _ttl_ms(ttl)
        self._cache = _Cache(cache_threads, cache_bytes)
        # LangGraph calls put_writes from several worker threads at once, and a server runs many graphs on one
        # saver. Locks, always taken in this order: a thread's writer, its guard, then ``_lock``.
        #: the cache, the outbox and the lock tables; held for their own operations only, never over I/O
        self._lock = threading.RLock()
        #: (tenant, journal thread) -> the lock this process's appends to that thread take, so its own writes
        #: never race its puts (which append with expected_seq: a race costs a read and a retry)
        self._writers: weakref.WeakValueDictionary[tuple[str, str], threading.Lock] = weakref.WeakValueDictionary()
        #: (tenant, journal thread) -> the lock of its index (folding, reading, building drafts from it): a cold
        #: read or a long decode of one thread holds up no other (one lock for all did)
        self._guards: weakref.WeakValueDictionary[tuple[str, str], threading.RLock] = weakref.WeakValueDictionary()
        #: the tenants' registries of threads (``list(None)``), read and folded under it
        self._registry_lock = threading.Lock()
        #: (tenant, journal thread) -> writes waiting for the thread's next put to carry them
        self._outbox: dict[tuple[str, str], list[_Pending]] = {}

    def _writer(self, key: tuple[str, str]) -> threading.Lock:
        with self._lock:
            return _lock_of(self._writers, key, threading.Lock)

    def _guard(self, key: tuple[str, str]) -> threading.RLock:
        with self._lock:
            return _lock_of(self._guards, key, threading.RLock)

    def get_next_version(self, current: str | None, channel: None) -> str:
        return next_version(current)

    def _index(self, tenant: str, jthread: str) -> ThreadIndex:
        """The thread's index, with every event written since it was last read folded in."""
        key = (tenant, jthread)
        with self._guard(key):
            with self._lock:
                index = self._cache.get(key)
            index.apply(self.client.read(tenant, jthread, after_seq=index.seq))
            with self._lock:
                self._cache.grown(key, index)
            return index

    def _threads(self, tenant: str) -> dict[str, str]:
        """Every LangGraph thread registered in the tenant (journal thread → thread id), in registration order."""
        with self._registry_lock:
            seq, known = self._cache.registry.get(tenant, (0, {}))
            events = self.client.read(tenant, REGISTRY, after_seq=seq)
            _registered(events, known)
            self._cache.registry[tenant] = (events[-1].seq if events else seq, known)
            return dict(known)

    def _append(self, tenant: str, drafts: list[Draft], config: RunnableConfig | None = None) -> list[Event]:
        if not drafts:
            return []
        return self.client.append_many(tenant, drafts, durability=_durability(self.durability, config))

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        where = _Where(config, self.tenant)
        ns = where.ns or ""
        with self._guard((where.tenant, where.jthread)):
            index = self._index(where.tenant, where.jthread)
            cid = where.checkpoint_id or index.latest_id(ns)
            return where.route_tuple(index.tuple(self.serde, ns, cid) if cid else None)

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        _check_list(filter, limit)
        before_id = get_checkpoint_id(before) if before else None
        if config is None:
            # Every thread of the saver's tenant, in the order they were first written.
            def select(jthread: str, left: int | None) -> list[CheckpointTuple]:
                with self._guard((self.tenant, jthread)):
                    return self._index(self.tenant, jthread).select(self.serde, None, None, filter, before_id, left)

            yield from _global_select([partial(select, j) for j in self._threads(self.tenant)], limit)
            return
        where = _Where(config, self.tenant)
        with self._guard((where.tenant, where.jthread)):
            index = self._index(where.tenant, where.jthread)
            found = index.select(self.serde, where.ns, where.checkpoint_id, filter, before_id, limit)
        for tup in found:
            yield cast(CheckpointTuple, where.route_tuple(tup))

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        where = _Where(config, self.tenant)
        key = (where.tenant, where.jthread)
        guard = self._guard(key)
        with self._writer(key):
            with guard, self._lock:
                # Writes waiting in the outbox go in the same append (_put_drafts orders them).
                batch = _take_writes(self._outbox, key, self._cache.peek(key), checkpoint["id"])
            try:
                for attempt in range(PUT_ATTEMPTS):
                    with guard:
                        with self._lock:
                            known = self._cache.get(key) if attempt == 0 and self._cache.peek(key) is not None \
                                else None
                        # The cached index is used as is: the append's expected_seq proves it current, or conflicts.
                        index = known if known is not None else self._index(*key)
                        drafts, out = _put_drafts(self.serde, index, where, config, checkpoint, metadata,
                                                  new_versions, batch)
                    try:
                        written = self._append(where.tenant, drafts, config)
                        break
                    except ConflictError as e:
                        # Another process appended in between (a delete, another writer): read it, decide again.
                        if attempt == PUT_ATTEMPTS - 1:
                            raise
                        if e.actual < index.seq:
                            with self._lock:
                                self._cache.forget(key, index)
            except BaseException as e:
                _complete(batch, e)
                raise
            with guard, self._lock:
                self._cache.fold_own(key, index, written, where.jthread)
        _complete(batch, None)
        return where.route(out)

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        """Append a task's writes: with the thread's next checkpoint if it comes within ``WRITES_LINGER``, or alone."""
        where = _Where(config, self.tenant)
        key = (where.tenant, where.jthread)
        guard = self._guard(key)
        with guard:
            with self._lock:
                known = self._cache.peek(key)
            # The writes belong to a checkpoint this process put or read, so its index knows the epoch without
            # reading again; a writer that has not seen a later delete writes under the old one, and is ignored
            # as it should be. Only an index this process lacks (never read, or dropped from the cache) is read.
            index = known if known is not None else self._index(*key)
            pending = _Pending(_writes_draft(self.serde, where.jthread, index, config, writes, task_id, task_path),
                               _Signal())
            with self._lock:
                self._outbox.setdefault(key, []).append(pending)
        if not pending.done.wait(WRITES_LINGER):
            with guard:
                seen = _knows(index, pending.draft.payload.get("checkpoint_id"))
            if not seen:
                pending.done.wait(WRITES_AWAIT_PUT)
            with self._writer(key):
                with guard, self._lock:
                    # Without ours if a put took it meanwhile: that put completes it.
                    batch = _take_writes(self._outbox, key, index, own=pending)
                if batch:
                    try:
                        written = self._append(where.tenant, [p.draft for p in batch], config)
                    except BaseException as e:
                        _complete(batch, e)
                        raise
                    with guard, self._lock:
                        self._cache.fold_own(key, index, written, where.jthread)
                    _complete(batch, None)
            pending.done.wait()
        if pending.error is not None:
            raise pending.error

    def delete_thread(self, thread_id: str, *, tenant: str | None = None) -> None:
        """Append the tombstone: the thread reads as empty from then on, whatever is written against its past."""
        jthread = journal_thread(thread_id)
        self._append(tenant or self.tenant, [_deleted_draft(jthread, str(thread_id))])

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", keep_last: int = 1,
              older_than: timedelta | float | None = None, tenant: str | None = None) -> None:
        """Record that each thread keeps only its newest ``keep_last`` checkpoints per namespace.

        ``strategy="delete"`` is :meth:`delete_thread`. ``older_than`` spares checkpoints younger than
        that. A checkpoint where a run stopped with work pending (an ``interrupt`` awaiting its
        human, a failed task) is always kept with its writes, so it resumes. The journal keeps every
        event: this appends an ``x.langgraph.pruned`` record that the saver's reads honour.
        """
        _check_prune(strategy, keep_last)
        tenant = tenant or self.tenant
        for thread_id in _thread_ids(thread_ids):
            if strategy == "delete":
                self.delete_thread(thread_id, tenant=tenant)
                continue
            jthread = journal_thread(thread_id)
            with self._guard((tenant, jthread)):
                index = self._index(tenant, jthread)
                draft = _prune_draft(index, jthread, str(thread_id), keep_last, _ttl_ms(older_than),
                                     _now_ms(), "keep_latest")
            self._append(tenant, [draft] if draft else [])

    def expire(self, thread_ids: Sequence[str] | None = None, *, tenant: str | None = None) -> None:
        """Prune what the saver's ``ttl`` let expire: checkpoints older than it, except each namespace's newest
        and those a pending interrupt or pending writes need (every thread of the tenant if ``thread_ids`` is None)."""
        if self.ttl_ms is None:
            raise CheckpointConfigError("expire needs the saver's ttl (JournalSaver(..., ttl=timedelta(days=30)))")
        tenant = tenant or self.tenant
        threads = self._threads(tenant) if thread_ids is None else {journal_thread(t): str(t)
                                                                        for t in _thread_ids(thread_ids)}
        for jthread, thread_id in threads.items():
            with self._guard((tenant, jthread)):
                draft = _prune_draft(self._index(tenant, jthread), jthread, thread_id, 1, self.ttl_ms, _now_ms(), "ttl")
            self._append(tenant, [draft] if draft else [])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Record as pruned every checkpoint (and its writes) of the saver's tenant whose metadata names a run."""
        wanted = {str(r) for r in _thread_ids(run_ids, "run_ids")}
        if not wanted:
            return
        for jthread, thread_id in self._threads(self.tenant).items():
            with self._guard((self.tenant, jthread)):
                index = self._index(self.tenant, jthread)
                drop = _run_ids(self.serde, index, wanted)
                draft = Draft(thread=jthread, type=PRUNED, payload={
                    "v": FORMAT, "epoch": index.epoch, "thread_id": thread_id, "reason": "runs", "drop": drop})
            self._append(self.tenant, [draft] if drop else [])

    def copy_thread(self, source_thread_id: str, target_thread_id: str, *, tenant: str | None = None) -> None:
        """Append every checkpoint of the source (and its pending writes) to the target thread, parents and ids kept."""
        _check_copy(source_thread_id, target_thread_id)
        tenant = tenant or self.tenant
        source_j, target_j = journal_thread(source_thread_id), journal_thread(target_thread_id)
        first, second = sorted([(tenant, source_j), (tenant, target_j)])  # two guards: in key order
        with self._guard(first), self._guard(second):
            source = self._index(tenant, source_j)
            target = self._index(tenant, target_j)
            drafts = _copy_drafts(self.serde, source, target, target_j, str(target_thread_id))
            new = _unregistered(target)
        self._append(tenant, drafts)
        if drafts and new:
            self._append(tenant, [_registration(target_j, str(target_thread_id))])

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        found = await asyncio.to_thread(lambda: [*self.list(config, filter=filter, before=before, limit=limit)])
        for tup in found:
            yield tup

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str, *, tenant: str | None = None) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id, tenant=tenant)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", keep_last: int = 1,
                     older_than: timedelta | float | None = None, tenant: str | None = None) -> None:
        await asyncio.to_thread(lambda: self.prune(thread_ids, strategy=strategy, keep_last=keep_last,
                                                   older_than=older_than, tenant=tenant))

    async def aexpire(self, thread_ids: Sequence[str] | None = None, *, tenant: str | None = None) -> None:
        await asyncio.to_thread(lambda: self.expire(thread_ids, tenant=tenant))

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str, *, tenant: str | None = None) -> None:
        await asyncio.to_thread(lambda: self.copy_thread(source_thread_id, target_thread_id, tenant=tenant))


class AsyncJournalSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpointer on an ``AsyncJournalClient`` (``durability`` and ``ttl`` as :class:`JournalSaver`'s).

    The sync methods (for ``graph.invoke`` / ``get_state`` from another thread) run the async ones
    on the event loop the saver was first used on, as LangGraph's own async savers do; called on
    that loop's thread they would deadlock, so they refuse.
    """

    def __init__(self, client: AsyncJournalClient, *, tenant: str, serde: SerializerProtocol | None = None,
                 durability: str | None = None, cache_threads: int = 256, cache_bytes: int = CACHE_BYTES,
                 ttl: timedelta | float | None = None) -> None:
        super().__init__(serde=serde)
        _saver_options(durability, cache_threads, cache_bytes)
        self.client = client
        self.tenant = validate_id(tenant, "tenant")
        self.durability = durability
        self.ttl_ms = _ttl_ms(ttl)
        self._cache = _Cache(cache_threads, cache_bytes)
        self._lock: asyncio.Lock | None = None
        self._writers: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        #: (tenant, journal thread) -> the lock of its index's catching up: one read at a time per thread, while
        #: other threads' reads go on (one lock for all made every conversation of the loop wait for a cold read)
        self._readers: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        self._outbox: dict[tuple[str, str], list[_Pending]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def _bind(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self.loop is not loop:
            self.loop, self._lock = loop, asyncio.Lock()
            self._writers, self._readers = weakref.WeakValueDictionary(), weakref.WeakValueDictionary()
            self._outbox = {}
        return self._lock

    def _writer(self, key: tuple[str, str]) -> asyncio.Lock:
        """See JournalSaver._writer (one per thread, on the saver's loop)."""
        self._bind()
        return _lock_of(self._writers, key, asyncio.Lock)

    def _reader(self, key: tuple[str, str]) -> asyncio.Lock:
        self._bind()
        return _lock_of(self._readers, key, asyncio.Lock)

    def get_next_version(self, current: str | None, channel: None) -> str:
        return next_version(current)

    async def _index(self, tenant: str, jthread: str) -> ThreadIndex:
        async with self._reader((tenant, jthread)):
            index = self._cache.get((tenant, jthread))
            index.apply(await self.client.read(tenant, jthread, after_seq=index.seq))
            self._cache.grown((tenant, jthread), index)
            return index

    async def _threads(self, tenant: str) -> dict[str, str]:
        async with self._bind():
            seq, known = self._cache.registry.get(tenant, (0, {}))
            events = await self.client.read(tenant, REGISTRY, after_seq=seq)
            _registered(events, known)
            self._cache.registry[tenant] = (events[-1].seq if events else seq, known)
            return dict(known)

    async def _append(self, tenant: str, drafts: list[Draft], config: RunnableConfig | None = None) -> list[Event]:
        if not drafts:
            return []
        return await self.client.append_many(tenant, drafts, durability=_durability(self.durability, config))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        where = _Where(config, self.tenant)
        index = await self._index(where.tenant, where.jthread)
        ns = where.ns or ""
        cid = where.checkpoint_id or index.latest_id(ns)
        return where.route_tuple(index.tuple(self.serde, ns, cid) if cid else None)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        _check_list(filter, limit)
        before_id = get_checkpoint_id(before) if before else None
        if config is None:
            indexes = [await self._index(self.tenant, j) for j in await self._threads(self.tenant)]
            selects = [partial(ix.select, self.serde, None, None, filter, before_id) for ix in indexes]
            for tup in _global_select(selects, limit):
                yield tup
            return
        where = _Where(config, self.tenant)
        index = await self._index(where.tenant, where.jthread)
        for tup in index.select(self.serde, where.ns, where.checkpoint_id, filter, before_id, limit):
            yield cast(CheckpointTuple, where.route_tuple(tup))

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        where = _Where(config, self.tenant)
        key = (where.tenant, where.jthread)
        async with self._writer(key):
            batch = _take_writes(self._outbox, key, self._cache.peek(key), checkpoint["id"])  # see JournalSaver.put
            try:
                for attempt in range(PUT_ATTEMPTS):
                    known = self._cache.peek(key)
                    index = known if known is not None and attempt == 0 else await self._index(*key)
                    drafts, out = _put_drafts(self.serde, index, where, config, checkpoint, metadata, new_versions,
                                              batch)
                    try:
                        written = await self._append(where.tenant, drafts, config)
                        break
                    except ConflictError as e:
                        if attempt == PUT_ATTEMPTS - 1:
                            raise
                        if e.actual < index.seq:  # see JournalSaver.put
                            self._cache.forget(key, index)
            except BaseException as e:
                _complete(batch, e)
                raise
            self._cache.fold_own(key, index, written, where.jthread)
        _complete(batch, None)
        return where.route(out)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        """See :meth:`JournalSaver.put_writes`."""
        where = _Where(config, self.tenant)
        key = (where.tenant, where.jthread)
        self._bind()
        known = self._cache.peek(key)
        index = known if known is not None else await self._index(*key)
        pending = _Pending(_writes_draft(self.serde, where.jthread, index, config, writes, task_id, task_path),
                           asyncio.Event())
        self._outbox.setdefault(key, []).append(pending)
        try:
            await asyncio.wait_for(pending.done.wait(), WRITES_LINGER)
        except TimeoutError:
            if not _knows(index, pending.draft.payload.get("checkpoint_id")):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pending.done.wait(), WRITES_AWAIT_PUT)
            async with self._writer(key):
                batch = _take_writes(self._outbox, key, index, own=pending)  # see JournalSaver.put_writes
                if batch:
                    try:
                        written = await self._append(where.tenant, [p.draft for p in batch], config)
                    except BaseException as e:
                        _complete(batch, e)
                        raise
                    self._cache.fold_own(key, index, written, where.jthread)
                    _complete(batch, None)
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error

    async def adelete_thread(self, thread_id: str, *, tenant: str | None = None) -> None:
        """Append the tombstone: the thread reads as empty from then on, whatever is written against its past."""
        await self._append(tenant or self.tenant, [_deleted_draft(journal_thread(thread_id), str(thread_id))])

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", keep_last: int = 1,
                     older_than: timedelta | float | None = None, tenant: str | None = None) -> None:
        """See :meth:`JournalSaver.prune`."""
        _check_prune(strategy, keep_last)
        tenant = tenant or self.tenant
        for thread_id in _thread_ids(thread_ids):
            if strategy == "delete":
                await self.adelete_thread(thread_id, tenant=tenant)
                continue
            jthread = journal_thread(thread_id)
            index = await self._index(tenant, jthread)
            draft = _prune_draft(index, jthread, str(thread_id), keep_last, _ttl_ms(older_than), _now_ms(),
                                 "keep_latest")
            await self._append(tenant, [draft] if draft else [])

    async def aexpire(self, thread_ids: Sequence[str] | None = None, *, tenant: str | None = None) -> None:
        """See :meth:`JournalSaver.expire`."""
        if self.ttl_ms is None:
            raise CheckpointConfigError("aexpire needs the saver's ttl "
                                        "(AsyncJournalSaver(..., ttl=timedelta(days=30)))")
        tenant = tenant or self.tenant
        threads = await self._threads(tenant) if thread_ids is None else {
            journal_thread(t): str(t) for t in _thread_ids(thread_ids)}
        for jthread, thread_id in threads.items():
            index = await self._index(tenant, jthread)
            draft = _prune_draft(index, jthread, thread_id, 1, self.ttl_ms, _now_ms(), "ttl")
            await self._append(tenant, [draft] if draft else [])

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """See :meth:`JournalSaver.delete_for_runs`."""
        wanted = {str(r) for r in _thread_ids(run_ids, "run_ids")}
        if not wanted:
            return
        for jthread, thread_id in (await self._threads(self.tenant)).items():
            index = await self._index(self.tenant, jthread)
            drop = _run_ids(self.serde, index, wanted)
            if drop:
                await self._append(self.tenant, [Draft(thread=jthread, type=PRUNED, payload={
                    "v": FORMAT, "epoch": index.epoch, "thread_id": thread_id, "reason": "runs", "drop": drop})])

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str, *, tenant: str | None = None) -> None:
        """See :meth:`JournalSaver.copy_thread`."""
        _check_copy(source_thread_id, target_thread_id)
        tenant = tenant or self.tenant
        source_j, target_j = journal_thread(source_thread_id), journal_thread(target_thread_id)
        source = await self._index(tenant, source_j)
        target = await self._index(tenant, target_j)
        new = _unregistered(target)
        drafts = _copy_drafts(self.serde, source, target, target_j, str(target_thread_id))
        await self._append(tenant, drafts)
        if drafts and new:
            await self._append(tenant, [_registration(target_j, str(target_thread_id))])

    # -- sync entry points, run on the saver's loop -------------------------------------------------

    def _sync(self, coro: Any) -> Any:
        loop = self.loop
        if loop is None or loop.is_closed():
            coro.close()
            raise JournalError("AsyncJournalSaver's sync methods need its event loop: use it with an async call "
                               "first (ainvoke/astream), or use JournalSaver")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise JournalError("synchronous calls to AsyncJournalSaver from its own event loop would deadlock: "
                               "use the a* methods (ainvoke, aget_state …)")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return cast(CheckpointTuple | None, self._sync(self.aget_tuple(config)))

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        async def collect() -> list[CheckpointTuple]:
            return [t async for t in self.alist(config, filter=filter, before=before, limit=limit)]
        yield from cast(list[CheckpointTuple], self._sync(collect()))

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        return cast(RunnableConfig, self._sync(self.aput(config, checkpoint, metadata, new_versions)))

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        self._sync(self.aput_writes(config, writes, task_id, task_path))

    def delete_thread(self, thread_id: str, *, tenant: str | None = None) -> None:
        self._sync(self.adelete_thread(thread_id, tenant=tenant))

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", keep_last: int = 1,
              older_than: timedelta | float | None = None, tenant: str | None = None) -> None:
        self._sync(self.aprune(thread_ids, strategy=strategy, keep_last=keep_last, older_than=older_than,
                               tenant=tenant))

    def expire(self, thread_ids: Sequence[str] | None = None, *, tenant: str | None = None) -> None:
        self._sync(self.aexpire(thread_ids, tenant=tenant))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        self._sync(self.adelete_for_runs(run_ids))

    def copy_thread(self, source_thread_id: str, target_thread_id: str, *, tenant: str | None = None) -> None:
        self._sync(self.acopy_thread(source_thread_id, target_thread_id, tenant=tenant))


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = [
    "CHECKPOINT",
    "DELETED",
    "DURABILITY_LEVELS",
    "PRUNED",
    "REGISTRY",
    "THREAD",
    "WRITES",
    "AsyncJournalSaver",
    "CheckpointConfigError",
    "CheckpointCorrupt",
    "JournalSaver",
    "ThreadIndex",
    "journal_thread",
    "payload_fields",
]
