"""The PostgreSQL schema, as SQLAlchemy Core tables (queries are built from these).

Everything lives in the ``journal`` schema. ``tenant_id`` leads every key, so a distributed
PostgreSQL (Citus) can shard every table on it, and ``events`` is hash-partitioned on it.
Migrations (``projections/migrations``) create exactly this; change both together, and
``tests/test_schema.py`` fails until they agree (autogenerate's comparison, then PostgreSQL's own
catalog against ``metadata.create_all``). Beyond these tables the migrations alone own the roles,
grants, row-level security, ``journal.current_tenant()`` and the partitions of ``events``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.sql.expression import ClauseElement

SCHEMA = "journal"
metadata = MetaData(schema=SCHEMA)

TS = TIMESTAMP(timezone=True)

#: One row per agent step. ``body`` is the event exactly as appended (the hashed truth);
#: the typed columns and ``payload`` JSONB are its queryable projection.
events = Table(
    "events", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("thread_id", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("type", Text, nullable=False),
    Column("node", Text),
    Column("tool", Text),
    Column("agent_id", Text),
    Column("actor", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("ts_ms", BigInteger, nullable=False),
    Column("appended_at", TS, nullable=False),
    Column("recorded_at", TS, nullable=False, server_default=text("now()")),
    Column("payload", JSONB),
    Column("blob_sha256", Text),
    Column("blob_size", BigInteger),
    Column("idempotency_key", Text),
    Column("version", SmallInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("stream_id", Text, nullable=False),
    Column("prev_hash", LargeBinary),
    Column("hash", LargeBinary),
    # Partitions (``events_p00``..) are made by the migrations: SQLAlchemy cannot declare them.
    postgresql_partition_by="HASH (tenant_id)",
)
#: The audit by tool (replayer.audit); partial, as most events name no tool.
Index("events_tool_idx", events.c.tenant_id, events.c.tool, events.c.appended_at,
      postgresql_where=events.c.tool.is_not(None))
Index("events_time_idx", events.c.tenant_id, events.c.thread_id, events.c.appended_at)

threads = Table(
    "threads", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("thread_id", Text, primary_key=True),
    Column("status", Text, nullable=False, server_default=text("'active'")),
    #: Head of the verified chain: every seq up to here is stored and hashed.
    Column("last_seq", BigInteger, nullable=False, server_default=text("0")),
    Column("last_hash", LargeBinary),
    #: Highest seq stored (above last_seq only while an earlier seq is still in flight).
    Column("max_seq", BigInteger, nullable=False, server_default=text("0")),
    #: The thread's node as the fold has it: the innermost of ``branches``.
    Column("node", Text),
    Column("event_count", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", TS, nullable=False, server_default=text("now()")),
    Column("updated_at", TS, nullable=False, server_default=text("now()")),
    Column("fenced", Boolean, nullable=False, server_default=text("false")),
    Column("fence_reason", Text),
    #: Nodes entered and not yet exited, oldest first (``journal.lifecycle``), a JSON list of str.
    #: Last, as migration 0002 adds it.
    Column("branches", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    # The name PostgreSQL gives the migration's inline CHECK.
    CheckConstraint("status IN ('active', 'paused', 'completed', 'failed', 'abandoned')",
                    name="threads_status_check"),
    # Room on each page for HOT updates: every batch rewrites its threads' rows.
    postgresql_with={"fillfactor": 70},
)
Index("threads_active_idx", threads.c.tenant_id, threads.c.thread_id, postgresql_where=threads.c.status == "active")

snapshots = Table(
    "snapshots", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("thread_id", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    #: The reducer's state as framed msgpack (exact round trip, unlike JSONB floats).
    Column("state", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("created_at", TS, nullable=False, server_default=text("now()")),
)

#: The sealed chunks of snapshots' growing lists (``journal.state.encode_snapshot``): written once,
#: named by the SHA-256 of ``body``, referenced by every later snapshot of the thread.
snapshot_chunks = Table(
    "snapshot_chunks", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("thread_id", Text, primary_key=True),
    Column("chunk_id", LargeBinary, primary_key=True),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", TS, nullable=False, server_default=text("now()")),
)

dead_letters = Table(
    "dead_letters", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("stream_id", Text, primary_key=True),
    Column("thread_id", Text),
    Column("seq", BigInteger),
    Column("reason", Text, nullable=False),
    Column("entry", LargeBinary),
    Column("attempts", Integer, nullable=False, server_default=text("1")),
    Column("first_seen", TS, nullable=False, server_default=text("now()")),
    Column("last_seen", TS, nullable=False, server_default=text("now()")),
)

conflicts = Table(
    "conflicts", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("thread_id", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("incoming_stream_id", Text, primary_key=True),
    Column("existing_body", LargeBinary),
    Column("incoming_body", LargeBinary, nullable=False),
    Column("detected_at", TS, nullable=False, server_default=text("now()")),
    Column("resolved_at", TS),
    Column("resolution", Text),
)

#: The stream position consumed per tenant, written in the same transaction as the rows.
offsets = Table(
    "offsets", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("stream_ms", BigInteger, nullable=False),
    Column("stream_seq", BigInteger, nullable=False),
    Column("updated_at", TS, nullable=False, server_default=text("now()")),
)

#: Login roles bound to one tenant (readers). Row-level security lets a role see only its own row.
tenant_roles = Table(
    "tenant_roles", metadata,
    Column("role_name", Text, primary_key=True),
    Column("tenant_id", Text, nullable=False),
    Column("created_at", TS, nullable=False, server_default=text("now()")),
)

#: Where an archived thread's history is (``projections.archive``): one row per thread, the newest
#: manifest and the head of what S3 holds. The ``threads`` row stays beside it (status, head, last hash).
archives = Table(
    "archives", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("thread_id", Text, primary_key=True),
    Column("manifest_key", Text, nullable=False),
    #: The archive holds seq 1..last_seq; ``last_hash`` is the chain hash at last_seq.
    Column("last_seq", BigInteger, nullable=False),
    Column("last_hash", LargeBinary, nullable=False),
    Column("event_count", BigInteger, nullable=False),
    Column("segments", Integer, nullable=False),
    #: Compressed bytes of every segment in S3.
    Column("stored_bytes", BigInteger, nullable=False),
    Column("codec_version", SmallInteger, nullable=False),
    Column("archived_at", TS, nullable=False, server_default=text("now()")),
)

#: The shadow ("green") copy of ``threads`` a rebuild builds while the live one serves
#: (``projections.rebuild``); a row's ``last_seq`` is also how far the rebuild got in that thread, so a
#: rebuild killed at any point resumes there. A tenant's rows go when its rebuild is swapped in.
rebuild_threads = Table(
    "rebuild_threads", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("thread_id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("last_hash", LargeBinary),
    Column("max_seq", BigInteger, nullable=False),
    Column("node", Text),
    Column("event_count", BigInteger, nullable=False),
    Column("branches", JSONB, nullable=False),
)

#: The shadow copy of ``snapshots``, written with the ``rebuild_threads`` row in one transaction.
rebuild_snapshots = Table(
    "rebuild_snapshots", metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("thread_id", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("state", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
)

TENANT_TABLES = ("events", "threads", "snapshots", "snapshot_chunks", "dead_letters", "conflicts", "offsets",
                 "archives", "rebuild_threads", "rebuild_snapshots")


#: ``events``' hash partitions: the migrations create them, but SQLAlchemy declares only the
#: partitioned parent, so autogenerate would otherwise propose dropping them.
_EVENT_PARTITION = re.compile(r"events_p\d+")


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Autogenerate's filter: the ``journal`` schema, less what ``metadata`` cannot declare."""
    if type_ == "schema":
        return name == SCHEMA
    if type_ == "table":
        return not (name and _EVENT_PARTITION.fullmatch(name))
    return True


#: The Alembic options under which a database is compared with ``metadata``: env.py and the schema
#: test share them, so what the test proves is what ``alembic revision --autogenerate`` sees.
AUTOGENERATE_OPTIONS: dict[str, Any] = {
    "version_table_schema": SCHEMA,
    # Every table is in ``journal``, never the default schema, which is all Alembic reads otherwise.
    "include_schemas": True,
    "include_name": include_name,
    "compare_type": True,
    "compare_server_default": True,
}


_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


def compiled(statement: ClauseElement) -> str:
    """A statement built from these tables as PostgreSQL text with ``%(name)s`` parameters, for psycopg."""
    return str(statement.compile(dialect=_DIALECT))
