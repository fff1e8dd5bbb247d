"""The projector on a Valkey Cluster: reads and acknowledgements routed to the node of each tenant's slot.

A multi-key command must name keys of one slot (CROSSSLOT otherwise, even when two slots live on
the same node), and a cluster client cannot send commands now and read their replies later. So on
a cluster:

- the reader's chunks of tenants are per slot (:func:`slot_chunks`): one XREADGROUP per slot,
  over the tenants that share it (most slots hold one tenant: 5,000 tenants spread over 16,384);
- :class:`NodeReplies` does what :class:`projections.deferred.DeferredReplies` does, with one
  dedicated connection per primary: commands are routed by their first key, sent on their node's
  connection in one write per node, and their replies returned in the order sent;
- a reply that says the node did not run the command (``MOVED`` after a resharding or failover,
  ``ASK`` during a slot migration, ``TRYAGAIN`` while a slot's keys are split) is followed: the
  slot map is reloaded and the command sent again where it now lives. Sending it again is safe
  because it did not run; nothing else is resent (a connection error leaves entries pending,
  redelivered later and skipped as duplicates, as on one node).
- discovery scans every primary (:func:`scan_streams`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis
import redis.cluster

from journal import keys, logs
from journal.redis_store import REDIRECTS, is_cluster, redirect_of
from projections import redis_internals
from projections.deferred import DeferredReplies

log = logs.get_logger("projections.nodes")


def slot_chunks(client: Any, tenants: Iterable[str], size: int) -> list[list[str]]:
    """``tenants`` grouped by the slot of their stream (each group cut to ``size``), ordered by slot."""
    by_slot: dict[int, list[str]] = {}
    for t in sorted(tenants):
        by_slot.setdefault(client.keyslot(keys.stream(t)), []).append(t)
    return [group[i : i + size] for _, group in sorted(by_slot.items()) for i in range(0, len(group), size)]


def scan_streams(client: Any, match: str, count: int) -> list[Any]:
    """Every stream key matching ``match`` on every primary (one full pass)."""
    return list(client.scan_iter(match=match, count=count, _type="stream"))


def routing_key(command: Sequence[Any]) -> str:
    """The key whose slot decides the node: the first stream of an XREADGROUP, the first key of an EVALSHA."""
    name = str(command[0]).upper()
    if name == "XREADGROUP":
        at = next(i for i, a in enumerate(command) if isinstance(a, str) and a.upper() == "STREAMS")
        return str(command[at + 1])
    if name in ("EVALSHA", "EVAL", "FCALL"):
        return str(command[3])
    return str(command[1])


class NodeReplies:
    """:class:`DeferredReplies` over a cluster: one dedicated connection per primary, replies in the order sent."""

    def __init__(self, cluster: redis.cluster.RedisCluster, url: str) -> None:
        self.cluster = cluster
        self.url = url
        self._wires: dict[str, DeferredReplies] = {}
        #: Per command sent: its node and the command (to send again after a redirection).
        self._sent: list[tuple[str, Sequence[Any]]] = []
        #: Replies of the commands sent, by position, once read.
        self._done: dict[int, Any] = {}

    @property
    def client(self) -> Any:
        """The cluster client, for ordinary commands (``script_load`` reaches every primary)."""
        return self.cluster

    @property
    def unread(self) -> int:
        return len(self._sent)

    @property
    def partial_reads(self) -> bool:
        """Whether replies are parsed as they arrive (each node's connection decides as one server's would)."""
        return redis_internals.known()

    def _wire(self, node_name: str) -> DeferredReplies:
        if node_name not in self._wires:
            host, _, port = node_name.rpartition(":")
            self._wires[node_name] = DeferredReplies(_node_url(self.url, host, int(port)))
        return self._wires[node_name]

    def send(self, commands: Sequence[Sequence[Any]]) -> None:
        """Send ``commands`` (after any still unread: ``replies()`` returns them all, in the order sent)."""
        by_node: dict[str, list[Sequence[Any]]] = {}
        for command in commands:
            node = self.cluster.get_node_from_key(routing_key(command)).name
            self._sent.append((node, command))
            by_node.setdefault(node, []).append(command)
        for node, batch in by_node.items():
            self._wire(node).send(batch)

    def read_arrived(self) -> None:
        for wire in self._wires.values():
            wire.read_arrived()

    def replies(self) -> list[Any]:
        """The raw replies in the order sent; redirections followed, an error reply returned as its exception."""
        if not self._sent:
            return []
        per_node = {name: iter(wire.replies()) for name, wire in self._wires.items() if wire.unread}
        sent, self._sent = self._sent, []
        out = []
        for node, command in sent:
            reply = next(per_node[node])
            if redirect_of(reply) is not None:
                reply = self._follow(command, reply)
            out.append(reply)
        return out

    def _follow(self, command: Sequence[Any], reply: Any) -> Any:
        """Send ``command`` again where the cluster says its slot lives now (it did not run), until it runs."""
        for _ in range(REDIRECTS):
            redirect = redirect_of(reply)
            if redirect is None:
                return reply
            kind, host, port = redirect
            log.info("cluster_redirect_followed", kind=kind, command=str(command[0]), to=f"{host}:{port}")
            if kind == "TRYAGAIN":  # a migrating slot's keys are split between two nodes: a moment later
                time.sleep(0.05)
                node = self.cluster.get_node_from_key(routing_key(command)).name
                batch: list[Sequence[Any]] = [command]
            elif kind == "ASK":  # this one command, on the importing node
                node, batch = f"{host}:{port}", [("ASKING",), command]
            else:
                self.cluster.nodes_manager.initialize()
                node, batch = f"{host}:{port}", [command]
            wire = self._wire(node)
            wire.send(batch)
            reply = wire.replies()[-1]
        return reply

    def reset(self) -> None:
        """Forget unread replies, drop every node's connection and reload the slot map (after a connection error)."""
        self._sent = []
        for wire in self._wires.values():
            wire.reset()
        self._wires.clear()
        try:
            self.cluster.nodes_manager.initialize()
        except redis.RedisError as e:  # the cluster may still be electing; the next use tries again
            log.warning("cluster_slot_map_not_reloaded", error=str(e))


def deferred_replies(url: str, client: Any) -> DeferredReplies | NodeReplies:
    """A :class:`DeferredReplies` for one server, a :class:`NodeReplies` when ``client`` is a cluster client."""
    return NodeReplies(client, url) if is_cluster(client) else DeferredReplies(url)


def _node_url(url: str, host: str, port: int) -> str:
    """``url`` (a redis+cluster:// URL, credentials and options kept) pointing at one node, as a plain URL."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    scheme = "rediss" if parts.scheme.startswith("rediss") else "redis"
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@{host}:{port}" if auth else f"{host}:{port}"
    return urlunsplit((scheme, netloc, "", parts.query, ""))
