"""The synchronous client: append, read, wait and resume.

    client = JournalClient.from_env()
    rec = client.append("acme", "run-42", "message", {"role": "user", "content": "hi"})
    client.append("acme", "run-42", "tool_call", {...}, expected_seq=rec.seq)

Every operation is written once, in :mod:`journal.ops`; this class only carries out the
requests those operations yield, with blocking calls. A client is cheap to share between
threads (redis-py and psycopg pool their connections). It holds no tenant: every call names
its tenant, and every key it touches carries that tenant's tag.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import redis.commands.core

from journal import logs, ops
from journal.errors import AccessDenied, ConfigError, JournalError
from journal.events import Draft, Event
from journal.local_stack import resolve
from journal.redis_store import (
    REDIRECTS,
    append_script,
    connect_client,
    kept_redirecting,
    node_client,
    refresh_slots,
    run_script,
    script_pipeline,
    script_step,
    translate,
    warn_if_volatile,
)
from journal.reducer import Reducer
from journal.settings import Settings

log = logs.get_logger("journal.client")
T = TypeVar("T")

if TYPE_CHECKING:
    from journal.durable import DurableReader


def drive(op: ops.Op[T], r: redis.Redis, script: redis.commands.core.Script | None = None) -> T:
    """Run an operation of :mod:`journal.ops` to its result with blocking calls on ``r``."""
    reply: Any = None
    error: JournalError | None = None
    while True:
        try:
            request = op.send(reply) if error is None else op.throw(error)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            reply = _carry_out(request, r, script)
        except JournalError as e:
            error = e


def _carry_out(request: ops.Request, r: redis.Redis, script: redis.commands.core.Script | None) -> Any:
    if isinstance(request, ops.Offload):
        return [fn(*args) for fn, args in request.calls]
    if isinstance(request, ops.Sleep):
        time.sleep(request.seconds)
        return None
    try:
        if isinstance(request, ops.Call):
            return getattr(r, request.method)(*request.args, **request.kwargs)
        if isinstance(request, ops.Pipe):
            pipe = r.pipeline(transaction=False)
            for method, args in request.calls:
                getattr(pipe, method)(*args)
            return pipe.execute()
        assert script is not None, "an append needs the client's registered script"
        if not request.then:
            return run_script(r, script, request.keys, request.args), []
        return _script_then_wait(request, r, script)
    except redis.RedisError as e:
        raise translate(e, request.what) from e


def _script_then_wait(request: ops.Script, r: redis.Redis, script: redis.commands.core.Script) -> Any:
    """The script and its WAIT/WAITAOF in one pipeline on the connection of the node holding the tenant's slot."""
    at: tuple[str, int] | None = None
    loaded = False
    for _ in range(REDIRECTS):
        node = node_client(r, request.keys[0], at)
        try:
            replies = script_pipeline(node, request.keys, request.args, script.sha, request.then, at).execute(
                raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError):
            # Past the cluster client, which would have reloaded its slot map itself: a failover may
            # have promoted a replica, and the caller's retry must find it.
            with contextlib.suppress(redis.RedisError):
                refresh_slots(r)
            raise
        step = script_step(replies, request.then, at is not None, loaded)
        at = step.ask
        if step.result is not None:
            return step.result
        if step.load:
            node.script_load(script.script)
            loaded = True
        elif step.refresh:
            refresh_slots(r)
        elif step.pause:
            time.sleep(0.05)
    raise kept_redirecting(request.what)


class JournalClient:
    """Append to, read, wait on and resume per-tenant agent journals."""

    def __init__(self, redis_client: redis.Redis, *, settings: Settings | None = None, blobs: Any = None,
                 durable: DurableReader | None = None, registry: Mapping[str, Reducer] | None = None) -> None:
        self.redis = redis_client
        self.settings = settings or Settings()
        self.env = ops.Env(self.settings, blobs, durable, registry)
        self._append = append_script(redis_client)

    @property
    def blobs(self) -> Any:
        return self.env.blobs

    @classmethod
    def from_env(cls, **overrides: Any) -> JournalClient:
        """A client for the ``JOURNAL_*`` environment, or the embedded stack `agent-journal up` started."""
        return cls.from_settings(resolve(Settings.from_env(**overrides)))

    @classmethod
    def from_settings(cls, settings: Settings) -> JournalClient:
        if not settings.redis_url:
            raise ConfigError("no Redis URL: set JOURNAL_REDIS_URL or run `agent-journal up`")
        env = ops.Env.from_settings(settings)
        self = cls(connect_client(settings.redis_url), settings=settings, blobs=env.blobs, durable=env.durable)
        self.check_server()
        return self

    def check_server(self) -> None:
        """Connect now, and warn loudly if the server keeps nothing on disk."""
        try:
            info = self.redis.info("persistence")
        except redis.exceptions.NoPermissionError:
            info = None  # A tenant-scoped ACL user may not run INFO; the operator checked at `tenant create`.
        except redis.RedisError as e:
            raise translate(e, "INFO persistence") from e
        if info is not None:
            warn_if_volatile(info, self.settings.redis_url or "redis")
        if self.blobs is not None:
            try:
                self.blobs.ensure_bucket()
            except AccessDenied as e:  # a tenant's S3 key may use its prefix only, not look at the bucket
                log.debug("object_storage_bucket_not_visible", error=str(e))
            except JournalError as e:  # small appends need only Redis; big ones will say what is wrong
                log.warning("object_storage_unavailable", error=str(e))

    def close(self) -> None:
        self.redis.close()
        if self.env.durable is not None:
            self.env.durable.close()

    def __enter__(self) -> JournalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, op: ops.Op[T]) -> T:
        return drive(op, self.redis, self._append)

    # -- writing -----------------------------------------------------------------------------------

    def append(self, tenant: str, thread: str, type: str, payload: Any = None, *, node: str | None = None,
               idempotency_key: str | None = None, expected_seq: int | None = None,
               actor: Mapping[str, Any] | None = None, durability: str | None = None) -> Event:
        """Append one event and return it with its ``seq`` and server time.

        ``expected_seq`` (the head you last saw; 0 for a new thread) raises ``ConflictError``
        if another writer got there first. A retry with the same ``idempotency_key`` returns
        the stored event and writes nothing; the same key with other content raises
        ``IdempotencyKeyReused``.
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
        return self._run(ops.append_many(self.env, tenant, events, durability))

    # -- reading -----------------------------------------------------------------------------------

    def head(self, tenant: str, thread: str) -> int:
        """The latest seq issued for the thread (0 if none)."""
        return self._run(ops.head(tenant, thread))

    def read(self, tenant: str, thread: str, after_seq: int = 0, *, resolve_blobs: bool = True) -> list[Event]:
        """The thread's events with seq > ``after_seq``, in seq order, from every tier (Redis, PostgreSQL).

        Gapless or ``HistoryIncomplete`` naming the tier that lacks a seq.
        """
        return self._run(ops.read(self.env, tenant, thread, after_seq, resolve_blobs))

    def wait(self, tenant: str, thread: str, after_seq: int, types: Iterable[str] | None = ("resume",),
             timeout: float | None = 30.0) -> Event | None:
        """Block until an event of ``types`` (None = any) with seq > ``after_seq`` is in the thread.

        How a paused agent learns that the human approved: an event already written (in any
        tier) is returned at once; otherwise XREAD BLOCK on the tenant stream, across processes,
        for as long as ``timeout`` (seconds; None = forever), through Redis restarts. Returns
        the event, or None after ``timeout``.
        """
        return self._run(ops.wait(self.env, tenant, thread, after_seq, types, timeout))

    def resume(self, tenant: str, thread: str) -> ops.Resumed:
        """The thread's latest state and seq from every tier, to continue with ``expected_seq=seq``."""
        return self._run(ops.resume(self.env, tenant, thread))

    def resolve(self, event: Event) -> Event:
        """The event with an offloaded payload fetched from object storage (``BlobMissing`` if gone)."""
        return self._run(ops.resolve(self.env, [event]))[0]
