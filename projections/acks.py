"""Acknowledgements whose replies are read one batch later.

After a commit the worker sends one ``acknowledge.lua`` call per tenant (committed mark, XACK,
projected markers) and goes on with its next batch while Valkey runs them; the replies are read
before the next calls are sent, or at ``flush()``. Waiting for them at once cost about a sixth
of a backlog drain (``scripts/bench_project.py``, 5,000 tenants).

Nothing here changes what is acknowledged, only when the worker waits: an entry is acknowledged
after its commit, as before; if the connection breaks before a reply is read, the entries stay
pending and are redelivered, then skipped as duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from journal import logs
from projections.nodes import deferred_replies

log = logs.get_logger("projections.acks")


@dataclass(frozen=True, slots=True)
class Call:
    """One tenant's acknowledgement: the script's keys and arguments, and the committed position (ms)."""

    tenant: str
    keys: list[str]
    args: list[Any]
    committed_ms: int | None


class DeferredAcks:
    def __init__(self, url: str, script: Script, client: Any = None) -> None:
        """``client``: the projector's Redis client; when it is a cluster client, calls go to each tenant's node."""
        self.script = script
        self._wire = deferred_replies(url, client)
        self._sent: list[Call] = []
        self._loaded = False  # the script, on the current connection
        #: Calls the server refused (``flush``), since this object was made.
        self.refused = 0

    def send(self, calls: list[Call]) -> list[Call]:
        """Send ``calls`` without waiting; returns the earlier calls whose mark was stale (Redis lost its tail)."""
        stale = self.flush()
        if calls:
            if not self._loaded:  # else every first call would answer NOSCRIPT
                self._wire.client.script_load(self.script.script)
                self._loaded = True
            self._wire.send([("EVALSHA", self.script.sha, len(c.keys), *c.keys, *c.args) for c in calls])
            self._sent = calls
        return stale

    def flush(self) -> list[Call]:
        """Wait for the calls sent last; returns those whose mark was stale.

        A call the server refuses concerns its tenant only (its user can write non-numbers into its own
        ``projected`` hash, on which the script fails): it is logged and its entries stay pending, to be
        redelivered and skipped as duplicates; it never stops the acknowledgement of other tenants.
        """
        sent, self._sent = self._sent, []
        stale: list[Call] = []
        for call, reply in zip(sent, self._wire.replies(), strict=True):
            if isinstance(reply, NoScriptError):  # the server restarted or flushed its scripts
                try:
                    reply = self.script(keys=call.keys, args=call.args, client=self._wire.client)
                except redis.ResponseError as e:
                    reply = e
            if isinstance(reply, redis.ResponseError):
                self.refused += 1
                log.error("acknowledgement_refused", tenant=call.tenant, error=str(reply)[:500],
                          entries=call.args[4] if len(call.args) > 4 else None)
            elif int(reply) == 1:
                stale.append(call)
        return stale

    def reset(self) -> None:
        """Forget unread replies and drop the connection (after a connection error)."""
        self._sent = []
        self._wire.reset()
        self._loaded = False
