"""Acknowledgements whose replies are read one batch later.

After a commit the worker sends one ``acknowledge.lua`` call per tenant (committed mark, XACK,
projected markers) and goes on with its next batch while Valkey runs them; the replies are read
before the next calls are sent, or at ``flush()``. Waiting for them at once cost about a sixth
of a backlog drain (``scripts/bench_project.py``, 5,000 tenants).

The calls go over one dedicated connection, so Valkey runs them in the order they were sent and
replies come back in that order. Nothing here changes what is acknowledged, only when the worker
waits: an entry is acknowledged after its commit, as before; if the connection breaks before a
reply is read, the entries stay pending and are redelivered, then skipped as duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from journal.redis_store import connect


@dataclass(frozen=True, slots=True)
class Call:
    """One tenant's acknowledgement: the script's keys and arguments, and the committed position (ms)."""

    tenant: str
    keys: list[str]
    args: list[Any]
    committed_ms: int | None


class DeferredAcks:
    def __init__(self, url: str, script: Script) -> None:
        self.url = url
        self.script = script
        self._client: redis.Redis | None = None
        self._sent: list[Call] = []

    def send(self, calls: list[Call]) -> list[Call]:
        """Send ``calls`` without waiting; returns the earlier calls whose mark was stale (Redis lost its tail)."""
        stale = self.flush()
        if calls:
            conn = self._connection()
            conn.send_packed_command(conn.pack_commands(
                [("EVALSHA", self.script.sha, len(c.keys), *c.keys, *c.args) for c in calls]))
            self._sent = calls
        return stale

    def flush(self) -> list[Call]:
        """Wait for the calls sent last; returns those whose mark was stale."""
        sent, self._sent = self._sent, []
        if not sent:
            return []
        conn = self._connection()
        stale: list[Call] = []
        retry: list[Call] = []
        first_error: redis.ResponseError | None = None
        for call in sent:  # every reply is read, even after an error, so the connection stays in step
            try:
                reply = conn.read_response()
            except NoScriptError:  # first use, or the server restarted or flushed its scripts
                retry.append(call)
                continue
            except redis.ResponseError as e:
                first_error = first_error or e
                continue
            if int(reply) == 1:
                stale.append(call)
        for call in retry:  # Script.__call__ loads the script again
            if int(self.script(keys=call.keys, args=call.args, client=self._client)) == 1:
                stale.append(call)
        if first_error is not None:
            raise first_error
        return stale

    def reset(self) -> None:
        """Forget unread replies and drop the connection (after a connection error)."""
        self._sent = []
        if self._client is not None:
            self._client.close()
            self._client = None

    def _connection(self) -> Any:
        if self._client is None:
            self._client = connect(self.url, single_connection_client=True)
            self._client.script_load(self.script.script)  # else every first call would answer NOSCRIPT
        return self._client.connection
