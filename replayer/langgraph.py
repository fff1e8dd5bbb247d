"""LangGraph checkpointers on the journal: every checkpoint and every batch of pending writes is an event.

``JournalSaver`` (on ``JournalClient``) and ``AsyncJournalSaver`` (on ``AsyncJournalClient``) implement
LangGraph's ``BaseCheckpointSaver``. One LangGraph ``thread_id`` is one journal thread of the tenant
named by ``config["configurable"]["tenant_id"]`` (or the saver's default); subgraph namespaces
(``checkpoint_ns``) share their root thread's journal thread, as LangGraph shares the ``thread_id``.

Event types (custom, so the journal stores them verbatim and the fold keeps them in ``opaque``):

- ``x.langgraph.checkpoint``: one ``put``. The checkpoint without its values, its metadata, its
  parent id, and the values of the channels in ``new_versions`` only: a channel that did not change
  keeps pointing at the value stored by an earlier checkpoint (by ``(ns, channel, version)``).
- ``x.langgraph.writes``: one ``put_writes`` (a task's writes against one checkpoint).
- ``x.langgraph.deleted``: ``delete_thread``'s tombstone. The journal is append-only, so deletion
  is a fact in the log: a reader forgets everything before it, and every checkpoint or write event
  carries the ``epoch`` (tombstones its writer had seen), so one that raced the delete (written
  after the tombstone by a writer that had not seen it) is ignored too.

Payloads are plain data (the journal's codec takes no bytes): each value the serializer encodes is
stored as ``{"t": type, "s": text}`` when the serializer produced JSON (``t == "json"``) and as
``{"t": type, "b64": base64}`` otherwise (msgpack, raw bytes, pickle).

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
import hashlib
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

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
from journal.errors import InvalidIdentifier, JournalError
from journal.events import Draft, Event
from journal.keys import validate_id

CHECKPOINT = "x.langgraph.checkpoint"
WRITES = "x.langgraph.writes"
DELETED = "x.langgraph.deleted"
TYPES = (CHECKPOINT, WRITES, DELETED)

#: Version of the payloads below; a reader refuses others rather than misread them.
FORMAT = 1

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


def encode_value(typed: tuple[str, bytes]) -> dict[str, str]:
    """A serializer's ``(type, bytes)`` as plain data: JSON kept as text, anything else base64."""
    type_, data = typed
    if type_ == "json":
        try:
            return {"t": type_, "s": data.decode("utf-8")}
        except UnicodeDecodeError:
            pass
    return {"t": type_, "b64": base64.b64encode(data).decode("ascii")}


def check_value(stored: Any) -> dict[str, str]:
    """``stored`` if it has :func:`encode_value`'s shape (checked when folded; decoded only when asked for)."""
    if (isinstance(stored, dict) and isinstance(stored.get("t"), str)
            and (isinstance(stored.get("s"), str) or isinstance(stored.get("b64"), str))):
        return cast(dict[str, str], stored)
    raise CheckpointCorrupt(f"a stored value must be {{'t': str, 's' or 'b64': str}}, got {stored!r:.80}")


def decode_value(stored: Any) -> tuple[str, bytes]:
    """The serializer's ``(type, bytes)`` back from :func:`encode_value`'s form."""
    check_value(stored)
    if isinstance(stored.get("s"), str):
        return stored["t"], stored["s"].encode("utf-8")
    try:
        return stored["t"], base64.b64decode(stored["b64"], validate=True)
    except binascii.Error as e:
        raise CheckpointCorrupt(f"a stored {stored['t']!r} value is not base64: {e}") from e


def _configurable(config: RunnableConfig | None) -> dict[str, Any]:
    return (config or {}).get("configurable") or {}


# -- the fold: a thread's events → what the saver answers ------------------------------------------

_Write = tuple[str, str, dict[str, str], str, int]


@dataclass
class _Stored:
    checkpoint: dict[str, str]
    metadata: dict[str, str]
    parent: str | None
    thread_id: str


@dataclass
class ThreadIndex:
    """What one journal thread holds for LangGraph, folded from its events in seq order."""

    seq: int = 0
    epoch: int = 0
    #: ns -> checkpoint id -> stored checkpoint (ids are uuid6: their order is creation order)
    checkpoints: dict[str, dict[str, _Stored]] = field(default_factory=dict)
    #: (ns, channel, version) -> stored value, or None for a channel stored as empty
    blobs: dict[tuple[str, str, Any], dict[str, str] | None] = field(default_factory=dict)
    #: (ns, checkpoint id) -> (task id, idx) -> (task id, channel, stored value, task path, idx)
    writes: dict[tuple[str, str], dict[tuple[str, int], _Write]] = field(default_factory=dict)

    def apply(self, events: Sequence[Event]) -> None:
        """Fold ``events`` (seq order, after ``self.seq``); ``seq`` advances only past an event folded whole."""
        for ev in events:
            if ev.type in TYPES:
                try:
                    self._apply(ev)
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    # The index stays before this event, so every later read fails the same way, naming it.
                    raise CheckpointCorrupt(f"seq {ev.seq} ({ev.type}): malformed payload: {e!r}") from e
            # Other agent steps may share the thread: they are not LangGraph's, and are skipped.
            self.seq = ev.seq

    def _apply(self, ev: Event) -> None:
        p = ev.payload
        if not isinstance(p, dict) or p.get("v") != FORMAT:
            found = p.get("v") if isinstance(p, dict) else p
            raise CheckpointCorrupt(f"seq {ev.seq} ({ev.type}): payload format {found!r:.40} is not {FORMAT}")
        if ev.type == DELETED:
            self.checkpoints.clear()
            self.blobs.clear()
            self.writes.clear()
            self.epoch += 1
        elif p.get("epoch") != self.epoch:
            pass  # written by one who had not seen a delete that came before it: deleted too
        elif ev.type == CHECKPOINT:
            self._put(p)
        else:
            self._put_writes(p)

    def _put(self, p: dict[str, Any]) -> None:
        # Everything read and checked first, then stored: a malformed event changes nothing.
        ns, cid, parent, thread_id = str(p["ns"]), str(p["id"]), p["parent"], str(p["thread_id"])
        blobs = [((ns, str(channel), blob["version"]), blob.get("value")) for channel, blob in p["blobs"].items()]
        for _, value in blobs:
            if value is not None:
                check_value(value)
        stored = _Stored(check_value(p["checkpoint"]), check_value(p["metadata"]),
                         None if parent is None else str(parent), thread_id)
        self.blobs.update(blobs)
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

    # -- queries -------------------------------------------------------------------------------

    def latest_id(self, ns: str) -> str | None:
        return max(self.checkpoints.get(ns, {}), default=None)

    def tuple(self, serde: SerializerProtocol, ns: str, checkpoint_id: str) -> CheckpointTuple | None:
        stored = self.checkpoints.get(ns, {}).get(checkpoint_id)
        if stored is None:
            return None
        return self._tuple(serde, ns, checkpoint_id, stored, serde.loads_typed(decode_value(stored.metadata)))

    def _tuple(self, serde: SerializerProtocol, ns: str, checkpoint_id: str, stored: _Stored,
               metadata: CheckpointMetadata) -> CheckpointTuple:
        checkpoint: Checkpoint = serde.loads_typed(decode_value(stored.checkpoint))
        values: dict[str, Any] = {}
        for channel, version in checkpoint["channel_versions"].items():
            blob = self.blobs.get((ns, channel, version))
            if blob is not None:
                values[channel] = serde.loads_typed(decode_value(blob))
        writes = self.writes.get((ns, checkpoint_id), {})
        ordered = sorted(writes.values(), key=lambda w: writes_sort_key(w[3], w[0], w[4]))
        pending: list[PendingWrite] = [(t, c, serde.loads_typed(decode_value(v))) for t, c, v, _, _ in ordered]

        def conf(cid: str) -> RunnableConfig:
            return {"configurable": {"thread_id": stored.thread_id, "checkpoint_ns": ns, "checkpoint_id": cid}}

        return CheckpointTuple(
            config=conf(checkpoint_id),
            checkpoint={**checkpoint, "channel_values": values},
            metadata=metadata,
            parent_config=conf(stored.parent) if stored.parent else None,
            pending_writes=pending,
        )

    def select(self, serde: SerializerProtocol, ns: str | None, checkpoint_id: str | None,
               filter: dict[str, Any] | None, before: str | None, limit: int | None) -> list[CheckpointTuple]:
        """``list``'s answer for this thread: newest first within a namespace."""
        out: list[CheckpointTuple] = []
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
                out.append(self._tuple(serde, space, cid, stored, metadata))
        return out


# -- what put / put_writes append ------------------------------------------------------------------

def _checkpoint_draft(serde: SerializerProtocol, jthread: str, epoch: int, config: RunnableConfig,
                      checkpoint: Checkpoint, metadata: CheckpointMetadata,
                      new_versions: ChannelVersions) -> tuple[Draft, RunnableConfig]:
    conf = _configurable(config)
    ns: str = conf.get("checkpoint_ns", "") or ""
    thread_id = str(conf["thread_id"])
    c: dict[str, Any] = dict(checkpoint)
    values: dict[str, Any] = c.pop("channel_values", None) or {}
    blobs = {
        channel: {"version": version,
                  "value": encode_value(serde.dumps_typed(values[channel])) if channel in values else None}
        for channel, version in new_versions.items()
    }
    full_metadata = get_checkpoint_metadata(config, metadata)
    payload = {
        "v": FORMAT, "epoch": epoch, "thread_id": thread_id, "ns": ns, "id": checkpoint["id"],
        "parent": conf.get("checkpoint_id"),
        # Plain copies for people reading the journal (audit timeline, replay); the saver reads the
        # serialized forms only.
        "step": full_metadata.get("step"), "source": full_metadata.get("source"),
        "checkpoint": encode_value(serde.dumps_typed(c)),
        "metadata": encode_value(serde.dumps_typed(full_metadata)),
        "blobs": blobs,
    }
    draft = Draft(thread=jthread, type=CHECKPOINT, payload=payload, node=_node(full_metadata))
    return draft, {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}


def _node(metadata: CheckpointMetadata) -> str | None:
    source = metadata.get("source")
    return f"langgraph:{source}" if isinstance(source, str) else None


def _writes_draft(serde: SerializerProtocol, jthread: str, epoch: int, config: RunnableConfig,
                  writes: Sequence[tuple[str, Any]], task_id: str, task_path: str) -> Draft:
    conf = _configurable(config)
    checkpoint_id = conf.get("checkpoint_id")
    if not checkpoint_id:
        raise CheckpointConfigError("put_writes needs config['configurable']['checkpoint_id']")
    payload = {
        "v": FORMAT, "epoch": epoch, "thread_id": str(conf["thread_id"]), "ns": conf.get("checkpoint_ns", "") or "",
        "checkpoint_id": checkpoint_id, "task_id": task_id, "task_path": task_path,
        "writes": [[WRITES_IDX_MAP.get(channel, idx), channel, encode_value(serde.dumps_typed(value))]
                   for idx, (channel, value) in enumerate(writes)],
    }
    return Draft(thread=jthread, type=WRITES, payload=payload, node=_task_node(task_path))


def _task_node(task_path: str) -> str | None:
    """The graph node whose task wrote, for the journal's ``node`` column ("~__pregel_pull, tools" → "tools")."""
    kind, _, name = task_path.partition(", ")
    return name[:256] if kind == "~__pregel_pull" and name else None


def _deleted_draft(jthread: str, thread_id: str) -> Draft:
    return Draft(thread=jthread, type=DELETED, payload={"v": FORMAT, "thread_id": thread_id})


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


class _Cache:
    """Per-thread indexes, least recently used dropped first (a dropped one is rebuilt from the log)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[str, str], ThreadIndex] = OrderedDict()

    def peek(self, key: tuple[str, str]) -> ThreadIndex | None:
        """The index if this process has one (without reading), else None."""
        return self.entries.get(key)

    def get(self, key: tuple[str, str]) -> ThreadIndex:
        index = self.entries.pop(key, None) or ThreadIndex()
        self.entries[key] = index
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return index


# -- the savers ------------------------------------------------------------------------------------

class JournalSaver(BaseCheckpointSaver[int]):
    """LangGraph checkpointer on a ``JournalClient``; the async methods run the sync ones in a worker thread."""

    def __init__(self, client: JournalClient, *, tenant: str, serde: SerializerProtocol | None = None,
                 durability: str | None = None, cache_threads: int = 256) -> None:
        super().__init__(serde=serde)
        self.client = client
        self.tenant = validate_id(tenant, "tenant")
        self.durability = durability
        self._cache = _Cache(cache_threads)
        # LangGraph calls put_writes from several worker threads at once; the index is not thread-safe.
        self._lock = threading.Lock()

    def _index(self, tenant: str, jthread: str) -> ThreadIndex:
        """The thread's index, with every event written since it was last read folded in."""
        with self._lock:
            index = self._cache.get((tenant, jthread))
            index.apply(self.client.read(tenant, jthread, after_seq=index.seq))
            return index

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        where = _Where(config, self.tenant)
        index = self._index(where.tenant, where.jthread)
        ns = where.ns or ""
        with self._lock:
            cid = where.checkpoint_id or index.latest_id(ns)
            return where.route_tuple(index.tuple(self.serde, ns, cid) if cid else None)

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        if config is None:
            # The journal keeps no per-tenant list of LangGraph threads; listing all of them would scan the tenant.
            raise CheckpointConfigError("list needs a config with a thread_id (listing every thread is not supported)")
        where = _Where(config, self.tenant)
        index = self._index(where.tenant, where.jthread)
        with self._lock:
            found = index.select(self.serde, where.ns, where.checkpoint_id, filter,
                                 get_checkpoint_id(before) if before else None, limit)
        for tup in found:
            yield cast(CheckpointTuple, where.route_tuple(tup))

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        where = _Where(config, self.tenant)
        # Reading first learns of any delete since this process last looked (the epoch to write under).
        epoch = self._index(where.tenant, where.jthread).epoch
        draft, out = _checkpoint_draft(self.serde, where.jthread, epoch, config, checkpoint, metadata, new_versions)
        self.client.append_many(where.tenant, [draft], durability=self.durability)
        return where.route(out)

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        where = _Where(config, self.tenant)
        with self._lock:
            known = self._cache.peek((where.tenant, where.jthread))
        # The writes belong to a checkpoint this process put or read, so its index knows the epoch without
        # reading again; a writer that has not seen a later delete writes under the old one, and is ignored as
        # it should be. Only an index this process lacks (never read, or dropped from the cache) is read.
        epoch = known.epoch if known is not None else self._index(where.tenant, where.jthread).epoch
        self.client.append_many(where.tenant, [_writes_draft(self.serde, where.jthread, epoch, config, writes,
                                                             task_id, task_path)], durability=self.durability)

    def delete_thread(self, thread_id: str, *, tenant: str | None = None) -> None:
        """Append the tombstone: the thread reads as empty from then on, whatever is written against its past."""
        jthread = journal_thread(thread_id)
        self.client.append_many(tenant or self.tenant, [_deleted_draft(jthread, str(thread_id))],
                                durability=self.durability)

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


class AsyncJournalSaver(BaseCheckpointSaver[int]):
    """LangGraph checkpointer on an ``AsyncJournalClient``.

    The sync methods (for ``graph.invoke`` / ``get_state`` from another thread) run the async ones
    on the event loop the saver was first used on, as LangGraph's own async savers do; called on
    that loop's thread they would deadlock, so they refuse.
    """

    def __init__(self, client: AsyncJournalClient, *, tenant: str, serde: SerializerProtocol | None = None,
                 durability: str | None = None, cache_threads: int = 256) -> None:
        super().__init__(serde=serde)
        self.client = client
        self.tenant = validate_id(tenant, "tenant")
        self.durability = durability
        self._cache = _Cache(cache_threads)
        self._lock: asyncio.Lock | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def _bind(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self.loop is not loop:
            self.loop, self._lock = loop, asyncio.Lock()
        return self._lock

    async def _index(self, tenant: str, jthread: str) -> ThreadIndex:
        async with self._bind():
            index = self._cache.get((tenant, jthread))
            index.apply(await self.client.read(tenant, jthread, after_seq=index.seq))
            return index

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        where = _Where(config, self.tenant)
        index = await self._index(where.tenant, where.jthread)
        ns = where.ns or ""
        cid = where.checkpoint_id or index.latest_id(ns)
        return where.route_tuple(index.tuple(self.serde, ns, cid) if cid else None)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        if config is None:
            raise CheckpointConfigError("list needs a config with a thread_id (listing every thread is not supported)")
        where = _Where(config, self.tenant)
        index = await self._index(where.tenant, where.jthread)
        for tup in index.select(self.serde, where.ns, where.checkpoint_id, filter,
                                get_checkpoint_id(before) if before else None, limit):
            yield cast(CheckpointTuple, where.route_tuple(tup))

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        where = _Where(config, self.tenant)
        epoch = (await self._index(where.tenant, where.jthread)).epoch
        draft, out = _checkpoint_draft(self.serde, where.jthread, epoch, config, checkpoint, metadata, new_versions)
        await self.client.append_many(where.tenant, [draft], durability=self.durability)
        return where.route(out)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        where = _Where(config, self.tenant)
        known = self._cache.peek((where.tenant, where.jthread))  # see JournalSaver.put_writes
        epoch = known.epoch if known is not None else (await self._index(where.tenant, where.jthread)).epoch
        await self.client.append_many(where.tenant, [_writes_draft(self.serde, where.jthread, epoch, config, writes,
                                                                   task_id, task_path)], durability=self.durability)

    async def adelete_thread(self, thread_id: str, *, tenant: str | None = None) -> None:
        """Append the tombstone: the thread reads as empty from then on, whatever is written against its past."""
        draft = _deleted_draft(journal_thread(thread_id), str(thread_id))
        await self.client.append_many(tenant or self.tenant, [draft], durability=self.durability)

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


__all__ = [
    "CHECKPOINT",
    "DELETED",
    "WRITES",
    "AsyncJournalSaver",
    "CheckpointConfigError",
    "CheckpointCorrupt",
    "JournalSaver",
    "ThreadIndex",
    "journal_thread",
]
