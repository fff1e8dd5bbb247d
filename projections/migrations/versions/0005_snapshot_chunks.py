"""Snapshot chunks: the sealed, shared parts of snapshots' growing lists (incremental snapshots).

A snapshot of a thread that keeps every message stored the whole list every K events; now the
old items are sealed once in ``snapshot_chunks`` (named by the SHA-256 of their bytes) and later
snapshots reference them. Tenant isolation as for ``snapshots`` (migration 0001): owned by
``journal_owner``, forced row-level security, the writer writes, readers and ``journal_app`` see
their tenant's rows only.

Revision ID: 0005_snapshot_chunks
Revises: 0006_rebuild
"""

from __future__ import annotations

from alembic import op

revision = "0005_snapshot_chunks"
down_revision = "0006_rebuild"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
CREATE TABLE journal.snapshot_chunks (
    tenant_id text NOT NULL,
    thread_id text NOT NULL,
    chunk_id bytea NOT NULL,
    body bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, thread_id, chunk_id)
)""")
    op.execute("ALTER TABLE journal.snapshot_chunks OWNER TO journal_owner")
    op.execute("ALTER TABLE journal.snapshot_chunks ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE journal.snapshot_chunks FORCE ROW LEVEL SECURITY")
    op.execute("CREATE POLICY owner_all ON journal.snapshot_chunks TO journal_owner USING (true) WITH CHECK (true)")
    op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON journal.snapshot_chunks TO journal_writer")
    op.execute("CREATE POLICY writer_all ON journal.snapshot_chunks TO journal_writer USING (true) WITH CHECK (true)")
    op.execute("GRANT SELECT ON journal.snapshot_chunks TO journal_reader, journal_app")
    op.execute("CREATE POLICY tenant_read ON journal.snapshot_chunks FOR SELECT TO journal_reader, journal_app "
               "USING (tenant_id = journal.current_tenant())")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS journal.snapshot_chunks CASCADE")
