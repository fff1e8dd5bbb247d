"""The asyncio append client: the same protocol and checks as :class:`journal.JournalClient`.

Blob uploads (boto3 is synchronous) run in a worker thread so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis
import redis.asyncio
import structlog

from journal import append as protocol
from journal import codec, keys
from journal.blobs import BlobStore
from journal.embedded import resolve
from journal.errors import ConfigError, JournalError
from journal.events import Draft, Event
from journal.redis_store import connect_async, script_source, translate, warn_if_volatile
from journal.settings import Settings

log = structlog.get_logger("journal.aio")
READ_PAGE = 1000


class AsyncJournalClient:
    """Asyncio twin of ``JournalClient``."""

    def __init__(self, redis_client: redis.asyncio.Redis, *, settings: Settings | None = None,
                 blobs: BlobStore | None = None) -> None:
        self.redis = redis_client
        self.settings = settings or Settings()
        self.blobs = blobs
        self._append = redis_client.register_script(script_source("append"))

    @classmethod
    async def from_env(cls, **overrides: Any) -> AsyncJournalClient:
        settings = await asyncio.to_thread(lambda: resolve(Settings.from_env(**overrides)))
        return await cls.from_settings(settings)

    @classmethod
    async def from_settings(cls, settings: Settings) -> AsyncJournalClient:
        if not settings.redis_url:
            raise ConfigError("no Redis URL: set JOURNAL_REDIS_URL or run `agent-journal up`")
        blobs = BlobStore.from_settings(settings) if settings.s3_url else None
        self = cls(connect_async(settings.redis_url), settings=settings, blobs=blobs)
        await self.check_server()
        return self

    async def check_server(self) -> None:
        try:
            info = await self.redis.info("persistence")
        except redis.exceptions.NoPermissionError:
            return  # see JournalClient.check_server
        except redis.RedisError as e:
            raise translate(e, "INFO persistence") from e
        warn_if_volatile(info, self.settings.redis_url or "redis")
        if self.blobs is not None:
            try:
                await asyncio.to_thread(self.blobs.ensure_bucket)
            except JournalError as e:  # small appends need only Redis; big ones will say what is wrong
                log.warning("object_storage_unavailable", error=str(e))

    async def close(self) -> None:
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncJournalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def append(self, tenant: str, thread: str, type: str, payload: Any = None, *, node: str | None = None,
                     idempotency_key: str | None = None, expected_seq: int | None = None,
                     actor: Mapping[str, Any] | None = None, durability: str | None = None) -> Event:
        """See ``JournalClient.append``."""
        draft = Draft(thread=thread, type=type, payload=payload, node=node, idempotency_key=idempotency_key,
                      expected_seq=expected_seq, actor=actor or {})
        return (await self.append_many(tenant, [draft], durability=durability))[0]

    async def append_many(self, tenant: str, events: Iterable[Draft | Mapping[str, Any]], *,
                          durability: str | None = None) -> list[Event]:
        """See ``JournalClient.append_many``."""
        level = protocol.durability_level(durability, self.settings)
        p = protocol.prepare(self.settings, tenant, events)
        if p.uploads:
            if self.blobs is None:
                raise ConfigError("this payload is over the blob threshold but no object storage is configured; "
                                  "set JOURNAL_S3_URL (or run `agent-journal up`)")
            blobs = self.blobs
            await asyncio.gather(*(asyncio.to_thread(blobs.put, tenant, data) for _, data in p.uploads))
        try:
            reply = await self._append(keys=p.keys, args=p.args)
        except redis.RedisError as e:
            raise translate(e, f"append to tenant {tenant}") from e
        outcome = protocol.parse_reply(p, reply)
        if outcome.created_stream:
            # Discovery falls back to the projector's scan when this is refused (see JournalClient._register).
            with contextlib.suppress(redis.RedisError):
                await self.redis.sadd(keys.TENANT_REGISTRY, tenant)
        await self._await(level, tenant, outcome.events)
        return outcome.events

    async def _await(self, level: str, tenant: str, events: list[Event]) -> None:
        if level == "memory":
            return
        timeout = self.settings.durability_timeout
        if level == "fsync":
            try:
                local, _ = await self.redis.execute_command("WAITAOF", 1, 0, int(timeout * 1000))
            except redis.RedisError as e:
                raise translate(e, "WAITAOF (durability='fsync')") from e
            protocol.fsync_result(local, timeout)
            return
        want = protocol.projected_targets(events)
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                committed = await self.redis.hmget(keys.projected(tenant), list(want))
            except redis.RedisError as e:
                raise translate(e, "waiting for projection") from e
            if protocol.all_projected(want, committed):
                return
            if time.monotonic() > deadline:
                raise protocol.not_projected(timeout)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def head(self, tenant: str, thread: str) -> int:
        keys.validate_id(thread, "thread")
        try:
            return int(await self.redis.hget(keys.heads(tenant), thread) or 0)
        except redis.RedisError as e:
            raise translate(e, "HGET head") from e

    async def read(self, tenant: str, thread: str, after_seq: int = 0) -> list[Event]:
        """See ``JournalClient.read``."""
        keys.validate_id(thread, "thread")
        stream, start, out = keys.stream(tenant), "-", []
        while True:
            try:
                page = await self.redis.xrange(stream, min=start, max="+", count=READ_PAGE)
            except redis.RedisError as e:
                raise translate(e, "XRANGE") from e
            for entry_id, fields in page:
                event = codec.decode_entry(tenant, fields, entry_id.decode())
                if event.thread == thread and event.seq > after_seq:
                    out.append(event)
            if len(page) < READ_PAGE:
                break
            start = "(" + page[-1][0].decode()
        out.sort(key=lambda e: e.seq)
        return [await self.resolve(e) for e in out]

    async def resolve(self, event: Event) -> Event:
        if event.blob is None:
            return event
        if self.blobs is None:
            raise JournalError("this event's payload is in object storage but no S3 is configured; set JOURNAL_S3_URL")
        data = await asyncio.to_thread(self.blobs.get, event.tenant, event.blob)
        return protocol.resolve_blob(event, data)
