"""threads.branches: the stack of open nodes, so the projector moves threads.node as the fold does.

``threads.node`` followed the last event that carried a node, so after a ``node_exit`` it kept
the exited node while the fold returns to the enclosing one. The projector now moves status and
node with ``journal.lifecycle.step`` per event, which needs the open nodes, kept here. Existing
rows get their status, node and branches recomputed from their chained events (only the status
and node events are read).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from typing import Any

import orjson
from alembic import op

from journal import lifecycle

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_MOVES_SQL = """
SELECT e.tenant_id, e.thread_id, e.type, e.node, e.payload
FROM journal.threads t JOIN journal.events e ON e.tenant_id = t.tenant_id AND e.thread_id = t.thread_id
WHERE e.seq <= t.last_seq AND e.type = ANY(%(types)s)
ORDER BY e.tenant_id, e.thread_id, e.seq
"""


def upgrade() -> None:
    op.execute("ALTER TABLE journal.threads ADD COLUMN branches jsonb NOT NULL DEFAULT '[]'::jsonb")
    conn = op.get_bind()
    moved: dict[tuple[str, str], lifecycle.Position] = {}
    # Through the DBAPI cursor: a server-side pass over the status and node events only, in seq order.
    cur = conn.connection.cursor()
    cur.execute(_MOVES_SQL, {"types": sorted(lifecycle.MOVES)})
    for tenant, thread, type_, node, payload in cur.fetchall():
        key = (tenant, thread)
        moved[key] = lifecycle.step(moved.get(key, lifecycle.Position()), type_, payload, node)
    updates: list[tuple[Any, ...]] = [(pos.status, pos.node, orjson.dumps(list(pos.branches)).decode(), t, th)
                                      for (t, th), pos in moved.items()]
    if updates:
        cur.executemany("UPDATE journal.threads SET status = CASE WHEN status = 'abandoned' THEN status ELSE %s END, "
                        "node = %s, branches = %s::jsonb WHERE tenant_id = %s AND thread_id = %s", updates)
    # Threads without any status or node event: no node (the fold's), whatever an event carried.
    op.execute("UPDATE journal.threads t SET node = NULL WHERE node IS NOT NULL AND NOT EXISTS (SELECT 1 FROM "
               "journal.events e WHERE e.tenant_id = t.tenant_id AND e.thread_id = t.thread_id AND e.seq <= t.last_seq "
               "AND e.type IN ('node_enter', 'node_exit'))")


def downgrade() -> None:
    op.execute("ALTER TABLE journal.threads DROP COLUMN branches")
