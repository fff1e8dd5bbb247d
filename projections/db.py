"""The boundary to PostgreSQL: connections in a role, migrations, tenant reader roles.

psycopg errors are translated to ``JournalError``s here (and in the worker's batch loop).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy.dialects import postgresql

from journal.durable import BOUND_TENANT_SQL
from journal.errors import AccessDenied, ConfigError, StoreUnavailable
from journal.keys import validate_id
from journal.settings import Settings, with_credentials
from projections import statements, tables

WRITER = "journal_writer"
READER = "journal_reader"
APP = "journal_app"
OWNER = "journal_owner"

_r = tables.tenant_roles
_bind = postgresql.insert(_r).values(role_name=sa.bindparam("role"), tenant_id=sa.bindparam("tenant"))
#: Bind a reader role to its tenant (a rotated role keeps its row, rebound to the tenant given).
BIND_READER_SQL = tables.compiled(
    _bind.on_conflict_do_update(index_elements=[_r.c.role_name], set_={"tenant_id": _bind.excluded.tenant_id}))
#: Remove a reader role's binding.
UNBIND_READER_SQL = tables.compiled(sa.delete(_r).where(_r.c.role_name == sa.bindparam("role")))


def _require_url(settings: Settings) -> str:
    if not settings.database_url:
        raise ConfigError("no PostgreSQL URL: set JOURNAL_DATABASE_URL or run `agent-journal up`")
    return settings.database_url


def _open(url: str, autocommit: bool) -> psycopg.Connection:
    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=5)
    except psycopg.OperationalError as e:
        raise StoreUnavailable(f"PostgreSQL unreachable: {e}. Check JOURNAL_DATABASE_URL and that the server "
                               "runs (`agent-journal status`).") from e


def connect(settings: Settings, *, role: str | None = WRITER, autocommit: bool = False) -> psycopg.Connection:
    """A connection from ``JOURNAL_DATABASE_URL`` that has ``SET ROLE role`` (RLS applies to it)."""
    conn = _open(_require_url(settings), autocommit)
    if role:
        try:
            conn.execute(statements.SET_ROLE.format(sql.Identifier(role)))
            if not autocommit:
                conn.commit()
        except psycopg.Error as e:
            conn.close()
            raise AccessDenied(f"cannot SET ROLE {role}: {e}. Run `agent-journal migrate` (it creates the roles) "
                               f"and grant {role} to the database user.") from e
    return conn


def alembic_config(settings: Settings) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    url = _require_url(settings)
    cfg.set_main_option("sqlalchemy.url", "postgresql+psycopg://" + url.split("://", 1)[1].replace("%", "%%"))
    return cfg


def migrate(settings: Settings, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    try:
        command.upgrade(alembic_config(settings), revision)
    except Exception as e:  # alembic wraps driver errors in SQLAlchemy ones
        raise StoreUnavailable(f"migration to {revision} failed: {e}") from e


@dataclass(frozen=True, slots=True)
class ReaderCredentials:
    tenant: str
    role: str
    password: str

    def database_url(self, base_url: str) -> str:
        """``base_url`` with this reader's user and password."""
        return with_credentials(base_url, self.role, self.password)


def reader_role_name(tenant: str) -> str:
    # Role names are cluster-wide and at most 63 bytes; tenant ids go up to 128 characters.
    return "jr_" + hashlib.sha256(validate_id(tenant, "tenant").encode()).hexdigest()[:24]


def tenant_reader_exists(settings: Settings, tenant: str) -> bool:
    """Whether the tenant's reader login role exists."""
    with connect(settings, role=None, autocommit=True) as conn:
        return conn.execute(statements.ROLE_EXISTS, (reader_role_name(tenant),)).fetchone() is not None


def bound_tenant(url: str) -> str | None:
    """The tenant the login of ``url`` reads as a tenant reader, or None for any other login.

    A reader sees its own row of ``journal.tenant_roles`` (and only it), so this needs no
    administrative URL: agents and auditors export one ``JOURNAL_DATABASE_URL`` and it works.
    """
    with _open(url, autocommit=True) as conn:
        try:
            row = conn.execute(BOUND_TENANT_SQL).fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege):
            return None  # no schema yet, or a login outside the journal's roles: not a tenant reader
    return str(row[0]) if row else None


def create_tenant_reader(settings: Settings, tenant: str, password: str | None = None) -> ReaderCredentials:
    """A login role that sees only ``tenant``'s rows, whatever SQL it sends (rotates if it exists)."""
    role = reader_role_name(tenant)
    password = password or secrets.token_urlsafe(24)
    with connect(settings, role=None, autocommit=True) as conn:
        exists = conn.execute(statements.ROLE_EXISTS, (role,)).fetchone()
        ddl = statements.ALTER_READER if exists else statements.CREATE_READER
        conn.execute(ddl.format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(statements.GRANT_ROLE.format(sql.Identifier(READER), sql.Identifier(role)))
        conn.execute(statements.SET_ROLE.format(sql.Identifier(OWNER)))
        conn.execute(BIND_READER_SQL, {"role": role, "tenant": tenant})
    return ReaderCredentials(tenant, role, password)


def revoke_tenant_reader(settings: Settings, tenant: str) -> bool:
    """Drop the tenant's reader role and its binding; True if it existed."""
    role = reader_role_name(tenant)
    with connect(settings, role=None, autocommit=True) as conn:
        if not conn.execute(statements.ROLE_EXISTS, (role,)).fetchone():
            return False
        conn.execute(statements.TERMINATE_SESSIONS, (role,))
        conn.execute(statements.SET_ROLE.format(sql.Identifier(OWNER)))
        conn.execute(UNBIND_READER_SQL, {"role": role})
        conn.execute(statements.RESET_ROLE)
        conn.execute(statements.DROP_ROLE.format(sql.Identifier(role)))
    return True
