"""Shadow tables for the blue/green rebuild of the derived tables (``projections.rebuild``).

``rebuild_threads`` and ``rebuild_snapshots`` mirror the derived columns of ``threads`` and
``snapshots``. A rebuild fills them while the live tables serve, then swaps them in per tenant.
Only the operator roles reach them: they hold nothing a tenant reader needs.

Revision ID: 0006_rebuild
Revises: 0004_archive
"""

from __future__ import annotations

from alembic import op

revision = "0006_rebuild"
down_revision = "0004_archive"
branch_labels = None
depends_on = None

SHADOWS = ("rebuild_threads", "rebuild_snapshots")


def upgrade() -> None:
    op.execute("""
CREATE TABLE journal.rebuild_threads (
    tenant_id text NOT NULL,
    thread_id text NOT NULL,
    status text NOT NULL,
    last_seq bigint NOT NULL,
    last_hash bytea,
    max_seq bigint NOT NULL,
    node text,
    event_count bigint NOT NULL,
    branches jsonb NOT NULL,
    PRIMARY KEY (tenant_id, thread_id)
)""")
    op.execute("""
CREATE TABLE journal.rebuild_snapshots (
    tenant_id text NOT NULL,
    thread_id text NOT NULL,
    seq bigint NOT NULL,
    state bytea NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (tenant_id, thread_id, seq)
)""")
    for t in SHADOWS:
        op.execute(f"ALTER TABLE journal.{t} OWNER TO journal_owner")
        op.execute(f"ALTER TABLE journal.{t} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE journal.{t} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY owner_all ON journal.{t} TO journal_owner USING (true) WITH CHECK (true)")
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON journal.{t} TO journal_writer")
        op.execute(f"CREATE POLICY writer_all ON journal.{t} TO journal_writer USING (true) WITH CHECK (true)")


def downgrade() -> None:
    for t in SHADOWS:
        op.execute(f"DROP TABLE IF EXISTS journal.{t}")
