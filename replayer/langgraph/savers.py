"""``JournalSaver`` and ``AsyncJournalSaver``: LangGraph's ``BaseCheckpointSaver`` on the journal's clients, their
per-thread index cache, locks and the outbox where ``put_writes`` waits for the next ``put``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from journal.aio import AsyncJournalClient
from journal.client import JournalClient
from journal.errors import ConflictError, JournalError
from journal.events import Draft, Event
from journal.keys import validate_id
from journal.settings import DURABILITY_LEVELS as JOURNAL_LEVELS
from replayer.langgraph.drafts import (
    checkpoint_draft,
    checkpoints_of_runs,
    copy_drafts,
    deleted_draft,
    knows_checkpoint,
    prune_draft,
    read_registry,
    registration_draft,
    unregistered,
    writes_draft,
)
from replayer.langgraph.format import (
    FORMAT,
    REGISTRY,
    CheckpointConfigError,
    configurable_of,
    journal_thread,
    next_version,
)
from replayer.langgraph.index import ThreadIndex, fold_appended
from replayer.langgraph_fold import PRUNED

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

#: Default memory budget of a saver's thread indexes (``cache_bytes``), as :func:`_weight` estimates it.
CACHE_BYTES = 256 * 2**20

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


def _durability(saver_level: str | None, config: RunnableConfig | None) -> str | None:
    """The journal level of an append: the saver's, else the one LangGraph's ``durability`` mode maps to."""
    if saver_level is not None:
        return saver_level
    mode = configurable_of(config).get(CONFIG_KEY_DURABILITY)
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
        conf = configurable_of(config)
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
        return {**config, "configurable": {**configurable_of(config), "tenant_id": self.named_tenant}}

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
        (take if p is own or index is None or cid == checkpoint_id or knows_checkpoint(index, cid) else keep).append(p)
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
        """:func:`fold_appended`, then :meth:`grown`."""
        fold_appended(index, events, jthread)
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
    draft, out = checkpoint_draft(serde, index, where.jthread, config, checkpoint, metadata, new_versions,
                                   ahead=len(before))
    drafts = [*before, draft, *after]
    if unregistered(index):
        drafts.append(registration_draft(where.jthread, where.thread_id))
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

class _Saver(BaseCheckpointSaver[str]):
    """What both savers hold besides their client: the default tenant, the durability, the TTL and the thread
    indexes' cache (arguments checked before anything is kept)."""

    def __init__(self, *, tenant: str, serde: SerializerProtocol | None, durability: str | None,
                 cache_threads: int, cache_bytes: int, ttl: timedelta | float | None) -> None:
        super().__init__(serde=serde)
        _saver_options(durability, cache_threads, cache_bytes)
        self.tenant = validate_id(tenant, "tenant")
        self.durability = durability
        self.ttl_ms = _ttl_ms(ttl)
        self._cache = _Cache(cache_threads, cache_bytes)


class JournalSaver(_Saver):
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
        super().__init__(tenant=tenant, serde=serde, durability=durability, cache_threads=cache_threads,
                         cache_bytes=cache_bytes, ttl=ttl)
        self.client = client
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
            read_registry(events, known)
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
            pending = _Pending(writes_draft(self.serde, where.jthread, index, config, writes, task_id, task_path),
                               _Signal())
            with self._lock:
                self._outbox.setdefault(key, []).append(pending)
        if not pending.done.wait(WRITES_LINGER):
            with guard:
                seen = knows_checkpoint(index, pending.draft.payload.get("checkpoint_id"))
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
        self._append(tenant or self.tenant, [deleted_draft(jthread, str(thread_id))])

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
                draft = prune_draft(index, jthread, str(thread_id), keep_last, _ttl_ms(older_than),
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
                draft = prune_draft(self._index(tenant, jthread), jthread, thread_id, 1, self.ttl_ms, _now_ms(), "ttl")
            self._append(tenant, [draft] if draft else [])

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Record as pruned every checkpoint (and its writes) of the saver's tenant whose metadata names a run."""
        wanted = {str(r) for r in _thread_ids(run_ids, "run_ids")}
        if not wanted:
            return
        for jthread, thread_id in self._threads(self.tenant).items():
            with self._guard((self.tenant, jthread)):
                index = self._index(self.tenant, jthread)
                drop = checkpoints_of_runs(self.serde, index, wanted)
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
            drafts = copy_drafts(self.serde, source, target, target_j, str(target_thread_id))
            new = unregistered(target)
        self._append(tenant, drafts)
        if drafts and new:
            self._append(tenant, [registration_draft(target_j, str(target_thread_id))])

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


class AsyncJournalSaver(_Saver):
    """LangGraph checkpointer on an ``AsyncJournalClient`` (``durability`` and ``ttl`` as :class:`JournalSaver`'s).

    The sync methods (for ``graph.invoke`` / ``get_state`` from another thread) run the async ones
    on the event loop the saver was first used on, as LangGraph's own async savers do; called on
    that loop's thread they would deadlock, so they refuse.
    """

    def __init__(self, client: AsyncJournalClient, *, tenant: str, serde: SerializerProtocol | None = None,
                 durability: str | None = None, cache_threads: int = 256, cache_bytes: int = CACHE_BYTES,
                 ttl: timedelta | float | None = None) -> None:
        super().__init__(tenant=tenant, serde=serde, durability=durability, cache_threads=cache_threads,
                         cache_bytes=cache_bytes, ttl=ttl)
        self.client = client
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
            read_registry(events, known)
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
        pending = _Pending(writes_draft(self.serde, where.jthread, index, config, writes, task_id, task_path),
                           asyncio.Event())
        self._outbox.setdefault(key, []).append(pending)
        try:
            await asyncio.wait_for(pending.done.wait(), WRITES_LINGER)
        except TimeoutError:
            if not knows_checkpoint(index, pending.draft.payload.get("checkpoint_id")):
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
        await self._append(tenant or self.tenant, [deleted_draft(journal_thread(thread_id), str(thread_id))])

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
            draft = prune_draft(index, jthread, str(thread_id), keep_last, _ttl_ms(older_than), _now_ms(),
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
            draft = prune_draft(index, jthread, thread_id, 1, self.ttl_ms, _now_ms(), "ttl")
            await self._append(tenant, [draft] if draft else [])

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """See :meth:`JournalSaver.delete_for_runs`."""
        wanted = {str(r) for r in _thread_ids(run_ids, "run_ids")}
        if not wanted:
            return
        for jthread, thread_id in (await self._threads(self.tenant)).items():
            index = await self._index(self.tenant, jthread)
            drop = checkpoints_of_runs(self.serde, index, wanted)
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
        new = unregistered(target)
        drafts = copy_drafts(self.serde, source, target, target_j, str(target_thread_id))
        await self._append(tenant, drafts)
        if drafts and new:
            await self._append(tenant, [registration_draft(target_j, str(target_thread_id))])

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
