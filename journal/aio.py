"""The asyncio client: the operations of :class:`journal.JournalClient`, carried out with awaits.

Both clients run the same generators of :mod:`journal.ops`; this module only awaits their
requests. Blocking calls (boto3 for S3, psycopg for PostgreSQL reads) run in worker threads,
concurrently when an operation asks for several, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import redis.asyncio

from journal import logs, ops
from journal.errors import AccessDenied, ConfigError, JournalError
from journal.events import Draft, Event
from journal.local_stack import resolve
from journal.redis_store import (
    REDIRECTS,
    append_script,
    close_node_clients,
    connect_client_async,
    kept_redirecting,
    node_client_async,
    refresh_slots_async,
    script_pipeline,
    script_step,
    translate,
    warn_if_volatile,
)
from journal.reducer import Reducer
from journal.settings import Settings

log = logs.get_logger("journal.aio")
T = TypeVar("T")

if TYPE_CHECKING:
    from journal.durable import DurableReader


async def drive(op: ops.Op[T], r: redis.asyncio.Redis, script: Any = None) -> T:
    """Run an operation of :mod:`journal.ops` to its result, awaiting each request on ``r``."""
    reply: Any = None
    error: JournalError | None = None
    while True:
        try:
            request = op.send(reply) if error is None else op.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            reply = await _carry_out(request, r, script)
        except JournalError as e:
            error = e


async def _carry_out(request: ops.Request, r: redis.asyncio.Redis, script: Any) -> Any:
    if isinstance(request, ops.Offload):
        return list(await asyncio.gather(*(asyncio.to_thread(fn, *args) for fn, args in request.calls)))
    if isinstance(request, ops.Sleep):
        await asyncio.sleep(request.seconds)
        return None
    try:
        if isinstance(request, ops.Call):
            return await getattr(r, request.method)(*request.args, **request.kwargs)
        if isinstance(request, ops.Pipe):
            pipe = r.pipeline(transaction=False)
            for method, args in request.calls:
                getattr(pipe, method)(*args)
            return await pipe.execute()
        if not request.then:
            return await script(keys=request.keys, args=request.args), []
        return await _script_then_wait(request, r, script)
    except redis.RedisError as e:
        raise translate(e, request.what) from e


async def _script_then_wait(request: ops.Script, r: redis.asyncio.Redis, script: Any) -> Any:
    """See ``journal.client._script_then_wait``: the same steps (``script_step``), awaited."""
    at: tuple[str, int] | None = None
    loaded = False
    for _ in range(REDIRECTS):
        node = node_client_async(r, request.keys[0], at)
        try:
            replies = await script_pipeline(node, request.keys, request.args, script.sha, request.then, at).execute(
                raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError):
            with contextlib.suppress(redis.RedisError):
                await refresh_slots_async(r)
            raise
        step = script_step(replies, request.then, at is not None, loaded)
        at = step.ask
        if step.result is not None:
            return step.result
        if step.load:
            await node.script_load(script.script)
            loaded = True
        elif step.refresh:
            await refresh_slots_async(r)
        elif step.pause:
            await asyncio.sleep(0.05)
    raise kept_redirecting(request.what)


class AsyncJournalClient:
    """Asyncio twin of ``JournalClient``: the same operations with the same semantics."""

    def __init__(self, redis_client: redis.asyncio.Redis, *, settings: Settings | None = None, blobs: Any = None,
                 durable: DurableReader | None = None, registry: Mapping[str, Reducer] | None = None) -> None:
        self.redis = redis_client
        self.settings = settings or Settings()
        self.env = ops.Env(self.settings, blobs, durable, registry)
        self._append = append_script(redis_client)

    @property
    def blobs(self) -> Any:
        return self.env.blobs

    @classmethod
    async def from_env(cls, **overrides: Any) -> AsyncJournalClient:
        settings = await asyncio.to_thread(lambda: resolve(Settings.from_env(**overrides)))
        return await cls.from_settings(settings)

    @classmethod
    async def from_settings(cls, settings: Settings) -> AsyncJournalClient:
        if not settings.redis_url:
            raise ConfigError("no Redis URL: set JOURNAL_REDIS_URL or run `agent-journal up`")
        env = ops.Env.from_settings(settings)
        self = cls(connect_client_async(settings.redis_url), settings=settings, blobs=env.blobs, durable=env.durable)
        await self.check_server()
        return self

    async def check_server(self) -> None:
        """See ``JournalClient.check_server``."""
        try:
            info = await self.redis.info("persistence")
        except redis.exceptions.NoPermissionError:
            info = None  # see JournalClient.check_server
        except redis.RedisError as e:
            raise translate(e, "INFO persistence") from e
        if info is not None:
            warn_if_volatile(info, self.settings.redis_url or "redis")
        if self.blobs is not None:
            try:
                await asyncio.to_thread(self.blobs.ensure_bucket)
            except AccessDenied as e:  # a tenant's S3 key may use its prefix only, not look at the bucket
                log.debug("object_storage_bucket_not_visible", error=str(e))
            except JournalError as e:  # small appends need only Redis; big ones will say what is wrong
                log.warning("object_storage_unavailable", error=str(e))

    async def close(self) -> None:
        await close_node_clients(self.redis)
        await self.redis.aclose()
        if self.env.durable is not None:
            await asyncio.to_thread(self.env.durable.close)

    async def __aenter__(self) -> AsyncJournalClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, op: ops.Op[T]) -> T:
        return await drive(op, self.redis, self._append)

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
        return await self._run(ops.append_many(self.env, tenant, events, durability))

    async def head(self, tenant: str, thread: str) -> int:
        """See ``JournalClient.head``."""
        return await self._run(ops.head(tenant, thread))

    async def read(self, tenant: str, thread: str, after_seq: int = 0, *, resolve_blobs: bool = True) -> list[Event]:
        """See ``JournalClient.read``."""
        return await self._run(ops.read(self.env, tenant, thread, after_seq, resolve_blobs))

    async def wait(self, tenant: str, thread: str, after_seq: int, types: Iterable[str] | None = ("resume",),
                   timeout: float | None = 30.0) -> Event | None:
        """See ``JournalClient.wait``."""
        return await self._run(ops.wait(self.env, tenant, thread, after_seq, types, timeout))

    async def resume(self, tenant: str, thread: str) -> ops.Resumed:
        """See ``JournalClient.resume``."""
        return await self._run(ops.resume(self.env, tenant, thread))

    async def resolve(self, event: Event) -> Event:
        """See ``JournalClient.resolve``."""
        return (await self._run(ops.resolve(self.env, [event])))[0]
