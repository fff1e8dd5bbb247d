"""One tenant's Redis credentials never hurt another tenant's projection.

Every entry here is written with the hostile tenant's own ACL user (which may XADD to its own
stream), against the real Valkey and PostgreSQL, while other tenants keep appending.
"""

from __future__ import annotations

import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from structlog.testing import capture_logs

from journal import acl, codec, keys
from journal.client import JournalClient
from journal.settings import Settings
from projections import db
from projections.worker import GROUP, Projector, WorkerOptions

#: A valid message payload (the client checks what the fold needs: role and content).
MSG = {"role": "user", "content": "hi"}
VALID = codec.frame(codec.pack_body("message", MSG, None, None, {}, None))


def body(*parts: Any) -> bytes:
    """A framed body of exactly ``parts`` (version, type, node, payload, idempotency key, actor, blob)."""
    return codec.frame(codec.pack(list(parts)))


def entry(t: Any = b"th", s: Any = b"1", ts: Any = b"1700000000000", b: Any = VALID, **extra: Any) -> dict[str, Any]:
    out = {"t": t, "s": s, "ts": ts, "b": b, **extra}
    return {k: v for k, v in out.items() if v is not None}


#: (name, fields) written by the tenant's own user; each must end in dead_letters, acknowledged.
MALFORMED: list[tuple[str, dict[str, Any]]] = [
    ("seq 2**64", entry(s=str(2**64))),
    ("seq 2**63", entry(s=str(2**63))),
    ("seq 2**63 - 1", entry(s=str(2**63 - 1))),
    ("seq 10**18, valid body", entry(s=str(10**18))),
    ("seq 2**62, valid body", entry(s=str(2**62))),
    ("seq 2**53 + 1, valid body", entry(s=str(2**53 + 1))),
    ("seq -1", entry(s=b"-1")),
    ("seq -2**63 - 1", entry(s=str(-(2**63) - 1))),
    ("seq 0", entry(s=b"0")),
    ("seq not a number", entry(s=b"abc")),
    ("seq float", entry(s=b"1.5")),
    ("seq with underscore", entry(s=b"1_0")),
    ("seq with spaces", entry(s=b" 1 ")),
    ("seq 5000 digits", entry(s=b"9" * 5000)),
    ("seq not ascii", entry(s="١".encode())),
    ("ts 10**20", entry(ts=str(10**20))),
    ("ts negative", entry(ts=b"-5")),
    ("ts not a number", entry(ts=b"now")),
    ("missing body", entry(b=None)),
    ("missing thread", entry(t=None)),
    ("missing seq", entry(s=None)),
    ("missing ts", entry(ts=None)),
    ("extra field", entry(x=b"1")),
    ("only junk fields", {"junk": b"\x00" * 10}),
    ("oversized body", entry(b=b"J\x00" + b"\x91" * (3 * 1024 * 1024))),
    ("body garbage", entry(b=b"\x00garbage")),
    ("body empty", entry(b=b"")),
    # A zstd frame header declaring 2**40 bytes of content (single segment, 8-byte content size).
    ("body zstd bomb header", entry(b=b"J\x01" + bytes.fromhex("28b52ffde0") + (2**40).to_bytes(8, "little")
                                    + b"\x01\x00\x00")),
    ("body corrupt zstd", entry(b=b"J\x01" + b"\xff" * 50)),
    ("body future version", entry(b=body(99, "message", None, {}, None, {}, None))),
    ("body too few parts", entry(b=body(1, "message"))),
    ("body type int", entry(b=body(1, 42, None, {}, None, {}, None))),
    ("body type invalid name", entry(b=body(1, "Robert'); DROP", None, {}, None, {}, None))),
    ("body node with NUL", entry(b=body(1, "message", "a\x00b", {}, None, {}, None))),
    ("body node int", entry(b=body(1, "message", 7, {}, None, {}, None))),
    ("body idempotency key huge", entry(b=body(1, "message", None, {}, "k" * 10_000, {}, None))),
    ("body actor list", entry(b=body(1, "message", None, {}, None, [1, 2], None))),
    ("body actor int keys", entry(b=codec.frame(__import__("msgpack").packb(
        [1, "message", None, {}, None, {1: 2}, None], use_bin_type=True)))),
    ("body payload NUL string", entry(b=body(1, "message", None, {"a": "x\x00y"}, None, {}, None))),
    ("body payload NaN", entry(b=body(1, "message", None, {"a": float("nan")}, None, {}, None))),
    ("body blob wrong shape", entry(b=body(1, "message", None, None, None, {}, ["x"]))),
    ("body blob not hex", entry(b=body(1, "message", None, None, None, {}, ["x" * 64, 5]))),
    ("body blob huge size", entry(b=body(1, "message", None, None, None, {}, ["a" * 64, 2**64 - 1]))),
    ("thread traversal", entry(t=b"../etc")),
    ("thread braces", entry(t=b"a}{b")),
    ("thread NUL", entry(t=b"a\x00b")),
    ("thread empty", entry(t=b"")),
    ("thread not utf-8", entry(t=b"\xff\xfe")),
    ("thread too long", entry(t=b"a" * 129)),
]


@pytest.fixture
def admin(settings: Settings) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(settings.redis_url or "")
    yield r
    r.close()


@pytest.fixture
def hostile(admin: redis.Redis, tenant: str, settings: Settings) -> Iterator[redis.Redis]:
    """A connection as the tenant's own ACL user (revoked afterwards)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", acl.TenantIsolationWarning)
        creds = acl.create_tenant_user(admin, tenant)
    conn = redis.Redis.from_url(creds.redis_url(settings.redis_url or ""))
    yield conn
    conn.close()
    acl.revoke_tenant_user(admin, tenant)
    # What the tests left under the tenant's tag (garbage marks, a stream turned string) leaves with it.
    admin.delete(keys.stream(tenant), keys.projected(tenant), keys.heads(tenant), keys.fences(tenant))


def acknowledged(admin: redis.Redis, tenant: str) -> tuple[int, int]:
    """(undelivered, pending) entries of the projector group on the tenant's stream."""
    for g in admin.xinfo_groups(keys.stream(tenant)):
        if g["name"] in (GROUP, GROUP.encode()):
            return int(g.get("lag") or 0), int(g.get("pending") or 0)
    raise AssertionError("no projector group")


def run_until(p: Projector, done: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "projector did not get there in time"
        p.run_once()


def test_malformed_entries_are_dead_lettered_while_other_tenants_project(
        migrated: Settings, admin_pg: Any, admin: redis.Redis, hostile: redis.Redis, tenant: str) -> None:
    """Every malformed entry a tenant writes itself goes to dead_letters, acknowledged; others keep projecting."""
    others = [f"ok-{uuid.uuid4().hex[:8]}-{i}" for i in range(3)]
    with JournalClient.from_settings(migrated) as c:
        for t in others:
            c.append(t, "th", "message", {**MSG, "i": 0})
    sids = {name: hostile.xadd(keys.stream(tenant), fields).decode() for name, fields in MALFORMED}
    with JournalClient.from_settings(migrated) as c:
        for t in others:
            for i in range(1, 20):
                c.append(t, "th", "message", {**MSG, "i": i})
    # Hostile and honest entries share batches; bodies above 1 MB + the envelope's headroom are oversized.
    p = Projector(migrated.with_(max_payload_bytes=1_000_000, blob_threshold=100_000), WorkerOptions(batch_size=16))
    try:
        p.refresh_tenants()
        assert tenant in p.discovery.tenants
        run_until(p, lambda: acknowledged(admin, tenant) == (0, 0)
                  and all(acknowledged(admin, t) == (0, 0) for t in others))
    finally:
        p.close()
    for t in others:
        n = admin_pg.execute("SELECT count(*), max(seq), bool_and(hash IS NOT NULL) FROM journal.events "
                             "WHERE tenant_id = %s", (t,)).fetchone()
        assert n == (20, 20, True)
    dead = {r[0]: r[1:] for r in admin_pg.execute(
        "SELECT stream_id, reason, seq, thread_id, octet_length(entry) FROM journal.dead_letters "
        "WHERE tenant_id = %s", (tenant,))}
    missing = [name for name, sid in sids.items() if sid not in dead]
    assert not missing, f"not dead-lettered: {missing}"
    assert admin_pg.execute("SELECT count(*) FROM journal.events WHERE tenant_id = %s", (tenant,)).fetchone() == (0,)
    big = dead[sids["seq 2**64"]]
    assert big[1] is None and "outside" in big[0] and big[3] > 0  # seq unstorable as bigint: NULL, raw entry kept
    assert dead[sids["seq 10**18, valid body"]][1] == 10**18
    assert dead[sids["thread NUL"]][2] is None
    oversized = dead[sids["oversized body"]]
    assert oversized[3] <= 64 * 1024 and "exceeds" in oversized[0] and "sha256" in oversized[0]


def test_new_tenant_writing_with_its_own_credentials_is_projected_within_5_s(
        migrated: Settings, admin_pg: Any, admin: redis.Redis, tenant: str) -> None:
    """A tenant created after the projector started, appending only with its own user, is projected within 5 s."""
    p = Projector(migrated, WorkerOptions(block_ms=20))
    p.refresh_tenants()  # the projector's first turn is over before the tenant exists
    stop = threading.Event()
    failures: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                p.run_once()
        except BaseException as e:
            failures.append(e)

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        time.sleep(0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", acl.TenantIsolationWarning)
            creds = acl.create_tenant_user(admin, tenant)
        own = redis.Redis.from_url(creds.redis_url(migrated.redis_url or ""))
        with capture_logs(), JournalClient(own, settings=migrated) as c:
            c.append(tenant, "th", "message", {**MSG, "hello": 1})
        # Whether or not its user may add it to the registry (ACL selector), only a SCAN can find it now.
        admin.srem(keys.TENANT_REGISTRY, tenant)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5.0:
            if admin_pg.execute("SELECT 1 FROM journal.events WHERE tenant_id = %s", (tenant,)).fetchone():
                break
            time.sleep(0.05)
        else:
            pytest.fail("the new tenant's event was not projected within 5 s")
    finally:
        stop.set()
        worker.join(10)
        p.close()
        acl.revoke_tenant_user(admin, tenant)
    assert not failures


def test_stream_key_turned_into_a_string_sets_only_its_tenant_aside(
        migrated: Settings, admin_pg: Any, admin: redis.Redis, hostile: redis.Redis, tenant: str) -> None:
    """A tenant that SETs its stream key to a string (via its own Lua) stops only itself, not its chunk's others."""
    other = f"ok-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        c.append(other, "th", "message", {**MSG, "i": 0})
    hostile.xadd(keys.stream(tenant), entry())
    p = Projector(migrated, WorkerOptions(block_ms=10))
    try:
        p.refresh_tenants()
        hostile.eval("redis.call('SET', KEYS[1], 'x')", 1, keys.stream(tenant))
        with JournalClient.from_settings(migrated) as c:
            c.append(other, "th", "message", {**MSG, "i": 1})
        run_until(p, lambda: acknowledged(admin, other) == (0, 0), timeout=30)
        assert tenant not in p.discovery.tenants
    finally:
        p.close()
    assert admin_pg.execute("SELECT count(*) FROM journal.events WHERE tenant_id = %s", (other,)).fetchone() == (2,)


def test_non_numeric_marks_fail_only_their_tenant(
        migrated: Settings, admin_pg: Any, admin: redis.Redis, hostile: redis.Redis, tenant: str) -> None:
    """Garbage a tenant writes into its own projected hash and heads fails its acknowledgement only."""
    other = f"ok-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        c.append(other, "th", "message", {**MSG, "i": 0})
    p = Projector(migrated, WorkerOptions(block_ms=10))
    try:
        hostile.xadd(keys.stream(tenant), entry())
        p.refresh_tenants()
        p.run_once()
        for key, field in ((keys.projected(tenant), keys.COMMITTED_MARK), (keys.projected(tenant), "th"),
                           (keys.heads(tenant), "th")):
            hostile.eval("redis.call('HSET', KEYS[1], ARGV[1], 'garbage')", 1, key, field)
        hostile.xadd(keys.stream(tenant), entry(s=b"2"))
        with JournalClient.from_settings(migrated) as c:
            c.append(other, "th", "message", {**MSG, "i": 1})
        run_until(p, lambda: acknowledged(admin, other) == (0, 0), timeout=30)
        p.check_tail()  # reads the garbage mark, tries to repair: logged, not raised
        p.run_once()
    finally:
        p.close()
    assert admin_pg.execute("SELECT count(*) FROM journal.events WHERE tenant_id = %s", (other,)).fetchone() == (2,)


def test_tenant_reader_cannot_read_table_statistics(
        migrated: Settings, admin_pg: Any, tenant: str) -> None:
    """A tenant reader cannot read row counts or sizes of the shared tables (stats views, stats functions, sizes)."""
    creds = db.create_tenant_reader(migrated, tenant)
    try:
        with psycopg.connect(creds.database_url(migrated.database_url or ""), autocommit=True) as conn:
            for query in (
                "SELECT n_live_tup FROM pg_stat_all_tables WHERE relname = 'events_p00'",
                "SELECT n_live_tup FROM pg_stat_user_tables",
                "SELECT n_tup_ins FROM pg_stat_xact_user_tables",
                "SELECT heap_blks_read FROM pg_statio_user_tables",
                "SELECT idx_scan FROM pg_stat_user_indexes",
                "SELECT tup_inserted FROM pg_stat_database",
                "SELECT pg_stat_get_live_tuples('journal.events_p00'::regclass)",
                "SELECT pg_stat_get_tuples_inserted('journal.threads'::regclass)",
                "SELECT pg_relation_size('journal.events_p00')",
                "SELECT pg_total_relation_size('journal.threads')",
                "SELECT pg_table_size('journal.threads')",
                "SELECT pg_database_size(current_database())",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(query)
            # What stays open, as in any PostgreSQL (README, tenant isolation): the planner's estimates.
            assert conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'threads'").fetchone() is not None
        for role in ("journal_app", "journal_reader"):
            admin_pg.execute(f"SET ROLE {role}")
            try:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    admin_pg.execute("SELECT n_live_tup FROM pg_stat_all_tables")
            finally:
                admin_pg.execute("RESET ROLE")
        admin_pg.execute("SET ROLE journal_writer")
        try:
            admin_pg.execute("SELECT n_live_tup FROM pg_stat_all_tables").fetchall()  # operators keep them
        finally:
            admin_pg.execute("RESET ROLE")
    finally:
        db.revoke_tenant_reader(migrated, tenant)


def test_garbage_registry_names_create_nothing(migrated: Settings, admin: redis.Redis, tenant: str) -> None:
    """Names in the tenant registry that are invalid, or have no stream, are never read and create no stream."""
    junk = [f"{tenant}}}x", "a:b", "..", "", "x" * 300, "é", f"{tenant}-nostream"]
    admin.sadd(keys.TENANT_REGISTRY, *junk)
    # A stream under the tenant's tag that the SCAN pattern matches but is not the tenant's stream key.
    admin.xadd(f"agent:v1:{{{tenant}-nostream}}:x}}:stream", entry())
    p = Projector(migrated, WorkerOptions(block_ms=10))
    try:
        p.refresh_tenants()
        p.run_once()
        assert not set(junk) & p.discovery.tenants
        assert not admin.exists(f"agent:v1:{{{tenant}-nostream}}:stream")
        # Once its stream exists (its own user appended), the name is taken at the next scan pass.
        admin.xadd(keys.stream(f"{tenant}-nostream"), entry())
        deadline = time.monotonic() + 10
        while f"{tenant}-nostream" not in p.discovery.tenants:
            assert time.monotonic() < deadline, "the stream was not found by the next scan pass"
            p.run_once()
    finally:
        p.close()
        admin.srem(keys.TENANT_REGISTRY, *junk)
        admin.delete(keys.stream(f"{tenant}-nostream"), f"agent:v1:{{{tenant}-nostream}}:x}}:stream")


def test_stream_ids_beyond_bigint_are_projected_with_a_clamped_offset(
        migrated: Settings, admin_pg: Any, admin: redis.Redis, hostile: redis.Redis, tenant: str) -> None:
    """A tenant that XADDs its own ids above 2**63 ms still gets projected; its offset is clamped, nobody stops."""
    other = f"ok-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        c.append(other, "th", "message", {**MSG, "i": 0})
    huge = hostile.xadd(keys.stream(tenant), entry(), id=f"{2**64 - 2}-0").decode()
    bad = hostile.xadd(keys.stream(tenant), entry(s=b"x"), id=f"{2**64 - 1}-{2**64 - 1}").decode()
    p = Projector(migrated, WorkerOptions(block_ms=10))
    try:
        p.refresh_tenants()
        run_until(p, lambda: acknowledged(admin, tenant) == (0, 0) and acknowledged(admin, other) == (0, 0))
        p.check_tail()
    finally:
        p.close()
    assert admin_pg.execute("SELECT stream_id FROM journal.events WHERE tenant_id = %s", (tenant,)).fetchall() == [
        (huge,)]
    assert admin_pg.execute("SELECT seq FROM journal.dead_letters WHERE tenant_id = %s AND stream_id = %s",
                            (tenant, bad)).fetchone() == (None,)
    assert admin_pg.execute("SELECT stream_ms, stream_seq FROM journal.offsets WHERE tenant_id = %s",
                            (tenant,)).fetchone() == (2**63 - 1, 2**63 - 1)
    assert admin_pg.execute("SELECT count(*) FROM journal.events WHERE tenant_id = %s", (other,)).fetchone() == (1,)


def test_running_projector_survives_malformed_entries(
        migrated: Settings, admin_pg: Any, admin: redis.Redis, hostile: redis.Redis, tenant: str) -> None:
    """Projector.run() keeps running through every malformed entry while another tenant's appends project."""
    other = f"ok-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        c.append(other, "th", "message", {**MSG, "i": 0})
    hostile.xadd(keys.stream(tenant), entry())
    p = Projector(migrated.with_(max_payload_bytes=1_000_000, blob_threshold=100_000), WorkerOptions(block_ms=20))
    worker = threading.Thread(target=p.run, daemon=True)
    worker.start()
    try:
        for _, fields in MALFORMED:
            hostile.xadd(keys.stream(tenant), fields)
        with JournalClient.from_settings(migrated) as c:
            for i in range(1, 30):
                c.append(other, "th", "message", {**MSG, "i": i})
        deadline = time.monotonic() + 60
        while not (acknowledged(admin, tenant) == (0, 0) and acknowledged(admin, other) == (0, 0)):
            assert worker.is_alive(), "the projector exited"
            assert time.monotonic() < deadline, "the projector did not get through the entries"
            time.sleep(0.1)
        assert worker.is_alive()
    finally:
        p.stop()
        worker.join(30)
    assert not worker.is_alive()
    assert admin_pg.execute("SELECT count(*) FROM journal.events WHERE tenant_id = %s", (other,)).fetchone() == (30,)
    assert admin_pg.execute("SELECT count(*) FROM journal.dead_letters WHERE tenant_id = %s",
                            (tenant,)).fetchone() == (len(MALFORMED),)
