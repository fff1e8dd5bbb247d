"""The projector's connections, opened on first use and dropped together after a connection error.

Shared by the worker's rooms (reader, committer, maintenance): one Redis client for ordinary
commands, one PostgreSQL connection (every batch and every maintenance query run on it, one at a
time), and the Lua scripts registered on that Redis client. The dedicated connections whose replies
are read later (``projections.deferred``) belong to the room that uses them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from journal.errors import StoreUnavailable
from journal.redis_store import connect as redis_connect
from journal.redis_store import script_source
from journal.settings import Settings
from projections import db


class Links:
    def __init__(self, settings: Settings, prepare_redis: Callable[[redis.Redis], None] | None = None) -> None:
        self.settings = settings
        #: Called once per new Redis client (the reader installs its XREADGROUP reply parser).
        self._prepare_redis = prepare_redis
        self._redis: redis.Redis | None = None
        self._pg: psycopg.Connection | None = None
        self._scripts: dict[str, Any] = {}

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            if not self.settings.redis_url:
                raise StoreUnavailable("no Redis URL configured for the projector")
            self._redis = redis_connect(self.settings.redis_url)
            if self._prepare_redis is not None:
                self._prepare_redis(self._redis)
        return self._redis

    @property
    def pg(self) -> psycopg.Connection:
        if self._pg is None or self._pg.closed:
            self._pg = db.connect(self.settings)
        return self._pg

    def pg_idle(self) -> bool:
        """Whether the PostgreSQL connection is outside a transaction (or not open)."""
        return self._pg is None or self._pg.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    def script(self, name: str) -> Any:
        """A Lua script of journal/lua, registered once per client."""
        if name not in self._scripts:
            self._scripts[name] = self.redis.register_script(script_source(name))
        return self._scripts[name]

    def reset_pg(self) -> None:
        """Drop the PostgreSQL connection (after a connection error); the next use opens a new one."""
        if self._pg is not None:
            with contextlib.suppress(psycopg.Error):
                self._pg.close()
            self._pg = None

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        if self._redis is not None:
            self._redis.close()
