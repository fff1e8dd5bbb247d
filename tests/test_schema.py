"""The SQLAlchemy Core tables are the schema: the migrations build exactly what they declare."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from psycopg import sql
from sqlalchemy import create_engine, inspect, pool
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateSchema

from journal.settings import Settings
from projections import db, tables


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture
def new_db(settings: Settings) -> Iterator[Callable[[], Settings]]:
    """Makes empty databases of their own, dropped afterwards (downgrades must not touch the shared one)."""
    admin_url = settings.database_url
    assert admin_url
    names: list[str] = []

    def make() -> Settings:
        names.append(f"schema_{uuid.uuid4().hex[:12]}")
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names[-1])))
        return settings.with_(database_url=_with_database(admin_url, names[-1]))

    yield make
    with psycopg.connect(admin_url, autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def fresh_db(new_db: Callable[[], Settings]) -> Settings:
    """Settings for one empty database of its own."""
    return new_db()


def _engine_url(settings: Settings) -> str:
    return db.alembic_config(settings).get_main_option("sqlalchemy.url") or ""


def _diff(conn: Connection) -> list[Any]:
    # The options env.py gives Alembic, so this is what `alembic revision --autogenerate` would write.
    return compare_metadata(MigrationContext.configure(conn, opts=tables.AUTOGENERATE_OPTIONS), tables.metadata)


def _assert_matches_tables(settings: Settings) -> None:
    engine = create_engine(_engine_url(settings), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            assert _diff(conn) == []
            # Autogenerate never compares primary keys.
            insp = inspect(conn)
            for t in tables.metadata.tables.values():
                pk = insp.get_pk_constraint(t.name, schema=t.schema)["constrained_columns"]
                assert pk == [c.name for c in t.primary_key.columns], t.name
    finally:
        engine.dispose()


def test_head_matches_tables(fresh_db: Settings) -> None:
    """A database migrated to head differs from tables.metadata in nothing autogenerate compares."""
    db.migrate(fresh_db)
    _assert_matches_tables(fresh_db)
    # The same comparison through env.py, as `alembic check` runs it (raises on any difference).
    command.check(db.alembic_config(fresh_db))


def test_downgrade_base_then_upgrade_head(fresh_db: Settings) -> None:
    """Downgrading to base removes the schema, and upgrading again rebuilds it as tables.py declares."""
    cfg = db.alembic_config(fresh_db)
    command.upgrade(cfg, "head")
    command.downgrade(cfg, "base")
    assert fresh_db.database_url
    with psycopg.connect(fresh_db.database_url) as conn:
        left = conn.execute("SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND relname <> 'alembic_version'",
                            (tables.SCHEMA,)).fetchall()
        revisions = conn.execute(f"SELECT version_num FROM {tables.SCHEMA}.alembic_version").fetchall()
    assert (left, revisions) == ([], [])
    command.upgrade(cfg, "head")
    _assert_matches_tables(fresh_db)


#: The structure of the journal schema as PostgreSQL prints it back, for what autogenerate does not
#: compare: partition keys, storage parameters, CHECK constraints, partial-index predicates, column
#: order. Partitions are left out (SQLAlchemy cannot declare them), and so are owners, grants,
#: row-level security and the current_tenant() function: the migrations alone set those.
CATALOG_SQL = {
    "tables": """
        SELECT c.relname, c.relkind, c.reloptions, pg_get_partkeydef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relname <> 'alembic_version'
        ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND c.relname <> 'alembic_version' AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY c.relname, a.attnum""",
    "constraints": """
        SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND NOT c.relispartition AND c.relname <> 'alembic_version'
        ORDER BY 1, 2""",
    "indexes": """
        SELECT c.relname, i.relname, pg_get_indexdef(i.oid)
        FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND NOT c.relispartition AND c.relname <> 'alembic_version'
        ORDER BY 1, 2""",
}


def _catalog(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    assert settings.database_url
    with psycopg.connect(settings.database_url) as conn:
        return {k: conn.execute(q, {"schema": tables.SCHEMA}).fetchall() for k, q in CATALOG_SQL.items()}


def test_create_all_builds_what_the_migrations_build(new_db: Callable[[], Settings]) -> None:
    """metadata.create_all and the migrations at head build the same tables, constraints and indexes."""
    migrated, created = new_db(), new_db()
    db.migrate(migrated)
    engine = create_engine(_engine_url(created), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(CreateSchema(tables.SCHEMA))
            tables.metadata.create_all(conn)
    finally:
        engine.dispose()
    want, got = _catalog(migrated), _catalog(created)
    assert want["tables"], "the migrations built no tables"
    for kind in CATALOG_SQL:
        assert got[kind] == want[kind], kind


def test_autogenerate_filter_hides_only_event_partitions(fresh_db: Settings) -> None:
    """The only journal tables autogenerate skips are the partitions of events."""
    db.migrate(fresh_db)
    assert fresh_db.database_url
    with psycopg.connect(fresh_db.database_url) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p')", (tables.SCHEMA,))]
        partitions = {r[0] for r in conn.execute(
            "SELECT relid::regclass::text FROM pg_partition_tree(%s::regclass) WHERE parentrelid IS NOT NULL",
            (f"{tables.SCHEMA}.events",))}
    hidden = {f"{tables.SCHEMA}.{n}" for n in names
              if not tables.include_name(n, "table", {"schema_name": tables.SCHEMA})}
    assert len(partitions) > 1
    assert hidden == partitions
