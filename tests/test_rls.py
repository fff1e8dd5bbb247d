"""Row-level security: a tenant's reader role sees its tenant only, whatever SQL it sends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from journal.client import JournalClient
from journal.settings import Settings
from projections import db
from projections.worker import Projector


@pytest.fixture(scope="module")
def two_tenants(migrated: Settings) -> Iterator[tuple[str, str, db.ReaderCredentials]]:
    """Tenants A and B with projected events; reader credentials for A."""
    a, b = f"rls-a-{uuid.uuid4().hex[:8]}", f"rls-b-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(migrated) as c:
        for t in (a, b):
            for i in range(5):
                c.append(t, "th", "tool_call", {"tool": "secret_tool", "call_id": f"c{i}", "args": {"t": t}})
    p = Projector(migrated)
    p.drain(tenants=[a, b])
    p.close()
    creds = db.create_tenant_reader(migrated, a)
    yield a, b, creds
    db.revoke_tenant_reader(migrated, a)


@pytest.fixture
def reader(migrated: Settings, two_tenants: tuple[str, str, db.ReaderCredentials]) -> Iterator[psycopg.Connection]:
    assert migrated.database_url
    with psycopg.connect(two_tenants[2].database_url(migrated.database_url), autocommit=True) as conn:
        yield conn


def rows(conn: psycopg.Connection, query: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(query, params or None).fetchall()


def tenants_seen(conn: psycopg.Connection, query: str, *params: Any) -> set[Any]:
    return {r[0] for r in rows(conn, query, *params)}


CRAFTED = [
    "SELECT tenant_id FROM journal.events",
    "SELECT tenant_id FROM journal.events WHERE tenant_id = %(b)s",
    "SELECT tenant_id FROM journal.events WHERE tenant_id <> %(a)s OR true",
    "SELECT t.tenant_id FROM journal.threads t JOIN journal.events e USING (tenant_id, thread_id)",
    "SELECT tenant_id FROM journal.events WHERE tenant_id IN (SELECT %(b)s)",
    "SELECT (SELECT max(tenant_id) FROM journal.events WHERE tenant_id = %(b)s)",
    "WITH all_rows AS (SELECT * FROM journal.snapshots UNION ALL SELECT * FROM journal.snapshots) "
    "SELECT tenant_id FROM all_rows",
    "SELECT tenant_id FROM journal.snapshot_chunks UNION SELECT tenant_id FROM journal.snapshots",
    "SELECT tenant_id FROM journal.threads UNION SELECT tenant_id FROM journal.conflicts "
    "UNION SELECT tenant_id FROM journal.dead_letters",
    "SELECT tenant_id FROM journal.events WHERE current_setting('journal.tenant', true) IS NULL OR true",
    "SELECT tenant_id FROM journal.events WHERE 1/(CASE WHEN tenant_id = %(b)s THEN 0 ELSE 1 END) = 1",
    "SELECT tenant_id FROM journal.events WHERE payload::text LIKE '%%' || %(b)s || '%%'",
    "SELECT tenant_id FROM journal.events TABLESAMPLE SYSTEM (100)",
    "SELECT tenant_id FROM journal.tenant_roles",
]


@pytest.mark.parametrize("query", CRAFTED)
def test_crafted_queries_see_only_own_tenant(reader: psycopg.Connection, two_tenants: Any, query: str) -> None:
    """Each crafted query returns rows of tenant A only (or NULL/nothing), never B."""
    a, b, _ = two_tenants
    seen = {r[0] for r in reader.execute(query, {"a": a, "b": b}).fetchall()}
    assert b not in seen and seen <= {a, None}


def test_counts_of_other_tenant_are_zero(reader: psycopg.Connection, two_tenants: Any) -> None:
    """count(*) of B through every table is 0; of A through events is 5."""
    _a, b, _ = two_tenants
    for table in ("events", "threads", "snapshots", "snapshot_chunks", "dead_letters", "conflicts"):
        assert rows(reader, f"SELECT count(*) FROM journal.{table} WHERE tenant_id = %s", b) == [(0,)]
    assert rows(reader, "SELECT count(*) FROM journal.events") == [(5,)]


def test_setting_tricks_do_not_rebind(reader: psycopg.Connection, two_tenants: Any) -> None:
    """SET, set_config and RESET of the tenant setting do not change what A's reader sees."""
    a, b, _ = two_tenants
    reader.execute("SELECT set_config('journal.tenant', %s, false)", (b,))
    assert tenants_seen(reader, "SELECT tenant_id FROM journal.events") == {a}
    reader.execute(f"SET journal.tenant = '{b}'")
    assert tenants_seen(reader, "SELECT tenant_id FROM journal.events") == {a}
    reader.execute("RESET ALL")
    assert tenants_seen(reader, "SELECT tenant_id FROM journal.events") == {a}
    assert rows(reader, "SELECT journal.current_tenant()") == [(a,)]


def test_role_switching_is_refused_or_blind(reader: psycopg.Connection, two_tenants: Any) -> None:
    """SET ROLE to the group role sees nothing; to app, writer, owner or a superuser is refused."""
    reader.execute("SET ROLE journal_reader")
    assert rows(reader, "SELECT count(*) FROM journal.events") == [(0,)]
    reader.execute("RESET ROLE")
    for target in ("journal_app", "journal_writer", "journal_owner", "postgres"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(f"SET ROLE {target}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        reader.execute("SET SESSION AUTHORIZATION postgres")


def test_own_functions_and_views_still_filtered(reader: psycopg.Connection, two_tenants: Any) -> None:
    """A SECURITY DEFINER function or a view the reader creates runs as the reader: still filtered."""
    a, _b, _ = two_tenants
    reader.execute("CREATE FUNCTION pg_temp.peek() RETURNS SETOF text LANGUAGE sql SECURITY DEFINER AS "
                   "$$ SELECT tenant_id FROM journal.events $$")
    assert tenants_seen(reader, "SELECT * FROM pg_temp.peek()") == {a}
    reader.execute("CREATE TEMP VIEW v AS SELECT * FROM journal.events")
    assert tenants_seen(reader, "SELECT tenant_id FROM v") == {a}
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        reader.execute("CREATE VIEW journal.leak AS SELECT * FROM journal.events")


def test_copy_to_stdout_is_filtered(reader: psycopg.Connection, two_tenants: Any) -> None:
    """COPY … TO STDOUT applies the policy: no line of B, from a table, a query or the partitioned parent."""
    a, b, _ = two_tenants

    def copy_out(statement: str) -> list[str]:
        with reader.cursor() as cur, cur.copy(statement) as copy:
            return b"".join(bytes(chunk) for chunk in copy).decode().split()

    assert copy_out("COPY journal.threads (tenant_id) TO STDOUT") == [a]
    assert copy_out("COPY (SELECT tenant_id FROM journal.events) TO STDOUT") == [a] * 5
    # With RLS, COPY of a partitioned parent reads ONLY the (empty) parent: nothing of anyone.
    assert b not in copy_out("COPY journal.events (tenant_id) TO STDOUT")


def test_partitions_and_writes_are_denied(reader: psycopg.Connection, two_tenants: Any) -> None:
    """Partitions cannot be read directly; INSERT/UPDATE/DELETE are refused."""
    for q in ("SELECT * FROM journal.events_p00", "DELETE FROM journal.events",
              "UPDATE journal.threads SET status = 'failed'",
              "INSERT INTO journal.tenant_roles VALUES ('x', 'y')", "SELECT * FROM journal.offsets"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reader.execute(q)


def test_no_tenant_bound_sees_nothing(migrated: Settings, two_tenants: Any) -> None:
    """The pooled app role sees nothing without journal.tenant, and only that tenant with it."""
    a, _, _ = two_tenants
    with db.connect(migrated, role="journal_app") as conn:
        assert conn.execute("SELECT count(*) FROM journal.events").fetchone() == (0,)
        conn.rollback()
        with conn.transaction():
            conn.execute("SELECT set_config('journal.tenant', %s, true)", (a,))
            assert {r[0] for r in conn.execute("SELECT tenant_id FROM journal.events")} == {a}
        assert conn.execute("SELECT count(*) FROM journal.events").fetchone() == (0,)
