"""The archive stub: where a thread's history went when it left ``journal.events`` for S3.

One row per archived thread. ``last_seq``/``last_hash`` are the head of what the archive holds
(seq 1..last_seq), ``manifest_key`` the newest manifest object (it lists every segment from
seq 1), so the client, the replayer and the append's head restore find an archived history
without listing the bucket. Tenant readers and ``journal_app`` see their own tenant's rows only,
as for every tenant table.

Revision ID: 0004_archive
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004_archive"
down_revision = "0003"
branch_labels = None
depends_on = None

CREATE = """
CREATE TABLE journal.archives (
    tenant_id text NOT NULL,
    thread_id text NOT NULL,
    manifest_key text NOT NULL,
    last_seq bigint NOT NULL,
    last_hash bytea NOT NULL,
    event_count bigint NOT NULL,
    segments integer NOT NULL,
    stored_bytes bigint NOT NULL,
    codec_version smallint NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, thread_id)
)
"""


def upgrade() -> None:
    op.execute(CREATE)
    op.execute("ALTER TABLE journal.archives OWNER TO journal_owner")
    op.execute("ALTER TABLE journal.archives ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE journal.archives FORCE ROW LEVEL SECURITY")
    op.execute("CREATE POLICY owner_all ON journal.archives TO journal_owner USING (true) WITH CHECK (true)")
    op.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON journal.archives TO journal_writer")
    op.execute("CREATE POLICY writer_all ON journal.archives TO journal_writer USING (true) WITH CHECK (true)")
    op.execute("GRANT SELECT ON journal.archives TO journal_reader, journal_app")
    op.execute("CREATE POLICY tenant_read ON journal.archives FOR SELECT TO journal_reader, journal_app "
               "USING (tenant_id = journal.current_tenant())")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS journal.archives")
