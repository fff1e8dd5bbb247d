"""Alembic environment: online migrations only, version table in the ``journal`` schema."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from projections.tables import AUTOGENERATE_OPTIONS, SCHEMA, metadata

config = context.config


def run_migrations_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        connection.commit()
        context.configure(connection=connection, target_metadata=metadata, **AUTOGENERATE_OPTIONS)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
