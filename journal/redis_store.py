"""The boundary to Redis/Valkey: connections, the Lua scripts, error translation.

redis-py exceptions are turned into ``JournalError``s here and only here.
"""

from __future__ import annotations

import re
import warnings
import weakref
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import redis.commands.core
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from journal import logs
from journal.errors import AccessDenied, DurabilityUnsupported, JournalError, StoreUnavailable

log = logs.get_logger("journal.redis")

#: What a server says to wrong credentials.
_AUTH_FAILURE = re.compile(r"WRONGPASS|NOAUTH|invalid username-password|Authentication required")
#: NOPERM, and an ACL refusal inside a Lua script (Valkey 8 / Redis >= 7.2 wording, then Redis 7.0's).
_ACL_REFUSAL = re.compile(r"NOPERM|ACL failure in script|The user executing the script can't")


class PersistenceWarning(UserWarning):
    """The Redis server keeps nothing on disk: acknowledged events can be lost on restart."""


def script_source(name: str) -> str:
    return resources.files("journal").joinpath("lua", f"{name}.lua").read_text()


#: URL schemes of a Valkey/Redis Cluster: the node named is only the entry point (``+cluster`` is ours,
#: redis-py has no scheme for it, so it is stripped before redis-py parses the URL).
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str | None) -> bool:
    """Whether ``url`` names a cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return url is not None and url.partition("://")[0] in CLUSTER_SCHEMES


def _plain_url(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{CLUSTER_SCHEMES[scheme]}://{rest}"


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client for ``url``: one server, or (``redis+cluster://``) a cluster client following its slots.

    ``RedisCluster`` answers the commands the journal sends (keys of one tenant share a slot) the
    way ``Redis`` does, so callers hold either under the one type.
    """
    if is_cluster_url(url):
        try:
            # RedisCluster asks its entry node for the slot map as it is made.
            return cast(redis.Redis, redis.cluster.RedisCluster.from_url(_plain_url(url), socket_connect_timeout=3,
                                                                         **_cluster_kwargs(kwargs)))
        except redis.exceptions.RedisClusterException as e:
            if _AUTH_FAILURE.search(str(e)):
                raise AccessDenied(f"Redis authentication failed connecting to the cluster: {e}. Check the user and "
                                   "password in JOURNAL_REDIS_URL; a tenant's are reissued by `agent-journal tenant "
                                   "rotate TENANT`.") from e
            raise StoreUnavailable(f"no Valkey Cluster answers at {url.rpartition('@')[2]}: {e}. The URL's node is "
                                   "only the entry point: name any node alive (`agent-journal status`).") from e
        except redis.RedisError as e:
            raise translate(e, "connecting to the cluster") from e
    return redis.Redis.from_url(url, socket_connect_timeout=3, health_check_interval=30, **kwargs)


def connect_async(url: str, **kwargs: Any) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`connect`."""
    if is_cluster_url(url):
        return cast(redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster.from_url(
            _plain_url(url), socket_connect_timeout=3, **_cluster_kwargs(kwargs)))
    return redis.asyncio.Redis.from_url(url, socket_connect_timeout=3, health_check_interval=30, **kwargs)


def _cluster_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # A cluster may not select a database; the journal uses db 0 everywhere anyway.
    return {k: v for k, v in kwargs.items() if k != "db"}


def is_cluster(client: Any) -> bool:
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def connect_client(url: str) -> redis.Redis:
    """A connection for the append client: no automatic retries.

    redis-py (>= 6) resends a command after a timeout or a dropped connection; for an append
    whose reply was lost, that writes the event a second time under a new seq. The client's
    operations decide what is safe to retry (a wait reconnects; an append is retried by the
    caller, with its idempotency key).

    On a cluster the same holds: no retry after a connection error or timeout (the cluster
    client refreshes its slot map and raises). ``MOVED``, ``ASK`` and ``TRYAGAIN`` are still
    followed, since a node answering them did not run the command.
    """
    return connect(url, retry=Retry(NoBackoff(), 0))


def connect_client_async(url: str) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`connect_client`."""
    return connect_async(url, retry=AsyncRetry(NoBackoff(), 0))


#: Per asyncio cluster client: plain clients to single nodes, for a script and its WAIT on one connection.
_NODE_CLIENTS: weakref.WeakKeyDictionary[Any, dict[str, redis.asyncio.Redis]] = weakref.WeakKeyDictionary()


#: Redirections (MOVED, ASK, TRYAGAIN) an append with a WAIT follows before giving up; redis-py's own limit.
REDIRECTS = 16

#: A cluster node's answer instead of running a command: (kind, host, port). It ran nothing, so resending is safe.
Redirect = tuple[str, str, int]


def redirect_of(reply: Any) -> Redirect | None:
    """``MOVED``/``ASK``/``TRYAGAIN`` (a cluster node did not run the command), from a pipeline's reply."""
    if isinstance(reply, redis.exceptions.AskError | redis.exceptions.MovedError):
        return ("ASK" if isinstance(reply, redis.exceptions.AskError) else "MOVED", reply.host, int(reply.port))
    if isinstance(reply, redis.exceptions.TryAgainError):
        return ("TRYAGAIN", "", 0)
    if isinstance(reply, redis.exceptions.ResponseError):
        # A plain (non-cluster) connection does not parse these into their own classes.
        kind, _, rest = str(reply).partition(" ")
        if kind in ("MOVED", "ASK"):
            host, _, port = rest.partition(" ")[2].rpartition(":")
            return (kind, host, int(port))
        if kind == "TRYAGAIN":
            return ("TRYAGAIN", "", 0)
    return None


def run_script(r: redis.Redis, script: redis.commands.core.Script, keys: list[str], args: list[Any]) -> Any:
    """``script(keys=keys, args=args)``, on a one-server client by packing, sending and reading on a pooled connection.

    The append is the client's hot path, and redis-py's command path around it (``Script.__call__``,
    ``evalsha``, ``execute_command`` and its retry wrapper, the response callbacks) costs about as much
    CPU as the call itself: 70-81 µs against 43-49 µs for the same EVALSHA on this machine (measured
    alone, median of 5,000 calls). Under LangGraph's ``async`` durability that CPU is the saver's
    overhead, held against the graph's own thread. The semantics are redis-py's with the client's
    ``Retry(NoBackoff(), 0)``: a dropped connection is closed and raised, never resent; a server
    without the script (``NOSCRIPT``) goes through ``script``, which loads it.
    """
    if type(r) is not redis.Redis or r.connection is not None:  # a cluster routes by slot; one connection is its own
        return script(keys=keys, args=args)
    pool = r.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return conn.read_response()
    except redis.exceptions.NoScriptError:
        pass
    except redis.exceptions.ResponseError:
        raise  # the script's own error reply: the connection is fine
    except BaseException:
        conn.disconnect()  # mid-command: what the connection holds next is unknown
        raise
    finally:
        pool.release(conn)
    return script(keys=keys, args=args)


def script_pipeline(node: Any, keys: list[str], args: list[Any], sha: str, then: tuple[tuple[Any, ...], ...],
                    at: tuple[str, int] | None) -> Any:
    """The append script and the commands that must follow it on its connection (``WAIT``/``WAITAOF``), as one
    pipeline of ``node`` (sync or asyncio), after ``ASKING`` when following an ``ASK`` to node ``at``."""
    pipe = node.pipeline(transaction=False)
    if at:
        pipe.execute_command("ASKING")
    pipe.evalsha(sha, len(keys), *keys, *args)
    for command in then:
        pipe.execute_command(*command)
    return pipe


@dataclass(frozen=True, slots=True)
class ScriptStep:
    """What a script pipeline's replies say to do next; decided here for the sync and asyncio clients alike."""

    #: the node does not have the script: ``SCRIPT LOAD`` it, then send again
    load: bool = False
    #: ``MOVED``: reload the cluster's slot map, then send again
    refresh: bool = False
    #: ``ASK``: send again to this node, after ``ASKING``
    ask: tuple[str, int] | None = None
    #: ``TRYAGAIN`` (keys mid-migration): pause, then send again
    pause: bool = False
    #: the script ran: its reply and the following commands' replies (errors translated)
    result: tuple[Any, list[Any]] | None = None


def script_step(replies: list[Any], then: tuple[tuple[Any, ...], ...], asked: bool, loaded: bool) -> ScriptStep:
    """Read the replies of :func:`script_pipeline` (``asked``: it began with ``ASKING``). Raises the script's error."""
    done, waited = replies[1 if asked else 0], replies[2 if asked else 1:]
    if isinstance(done, redis.exceptions.NoScriptError) and not loaded:
        return ScriptStep(load=True)
    redirect = redirect_of(done)
    if redirect is not None:
        # The node ran nothing: follow it (slot moved, migrating, or keys mid-migration).
        kind, host, port = redirect
        return ScriptStep(refresh=kind == "MOVED", ask=(host, port) if kind == "ASK" else None,
                          pause=kind == "TRYAGAIN")
    if isinstance(done, Exception):
        raise done
    return ScriptStep(result=(done, [translate(w, f"{cmd[0]} (durability)") if isinstance(w, Exception) else w
                                     for w, cmd in zip(waited, then, strict=True)]))


def kept_redirecting(what: str) -> StoreUnavailable:
    return StoreUnavailable(f"{what}: the cluster kept redirecting the append ({REDIRECTS} times); nothing was "
                            "written. Check `agent-journal status` (a resharding or failover in progress?).")


def node_client(r: redis.Redis, key: str, at: tuple[str, int] | None = None) -> redis.Redis:
    """``r`` itself, or on a cluster a client of the primary serving ``key`` (or of node ``at``; no retries).

    ``WAIT``/``WAITAOF`` count the writes of their own connection, so they must follow the append on
    the node and connection that ran it; a cluster client would send them anywhere.
    """
    if not isinstance(r, redis.cluster.RedisCluster):
        return r
    node = r.get_node(host=at[0], port=at[1]) if at else None
    if node is None:
        if at:
            r.nodes_manager.initialize()
            node = r.get_node(host=at[0], port=at[1])
        node = node or r.get_node_from_key(key)
    return r.get_redis_connection(node)


def node_client_async(r: redis.asyncio.Redis, key: str, at: tuple[str, int] | None = None) -> redis.asyncio.Redis:
    """The asyncio twin of :func:`node_client`: a plain client per node, made with the cluster's credentials."""
    if not isinstance(r, redis.asyncio.cluster.RedisCluster):
        return r
    node = r.get_node_from_key(key)
    host, port = at or (node.host, int(node.port))
    name = f"{host}:{port}"
    clients = _NODE_CLIENTS.setdefault(r, {})
    if name not in clients:
        kw = node.connection_kwargs
        clients[name] = redis.asyncio.Redis(
            host=host, port=port, username=kw.get("username"), password=kw.get("password"),
            socket_connect_timeout=kw.get("socket_connect_timeout"), socket_timeout=kw.get("socket_timeout"),
            ssl=kw.get("connection_class") is redis.asyncio.SSLConnection, retry=AsyncRetry(NoBackoff(), 0))
    return clients[name]


async def close_node_clients(r: redis.asyncio.Redis) -> None:
    for client in _NODE_CLIENTS.pop(r, {}).values():
        await client.aclose()


def refresh_slots(r: Any) -> None:
    """After a ``MOVED`` seen outside the cluster client (a pinned pipeline): reload its slot map."""
    if isinstance(r, redis.cluster.RedisCluster):
        r.nodes_manager.initialize()


async def refresh_slots_async(r: Any) -> None:
    if isinstance(r, redis.asyncio.cluster.RedisCluster):
        await r.nodes_manager.initialize()


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


@dataclass(frozen=True, slots=True)
class NodeReport:
    """One node of a cluster as `agent-journal status` shows it."""

    address: str
    role: str
    #: The primary a replica follows (host:port); None for a primary.
    primary: str | None
    slots: int
    memory: str
    #: Replication bytes a replica is behind its primary; None for a primary or when unknown.
    lag: int | None
    #: A replica's link to its primary (up/down), "-" for a primary.
    link: str
    #: "ok", or the flags that say it failed ("fail", "fail?", "unreachable").
    state: str


def address_client(cluster: Any, address: str) -> redis.Redis:
    """A plain client to one node (``host:port``) with the cluster client's credentials: straight to the address,
    since a replica (or a node that joined a moment ago) may not be in the client's slot map."""
    kw = cluster.get_redis_connection(cluster.get_default_node()).connection_pool.connection_kwargs
    host, _, port = address.rpartition(":")
    return redis.Redis(host=host, port=int(port), username=kw.get("username"), password=kw.get("password"),
                       ssl=kw.get("connection_class") is redis.SSLConnection, socket_timeout=3,
                       socket_connect_timeout=3)


def live_nodes(cluster: Any) -> list[str]:
    """The addresses of every node of the cluster, replicas included, but those flagged failed or unreachable."""
    return [address for address, n in sorted(cluster.cluster_nodes().items())
            if not {"fail", "fail?", "noaddr", "handshake"} & set(str(n.get("flags", "")).split(","))]


def cluster_report(url: str) -> list[NodeReport]:
    """Every node of the cluster at ``url``: role, slots, memory, replication lag (one INFO per node)."""
    cluster = cast(redis.cluster.RedisCluster, connect(url))
    try:
        nodes = cluster.cluster_nodes()
        facts: dict[str, tuple[dict[str, Any], dict[str, Any]] | None] = {}
        for address in nodes:
            client = address_client(cluster, address)
            try:
                facts[address] = (client.info("memory"), client.info("replication"))
            except redis.RedisError:
                facts[address] = None
            finally:
                client.close()
    except redis.RedisError as e:
        raise translate(e, "CLUSTER NODES") from e
    finally:
        cluster.close()
    by_id = {v["node_id"]: k for k, v in nodes.items()}
    out = []
    for address, n in sorted(nodes.items()):
        flags = str(n.get("flags", ""))
        primary = by_id.get(n.get("master_id", "-"))
        got = facts.get(address)
        memory, lag, link = "?", None, "-"
        if got is not None:
            mem, repl = got
            memory = str(mem.get("used_memory_human", "?"))
            if primary is not None:
                link = str(repl.get("master_link_status", "?"))
                ahead = facts.get(primary)
                if ahead is not None:
                    lag = max(0, int(ahead[1].get("master_repl_offset", 0)) - int(repl.get("slave_repl_offset", 0)))
        ranges = cast(list[list[str]], n.get("slots") or [])  # [[first, last], …]; importing slots are not ranges
        slots = sum(int(s[1]) - int(s[0]) + 1 for s in ranges if isinstance(s, list) and len(s) == 2)
        bad = [f for f in ("fail", "fail?", "noaddr", "handshake") if f in flags.split(",")]
        out.append(NodeReport(address, "primary" if "master" in flags else "replica", primary, slots, memory, lag,
                              link, ",".join(bad) or ("ok" if n.get("connected") else "unreachable")))
    return out
