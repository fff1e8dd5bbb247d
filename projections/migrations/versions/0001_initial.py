"""Initial schema: events (hash-partitioned), threads, snapshots, dead letters, conflicts,
offsets, tenant roles; the four roles; forced row-level security on every tenant table.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

EVENT_PARTITIONS = 16
TENANT_TABLES = ("events", "threads", "snapshots", "dead_letters", "conflicts", "offsets")
READABLE = ("events", "threads", "snapshots", "dead_letters", "conflicts")
ROLES = ("journal_owner", "journal_writer", "journal_reader", "journal_app")

SCHEMA_SQL = """
CREATE TABLE journal.events (
    tenant_id text NOT NULL,
    thread_id text NOT NULL,
    seq bigint NOT NULL,
    type text NOT NULL,
    node text,
    tool text,
    agent_id text,
    actor jsonb NOT NULL DEFAULT '{}'::jsonb,
    ts_ms bigint NOT NULL,
    appended_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    payload jsonb,
    blob_sha256 text,
    blob_size bigint,
    idempotency_key text,
    version smallint NOT NULL,
    body bytea NOT NULL,
    stream_id text NOT NULL,
    prev_hash bytea,
    hash bytea,
    PRIMARY KEY (tenant_id, thread_id, seq)
) PARTITION BY HASH (tenant_id);

CREATE INDEX events_tool_idx ON journal.events (tenant_id, tool, appended_at) WHERE tool IS NOT NULL;
CREATE INDEX events_time_idx ON journal.events (tenant_id, thread_id, appended_at);

CREATE TABLE journal.threads (
    tenant_id text NOT NULL,
    thread_id text NOT NULL,
    status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'paused', 'completed', 'failed', 'abandoned')),
    last_seq bigint NOT NULL DEFAULT 0,
    last_hash bytea,
    max_seq bigint NOT NULL DEFAULT 0,
    node text,
    event_count bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    fenced boolean NOT NULL DEFAULT false,
    fence_reason text,
    PRIMARY KEY (tenant_id, thread_id)
) WITH (fillfactor = 70);  -- room on each page for HOT updates: every batch rewrites its threads' rows
CREATE INDEX threads_active_idx ON journal.threads (tenant_id, thread_id) WHERE status = 'active';

CREATE TABLE journal.snapshots (
    tenant_id text NOT NULL,
    thread_id text NOT NULL,
    seq bigint NOT NULL,
    state bytea NOT NULL,
    hash bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, thread_id, seq)
);

CREATE TABLE journal.dead_letters (
    tenant_id text NOT NULL,
    stream_id text NOT NULL,
    thread_id text,
    seq bigint,
    reason text NOT NULL,
    entry bytea,
    attempts integer NOT NULL DEFAULT 1,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, stream_id)
);

CREATE TABLE journal.conflicts (
    tenant_id text NOT NULL,
    thread_id text NOT NULL,
    seq bigint NOT NULL,
    incoming_stream_id text NOT NULL,
    existing_body bytea,
    incoming_body bytea NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz,
    resolution text,
    PRIMARY KEY (tenant_id, thread_id, seq, incoming_stream_id)
);

CREATE TABLE journal.offsets (
    tenant_id text PRIMARY KEY,
    stream_ms bigint NOT NULL,
    stream_seq bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE journal.tenant_roles (
    role_name text PRIMARY KEY,
    tenant_id text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The tenant a session may see. A login role bound in tenant_roles sees its tenant whatever it
-- sets; only the pooled application role trusts the per-transaction setting journal.tenant.
-- SECURITY INVOKER on purpose: current_user is the caller, and tenant_roles' own RLS shows a
-- role only its own binding.
CREATE FUNCTION journal.current_tenant() RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT COALESCE(
        (SELECT r.tenant_id FROM journal.tenant_roles r WHERE r.role_name = current_user::text),
        CASE WHEN current_user::text = 'journal_app'
             THEN NULLIF(current_setting('journal.tenant', true), '') END)
$$;
"""


def _roles_sql() -> str:
    return "\n".join(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{r}') THEN "
        f"CREATE ROLE {r} NOLOGIN; END IF; END $$;"
        for r in ROLES
    )


def upgrade() -> None:
    op.execute(_roles_sql())
    op.execute(SCHEMA_SQL)
    for i in range(EVENT_PARTITIONS):
        op.execute(f"CREATE TABLE journal.events_p{i:02d} PARTITION OF journal.events "
                   f"FOR VALUES WITH (MODULUS {EVENT_PARTITIONS}, REMAINDER {i})")
        # Partitions are reached only through the parent (no grants on them); RLS forced on
        # them too, with no policy, so even a mistaken grant shows nothing.
        op.execute(f"ALTER TABLE journal.events_p{i:02d} OWNER TO journal_owner")
        op.execute(f"ALTER TABLE journal.events_p{i:02d} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE journal.events_p{i:02d} FORCE ROW LEVEL SECURITY")
    op.execute("ALTER SCHEMA journal OWNER TO journal_owner")
    op.execute("ALTER FUNCTION journal.current_tenant() OWNER TO journal_owner")
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute("GRANT USAGE ON SCHEMA journal TO journal_writer, journal_reader, journal_app")
    for t in (*TENANT_TABLES, "tenant_roles"):
        op.execute(f"ALTER TABLE journal.{t} OWNER TO journal_owner")
        op.execute(f"ALTER TABLE journal.{t} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE journal.{t} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY owner_all ON journal.{t} TO journal_owner USING (true) WITH CHECK (true)")
    for t in TENANT_TABLES:
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON journal.{t} TO journal_writer")
        op.execute(f"CREATE POLICY writer_all ON journal.{t} TO journal_writer USING (true) WITH CHECK (true)")
    for t in READABLE:
        op.execute(f"GRANT SELECT ON journal.{t} TO journal_reader, journal_app")
        op.execute(f"CREATE POLICY tenant_read ON journal.{t} FOR SELECT TO journal_reader, journal_app "
                   "USING (tenant_id = journal.current_tenant())")
    op.execute("GRANT SELECT ON journal.tenant_roles TO journal_reader, journal_app, journal_writer")
    op.execute("CREATE POLICY own_binding ON journal.tenant_roles FOR SELECT TO PUBLIC "
               "USING (role_name = current_user::text)")


def downgrade() -> None:
    # The schema stays: it holds Alembic's own version table, whose row Alembic deletes after this.
    for t in (*TENANT_TABLES, "tenant_roles"):
        op.execute(f"DROP TABLE IF EXISTS journal.{t} CASCADE")
    op.execute("DROP FUNCTION IF EXISTS journal.current_tenant()")
