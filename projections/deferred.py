"""Redis commands sent now whose replies are read later, on a dedicated connection.

The projector uses two: acknowledgements sent after a commit are read after the next batch, and
the next round's XREADGROUP is sent while the current round is written to PostgreSQL. Valkey
works while the worker does, instead of the worker waiting for it. On one connection Valkey runs
the commands in the order sent and replies in that order, so reading them later changes when the
worker waits, not what happens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from journal.redis_store import connect


class DeferredReplies:
    def __init__(self, url: str) -> None:
        self.url = url
        self._client: redis.Redis | None = None
        self._unread = 0

    @property
    def client(self) -> redis.Redis:
        """A client on the dedicated connection, for ordinary commands when nothing is unread."""
        if self._client is None:
            self._client = connect(self.url, single_connection_client=True)
        return self._client

    @property
    def unread(self) -> int:
        return self._unread

    def send(self, commands: Sequence[Sequence[Any]]) -> None:
        """Send ``commands`` in one write and return without waiting for their replies."""
        if self._unread:
            raise RuntimeError("read the replies of the commands sent before sending more")
        if commands:
            conn: Any = self.client.connection
            conn.send_packed_command(conn.pack_commands(commands))
            self._unread = len(commands)

    def replies(self) -> list[Any]:
        """The raw replies of the commands sent, in order; an error reply is returned as its exception.

        Every reply is read even after an error, so the connection stays in step with the server.
        """
        n, self._unread = self._unread, 0
        conn: Any = self.client.connection
        out: list[Any] = []
        for _ in range(n):
            try:
                out.append(conn.read_response())
            except redis.ResponseError as e:
                out.append(e)
        return out

    def reset(self) -> None:
        """Forget unread replies and drop the connection (after a connection error)."""
        self._unread = 0
        if self._client is not None:
            self._client.close()
            self._client = None
