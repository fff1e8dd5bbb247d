"""The synchronous append client.

    client = JournalClient.from_env()
    rec = client.append("acme", "run-42", "message", {"role": "user", "content": "hi"})
    client.append("acme", "run-42", "tool_call", {...}, expected_seq=rec.seq)

A client is cheap to share between threads (redis-py pools connections). It holds no
tenant: every call names its tenant, and every key it touches carries that tenant's tag.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any

import redis
import structlog

from journal import append as protocol
from journal import codec, keys, tail
from journal.blobs import BlobStore
from journal.embedded import resolve
from journal.errors import ConfigError, JournalError
from journal.events import Draft, Event
from journal.redis_store import connect, script_source, translate, warn_if_volatile
from journal.settings import Settings

log = structlog.get_logger("journal.client")
READ_PAGE = 1000


class JournalClient:
    """Append to, and read the hot tail of, per-tenant agent journals in Redis."""

    def __init__(self, redis_client: redis.Redis, *, settings: Settings | None = None,
                 blobs: BlobStore | None = None) -> None:
        self.redis = redis_client
        self.settings = settings or Settings()
        self.blobs = blobs
        self._append = redis_client.register_script(script_source("append"))
        self._registered: set[str] = set()

    @classmethod
    def from_env(cls, **overrides: Any) -> JournalClient:
        """A client for the ``JOURNAL_*`` environment, or the embedded stack `agent-journal up` started."""
        return cls.from_settings(resolve(Settings.from_env(**overrides)))

    @classmethod
    def from_settings(cls, settings: Settings) -> JournalClient:
        if not settings.redis_url:
            raise ConfigError("no Redis URL: set JOURNAL_REDIS_URL or run `agent-journal up`")
        client = connect(settings.redis_url)
        blobs = BlobStore.from_settings(settings) if settings.s3_url else None
        self = cls(client, settings=settings, blobs=blobs)
        self.check_server()
        return self

    def check_server(self) -> None:
        """Connect now, and warn loudly if the server keeps nothing on disk."""
        try:
            info = self.redis.info("persistence")
        except redis.exceptions.NoPermissionError:
            return  # A tenant-scoped ACL user may not run INFO; the operator checked at `tenant create`.
        except redis.RedisError as e:
            raise translate(e, "INFO persistence") from e
        warn_if_volatile(info, self.settings.redis_url or "redis")
        if self.blobs is not None:
            try:
                self.blobs.ensure_bucket()
            except JournalError as e:  # small appends need only Redis; big ones will say what is wrong
                log.warning("object_storage_unavailable", error=str(e))

    def close(self) -> None:
        self.redis.close()

    def __enter__(self) -> JournalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------------

    def append(self, tenant: str, thread: str, type: str, payload: Any = None, *, node: str | None = None,
               idempotency_key: str | None = None, expected_seq: int | None = None,
               actor: Mapping[str, Any] | None = None, durability: str | None = None) -> Event:
        """Append one event and return it with its ``seq`` and server time.

        ``expected_seq`` (the head you last saw; 0 for a new thread) raises ``ConflictError``
        if another writer got there first. A retry with the same ``idempotency_key`` returns
        the original record and writes nothing.
        """
        draft = Draft(thread=thread, type=type, payload=payload, node=node, idempotency_key=idempotency_key,
                      expected_seq=expected_seq, actor=actor or {})
        return self.append_many(tenant, [draft], durability=durability)[0]

    def append_many(self, tenant: str, events: Iterable[Draft | Mapping[str, Any]], *,
                    durability: str | None = None) -> list[Event]:
        """Append a batch atomically in one round trip: all events are written or none is.

        Events may belong to several threads of the tenant. Batches over ``MAX_BATCH`` are
        refused; split them.
        """
        level = protocol.durability_level(durability, self.settings)
        p = protocol.prepare(self.settings, tenant, events)
        self._upload(p)
        try:
            reply = self._append(keys=p.keys, args=p.args)
        except redis.RedisError as e:
            raise translate(e, f"append to tenant {tenant}") from e
        outcome = protocol.parse_reply(p, reply)
        if outcome.created_stream:
            self._register(tenant)
        self._await(level, tenant, outcome.events)
        return outcome.events

    def _upload(self, p: protocol.Prepared) -> None:
        if not p.uploads:
            return
        if self.blobs is None:
            raise ConfigError("this payload is over the blob threshold but no object storage is configured; "
                              "set JOURNAL_S3_URL (or run `agent-journal up`)")
        for ref, data in p.uploads:
            self.blobs.put(p.tenant, data)
            log.debug("blob_stored", tenant=p.tenant, sha256=ref.sha256, size=ref.size)

    def _register(self, tenant: str) -> None:
        # The registry lets the projector find new tenants without SCAN. It lives outside the
        # tenant's hash tag, so it cannot be in the append script; a client whose ACL forbids it
        # leaves discovery to the projector's periodic scan.
        try:
            self.redis.sadd(keys.TENANT_REGISTRY, tenant)
        except redis.RedisError as e:
            log.debug("tenant_register_skipped", tenant=tenant, error=str(e))

    def _await(self, level: str, tenant: str, events: list[Event]) -> None:
        if level == "memory":
            return
        timeout = self.settings.durability_timeout
        if level == "fsync":
            try:
                local, _ = self.redis.execute_command("WAITAOF", 1, 0, int(timeout * 1000))
            except redis.RedisError as e:
                raise translate(e, "WAITAOF (durability='fsync')") from e
            protocol.fsync_result(local, timeout)
            return
        want = protocol.projected_targets(events)
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                committed = self.redis.hmget(keys.projected(tenant), list(want))
            except redis.RedisError as e:
                raise translate(e, "waiting for projection") from e
            if protocol.all_projected(want, committed):
                return
            if time.monotonic() > deadline:
                raise protocol.not_projected(timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    # -- reading -----------------------------------------------------------------------------------

    def head(self, tenant: str, thread: str) -> int:
        """The latest seq issued for the thread (0 if none)."""
        return tail.head(self.redis, tenant, thread)

    def read(self, tenant: str, thread: str, after_seq: int = 0, *, resolve_blobs: bool = True) -> list[Event]:
        """Events of the thread still in the hot tail (Redis) with seq > ``after_seq``, in seq order."""
        out = tail.read_tail(self.redis, tenant, thread, after_seq)
        return [self.resolve(e) for e in out] if resolve_blobs else out

    def _scan(self, tenant: str) -> Iterator[Event]:
        stream = keys.stream(tenant)
        start = "-"
        while True:
            try:
                page = self.redis.xrange(stream, min=start, max="+", count=READ_PAGE)
            except redis.RedisError as e:
                raise translate(e, "XRANGE") from e
            for entry_id, fields in page:
                yield codec.decode_entry(tenant, fields, entry_id.decode())
            if len(page) < READ_PAGE:
                return
            start = "(" + page[-1][0].decode()

    def wait(self, tenant: str, thread: str, after_seq: int, types: Iterable[str] | None = ("resume",),
             timeout: float | None = 30.0) -> Event | None:
        """Block until an event of ``types`` (None = any) with seq > ``after_seq`` is appended to the thread.

        How a paused agent learns that the human approved: XREAD BLOCK on the tenant stream,
        no polling, works across processes. Returns the event, or None after ``timeout`` seconds.
        """
        keys.validate_id(thread, "thread")
        wanted = None if types is None else set(types)
        stream = keys.stream(tenant)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            # Fix the position first, then look at what is already there: nothing appended in
            # between can slip past, since XREAD continues exactly from that position.
            last = self.redis.xrevrange(stream, count=1)
            position = last[0][0].decode() if last else "0-0"
            for ev in self._scan(tenant):
                if _matches(ev, thread, after_seq, wanted):
                    return self.resolve(ev)
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                block = 0 if left is None else max(1, int(left * 1000))
                reply = self.redis.xread({stream: position}, block=block, count=100)
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        position = entry_id.decode()
                        ev = codec.decode_entry(tenant, fields, position)
                        if _matches(ev, thread, after_seq, wanted):
                            return self.resolve(ev)
        except redis.RedisError as e:
            raise translate(e, "XREAD BLOCK (wait)") from e

    def resume(self, tenant: str, thread: str) -> Any:
        """The thread's latest state and seq from every tier, to continue with ``expected_seq=seq``.

        Provided by the replayer package (entry point ``agent_journal.resume``), which owns the
        fold and the PostgreSQL/S3 tiers; the journal itself only knows the hot tail.
        """
        for ep in entry_points(group="agent_journal.resume"):
            return ep.load()(self, tenant, thread)
        raise ConfigError("resume needs the replayer package (pip install agent-journal installs it)")

    def resolve(self, event: Event) -> Event:
        """The event with an offloaded payload fetched from object storage (``BlobMissing`` if gone)."""
        if event.blob is None:
            return event
        if self.blobs is None:
            raise JournalError("this event's payload is in object storage but no S3 is configured; set JOURNAL_S3_URL")
        return protocol.resolve_blob(event, self.blobs.get(event.tenant, event.blob))


def _matches(ev: Event, thread: str, after_seq: int, types: set[str] | None) -> bool:
    return ev.thread == thread and ev.seq > after_seq and (types is None or ev.type in types)
