"""Redis commands sent now whose replies are read later, on a dedicated connection.

The projector uses two: acknowledgements sent after a commit are read after the next batch, and
the next round's XREADGROUP is sent while the current round is written to PostgreSQL. Valkey
works while the worker does, instead of the worker waiting for it. On one connection Valkey runs
the commands in the order sent and replies in that order, so reading them later changes when the
worker waits, not what happens.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import redis

from journal.redis_store import connect
from projections import redis_internals


class DeferredReplies:
    def __init__(self, url: str, *, partial_reads: bool | None = None) -> None:
        """``partial_reads``: parse replies as they arrive (redis-py internals); default: if the version is known."""
        self.url = url
        if partial_reads is None:
            partial_reads = redis_internals.known()
            if not partial_reads:
                redis_internals.fall_back("partial_reads", "redis-py version outside the known range")
        self.partial_reads = partial_reads
        self._client: redis.Redis | None = None
        self._unread = 0
        #: Replies parsed ahead of ``replies()`` (``read_arrived``).
        self._read: list[Any] = []

    @property
    def client(self) -> redis.Redis:
        """A client on the dedicated connection, for ordinary commands when nothing is unread."""
        if self._client is None:
            self._client = connect(self.url, single_connection_client=True)
        return self._client

    @property
    def unread(self) -> int:
        """Replies not yet returned by ``replies()`` (some may be parsed already, by ``read_arrived``)."""
        return self._unread + len(self._read)

    def send(self, commands: Sequence[Sequence[Any]]) -> None:
        """Send ``commands`` in one write and return without waiting for their replies.

        Replies of commands sent before and still unread come first: ``replies()`` returns them all, in order.
        """
        if commands:
            conn: Any = self.client.connection
            conn.send_packed_command(conn.pack_commands(commands))
            self._unread += len(commands)

    def replies(self) -> list[Any]:
        """The raw replies of the commands sent, in order; an error reply is returned as its exception.

        Every reply is read even after an error, so the connection stays in step with the server.
        """
        while self._unread:
            self.read_one()
        out, self._read = self._read, []
        return out

    def read_one(self) -> None:
        """Wait for and parse the next unread reply now, for ``replies()`` to return later."""
        if self._unread:
            self._unread -= 1
            try:
                conn: Any = self.client.connection
                self._read.append(conn.read_response())
            except redis.ResponseError as e:
                self._read.append(e)

    def read_arrived(self) -> None:
        """Take in what has arrived without waiting, and parse the next reply if it is complete.

        Lets the caller spread the parsing of large replies over moments it would otherwise wait. A
        large reply arrives over many of Valkey's event-loop turns, interleaved with the commands after
        it: waiting for it whole took three times as long as parsing it.
        """
        if not self._unread:
            return
        conn: Any = self.client.connection
        parser: Any = getattr(conn, "_parser", None)
        reader = getattr(parser, "_reader", None)
        not_enough = getattr(sys.modules[type(parser).__module__], "NOT_ENOUGH_DATA", None)
        if not self.partial_reads or reader is None or not_enough is None or not hasattr(parser, "read_from_socket"):
            if self.partial_reads:  # a known version, but not its hiredis parser (hiredis not installed?)
                redis_internals.fall_back("partial_reads", f"connection parser {type(parser).__name__} has no "
                                          "hiredis reader")
            if conn.can_read(0):
                self.read_one()
            return
        while parser.read_from_socket(timeout=0, raise_on_timeout=False):
            pass
        reply = reader.gets()
        if reply is not_enough:
            return
        if isinstance(reply, redis.ConnectionError):
            raise reply
        self._unread -= 1
        self._read.append(reply)  # an error reply arrives as its exception, as from replies()

    def reset(self) -> None:
        """Forget unread replies and drop the connection (after a connection error)."""
        self._unread = 0
        self._read = []
        if self._client is not None:
            self._client.close()
            self._client = None
