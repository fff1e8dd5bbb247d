"""Tenant-scoped Redis credentials: the server itself keeps a tenant's connection inside its tenant.

Runs against the session's Redis (the embedded Valkey, or JOURNAL_REDIS_URL, e.g. Redis 7.0).
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from journal import acl, keys
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.errors import AccessDenied, DurabilityUnsupported, JournalError, StoreUnavailable
from journal.events import Draft
from journal.redis_store import script_source
from journal.settings import Settings

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}


def run(fn: Callable[[], Any], what: str = "raw command") -> Any:
    """Call ``fn`` with redis errors translated the way the journal does."""
    try:
        return fn()
    except redis.RedisError as e:
        raise acl.translate(e, what) from e


@pytest.fixture
def admin(settings: Settings) -> Iterator[redis.Redis]:
    """The operator's connection (the URL the tests were given)."""
    r = redis.Redis.from_url(settings.redis_url or "")
    yield r
    r.close()


def _other(tenant: str) -> str:
    # Shares A's name as a prefix, so a sloppy key pattern (no closing brace) would leak into it.
    return tenant + "x"


@pytest.fixture
def creds(admin: redis.Redis, tenant: str) -> Iterator[acl.TenantCredentials]:
    """Credentials for tenant A, revoked afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", acl.TenantIsolationWarning)
        c = acl.create_tenant_user(admin, tenant)
    yield c
    acl.revoke_tenant_user(admin, tenant)


@pytest.fixture
def other(client: JournalClient, tenant: str) -> str:
    """Tenant B (name = A's + 'x'), with one event written by the operator."""
    b = _other(tenant)
    client.append(b, "th", "message", {**MSG, "secret": "b"})
    return b


@pytest.fixture
def a_conn(creds: acl.TenantCredentials, settings: Settings) -> Iterator[redis.Redis]:
    """A raw connection authenticated as tenant A's user."""
    r = redis.Redis.from_url(creds.redis_url(settings.redis_url or ""))
    yield r
    r.close()


@pytest.fixture
def a_client(a_conn: redis.Redis, settings: Settings) -> JournalClient:
    """A JournalClient on tenant A's credentials."""
    return JournalClient(a_conn, settings=settings)


def _server_has(admin: redis.Redis, command: str) -> bool:
    try:
        admin.execute_command("COMMAND", "INFO", command)
    except (TypeError, redis.ResponseError):  # redis-py's COMMAND parser chokes on the nil of an unknown command
        return False
    return True


def test_rules_are_exactly_the_documented_set(admin: redis.Redis, creds: acl.TenantCredentials,
                                              tenant: str) -> None:
    """The user gets one key pattern, no channels, -@all and only the client's commands (+ optional ones)."""
    user = admin.execute_command("ACL", "GETUSER", creds.username)
    user = {(k.decode() if isinstance(k, bytes) else k): v for k, v in user.items()}
    assert creds.username == f"journal-{tenant}"
    granted = set(user["commands"].decode().split())
    optional = {f"+{c}" for c in acl.OPTIONAL_COMMANDS if _server_has(admin, c)}
    assert granted == {"-@all", *(f"+{c}" for c in acl.BASE_COMMANDS + acl.SCRIPT_COMMANDS), *optional}
    assert user["keys"] in (f"~agent:v1:{{{tenant}}}:*".encode(), [f"~agent:v1:{{{tenant}}}:*".encode()])
    assert user["channels"] in (b"", [])
    assert "+info" not in granted and b"on" in user["flags"]
    assert len(creds.password) >= 40 and creds.password not in repr(creds)


def test_redis_url_carries_the_credentials(creds: acl.TenantCredentials) -> None:
    """redis_url swaps any credentials in the base URL for the tenant's, keeping host, port, db and options."""
    url = creds.redis_url("redis://admin:pw@127.0.0.1:6390/0?socket_timeout=3")
    assert url == f"redis://{creds.username}:{creds.password}@127.0.0.1:6390/0?socket_timeout=3"
    assert creds.redis_url("redis://[::1]:7000").endswith("@[::1]:7000")


def test_tenant_user_appends_reads_and_heads_its_own_tenant(a_client: JournalClient, tenant: str) -> None:
    """With A's credentials the client appends (single, batch, idempotent), reads and heads tenant A."""
    first = a_client.append(tenant, "th", "message", {**MSG, "n": 1}, idempotency_key="k1")
    again = a_client.append(tenant, "th", "message", {**MSG, "n": 1}, idempotency_key="k1")
    assert again.seq == first.seq == 1
    a_client.append_many(tenant, [Draft("th", "message", {**MSG, "n": 2}), Draft("th2", "message", {**MSG, "n": 3})])
    assert a_client.head(tenant, "th") == 2 and a_client.head(tenant, "th2") == 1
    assert [e.payload for e in a_client.read(tenant, "th")] == [{**MSG, "n": 1}, {**MSG, "n": 2}]
    assert a_client.redis.xlen(keys.stream(tenant)) == 3


def test_tenant_user_fsync_durability(admin: redis.Redis, a_client: JournalClient, tenant: str) -> None:
    """durability='fsync' works for a tenant user where the server has WAITAOF (Valkey), else is unsupported."""
    if _server_has(admin, "waitaof"):
        aof = {str(k, "utf-8") if isinstance(k, bytes) else k: v for k, v in admin.config_get("appendonly").items()}
        if aof.get("appendonly") in ("yes", b"yes"):
            assert a_client.append(tenant, "th", "message", MSG, durability="fsync").seq == 1
        else:
            with pytest.raises(JournalError):
                a_client.append(tenant, "th", "message", MSG, durability="fsync")
    else:
        with pytest.raises(DurabilityUnsupported):
            a_client.append(tenant, "th", "message", MSG, durability="fsync")


def test_first_append_registers_the_tenant(a_client: JournalClient, admin: redis.Redis, tenant: str) -> None:
    """The tenant user may SADD to the shared registry (an ACL selector), so a projector discovers its tenant."""
    with capture_logs() as logs:
        assert a_client.append(tenant, "th", "message", MSG).seq == 1
    assert not [e for e in logs if e.get("event") == "tenant_register_skipped"]
    assert admin.sismember(keys.TENANT_REGISTRY, tenant)


def test_check_server_tolerates_noperm_on_info(a_client: JournalClient) -> None:
    """check_server on tenant credentials (INFO refused) returns quietly."""
    a_client.check_server()


def test_client_api_for_another_tenant_is_refused_by_the_server(a_client: JournalClient, client: JournalClient,
                                                                other: str) -> None:
    """A's client targeting B: append, batch, head and read are AccessDenied, and B is unchanged."""
    for call in (lambda: a_client.append(other, "th", "message", {**MSG, "evil": 1}),
                 lambda: a_client.append_many(other, [Draft("th", "message", MSG)]),
                 lambda: a_client.head(other, "th"),
                 lambda: a_client.read(other, "th")):
        with pytest.raises(AccessDenied):
            call()
    assert client.redis.xlen(keys.stream(other)) == 1 and client.head(other, "th") == 1


def _b(tenant: str, what: str = "heads") -> str:
    return f"agent:v1:{{{_other(tenant)}}}:{what}"


def _a(tenant: str, what: str = "heads") -> str:
    return f"agent:v1:{{{tenant}}}:{what}"


#: Raw commands sent on A's connection that the server must refuse (NOPERM or an ACL failure in a script).
RAW: dict[str, Callable[[str], tuple[Any, ...]]] = {
    "xrange_b": lambda t: ("XRANGE", _b(t, "stream"), "-", "+"),
    "xrevrange_b": lambda t: ("XREVRANGE", _b(t, "stream"), "+", "-"),
    "xread_b": lambda t: ("XREAD", "STREAMS", _b(t, "stream"), "0"),
    "xread_a_and_b": lambda t: ("XREAD", "STREAMS", _a(t, "stream"), _b(t, "stream"), "0", "0"),
    "xlen_b": lambda t: ("XLEN", _b(t, "stream")),
    "hget_b": lambda t: ("HGET", _b(t), "th"),
    "hmget_b": lambda t: ("HMGET", _b(t), "th"),
    "xadd_b": lambda t: ("XADD", _b(t, "stream"), "*", "t", "th", "s", "2"),
    "hset_b": lambda t: ("HSET", _b(t), "th", "99"),
    "set_b": lambda t: ("SET", _b(t, "idem:x"), "1"),
    "get_b": lambda t: ("GET", _b(t, "idem:x")),
    "exists_b": lambda t: ("EXISTS", _b(t, "stream")),
    "del_b": lambda t: ("DEL", _b(t, "stream")),
    "del_own": lambda t: ("DEL", _a(t, "stream")),
    "unlink_b": lambda t: ("UNLINK", _b(t, "stream")),
    "rename_b": lambda t: ("RENAME", _b(t, "stream"), _a(t, "stolen")),
    "copy_b": lambda t: ("COPY", _b(t, "stream"), _a(t, "stolen")),
    "xtrim_own": lambda t: ("XTRIM", _a(t, "stream"), "MAXLEN", "0"),
    "hdel_own_head": lambda t: ("HDEL", _a(t), "th"),
    "registry_srem": lambda t: ("SREM", keys.TENANT_REGISTRY, t),
    "registry_smembers": lambda t: ("SMEMBERS", keys.TENANT_REGISTRY),
    "keys": lambda t: ("KEYS", "*"),
    "scan": lambda t: ("SCAN", "0"),
    "scan_match": lambda t: ("SCAN", "0", "MATCH", "agent:v1:*"),
    "randomkey": lambda t: ("RANDOMKEY",),
    "dbsize": lambda t: ("DBSIZE",),
    "type_b": lambda t: ("TYPE", _b(t, "stream")),
    "object_b": lambda t: ("OBJECT", "ENCODING", _b(t, "stream")),
    "dump_b": lambda t: ("DUMP", _b(t, "stream")),
    "xinfo_b": lambda t: ("XINFO", "STREAM", _b(t, "stream")),
    "flushall": lambda t: ("FLUSHALL",),
    "flushdb": lambda t: ("FLUSHDB",),
    "config_get": lambda t: ("CONFIG", "GET", "*"),
    "config_set": lambda t: ("CONFIG", "SET", "appendonly", "no"),
    "info": lambda t: ("INFO",),
    "select": lambda t: ("SELECT", "1"),
    "swapdb": lambda t: ("SWAPDB", "0", "1"),
    "move_own": lambda t: ("MOVE", _a(t, "stream"), "1"),
    "acl_list": lambda t: ("ACL", "LIST"),
    "acl_whoami": lambda t: ("ACL", "WHOAMI"),
    "acl_getuser": lambda t: ("ACL", "GETUSER", "default"),
    "acl_setuser_self": lambda t: ("ACL", "SETUSER", f"journal-{t}", "allkeys", "+@all"),
    "acl_setuser_new": lambda t: ("ACL", "SETUSER", "evil", "on", "nopass", "allkeys", "+@all"),
    "acl_deluser": lambda t: ("ACL", "DELUSER", "default"),
    "client_list": lambda t: ("CLIENT", "LIST"),
    "client_kill": lambda t: ("CLIENT", "KILL", "TYPE", "normal"),
    "client_setname": lambda t: ("CLIENT", "SETNAME", "admin"),
    "monitor": lambda t: ("MONITOR",),
    "publish": lambda t: ("PUBLISH", "agent-events", "x"),
    "subscribe": lambda t: ("SUBSCRIBE", "agent-events"),
    "psubscribe": lambda t: ("PSUBSCRIBE", "__keyspace@0__:*"),
    "script_flush": lambda t: ("SCRIPT", "FLUSH"),
    "script_kill": lambda t: ("SCRIPT", "KILL"),
    "function_list": lambda t: ("FUNCTION", "LIST"),
    "fcall": lambda t: ("FCALL", "anything", "0"),
    "bgsave": lambda t: ("BGSAVE",),
    "bgrewriteaof": lambda t: ("BGREWRITEAOF",),
    "replicaof": lambda t: ("REPLICAOF", "127.0.0.1", "1"),
    "migrate": lambda t: ("MIGRATE", "127.0.0.1", "1", _b(t, "stream"), "0", "100"),
    "eval_b_in_keys": lambda t: ("EVAL", "return redis.call('HGET', KEYS[1], 'th')", "1", _b(t)),
    "eval_b_built_in_lua": lambda t: ("EVAL", "return redis.call('HGET', 'agent:v1:{' .. ARGV[1] .. '}:heads', 'th')",
                                      "0", _other(t)),
    "eval_b_built_declaring_a": lambda t: ("EVAL", "return redis.call('XADD', string.gsub(KEYS[1], '}', 'x}'), "
                                           "'*', 'evil', '1')", "1", _a(t, "stream")),
    "eval_pcall_b": lambda t: ("EVAL", "return redis.pcall('DEL', 'agent:v1:{' .. ARGV[1] .. '}:stream')", "0",
                               _other(t)),
    "eval_flushall": lambda t: ("EVAL", "return redis.call('FLUSHALL')", "0"),
    "eval_keys": lambda t: ("EVAL", "return redis.call('KEYS', '*')", "0"),
    "eval_append_script_on_b": lambda t: ("EVAL", script_source("append"), "3", _b(t, "stream"), _b(t), _b(t, "fenced"),
                                          "60", "1", "th", "", "0", "", "J\x00\x90"),
}


@pytest.mark.parametrize("name", list(RAW))
def test_raw_command_outside_the_tenant_is_refused_by_the_server(a_conn: redis.Redis, client: JournalClient,
                                                                 other: str, tenant: str, name: str) -> None:
    """Each raw command on A's connection that reaches outside A (or beyond the client's needs) is AccessDenied."""
    a_conn.execute_command("PING")  # authenticated and alive
    with pytest.raises(AccessDenied):
        run(lambda: a_conn.execute_command(*RAW[name](tenant)), name)
    rules = client.redis.execute_command("ACL", "GETUSER", f"journal-{tenant}")
    assert b"allkeys" not in rules[b"flags"] and rules[b"commands"].startswith(b"-@all ")
    assert client.redis.xlen(keys.stream(other)) == 1 and client.head(other, "th") == 1
    assert client.redis.xrange(keys.stream(other))[0][1][b"t"] == b"th"


def test_acl_change_from_inside_a_script_is_refused(admin: redis.Redis, a_conn: redis.Redis,
                                                     creds: acl.TenantCredentials) -> None:
    """EVAL of ACL SETUSER is refused by the server (a no-script command); the user's rules stay unchanged."""
    before = admin.execute_command("ACL", "GETUSER", creds.username)
    script = "return redis.call('ACL', 'SETUSER', ARGV[1], '+@all', 'allkeys')"
    with pytest.raises(JournalError, match="not allowed from script"):
        run(lambda: a_conn.eval(script, 0, creds.username), "EVAL ACL SETUSER")
    assert admin.execute_command("ACL", "GETUSER", creds.username) == before


def test_allowed_raw_commands_on_own_keys(a_conn: redis.Redis, a_client: JournalClient, tenant: str) -> None:
    """The granted commands work on A's own keys (reads, and the script's writes from Lua)."""
    a_client.append(tenant, "th", "message", MSG)
    assert a_conn.xlen(_a(tenant, "stream")) == 1
    assert a_conn.hget(_a(tenant), "th") == b"1"
    assert len(a_conn.xrevrange(_a(tenant, "stream"))) == 1
    assert a_conn.eval("return redis.call('EXISTS', KEYS[1])", 1, _a(tenant, "stream")) == 1


def test_script_reload_after_flush_works_for_tenant_user(admin: redis.Redis, a_client: JournalClient,
                                                         tenant: str) -> None:
    """After the server's script cache is emptied, the tenant client reloads the append script itself."""
    a_client.append(tenant, "th", "message", MSG)
    admin.script_flush()
    assert a_client.append(tenant, "th", "message", MSG).seq == 2


def test_auth_as_another_tenant_user_fails(admin: redis.Redis, a_conn: redis.Redis, creds: acl.TenantCredentials,
                                           other: str) -> None:
    """A cannot AUTH as B's user with A's password or a guess, and stays A afterwards."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", acl.TenantIsolationWarning)
        acl.create_tenant_user(admin, other)
    try:
        for password in (creds.password, "", "guess"):
            with pytest.raises(AccessDenied):
                run(lambda p=password: a_conn.execute_command("AUTH", f"journal-{other}", p), "AUTH")
        with pytest.raises(AccessDenied):
            run(lambda: a_conn.execute_command("HGET", keys.heads(other), "th"))
    finally:
        assert acl.revoke_tenant_user(admin, other)


def test_open_default_user_is_flagged(admin: redis.Redis, tenant: str) -> None:
    """While 'default' needs no password, create_tenant_user warns: AUTH default would leave the tenant."""
    is_open = "default" in acl.open_users(admin)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acl.create_tenant_user(admin, tenant)
    try:
        flagged = [w for w in caught if issubclass(w.category, acl.TenantIsolationWarning)]
        assert bool(flagged) == is_open
    finally:
        acl.revoke_tenant_user(admin, tenant)


@pytest.fixture(scope="module")
def private_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Valkey of this module's own, whose default user the test may lock (the shared one is left alone)."""
    stack = EmbeddedStack(Path(tmp_path_factory.mktemp("acl-valkey")))
    url = stack.up(("redis",)).redis_url
    assert url
    try:
        yield url
    finally:
        stack.down()


def test_locked_default_user_blocks_auth_escalation(private_valkey: str) -> None:
    """With the default user password-protected, A's connection cannot AUTH/HELLO into it and stays confined."""
    admin = redis.Redis.from_url(private_valkey)
    admin.execute_command("ACL", "SETUSER", "default", "nopass")  # start open, as a stock server ships
    assert "default" in acl.open_users(admin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", acl.TenantIsolationWarning)
        creds = acl.create_tenant_user(admin, "acme")
    acl.protect_default_user(admin, "operator-" + uuid.uuid4().hex)
    assert acl.open_users(admin) == []
    a = redis.Redis.from_url(creds.redis_url(private_valkey))
    anonymous = "redis://" + private_valkey.split("://", 1)[1].rpartition("@")[2]
    for attempt in (("AUTH", "default", ""), ("AUTH", "default", "guess"), ("AUTH", "guess"),
                    ("HELLO", "2", "AUTH", "default", "guess")):
        with pytest.raises(AccessDenied):
            run(lambda cmd=attempt: a.execute_command(*cmd), "AUTH")
    with pytest.raises(AccessDenied):
        run(lambda: a.execute_command("KEYS", "*"))
    with pytest.raises(AccessDenied):
        run(lambda: redis.Redis.from_url(anonymous).ping(), "anonymous PING")
    a.close()
    admin.close()


def test_rotate_invalidates_the_old_password(admin: redis.Redis, settings: Settings, creds: acl.TenantCredentials,
                                             a_conn: redis.Redis, tenant: str) -> None:
    """After rotate, the old password no longer authenticates, the new one does, live connections stay."""
    a_conn.ping()
    new = acl.rotate_tenant_user(admin, tenant)
    assert new.username == creds.username and new.password != creds.password
    with pytest.raises(AccessDenied):
        run(lambda: redis.Redis.from_url(creds.redis_url(settings.redis_url or "")).ping(), "AUTH old password")
    fresh = redis.Redis.from_url(new.redis_url(settings.redis_url or ""))
    assert JournalClient(fresh, settings=settings).append(tenant, "th", "message", MSG).seq == 1
    with pytest.raises(AccessDenied):
        run(lambda: fresh.execute_command("HGET", _b(tenant), "th"))
    assert a_conn.ping()  # rotation is graceful for connections already authenticated
    fresh.close()


def test_rotate_can_drop_live_connections(admin: redis.Redis, settings: Settings, creds: acl.TenantCredentials,
                                          a_conn: redis.Redis, tenant: str) -> None:
    """rotate(kill_connections=True) also ends connections authenticated with the old password."""
    a_conn.ping()
    acl.rotate_tenant_user(admin, tenant, kill_connections=True)
    with pytest.raises((AccessDenied, StoreUnavailable)):
        run(lambda: a_conn.ping(), "PING after rotate")


def test_revoke_deletes_the_user_and_drops_its_connections(admin: redis.Redis, settings: Settings,
                                                           creds: acl.TenantCredentials, a_client: JournalClient,
                                                           tenant: str) -> None:
    """After revoke the user is gone, its open connection is dropped, and its password no longer works."""
    a_client.append(tenant, "th", "message", MSG)
    assert any(f"user={creds.username}" in line for line in _client_lines(admin))
    assert acl.revoke_tenant_user(admin, tenant) is True
    assert admin.execute_command("ACL", "GETUSER", creds.username) is None
    deadline = time.monotonic() + 2
    while any(f"user={creds.username}" in line for line in _client_lines(admin)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(f"user={creds.username}" in line for line in _client_lines(admin))
    with pytest.raises((AccessDenied, StoreUnavailable)):
        a_client.append(tenant, "th", "message", MSG)
    with pytest.raises(AccessDenied):
        run(lambda: redis.Redis.from_url(creds.redis_url(settings.redis_url or "")).ping(), "AUTH revoked")
    assert acl.revoke_tenant_user(admin, tenant) is False
    assert admin.xlen(keys.stream(tenant)) == 1  # revoking credentials leaves the tenant's data alone


def _client_lines(admin: redis.Redis) -> list[str]:
    raw = admin.execute_command("CLIENT", "LIST")
    return (raw.decode() if isinstance(raw, bytes) else str(raw)).splitlines()


@pytest.mark.parametrize("bad", ["*", "a}:*", "{x}", "a b", "", "a\x00", "../x", "x" * 200])
def test_hostile_tenant_never_becomes_an_acl_rule(admin: redis.Redis, bad: str) -> None:
    """A hostile tenant name is InvalidIdentifier before any ACL command is sent (no '~*' grant by accident)."""
    from journal.errors import InvalidIdentifier

    users_before = admin.execute_command("ACL", "USERS")
    with pytest.raises(InvalidIdentifier):
        acl.create_tenant_user(admin, bad)
    with pytest.raises(InvalidIdentifier):
        acl.rotate_tenant_user(admin, bad)
    with pytest.raises(InvalidIdentifier):
        acl.revoke_tenant_user(admin, bad)
    assert admin.execute_command("ACL", "USERS") == users_before


def test_acl_covers_every_command_the_append_script_calls() -> None:
    """Every redis.call/pcall in journal/lua/append.lua is granted, so ACL drift breaks this test, not prod."""
    import re

    called = {c.lower() for c in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z]+)['\"]", script_source("append"))}
    assert called and called <= set(acl.SCRIPT_COMMANDS) | set(acl.BASE_COMMANDS)
