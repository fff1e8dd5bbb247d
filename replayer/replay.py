"""Replay: a thread's state at any seq or time, from the tiers, with the one fold (invariant 7).

    with Replayer.from_settings(settings) as r:
        state = r.replay("acme", "run-42", at_seq=120)
        verdicts = r.verify("acme")

``state(at)`` = the newest snapshot at or below ``at`` + ``fold`` of the events after it.
Events come from the resumption cascade: PostgreSQL (the durable truth, decoded from the hashed
``body``), the Redis hot tail above what PostgreSQL holds, and the S3 archive (when one is
given) for anything PostgreSQL no longer has. Tiers are merged by seq (PostgreSQL wins a seq
both hold); a seq missing from the range is a :class:`~journal.errors.GapError`, never a silently
shorter history. Offloaded payloads are fetched from S3 *before* folding, exactly as the
snapshot writer and the bundle verifier do, so every path folds the same events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from journal.append import resolve_blob
from journal.blobs import BlobStore
from journal.chain import GENESIS, key_bytes
from journal.errors import ArchiveCorrupt, ConfigError, GapError, InvalidQuery, JournalError, NotFound
from journal.events import Event
from journal.keys import validate_id
from journal.local_stack import resolve
from journal.redis_store import connect as redis_connect
from journal.reducer import Reducer, fold, load_registry
from journal.settings import Settings
from journal.state import ThreadState, empty
from replayer.sources import ArchiveSource, BadRow, PostgresSource, RedisSource, S3ArchiveSource, ThreadHead
from replayer.verify import CHANGED, StoredEvent, VerifyResult, verify_chain

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ThreadVerdict(VerifyResult):
    """A :class:`VerifyResult` that names its thread (``verify`` returns one per thread)."""

    tenant: str = ""
    thread: str = ""
    #: Rows stored above the chained head without a hash yet (an earlier seq is still in flight); not judged.
    unverified: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "thread": self.thread, **VerifyResult.to_dict(self),
                "unverified": self.unverified}


def key_id(key: bytes | None) -> str | None:
    """A public name for an HMAC key (never the key): recorded in bundles so a verifier knows which key to ask for."""
    return None if key is None else "hmac-sha256:" + hashlib.sha256(key).hexdigest()[:16]


def to_ms(at: datetime) -> int:
    """Milliseconds since the epoch, floored, exactly (no float rounding)."""
    if at.tzinfo is None:
        raise InvalidQuery(f"time {at.isoformat()} has no timezone; give an aware datetime (e.g. ...+00:00 or Z)")
    return (at - _EPOCH) // timedelta(milliseconds=1)


class Replayer:
    """Read-only access to every tier of a tenant's journal: replay, history, chain verification."""

    def __init__(self, pg: PostgresSource | None, redis: RedisSource | None = None, blobs: BlobStore | None = None,
                 archive: ArchiveSource | None = None, *, key: bytes | None = None,
                 registry: Mapping[str, Reducer] | None = None) -> None:
        self.pg = pg
        self.redis = redis
        self.blobs = blobs
        self.archive = archive
        self.key = key
        self.registry = registry

    @classmethod
    def from_settings(cls, settings: Settings, *, reader_url: str | None = None, use_redis: bool = True) -> Replayer:
        """PostgreSQL as ``journal_app`` (or as the tenant reader of ``reader_url``), Redis and S3 from ``settings``.

        The custom reducers are the settings' (``JOURNAL_REDUCERS``), as in the projector's snapshots.

        With a reader URL the Redis tail is read too: every read first opens a PostgreSQL scope,
        which refuses any tenant but the reader's own (``PostgresSource.scope``), so the Redis user
        of the settings (the tenant's own, as `agent-journal tenant create` exports it) never
        serves another tenant through this replayer.
        """
        pg = PostgresSource.connect(settings, url=reader_url) if (settings.database_url or reader_url) else None
        rs = RedisSource(redis_connect(settings.redis_url)) if use_redis and settings.redis_url else None
        blobs = BlobStore.from_settings(settings) if settings.s3_url else None
        # Archived threads are read through the same S3 key as the blobs (a tenant's own key reaches
        # ``{tenant}/archive/`` as it reaches ``{tenant}/blobs/``).
        archive = S3ArchiveSource(pg, blobs) if pg is not None and blobs is not None else None
        return cls(pg, rs, blobs, archive, key=key_bytes(settings.hash_key), registry=load_registry(settings.reducers))

    def close(self) -> None:
        if self.pg is not None:
            self.pg.close()
        if self.redis is not None:
            self.redis.redis.close()

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def key_id(self) -> str | None:
        return key_id(self.key)

    def _pg(self) -> PostgresSource:
        if self.pg is None:
            raise ConfigError("this needs PostgreSQL: set JOURNAL_DATABASE_URL or run `agent-journal up`")
        return self.pg

    # -- replay ------------------------------------------------------------------------------------

    def replay(self, tenant: str, thread: str, at_seq: int | None = None, at_time: datetime | None = None, *,
               use_snapshots: bool = True) -> ThreadState:
        """The thread's state after ``at_seq``, or after the last event appended at or before ``at_time``,
        or (neither given) its latest state across all tiers.

        ``NotFound`` if the thread has no events (as far as this reader may see) or the target is
        beyond its head; ``GapError`` naming the first missing seq if the history is incomplete.
        ``use_snapshots=False`` folds from seq 1 (for benchmarks and cross-checks).
        """
        validate_id(tenant, "tenant")
        validate_id(thread, "thread")
        if at_seq is not None and at_time is not None:
            raise InvalidQuery("give at_seq or at_time, not both")
        if at_seq is not None and (isinstance(at_seq, bool) or not isinstance(at_seq, int) or at_seq < 0):
            raise InvalidQuery(f"at_seq must be an int >= 0, got {at_seq!r}")
        pg = self._pg()
        with pg.scope(tenant):
            head = pg.thread_head(tenant, thread)
            chained = head.last_seq if head else 0
            stored = pg.head(tenant, thread)
            latest = max(stored, self.redis.head(tenant, thread) if self.redis else 0,
                         self._archive_head(tenant, thread))
            if latest == 0:
                raise NotFound(f"thread {tenant}/{thread} has no events (or this reader may not see them)")
            tail: list[Event] | None = None
            if at_time is not None:
                at_ms = to_ms(at_time)
                target = pg.seq_at_time(tenant, thread, at_time)
                tail = self._tail(tenant, thread, chained, None)
                archived = self._archive_head(tenant, thread)
                if self.archive is not None and target <= archived:
                    # Rows older than the archive's head are in S3 only: their times are in the segments.
                    target = max([target, *(e.seq for e in self.archive.events(tenant, thread, 0)
                                            if e.ts_ms <= at_ms)])
                target = max([target, *(e.seq for e in tail if e.ts_ms <= at_ms)])
                if target == 0:
                    raise NotFound(f"thread {tenant}/{thread} has no event at or before {at_time.isoformat()}")
            elif at_seq is not None:
                if at_seq > latest:
                    raise NotFound(f"thread {tenant}/{thread} ends at seq {latest}; seq {at_seq} does not exist yet")
                target = at_seq
            else:
                target = latest
            base = pg.snapshot(tenant, thread, target) if use_snapshots and target > 0 else None
            start = base.last_seq if base is not None else 0
            events = self._collect(tenant, thread, start, target, chained, tail)
        return fold(self.resolve_blobs(events), base or empty(tenant, thread), self.registry)

    def latest_seq(self, tenant: str, thread: str) -> int:
        """The highest seq any tier holds for the thread (0 if none)."""
        pg = self._pg()
        with pg.scope(tenant):
            return max(pg.head(tenant, thread), self.redis.head(tenant, thread) if self.redis else 0,
                       self._archive_head(tenant, thread))

    def history(self, tenant: str, thread: str, after: int = 0, upto: int | None = None, *,
                resolve_blobs: bool = True) -> list[Event]:
        """The thread's events with ``after < seq <= upto`` (default: to the latest) from all tiers, gapless."""
        pg = self._pg()
        with pg.scope(tenant):
            head = pg.thread_head(tenant, thread)
            latest = max(pg.head(tenant, thread), self.redis.head(tenant, thread) if self.redis else 0,
                         self._archive_head(tenant, thread))
            target = latest if upto is None else min(upto, latest)
            events = self._collect(tenant, thread, after, target, head.last_seq if head else 0, None)
        return self.resolve_blobs(events) if resolve_blobs else events

    def _tail(self, tenant: str, thread: str, chained: int, upto: int | None) -> list[Event]:
        return list(self.redis.events(tenant, thread, chained, upto)) if self.redis else []

    def _archive_head(self, tenant: str, thread: str, *, needed: bool = False) -> int:
        """How far the thread's S3 archive goes (0: never archived); without an archive source, the stub says,
        and ``needed`` makes an archived thread a ``ConfigError`` (its history cannot be read without S3)."""
        if self.archive is not None:
            return self.archive.head(tenant, thread)
        ref = self._pg().archive_ref(tenant, thread)
        if ref is not None and needed:
            raise ConfigError(f"thread {tenant}/{thread} is archived to object storage up to seq {ref.last_seq} "
                              f"({ref.manifest_key}); set JOURNAL_S3_URL (and its keys) to read it")
        return ref.last_seq if ref else 0

    def _collect(self, tenant: str, thread: str, after: int, upto: int, chained: int,
                 tail: list[Event] | None) -> list[Event]:
        """Events ``after+1..upto`` merged from the tiers; ``GapError`` naming the first missing seq."""
        if upto <= after:
            return []
        merged: dict[int, Event] = {}
        # The Redis tail first, then PostgreSQL over it: for a seq both hold, the durable copy wins.
        if upto > chained:
            for e in (tail if tail is not None else self._tail(tenant, thread, max(after, chained), upto)):
                if after < e.seq <= upto:
                    merged[e.seq] = e
        for e in self._pg().events(tenant, thread, after, upto):
            merged[e.seq] = e
        if len(merged) < upto - after and self.archive is None:
            self._archive_head(tenant, thread, needed=True)
        if len(merged) < upto - after and self.archive is not None:
            low = min(merged, default=upto + 1)
            for e in self.archive.events(tenant, thread, after, low - 1):
                merged.setdefault(e.seq, e)
        if len(merged) < upto - after:
            missing = next(s for s in range(after + 1, upto + 1) if s not in merged)
            raise GapError(tenant, thread, missing)
        return [merged[s] for s in range(after + 1, upto + 1)]

    def resolve_blobs(self, events: Iterable[Event], cache: dict[str, bytes] | None = None) -> list[Event]:
        """The events with offloaded payloads fetched from S3 (verified against their sha256)."""
        out: list[Event] = []
        cache = {} if cache is None else cache
        for e in events:
            if e.blob is not None:
                out.append(resolve_blob(e, self.fetch_blob(e, cache)))
            else:
                out.append(e)
        return out

    def fetch_blob(self, event: Event, cache: dict[str, bytes] | None = None) -> bytes:
        """The stored bytes of the blob ``event`` references (``BlobMissing`` if S3 lost it)."""
        assert event.blob is not None
        if self.blobs is None:
            raise ConfigError(f"seq {event.seq} of {event.tenant}/{event.thread} has its payload in object storage "
                              "but no S3 is configured; set JOURNAL_S3_URL")
        if cache is not None and event.blob.sha256 in cache:
            return cache[event.blob.sha256]
        data = self.blobs.get(event.tenant, event.blob)
        if cache is not None:
            cache[event.blob.sha256] = data
        return data

    # -- verification ------------------------------------------------------------------------------

    def verify(self, tenant: str, thread: str | None = None) -> list[ThreadVerdict]:
        """Recompute the hash chain of one thread, or of every thread of the tenant, from PostgreSQL.

        Each chain is anchored to ``threads.last_hash``/``last_seq`` (the projector's record of
        the head), and each event's JSONB copy is compared with its hashed body.
        """
        validate_id(tenant, "tenant")
        pg = self._pg()
        with pg.scope(tenant):
            names = [validate_id(thread, "thread")] if thread is not None else pg.threads(tenant)
            out: list[ThreadVerdict] = []
            for name in names:
                head = pg.thread_head(tenant, name)
                try:
                    rows = self._stored(tenant, name, None)
                except ArchiveCorrupt as e:
                    # The segment's digest caught it before the chain could: no seq to name, but a verdict.
                    out.append(ThreadVerdict(False, None, CHANGED, 0, GENESIS, str(e), tenant=tenant, thread=name))
                    continue
                if head is None and not rows:
                    raise NotFound(f"thread {tenant}/{name} has no events (or this reader may not see them)")
                out.append(verify_rows(tenant, name, rows, head, self.key))
        return out

    def _stored(self, tenant: str, thread: str, upto: int | None) -> list[StoredEvent | BadRow]:
        """The thread's chain rows from the archive (seqs it holds), then PostgreSQL's (the rest)."""
        if self.archive is None:
            self._archive_head(tenant, thread, needed=True)
        archived: list[StoredEvent | BadRow] = list(self.archive.stored_events(tenant, thread, upto)
                                                    if self.archive else [])
        below = archived[-1].event.seq if archived and isinstance(archived[-1], StoredEvent) else 0
        return archived + [r for r in self._pg().stored_events(tenant, thread, upto) if _seq(r) > below]

    def stored_chain(self, tenant: str, thread: str) -> tuple[list[StoredEvent], ThreadHead]:
        """The thread's verified-chain rows (seq 1..``threads.last_seq``) as stored, for a bundle."""
        pg = self._pg()
        with pg.scope(tenant):
            head = pg.thread_head(tenant, thread)
            if head is None or head.last_seq == 0:
                raise NotFound(f"thread {tenant}/{thread} has no projected events (or this reader may not see them)")
            rows = self._stored(tenant, thread, head.last_seq)
        bad = next((r for r in rows if isinstance(r, BadRow)), None)
        if bad is not None:
            raise JournalError(f"seq {bad.seq} of {tenant}/{thread} cannot be decoded ({bad.reason}); "
                               "run `agent-journal verify` before exporting")
        return [r for r in rows if isinstance(r, StoredEvent)], head


def verify_rows(tenant: str, thread: str, rows: Sequence[StoredEvent | BadRow], head: ThreadHead | None,
                key: bytes | None) -> ThreadVerdict:
    """Verify one thread's stored rows against its recorded head (rows not yet chained are left out)."""
    last = head.last_seq if head else None
    judged: list[StoredEvent | BadRow] = []
    pending = 0
    for r in rows:
        if last is not None and _seq(r) > last and not _hashed(r):
            pending += 1  # stored ahead of a seq still in flight: the projector has not chained it yet
        else:
            judged.append(r)
    bad = next((r for r in judged if isinstance(r, BadRow)), None)
    if bad is not None:
        before = [r for r in judged if isinstance(r, StoredEvent) and r.event.seq < bad.seq]
        res = verify_chain(before, key)
        if res.ok and all(r.event.seq == i for i, r in enumerate(before, 1)):
            res = VerifyResult(False, bad.seq, CHANGED, res.checked, res.head_hash,
                               f"seq {bad.seq}: the stored body cannot be decoded ({bad.reason})")
        elif res.ok:
            res = verify_chain(before, key, expected_last_seq=bad.seq - 1)
    else:
        good = [r for r in judged if isinstance(r, StoredEvent)]
        res = verify_chain(good, key, expected_head=head.last_hash if head and head.last_seq else None,
                           expected_last_seq=last)
    return ThreadVerdict(res.ok, res.first_bad_seq, res.reason, res.checked, res.head_hash, res.detail,
                         tenant=tenant, thread=thread, unverified=pending)


def _seq(r: StoredEvent | BadRow) -> int:
    return r.seq if isinstance(r, BadRow) else r.event.seq


def _hashed(r: StoredEvent | BadRow) -> bool:
    return r.hashed if isinstance(r, BadRow) else bool(r.hash)


# -- module-level convenience ---------------------------------------------------------------------


def _default_settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else resolve(Settings.from_env())


def replay(tenant: str, thread: str, at_seq: int | None = None, at_time: datetime | None = None, *,
           settings: Settings | None = None) -> ThreadState:
    """One replay with a short-lived :class:`Replayer` (configuration from the environment by default)."""
    with Replayer.from_settings(_default_settings(settings)) as r:
        return r.replay(tenant, thread, at_seq=at_seq, at_time=at_time)


def verify(tenant: str, thread: str | None = None, *, settings: Settings | None = None) -> list[ThreadVerdict]:
    """Verify the chains of ``tenant`` (one thread, or all) with a short-lived :class:`Replayer`."""
    with Replayer.from_settings(_default_settings(settings), use_redis=False) as r:
        return r.verify(tenant, thread)
