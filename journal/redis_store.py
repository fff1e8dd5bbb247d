"""The boundary to Redis/Valkey: connections, the Lua scripts, error translation.

redis-py exceptions are turned into ``JournalError``s here and only here.
"""

from __future__ import annotations

import re
import warnings
from importlib import resources
from typing import Any

import redis
import redis.asyncio
import structlog
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from journal.errors import AccessDenied, DurabilityUnsupported, JournalError, StoreUnavailable

log = structlog.get_logger("journal.redis")

#: NOPERM, and an ACL refusal inside a Lua script (Valkey 8 / Redis >= 7.2 wording, then Redis 7.0's).
_ACL_REFUSAL = re.compile(r"NOPERM|ACL failure in script|The user executing the script can't")


class PersistenceWarning(UserWarning):
    """The Redis server keeps nothing on disk: acknowledged events can be lost on restart."""


def script_source(name: str) -> str:
    return resources.files("journal").joinpath("lua", f"{name}.lua").read_text()


def connect(url: str, **kwargs: Any) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=3, health_check_interval=30, **kwargs)


def connect_async(url: str, **kwargs: Any) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(url, socket_connect_timeout=3, health_check_interval=30, **kwargs)


def connect_client(url: str) -> redis.Redis:
    """A connection for the append client: no automatic retries.

    redis-py (>= 6) resends a command after a timeout or a dropped connection; for an append
    whose reply was lost, that writes the event a second time under a new seq. The client's
    operations decide what is safe to retry (a wait reconnects; an append is retried by the
    caller, with its idempotency key).
    """
    return connect(url, retry=Retry(NoBackoff(), 0))


def connect_client_async(url: str) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`connect_client`."""
    return connect_async(url, retry=AsyncRetry(NoBackoff(), 0))


def append_script(client: Any) -> Any:
    """The append script registered on ``client`` (sync or asyncio), called by SHA."""
    return client.register_script(script_source("append"))


def translate(e: Exception, what: str) -> JournalError:
    """A ``JournalError`` saying what failed and what to do, for a redis-py exception."""
    # Before the ACL case: wrong credentials are not a tenant's scope, and AuthenticationError
    # is also a ConnectionError, which would read "unreachable".
    if isinstance(e, redis.exceptions.AuthenticationError) or (
        isinstance(e, redis.exceptions.ResponseError) and re.search(r"WRONGPASS|NOAUTH", str(e))
    ):
        return AccessDenied(f"Redis authentication failed during {what}: {e}. Check the user and password in "
                            "JOURNAL_REDIS_URL; a tenant's are reissued by `agent-journal tenant rotate TENANT`.")
    if isinstance(e, redis.exceptions.NoPermissionError) or (
        isinstance(e, redis.exceptions.ResponseError) and _ACL_REFUSAL.search(str(e))
    ):
        return AccessDenied(f"Redis refused {what}: {e}. These credentials do not cover this tenant or command; "
                            "use the tenant's own credentials (`agent-journal tenant create`).")
    if isinstance(e, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return StoreUnavailable(f"Redis unreachable during {what}: {e}. Check JOURNAL_REDIS_URL and that the "
                                "server runs (`agent-journal status`).")
    if isinstance(e, redis.exceptions.ResponseError) and "appendonly is disabled" in str(e):
        return DurabilityUnsupported(f"{what}: this Redis server has AOF off (appendonly no), so nothing is "
                                     "fsynced; use durability='memory' or enable appendonly yes.")
    if isinstance(e, redis.exceptions.ResponseError) and "unknown command" in str(e).lower():
        return DurabilityUnsupported(f"this Redis server does not support {what} ({e}); durability='fsync' needs "
                                     "WAITAOF (Redis >= 7.2 or Valkey >= 8). Use durability='memory' or upgrade.")
    return StoreUnavailable(f"Redis failed {what}: {e}")


def warn_if_volatile(info: dict[str, Any], url: str) -> bool:
    """Warn loudly when the server has persistence off; return whether it is volatile."""
    if int(info.get("aof_enabled", 0)):
        return False
    message = (f"Redis at {url} has AOF off (appendonly no): events acknowledged with durability 'memory' "
               "are lost if it restarts before the projector commits them, and durability 'fsync' is "
               "unavailable. Enable appendonly yes / appendfsync everysec for production.")
    log.warning("redis_persistence_off", url=url)
    warnings.warn(message, PersistenceWarning, stacklevel=3)
    return True
