"""Tenant-scoped Redis credentials: one ACL user per tenant, confined to that tenant's keys.

    creds = create_tenant_user(admin, "acme")
    client = JournalClient(connect_client(creds.redis_url(settings.redis_url)), settings=settings)  # redis_store

The user ``journal-<tenant>`` may run only what the append client needs (the Lua append,
stream reads, head lookups, durability waits, the connection handshake) and only on keys
matching ``agent:v1:{<tenant>}:*``. Redis checks the commands a Lua script runs against
the same user, so the script's XADD/HSET/SET/GET/EXISTS/HGET/TIME are allowed as commands
but still only on the tenant's keys; a script naming another tenant's key, declared in
KEYS or built inside Lua, is refused by the server.

Two things ACLs cannot do, which operators must handle:

- While the ``default`` user is enabled without a password (the Redis/Valkey default), any
  connection can ``AUTH default <anything>`` and leave its tenant. ``create_tenant_user``
  warns (``TenantIsolationWarning``) while that is so; ``protect_default_user`` fixes it.
- EVAL/EVALSHA and SCRIPT LOAD let a tenant run any Lua on its own keys, including a
  script that loops: the server is busy for everyone until an operator runs SCRIPT KILL.
"""

from __future__ import annotations

import re
import secrets
import warnings
from dataclasses import dataclass
from itertools import chain
from typing import Any
from urllib.parse import urlsplit

import redis

from journal import keys, logs
from journal.errors import AccessDenied, ConfigError, JournalError
from journal.redis_store import CLUSTER_SCHEMES, address_client, is_cluster, live_nodes
from journal.redis_store import translate as _translate
from journal.settings import with_credentials

log = logs.get_logger("journal.acl")

USER_PREFIX = "journal-"

#: Commands every tenant user gets: the append script (redis-py's Script runs EVALSHA and,
#: on NOSCRIPT, SCRIPT LOAD), the reads of JournalClient, and the connection handshake.
BASE_COMMANDS = (
    "evalsha", "eval", "script|load",
    "xrange", "xrevrange", "xread", "xlen", "hget", "hmget",
    "ping", "hello",
    # durability='replicated' (WAIT names no key); on a cluster the client maps slots to nodes with
    # CLUSTER SLOTS/SHARDS and reads the key positions of commands with COMMAND: topology, no data.
    "wait", "cluster|slots", "cluster|shards", "command",
)
#: Commands journal/lua/append.lua calls inside the script, checked by the server against the same user.
SCRIPT_COMMANDS = ("xadd", "hset", "set", "get", "exists", "time")
#: Granted only where the server knows them: WAITAOF (durability='fsync') needs Redis >= 7.2 / Valkey;
#: CLIENT SETINFO (sent by redis-py on connect, its refusal ignored) appeared in Redis 7.2.
OPTIONAL_COMMANDS = ("waitaof", "client|setinfo")

#: The one key outside the tenant's hash tag a tenant user may touch, and only with SADD: the
#: registry through which projectors discover a new tenant (JournalClient adds its tenant there).
#: A selector (Redis >= 7.0, Valkey) keeps it apart from the root permissions: SADD is not
#: allowed on the tenant's own keys, nor any other command on the registry (no SMEMBERS: the
#: names of other tenants stay hidden).
REGISTRY_SELECTOR = f"(~{keys.TENANT_REGISTRY} +sadd)"

# How an ACL refusal inside a Lua script reads: Valkey 8 / Redis >= 7.2, then Redis 7.0.
_SCRIPT_ACL_FAILURE = re.compile(r"ACL failure in script|The user executing the script can't")


class TenantIsolationWarning(UserWarning):
    """The server lets any connection step out of its tenant user (an open ``default`` user)."""


@dataclass(frozen=True, slots=True)
class TenantCredentials:
    """The Redis user and password that confine a client to one tenant's keys."""

    tenant: str
    username: str
    password: str

    def redis_url(self, base_url: str) -> str:
        """``base_url`` (host, port, db, options kept) with these credentials in place of any given."""
        scheme = urlsplit(base_url).scheme
        if scheme not in ("redis", "rediss", "unix", *CLUSTER_SCHEMES):
            raise ConfigError(f"not a Redis URL: {scheme!r}; expected redis://, rediss://, unix:// or "
                              "redis+cluster://")
        return with_credentials(base_url, self.username, self.password)

    def __repr__(self) -> str:  # never print the password into logs or test reports
        return f"TenantCredentials(tenant={self.tenant!r}, username={self.username!r}, password='***')"


def username(tenant: str) -> str:
    """The ACL user name of a tenant (``journal-<tenant>``)."""
    return USER_PREFIX + keys.validate_id(tenant, "tenant")


def key_pattern(tenant: str) -> str:
    """The one key pattern a tenant user may touch: ``agent:v1:{<tenant>}:*``."""
    return f"{keys.PREFIX}:{{{keys.validate_id(tenant, 'tenant')}}}:*"


def translate(e: Exception, what: str) -> JournalError:
    """Like ``journal.redis_store.translate``, and an ACL refusal inside a Lua script is ``AccessDenied`` too."""
    if isinstance(e, redis.exceptions.ResponseError) and _SCRIPT_ACL_FAILURE.search(str(e)):
        return AccessDenied(f"Redis refused {what}: {e}. A script may touch only this tenant's keys with "
                            "this tenant's commands; use the tenant's own credentials.")
    return _translate(e, what)


def acl_rules(tenant: str, password: str, commands: tuple[str, ...]) -> list[str]:
    """The ACL SETUSER arguments that define a tenant user (without the user name)."""
    if not password or any(c.isspace() for c in password) or ">" in password[:1]:
        raise ConfigError("a tenant password must be non-empty and hold no whitespace")
    return ["reset", "on", f">{password}", "resetkeys", f"~{key_pattern(tenant)}", "resetchannels", "-@all",
            *(f"+{c}" for c in commands), REGISTRY_SELECTOR]


def create_tenant_user(admin: redis.Redis, tenant: str, password: str | None = None) -> TenantCredentials:
    """Create (or redefine) the tenant's ACL user and return its credentials.

    Redefining an existing user resets its passwords: only ``password`` works afterwards.
    """
    user = username(tenant)
    password = password if password is not None else secrets.token_urlsafe(32)
    try:
        _define(admin, user, acl_rules(tenant, password, BASE_COMMANDS + SCRIPT_COMMANDS))
    except redis.RedisError as e:
        raise translate(e, f"ACL SETUSER {user}") from e
    _persist(admin)
    if open_users(admin):
        message = (f"users {open_users(admin)} are enabled without a password: any connection, including "
                   f"{user}'s, can AUTH as them and leave its tenant. Set a password on them "
                   "(journal.acl.protect_default_user) or disable them.")
        log.warning("tenant_isolation_open", tenant=tenant, users=open_users(admin))
        warnings.warn(message, TenantIsolationWarning, stacklevel=2)
    log.info("tenant_user_created", tenant=tenant, user=user)
    return TenantCredentials(tenant, user, password)


def rotate_tenant_user(admin: redis.Redis, tenant: str, *, kill_connections: bool = False) -> TenantCredentials:
    """Give the tenant user a new random password; the old one no longer authenticates.

    Connections already authenticated stay open unless ``kill_connections``.
    """
    user = username(tenant)
    if not _exists(admin, user):
        raise AccessDenied(f"no Redis user {user}; create it first (`agent-journal tenant create {tenant}`)")
    password = secrets.token_urlsafe(32)
    try:
        # The whole definition, not only the password: users made before the registry selector existed get it,
        # and a node added to the cluster since the user was made (it has no such user) gets all of it.
        _define(admin, user, acl_rules(tenant, password, BASE_COMMANDS + SCRIPT_COMMANDS))
        if kill_connections:
            _everywhere(admin, "CLIENT", "KILL", "USER", user)
    except redis.RedisError as e:
        raise translate(e, f"rotating {user}") from e
    _persist(admin)
    log.info("tenant_user_rotated", tenant=tenant, user=user)
    return TenantCredentials(tenant, user, password)


def revoke_tenant_user(admin: redis.Redis, tenant: str) -> bool:
    """Delete the tenant user and drop its connections; ``False`` if there was no such user."""
    user = username(tenant)
    if not _exists(admin, user):
        return False
    try:
        # Disable first so no new connection authenticates between the kill and the delete.
        _everywhere(admin, "ACL", "SETUSER", user, "off", "resetpass")
        _everywhere(admin, "CLIENT", "KILL", "USER", user)
        deleted = int(_everywhere(admin, "ACL", "DELUSER", user))
    except redis.RedisError as e:
        raise translate(e, f"revoking {user}") from e
    _persist(admin)
    log.info("tenant_user_revoked", tenant=tenant, user=user)
    return deleted > 0


def open_users(admin: redis.Redis) -> list[str]:
    """Enabled users that need no password: anyone connected can become them with AUTH."""
    try:
        reply = _everywhere(admin, "ACL", "LIST")  # each node of a cluster keeps its own users
    except redis.RedisError as e:
        raise translate(e, "ACL LIST") from e
    found: list[str] = []
    for line in chain.from_iterable(reply.values()) if is_cluster(admin) else reply:
        words = (line.decode() if isinstance(line, bytes) else str(line)).split()
        if len(words) > 1 and "on" in words and "nopass" in words and words[1] not in found:
            found.append(words[1])
    return found


def protect_default_user(admin: redis.Redis, password: str) -> None:
    """Require ``password`` for the ``default`` user, so tenant connections cannot AUTH into it.

    Clients that connect without credentials fail afterwards: give the operator's URL the password.
    """
    if not password or any(c.isspace() for c in password):
        raise ConfigError("the default user's password must be non-empty and hold no whitespace")
    try:
        _everywhere(admin, "ACL", "SETUSER", "default", "resetpass", f">{password}")
    except redis.RedisError as e:
        raise translate(e, "ACL SETUSER default") from e
    _persist(admin)


def tenant_user_exists(admin: redis.Redis, tenant: str) -> bool:
    """Whether the tenant's ACL user exists."""
    return _exists(admin, username(tenant))


def _define(admin: redis.Redis, user: str, rules: list[str]) -> None:
    """(Re)define ``user`` with ``rules`` on every node, then the optional commands the server knows."""
    _everywhere(admin, "ACL", "SETUSER", user, *rules)
    for command in OPTIONAL_COMMANDS:
        _grant_if_known(admin, user, command)


def _grant_if_known(admin: redis.Redis, user: str, command: str) -> bool:
    """Allow ``command`` if this server has it (Redis 7.0 has neither WAITAOF nor CLIENT SETINFO)."""
    try:
        _everywhere(admin, "ACL", "SETUSER", user, f"+{command}")
    except redis.ResponseError as e:
        if "unknown command" in str(e).lower():
            log.debug("acl_command_unknown", user=user, command=command)
            return False
        raise
    return True


def _everywhere(admin: redis.Redis, *args: Any) -> Any:
    """``admin.execute_command(*args)``, on a cluster on every live node, replicas included: each keeps its own
    users (and ACL file), and a replica without the tenant's user would refuse the tenant once promoted.

    Sent to each address of ``CLUSTER NODES`` (the cluster client's ``target_nodes="all"`` reached the
    primaries only). A node added to the cluster later starts without the tenant users: `agent-journal
    tenant rotate` of each tenant defines its user there too (rotate redefines the whole user), or copy
    the ACL file, before it takes slots.
    """
    if not is_cluster(admin):
        return admin.execute_command(*args)
    replies: dict[str, Any] = {}
    for address in live_nodes(admin):
        client = address_client(admin, address)
        try:
            replies[address] = client.execute_command(*args)
        finally:
            client.close()
    return min(int(v) for v in replies.values()) if args[1] == "DELUSER" else replies


def _exists(admin: redis.Redis, user: str) -> bool:
    """Whether the user is defined; on a cluster, on any live node (a node added later lacks it until a rotate)."""
    try:
        reply = _everywhere(admin, "ACL", "GETUSER", user)
    except redis.RedisError as e:
        raise translate(e, f"ACL GETUSER {user}") from e
    return any(v is not None for v in reply.values()) if is_cluster(admin) else reply is not None


def _persist(admin: redis.Redis) -> None:
    """Write users to the ACL file when the server has one; otherwise they live until restart."""
    try:
        _everywhere(admin, "ACL", "SAVE")
    except redis.ResponseError as e:
        log.debug("acl_not_persisted", reason=str(e))
    except redis.RedisError as e:
        raise translate(e, "ACL SAVE") from e
