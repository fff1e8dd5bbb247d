"""The projector's reader: which entries to project next, from the tenant streams.

Reads new entries of every tenant stream (XREADGROUP, ``streams_per_read`` streams per call), its
own entries left pending by a failed batch, and entries of dead consumers (XAUTOCLAIM). For the
streams with a backlog the next read is sent ahead, so Valkey prepares it while PostgreSQL works
(``DeferredReplies``); its replies are parsed in the committer's waits (``parse_ahead``).
"""

from __future__ import annotations

import threading
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

import redis

from journal import keys, logs
from journal.redis_store import is_cluster
from projections import nodes, redis_internals
from projections.deferred import DeferredReplies
from projections.discovery import Discovery
from projections.links import Links

log = logs.get_logger("projections.reader")

Entry = tuple[str, str, dict[bytes, Any]]


def stream_entries(reply: Any, **_: Any) -> list[Entry]:
    """XREADGROUP's reply (RESP2 list or RESP3 map) as ``(tenant, stream id, fields)``, in one pass.

    Installed in place of redis-py's parser on the projector's client (``install_parser``): that one
    builds a tuple and a dict per entry which would be unpacked again here. Entries deleted while
    pending (no fields) are skipped.
    """
    if not reply:
        return []
    out: list[Entry] = []
    append = out.append
    for key, msgs in reply.items() if isinstance(reply, dict) else reply:
        tenant = keys.tenant_of_stream(key.decode())
        for sid, flat in msgs:
            if flat is not None:
                pairs = iter(flat)
                append((tenant, sid.decode(), dict(zip(pairs, pairs, strict=False))))
    return out


def parsed_entries(reply: Any) -> list[Entry]:
    """redis-py's own parse of XREADGROUP (RESP2 ``[[key, [(id, fields)]]]``, RESP3 ``{key: [[(id, fields)]]}``)
    as ``(tenant, stream id, fields)``: for a client without ``stream_entries`` installed."""
    if not reply:
        return []
    out: list[Entry] = []
    for key, msgs in reply.items() if isinstance(reply, dict) else reply:
        tenant = keys.tenant_of_stream(key.decode() if isinstance(key, bytes) else key)
        for sid, fields in (msgs[0] if msgs else []) if isinstance(reply, dict) else msgs:
            if fields is not None:
                out.append((tenant, sid.decode() if isinstance(sid, bytes) else sid, fields))
    return out


def entry_count(reply: Any) -> int:
    """Entries in an XREADGROUP reply, unparsed (0 for an error or nothing)."""
    if not reply or isinstance(reply, Exception):
        return 0
    return sum(len(msgs) for _, msgs in (reply.items() if isinstance(reply, dict) else reply))


def install_parser(client: redis.Redis) -> None:
    """Parse XREADGROUP replies with ``stream_entries`` on ``client``, on a redis-py version known to allow it.

    Not on a cluster client: it applies its own callbacks after the node's parser, not instead of it.
    """
    if is_cluster(client):
        return
    if redis_internals.known():
        client.set_response_callback("XREADGROUP", stream_entries)
    else:
        redis_internals.fall_back("xreadgroup_parser", "redis-py version outside the known range")


class Reader:
    def __init__(self, links: Links, discovery: Discovery, *, group: str, consumer: str, streams_per_read: int,
                 read_ahead: int, batch_size: int, block_ms: int, claim_idle_ms: int, stop: threading.Event) -> None:
        self.links = links
        self.discovery = discovery
        self.group = group
        self.consumer = consumer
        self.streams_per_read = streams_per_read
        self.read_ahead = read_ahead
        self.batch_size = batch_size
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self._stop = stop
        #: Whether ``install_parser`` put ``stream_entries`` on the client (else redis-py parses XREADGROUP).
        self._own_parser = redis_internals.known()
        self._reads: DeferredReplies | nodes.NodeReplies | None = None
        #: The chunks of tenants of a read sent ahead (``read_round``), in reply order.
        self._ahead: list[list[str]] = []
        #: Tenants whose stream filled its share of the last round (``backlog``).
        self._full: list[str] = []
        #: How many of the last round's entries, at its start, are of streams that did not fill their share.
        self.quiet = 0
        #: tenant -> where the next XAUTOCLAIM continues (a stream with more pending entries to look at).
        self._claim_from: dict[str, str] = {}

    @property
    def reads(self) -> DeferredReplies | nodes.NodeReplies:
        if self._reads is None:
            self._reads = nodes.deferred_replies(self.links.settings.redis_url or "", self.links.redis)
        return self._reads

    @property
    def unread(self) -> int:
        """Replies of a read sent ahead not yet taken (entries delivered to this consumer already)."""
        return self._reads.unread if self._reads is not None else 0

    def reset(self) -> None:
        """Forget a read sent ahead (its entries stay pending on this consumer: ``own_pending`` takes them)."""
        if self._reads is not None:
            self._reads.reset()

    def parse_ahead(self) -> None:
        """Parse one reply of the read sent ahead if it has arrived (Valkey may still be running it)."""
        self.reads.read_arrived()

    def read_round(self) -> list[Entry]:
        """New entries of every known stream (one pipelined round trip), or a round read ahead.

        A stream that fills its share of the round has a backlog: its next read is then sent
        before this round is written, and its reply taken at the next turn, so Valkey prepares it
        while PostgreSQL works. Only the streams that filled their share are read ahead
        (``send_ahead``); the others are read when the round starts, so an entry of a quiet tenant
        waits for at most the round in hand, not for a round read before it arrived. Within a
        round, the tenants with the fewest entries come first (``light_first``): their entries
        land in the round's first batch, not behind a burst of another tenant.
        """
        tenants = sorted(self.discovery.tenants)
        if not tenants:
            self._stop.wait(self.block_ms / 1000)
            return []
        if self.reads.unread:
            chunks, self._ahead = self._ahead, []
            ahead = {t for c in chunks for t in c}
            rest = self._chunks([t for t in tenants if t not in ahead])
            self._send_reads(rest, len(tenants), block=False)
            chunks += rest
            replies = self.reads.replies()
        else:
            chunks = self._chunks(tenants)
            # One read can block until something arrives; many streams cannot share one blocking read.
            # Valkey writes replies once it has run every command received, so the first chunk goes alone.
            self._send_reads(chunks[:1], len(tenants), block=len(chunks) == 1)
            replies = self.reads.replies()
            if len(chunks) > 1:
                self._send_reads(chunks[1:], len(tenants), block=False)
                if entry_count(replies[0]) >= self.batch_size // 2:
                    # A backlog: start on it now; the other chunks' replies are parsed while this round
                    # waits on PostgreSQL, and projected next turn.
                    chunks, self._ahead = chunks[:1], chunks[1:]
                else:
                    replies += self.reads.replies()
        share = self._share(len(tenants))
        entries: list[Entry] = []
        self._full = []
        self.quiet = 0
        for chunk, reply in zip(chunks, replies, strict=True):
            if isinstance(reply, Exception):
                if "NOGROUP" in str(reply):  # Redis restarted empty or a stream was deleted: recreate groups.
                    self.discovery.regroup(chunk)
                    continue
                # One tenant can turn its stream key into another type (its user may SET it): that fails
                # the whole XREADGROUP, so set it aside rather than stop every tenant of the chunk.
                if isinstance(reply, redis.ResponseError) and self.discovery.quarantine(chunk):
                    continue
                raise reply
            entries += stream_entries(reply)
        if entries:
            entries = self.light_first(entries, share)
        if not entries and len(chunks) > 1:  # idle briefly, do not spin
            self._stop.wait(self.block_ms / 1000)
        return entries

    def light_first(self, entries: list[Entry], share: int) -> list[Entry]:
        """``entries`` (each stream's in a run, in id order) with the streams of fewest entries first;
        notes the streams that filled their ``share`` (a backlog: ``send_ahead`` reads them next)."""
        runs = [list(run) for _, run in groupby(entries, key=itemgetter(0))]
        runs.sort(key=len)  # stable: a stream's entries keep their order, and equal streams theirs
        self._full = [r[0][0] for r in runs if len(r) >= share]
        self.quiet = sum(len(r) for r in runs if len(r) < share)
        return entries if len(runs) == 1 else list(chain.from_iterable(runs))

    @property
    def backlog(self) -> bool:
        """Whether a stream of the last round filled its share: more is waiting there."""
        return bool(self._full)

    def send_ahead(self) -> None:
        """Send the next round's read of the streams with a backlog now, unless the worker is stopping.

        The other streams are read when that round starts (``read_round``).
        """
        if not self.reads.unread and not self._stop.is_set() and self._full:
            self._ahead = self._chunks(sorted(self._full))
            self._send_reads(self._ahead, len(self.discovery.tenants), block=False)

    def _chunks(self, tenants: list[str]) -> list[list[str]]:
        """``tenants`` in groups of ``streams_per_read``: one XREADGROUP each."""
        spr = self.streams_per_read
        if is_cluster(self.links.redis):  # one XREADGROUP names streams of one slot only
            return nodes.slot_chunks(self.links.redis, tenants, spr)
        return [tenants[i : i + spr] for i in range(0, len(tenants), spr)]

    def _share(self, n_tenants: int) -> int:
        """Entries read per stream in a round of ``n_tenants``: enough that a thread's backlog lands in one
        transaction, bounded per round, and never more than a batch (one tenant's burst fills at most one).

        While other streams have entries too (the last round had quiet ones), half a batch: a quiet
        tenant's entry waits for the batch in hand, and a whole one of a burst put its p99 past 1 s.
        """
        cap = self.batch_size // 2 if self.quiet else self.batch_size
        return max(1, min(cap, max(10, self.read_ahead // n_tenants)))

    def _send_reads(self, chunks: list[list[str]], n_tenants: int, *, block: bool) -> None:
        """Send one XREADGROUP per chunk of tenants, ``n_tenants`` in the round; replies via ``self.reads``."""
        per_stream = self._share(n_tenants)
        wait = ("BLOCK", self.block_ms) if block else ()
        self.reads.send([("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", per_stream, *wait, "STREAMS",
                          *map(keys.stream, chunk), *[">"] * len(chunk)) for chunk in chunks])

    def own_chunks(self) -> list[list[str]]:
        """The known tenants in chunks, for ``own_pending``."""
        return self._chunks(sorted(self.discovery.tenants))

    def own_pending(self, chunk: list[str]) -> list[Entry] | None:
        """Entries delivered to this consumer and not acknowledged, on ``chunk``'s streams (up to a batch);
        ``None`` if the chunk cannot be read now (a group recreated, a tenant set aside: try next turn)."""
        streams: dict[Any, Any] = {keys.stream(t): "0" for t in chunk}
        try:
            reply: Any = self.links.redis.xreadgroup(self.group, self.consumer, streams, count=self.batch_size)
            return reply if self._own_parser and not is_cluster(self.links.redis) else parsed_entries(reply)
        except redis.ResponseError as e:
            if "NOGROUP" in str(e):
                self.discovery.regroup(chunk)
            elif not self.discovery.quarantine(chunk):
                raise
            return None

    def claimable(self) -> list[Entry]:
        """Entries pending on dead consumers for longer than ``claim_idle_ms``, now this consumer's.

        Up to a round's share per stream, continuing where the last call stopped; ``claim_more`` says
        whether a stream has more (a dead worker's read-ahead can leave a whole round pending: it is
        taken at read speed, not a page per maintenance turn).
        """
        tenants = sorted(self.discovery.tenants)
        if not tenants:
            return []
        share = self._share(len(tenants))
        pipe = self.links.redis.pipeline(transaction=False)
        for t in tenants:
            pipe.xautoclaim(keys.stream(t), self.group, self.consumer, self.claim_idle_ms,
                            self._claim_from.get(t, "0-0"), count=share)
        entries: list[Entry] = []
        for t, res in zip(tenants, pipe.execute(raise_on_error=False), strict=True):
            if isinstance(res, Exception):
                self._claim_from.pop(t, None)
                continue
            cursor = res[0].decode() if isinstance(res[0], bytes) else str(res[0])
            if cursor == "0-0":
                self._claim_from.pop(t, None)
            else:
                self._claim_from[t] = cursor
            for sid, fields in res[1]:
                if fields is not None:
                    entries.append((t, sid.decode(), fields))
        return entries

    @property
    def claim_more(self) -> bool:
        """Whether the last ``claimable`` stopped before the end of a stream's pending entries."""
        return bool(self._claim_from)
