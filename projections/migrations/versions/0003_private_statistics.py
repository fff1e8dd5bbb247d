"""Statistics and sizes of tables are not for tenant readers: they count every tenant's rows.

A reader bound to tenant A could read ``pg_stat_all_tables.n_live_tup`` (or call
``pg_stat_get_live_tuples(oid)``, ``pg_relation_size()``, ``pg_database_size()``) on ``journal.events`` and its
partitions and learn how many rows other tenants have and how fast they grow. In this database,
EXECUTE on the per-object statistics functions and the size functions, and SELECT on the
statistics views built on them, are revoked from PUBLIC and granted back only to the roles that
operate the journal (``journal_owner``, ``journal_writer``) and to ``pg_read_all_stats`` (monitoring
agents). Superusers are unaffected.

Not closable here, because every client library and psql read them: ``pg_class.reltuples`` and
``relpages`` (a table's row and page estimates, as of its last ANALYZE or VACUUM), and the row
estimates ``EXPLAIN`` prints, which come from them and from ``pg_statistic``. Row-level security
hides ``pg_stats`` rows of tables with RLS already.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

GRANTEES = "journal_owner, journal_writer, pg_read_all_stats"

# Views: every per-table, per-index, per-sequence and per-function statistics view, and the database
# totals (tup_inserted counts every tenant's rows). Functions: every pg_stat_get_* taking one oid
# (a relation's or a database's counters; the views call them as the querying role), and the sizes
# (a database's total, minus a tenant's own rows, is every other tenant's).
_OBJECTS = r"""
SELECT format('TABLE pg_catalog.%I', c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'pg_catalog' AND c.relkind = 'v'
  AND (c.relname ~ '^pg_stat(io)?_(xact_)?(all|user|sys)_(tables|indexes|sequences|functions)$'
       OR c.relname IN ('pg_stat_database', 'pg_stat_database_conflicts'))
UNION ALL
SELECT format('FUNCTION %s', p.oid::regprocedure)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'pg_catalog'
  AND ((p.proname LIKE 'pg\_stat\_get\_%' AND p.pronargs = 1 AND p.proargtypes[0] = 'oid'::regtype)
       OR p.proname IN ('pg_relation_size', 'pg_total_relation_size', 'pg_table_size', 'pg_indexes_size',
                        'pg_database_size', 'pg_tablespace_size'))
"""


def _each(statement: str) -> str:
    """A DO block running ``statement`` (a SQL expression of ``obj`` and ``privilege``) for every object."""
    return f"""
DO $$
DECLARE obj text; privilege text;
BEGIN
  FOR obj IN {_OBJECTS} LOOP
    privilege := CASE WHEN obj LIKE 'TABLE %' THEN 'SELECT' ELSE 'EXECUTE' END;
    EXECUTE {statement};
  END LOOP;
END $$;
"""


def upgrade() -> None:
    op.execute(_each("format('REVOKE ALL ON %s FROM PUBLIC', obj)"))
    op.execute(_each(f"format('GRANT %s ON %s TO {GRANTEES}', privilege, obj)"))


def downgrade() -> None:
    op.execute(_each(f"format('REVOKE ALL ON %s FROM {GRANTEES}', obj)"))
    op.execute(_each("format('GRANT %s ON %s TO PUBLIC', privilege, obj)"))
