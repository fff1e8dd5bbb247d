"""The client's operations, written once for the sync and the asyncio client (sans I/O).

Each operation is a generator: it yields a *request* (a Redis command, the append script,
a blocking call into PostgreSQL or S3, a sleep) and receives the reply; a failed request is
thrown back into it as a ``JournalError``, so the operation itself decides what to retry.
``JournalClient`` drives these generators with blocking calls and ``AsyncJournalClient``
with awaits; neither holds any logic of its own, so the two cannot drift apart.

Reads answer from every tier: the hot tail in Redis for what PostgreSQL has not committed
yet (the per-thread ``projected`` mark says where that starts), PostgreSQL below it. A read
returns the whole range asked for, gapless, or raises ``HistoryIncomplete`` naming the tier
that lacks it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from journal import append as protocol
from journal import codec, keys, logs
from journal.errors import (
    CodecError,
    ConfigError,
    DurabilityUnsupported,
    HistoryIncomplete,
    InvalidEvent,
    JournalError,
    StoreUnavailable,
    ThreadHeld,
)
from journal.events import Draft, Event
from journal.reducer import Reducer, fold, load_registry
from journal.settings import Settings
from journal.state import ThreadState, empty

if TYPE_CHECKING:
    from journal.durable import DurableReader

log = logs.get_logger("journal.client")

T = TypeVar("T")

#: Entries per XREVRANGE page when walking the hot tail backwards.
PAGE = 1000
#: Longest single XREAD BLOCK of a wait: a long wait is a chain of these, continuing from the last
#: entry seen, so no socket timeout cuts it and a restarted server is noticed within this time.
BLOCK_CHUNK = 2.0
#: Longest XREAD BLOCK on the ``projected`` feed before the markers are read again (``_await_projected``).
PROJECTED_BLOCK = 0.25
#: How long an append waits for a held thread (retention deleting its expired history, which takes
#: milliseconds) before it raises ``ThreadHeld``, and the pause between its tries.
HOLD_WAIT = 5.0
HOLD_BACKOFF = 0.01


# -- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One Redis command: ``client.<method>(*args, **kwargs)``; ``what`` names it in errors."""

    what: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pipe:
    """Several Redis commands in one round trip; the reply is their replies, in order."""

    what: str
    calls: tuple[tuple[str, tuple[Any, ...]], ...]


@dataclass(frozen=True, slots=True)
class Script:
    """The append script, followed by the commands ``then`` (``WAITAOF``, ``WAIT``) on the same connection.

    ``WAIT``/``WAITAOF`` count the writes of their own connection, so they run right after the
    script on the connection (and, on a cluster, the node) that ran it. The reply is
    ``(script reply, [each command's reply or the JournalError it raised])``: the append happened
    whatever they answered, and the operation must say so.
    """

    what: str
    keys: list[str]
    args: list[Any]
    then: tuple[tuple[Any, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class Offload:
    """Blocking calls (PostgreSQL, S3); the async client runs them in threads, concurrently."""

    calls: tuple[tuple[Callable[..., Any], tuple[Any, ...]], ...]


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Request = Call | Pipe | Script | Offload | Sleep
Op = Generator[Request, Any, T]


@dataclass(slots=True)
class Env:
    """What the operations may use besides Redis: settings, object storage, the durable tier."""

    settings: Settings
    blobs: Any = None  # journal.blobs.BlobStore (imported only where S3 is configured)
    durable: DurableReader | None = None
    registry: Mapping[str, Reducer] | None = None
    #: Whether the server can fsync on request (WAITAOF with AOF on): None until asked, then True
    #: or the error that says why not. Asked once per client, before the first fsync append.
    fsync: bool | JournalError | None = None

    def __post_init__(self) -> None:
        if self.registry is None:
            # The settings' reducers (JOURNAL_REDUCERS): the projector folded the snapshots that
            # resume starts from with them, so the events after a snapshot must fold with them too.
            self.registry = load_registry(self.settings.reducers)

    @classmethod
    def from_settings(cls, settings: Settings, registry: Mapping[str, Reducer] | None = None) -> Env:
        blobs = None
        if settings.s3_url:
            from journal.blobs import BlobStore  # boto3 is a third of the import time; only S3 users pay it

            blobs = BlobStore.from_settings(settings)
        durable = None
        if settings.database_url:
            from journal.durable import DurableReader  # psycopg: only for clients that read PostgreSQL

            durable = DurableReader(settings.database_url)
        return cls(settings, blobs, durable, registry)


@dataclass(frozen=True, slots=True)
class Resumed:
    """Where a thread stands: its state, the seq to pass as ``expected_seq``, and the tenant's context."""

    state: ThreadState
    seq: int
    #: The state of the tenant's reserved thread ``_tenant`` (preferences, summaries), or None if empty.
    tenant_context: ThreadState | None


# -- writing -------------------------------------------------------------------------------------


def append_many(env: Env, tenant: str, drafts: Iterable[Draft | Mapping[str, Any]],
                durability: str | None) -> Op[list[Event]]:
    level = protocol.durability_level(durability, env.settings)
    p = protocol.prepare(env.settings, tenant, drafts)
    if level == "fsync":
        yield from _check_fsync(env)
        if isinstance(env.fsync, JournalError):
            raise DurabilityUnsupported(f"{env.fsync} Nothing was written.") from env.fsync
    elif level == "replicated":
        yield from _check_fsync(env)  # WAITAOF local + replica where the server can; WAIT alone where not
    if p.uploads:
        if env.blobs is None:
            raise ConfigError("this payload is over the blob threshold but no object storage is configured; "
                              "set JOURNAL_S3_URL (or run `agent-journal up`); nothing was written")
        yield Offload(tuple((env.blobs.put, (tenant, data)) for _, data in p.uploads))
    timeout = env.settings.durability_timeout
    then = protocol.wait_commands(level, max(1, int(timeout * 1000)), env.fsync is True)
    held_since: float | None = None
    while True:
        reply, waited = yield Script(f"append to tenant {tenant}", p.keys, p.args, then)
        evicted = protocol.restore_request(reply)
        if evicted is not None:
            # Threads `agent-journal maintain` dropped from Redis: their heads come back from PostgreSQL.
            if env.durable is None:
                raise ConfigError(f"thread {evicted[0]} of tenant {tenant} was evicted from Redis while idle; "
                                  "restoring its head needs PostgreSQL: set JOURNAL_DATABASE_URL. Nothing was written.")
            heads = yield Offload(tuple((env.durable.max_seq, (tenant, t)) for t in evicted))
            protocol.with_floors(p, dict(zip(evicted, heads, strict=True)))
            reply, waited = yield Script(f"append to tenant {tenant}", p.keys, p.args, then)
        held = protocol.held_request(reply)
        if held is None:
            break
        # Retention is deleting the thread's expired history (milliseconds): wait, then append afresh,
        # without the floors read before (that history may be gone: the thread then starts at seq 1).
        now = time.monotonic()
        held_since = now if held_since is None else held_since
        if now - held_since >= HOLD_WAIT:
            raise ThreadHeld(tenant, *held, now - held_since)
        protocol.with_floors(p, {})
        yield Sleep(HOLD_BACKOFF)
    outcome = protocol.parse_reply(p, reply)
    if outcome.created_stream:
        # The registry lets projectors find a new tenant at once; it lives outside the tenant's
        # hash tag, so the script cannot write it. Refused, discovery falls back to the projector's scan.
        try:
            yield Call("SADD tenant registry", "sadd", (keys.TENANT_REGISTRY, tenant))
        except JournalError as e:
            log.debug("tenant_register_skipped", tenant=tenant, error=str(e))
    if level == "fsync":
        protocol.check_fsynced(waited[0], timeout, outcome.events)
    elif level == "replicated":
        protocol.check_replicated(waited, timeout, outcome.events)
    elif level == "projected":
        yield from _await_projected(env, tenant, outcome.events)
    return outcome.events


def _check_fsync(env: Env) -> Op[None]:
    if env.fsync is None:
        try:
            # Answers at once when the AOF is on; refused when it is off or WAITAOF is unknown (Redis < 7.2).
            yield Call("WAITAOF (durability='fsync')", "execute_command", ("WAITAOF", 1, 0, 1))
            env.fsync = True
        except DurabilityUnsupported as e:
            env.fsync = e
        except JournalError as e:
            raise type(e)(f"{e} Nothing was written.") from e


def _await_projected(env: Env, tenant: str, events: list[Event]) -> Op[None]:
    """Until the ``projected`` markers cover ``events``: woken by the projector's feed, not by polling.

    After each commit the projector adds an entry to the tenant's ``projected`` feed (a short stream,
    ``acknowledge.lua``). The feed's last id is read in the same round trip as the markers, before
    them: a commit after that read adds an entry above it, so the blocking XREAD that follows wakes
    for it. Polling instead (sleeps of 2, 4, 8 … ms) added up to a sleep's length to every wait.
    """
    want = protocol.projected_targets(events)
    timeout = env.settings.durability_timeout
    deadline = time.monotonic() + timeout
    feed = keys.projected_feed(tenant)
    last, committed = yield Pipe("waiting for projection", (("xrevrange", (feed, "+", "-", 1)),
                                                            ("hmget", (keys.projected(tenant), list(want)))))
    position = last[0][0] if last else b"0-0"
    seen = {t: _marker(v) for t, v in zip(want, committed, strict=True)}
    while not protocol.all_projected(want, [seen[t] for t in want]):
        left = deadline - time.monotonic()
        if left <= 0:
            raise protocol.not_projected(timeout, events)
        # Bounded blocks: a feed entry lost (the key expired, Redis restarted) costs one block, not the wait.
        reply = yield Call("waiting for projection", "xread", ({feed: position},),
                           {"block": max(1, int(min(left, PROJECTED_BLOCK) * 1000)), "count": 1000})
        for _, entries in reply or []:
            for entry_id, fields in entries:
                position = entry_id
                for thread, seq in fields.items():  # a small batch's markers (thread -> seq)
                    name = thread.decode(errors="replace")
                    if name in seen:
                        seen[name] = max(seen[name], _marker(seq))
        if not protocol.all_projected(want, [seen[t] for t in want]):
            # Woken by a large batch (no markers in its entry) or by another thread's: read them.
            committed = yield Call("waiting for projection", "hmget", (keys.projected(tenant), list(want)))
            seen = {t: max(seen[t], _marker(v)) for t, v in zip(want, committed, strict=True)}


def _marker(value: Any) -> int:
    """A ``projected`` marker's seq; 0 for none, or for what is not one (the tenant's own user can write there)."""
    try:
        return int(value or 0)
    except ValueError:
        return 0


# -- reading -------------------------------------------------------------------------------------


def head(tenant: str, thread: str) -> Op[int]:
    """The latest seq issued for the thread in Redis (0 if none)."""
    keys.validate_id(thread, "thread")
    value = yield Call("HGET head", "hget", (keys.heads(tenant), thread))
    return int(value or 0)


def hot_tail(tenant: str, thread: str, after: int, top: int) -> Op[list[Event]]:
    """The thread's entries in the stream with ``after < seq <= top``, in seq order (those trimmed are absent).

    Per thread, stream order is seq order (the script assigns the seq and XADDs in one step),
    so a walk backwards from the newest entry stops at the thread's first entry at or below
    ``after``, or once it has them all: it costs what the unprojected tail holds, not the stream.
    """
    if top <= after:
        return []
    stream = keys.stream(tenant)
    want = thread.encode()
    found: dict[int, Event] = {}
    end = "+"
    while True:
        page = yield Call("XREVRANGE (hot tail)", "xrevrange", (stream,), {"max": end, "min": "-", "count": PAGE})
        done = False
        for entry_id, fields in page:
            if fields.get(b"t") != want:
                continue
            seq = _seq_of(fields)
            if seq is None:
                continue  # a malformed entry (dead-lettered by the projector) is no event
            if seq <= after:
                done = True
                break
            if seq <= top:
                found[seq] = codec.decode_entry(tenant, fields, entry_id.decode())
        if done or len(page) < PAGE or len(found) >= top - after:
            break
        end = "(" + page[-1][0].decode()
    return [found[s] for s in sorted(found)]


def history(env: Env, tenant: str, thread: str, after: int, upto: int | None = None,
            at_least: int = 0, stored: Iterable[Event] = ()) -> Op[list[Event]]:
    """Events ``after < seq <= upto`` (default: the head) from every tier, gapless, in seq order.

    ``at_least`` is a head known from elsewhere (PostgreSQL's), for when Redis lost its heads;
    ``stored`` are events already read from PostgreSQL (they win over Redis, and are not read again).
    """
    keys.validate_id(thread, "thread")
    _check_seq(after, "after_seq")
    issued, committed, evicted = yield Pipe("HGET head", (("hget", (keys.heads(tenant), thread)),
                                                          ("hget", (keys.projected(tenant), thread)),
                                                          ("exists", (keys.evicted(tenant),))))
    if issued is None and evicted and env.durable is not None and not at_least:
        # Maybe a thread `agent-journal maintain` dropped from Redis while idle: PostgreSQL knows its head.
        at_least = (yield Offload(((env.durable.max_seq, (tenant, thread)),)))[0]
    top = max(int(issued or 0), at_least)
    if upto is not None:
        top = min(top, upto)
    if top <= after:
        return []
    # Above the projected mark the events are in Redis only; below it, PostgreSQL has them.
    low = max(after, min(int(committed or 0), top))
    known = {e.seq: e for e in stored if after < e.seq <= top}
    covered = after
    while covered + 1 in known:
        covered += 1
    # What PostgreSQL already gave need not be walked for in the stream.
    merged = {e.seq: e for e in (yield from hot_tail(tenant, thread, max(low, covered), top))}
    merged.update(known)
    missing = [s for s in range(after + 1, top + 1) if s not in merged]
    if missing and env.durable is not None:
        read = yield Offload(((env.durable.events, (tenant, thread, after, missing[-1])),))
        merged.update((e.seq, e) for e in read[0])
        missing = [s for s in missing if s not in merged]
        if missing:
            # Asked after the rows: an archiver deletes rows and writes the stub in one transaction,
            # so a read that found the rows gone finds the stub.
            yield from _archived(env, tenant, thread, after, missing[-1], merged)
    elif missing:
        # No PostgreSQL: the hot window below the mark may still hold them.
        merged.update((e.seq, e) for e in (yield from hot_tail(tenant, thread, after, low)))
    gap = next((s for s in range(after + 1, top + 1) if s not in merged), None)
    if gap is not None:
        where = ("neither in Redis (trimmed after projection) nor in PostgreSQL nor in its S3 archive"
                 if env.durable is not None else
                 "no longer in Redis (trimmed after projection) and no PostgreSQL is configured "
                 "(set JOURNAL_DATABASE_URL to read the durable tier)")
        raise HistoryIncomplete(tenant, thread, gap, where)
    return [merged[s] for s in range(after + 1, top + 1)]


def _archived(env: Env, tenant: str, thread: str, after: int, upto: int, merged: dict[int, Event]) -> Op[None]:
    """Fill ``merged`` from the thread's S3 archive (``journal.archive``), if it has one."""
    assert env.durable is not None
    ref = (yield Offload(((env.durable.archived, (tenant, thread)),)))[0]
    if ref is None or ref.last_seq <= after:
        return
    if env.blobs is None:
        raise HistoryIncomplete(tenant, thread, after + 1, f"archived to object storage ({ref.manifest_key}) but no "
                                "S3 is configured; set JOURNAL_S3_URL (and the tenant's S3 key) to read it")
    from journal.archive import ArchiveReader

    archived = (yield Offload(((ArchiveReader(env.blobs).events, (tenant, thread, ref, after, upto)),)))[0]
    for e in archived:
        merged.setdefault(e.seq, e)


def resolve(env: Env, events: list[Event]) -> Op[list[Event]]:
    """The events with offloaded payloads fetched from object storage (``BlobMissing`` if gone)."""
    offloaded = [e for e in events if e.blob is not None]
    if not offloaded:
        return events
    if env.blobs is None:
        raise ConfigError(f"seq {offloaded[0].seq} of {offloaded[0].tenant}/{offloaded[0].thread} has its payload in "
                          "object storage but no S3 is configured; set JOURNAL_S3_URL")
    datas = yield Offload(tuple((env.blobs.get, (e.tenant, e.blob)) for e in offloaded))
    fetched = {e.seq: protocol.resolve_blob(e, d) for e, d in zip(offloaded, datas, strict=True)}
    return [fetched.get(e.seq, e) for e in events]


def read(env: Env, tenant: str, thread: str, after_seq: int, resolve_blobs: bool) -> Op[list[Event]]:
    events = yield from history(env, tenant, thread, after_seq)
    return (yield from resolve(env, events)) if resolve_blobs else events


def wait(env: Env, tenant: str, thread: str, after_seq: int, types: Iterable[str] | None,
         timeout: float | None) -> Op[Event | None]:
    """The first event of ``types`` (None = any) with seq > ``after_seq``, already written or yet to come.

    Fixes the stream position, looks at what is already written after ``after_seq`` (every tier),
    then blocks on XREAD from that position in chunks of ``BLOCK_CHUNK``. An unreachable Redis is
    retried until the deadline; after a reconnect the position is fixed again and the written
    history checked again, since a restarted server may not hold what the old one did.
    """
    keys.validate_id(thread, "thread")
    stream = keys.stream(tenant)
    _check_seq(after_seq, "after_seq")
    wanted = _types(types)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0):
        raise InvalidEvent(f"timeout must be seconds >= 0 or None (wait forever), got {timeout!r}")
    deadline = None if timeout is None else time.monotonic() + timeout
    want = thread.encode()
    position: str | None = None
    backoff = 0.1
    while True:
        try:
            if position is None:
                # Position first, then the written history: nothing appended in between can slip past.
                last = yield Call("XREVRANGE (wait)", "xrevrange", (stream,), {"count": 1})
                fixed = last[0][0].decode() if last else "0-0"
                for ev in (yield from history(env, tenant, thread, after_seq)):
                    if wanted is None or ev.type in wanted:
                        return (yield from resolve(env, [ev]))[0]
                position = fixed
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            block = BLOCK_CHUNK if left is None else min(left, BLOCK_CHUNK)
            reply = yield Call("XREAD BLOCK (wait)", "xread", ({stream: position},),
                               {"block": max(1, int(block * 1000)), "count": 100})
            backoff = 0.1
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    position = entry_id.decode()
                    if fields.get(b"t") != want or (_seq_of(fields) or 0) <= after_seq:
                        continue
                    try:
                        ev = codec.decode_entry(tenant, fields, position)
                    except CodecError:
                        continue  # not an event (the projector dead-letters it)
                    if wanted is None or ev.type in wanted:
                        return (yield from resolve(env, [ev]))[0]
        except StoreUnavailable as e:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise StoreUnavailable(f"{e} (the wait for {tenant}/{thread} timed out while unreachable)") from e
            log.warning("wait_reconnecting", tenant=tenant, thread=thread, error=str(e))
            yield Sleep(backoff if left is None else min(backoff, left))
            backoff = min(backoff * 2, 2.0)
            position = None


def state(env: Env, tenant: str, thread: str,
          durable: tuple[int, ThreadState | None, list[Event]] | None = None) -> Op[ThreadState]:
    """The thread's latest state: newest snapshot in PostgreSQL + the events after it from every tier.

    ``durable`` is PostgreSQL's part (``DurableReader.latest``) when the caller read it already.
    """
    durable_top, base, stored = durable if durable is not None else (0, None, [])
    if durable is None and env.durable is not None:
        # The snapshot and the events after it in one PostgreSQL transaction; Redis adds what is newer.
        durable_top, base, stored = (yield Offload(((env.durable.latest, (tenant, thread)),)))[0]
    start = base if base is not None else empty(tenant, thread)
    events = yield from history(env, tenant, thread, start.last_seq, at_least=durable_top, stored=stored)
    return fold((yield from resolve(env, events)), start, env.registry)


def resume(env: Env, tenant: str, thread: str) -> Op[Resumed]:
    keys.validate_id(tenant, "tenant")
    keys.validate_id(thread, "thread")
    stored: dict[str, tuple[int, ThreadState | None, list[Event]]] = {}
    if env.durable is not None:
        # Both threads' PostgreSQL parts in one transaction (one round trip or two, not eight).
        stored = (yield Offload(((env.durable.latest_many, (tenant, (thread, keys.TENANT_CONTEXT_THREAD))),)))[0]
    current = yield from state(env, tenant, thread, stored.get(thread))
    if thread == keys.TENANT_CONTEXT_THREAD:
        context: ThreadState | None = current
    else:
        context = yield from state(env, tenant, keys.TENANT_CONTEXT_THREAD, stored.get(keys.TENANT_CONTEXT_THREAD))
    return Resumed(current, current.last_seq, context if context is not None and context.last_seq else None)


# -- argument checks -----------------------------------------------------------------------------


def _check_seq(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidEvent(f"{name} must be an int >= 0 (0 = from the start), got {value!r}")


def _types(types: Iterable[str] | None) -> set[str] | None:
    if types is None:
        return None
    if isinstance(types, str | bytes):
        raise InvalidEvent(f"types must be a collection of event types such as ('resume',), not the string {types!r}")
    wanted = set(types)
    for t in wanted:
        keys.validate_type(t)
    if not wanted:
        raise InvalidEvent("types is empty, so nothing could match; pass None to wait for any type")
    return wanted


def _seq_of(fields: Mapping[bytes, Any]) -> int | None:
    try:
        return int(fields[b"s"])
    except (KeyError, TypeError, ValueError):
        return None
