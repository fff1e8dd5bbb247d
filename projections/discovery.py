"""Which tenant streams the projector reads: found while it runs, never trusted by name alone.

Three sources. The registry ``agent:v1:tenants`` (SMEMBERS, every ``refresh_every``): cheap, but
a tenant's ACL user may not be allowed to add itself, and one that may can add any name. A SCAN
for ``agent:v1:{*}:stream`` keys of type stream, run as a background pass a few steps per turn
(a pass restarts every ``scan_every``), finds the rest at a bounded cost per turn however large
the keyspace. PostgreSQL's ``journal.offsets`` (first turn only: trusted, it is the projector's
own) brings back tenants a fresh Redis has forgotten.

A name from Redis becomes a tenant only if it is a valid id whose stream exists and is a stream,
so a registry stuffed with garbage names creates nothing; a name refused is looked at again only
with the next scan pass, not every second. A tenant whose stream key stops being a stream (its
user can SET it) is set aside by ``quarantine`` instead of failing the reads of the tenants it
shares an XREADGROUP with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import redis

from journal import keys, logs
from journal.errors import JournalError
from journal.redis_store import is_cluster
from projections.nodes import scan_streams

log = logs.get_logger("projections.discovery")


class Discovery:
    """The tenants to read, with consumer groups ensured; ``refresh()`` is called every turn."""

    def __init__(self, redis_client: Callable[[], redis.Redis], group: str, *, refresh_every: float = 1.0,
                 scan_every: float = 3.0, scan_count: int = 1000, scan_steps: int = 4) -> None:
        self._redis = redis_client
        self.group = group
        self.refresh_every = refresh_every
        self.scan_every = scan_every
        self.scan_count = scan_count
        #: SCAN calls per turn at most: a pass over a large keyspace is spread over many turns.
        self.scan_steps = scan_steps
        self.tenants: set[str] = set()
        self.grouped: set[str] = set()
        #: Names seen in the registry but refused (no stream, not a stream): looked at again per scan pass.
        self._refused: set[str] = set()
        self._last_refresh = -float("inf")
        self._last_scan_start = -float("inf")
        self._cursor: int | None = None  # None: no pass in progress

    @property
    def redis(self) -> redis.Redis:
        return self._redis()

    def due(self, now: float) -> bool:
        return not self.tenants or now - self._last_refresh >= self.refresh_every or self._cursor is not None

    def refresh(self, trusted: Callable[[], Iterable[str]] | None = None, *, force: bool = False) -> None:
        """Read the registry (when due, or ``force``), advance the scan, and add every new tenant
        (``trusted``: PostgreSQL's, on the first refresh)."""
        now = time.monotonic()
        first = not self.tenants
        found: set[str] = set()
        if first or force or now - self._last_refresh >= self.refresh_every:
            self._last_refresh = now
            found |= {_name(m) for m in self.redis.smembers(keys.TENANT_REGISTRY)}
        if self._cursor is None and now - self._last_scan_start >= self.scan_every:
            self._last_scan_start, self._cursor = now, 0
            self._refused.clear()  # every refused name gets one more look per pass
        streams = self._scan(until_done=first)
        candidates = {n for n in found | streams if n not in self.tenants and n not in self._refused}
        self._admit(candidates, known_streams=streams)
        if first and trusted is not None:
            self.add_trusted(trusted())
        self.ensure_groups(self.tenants - self.grouped)  # after a reconnection, groups are checked again

    def _scan(self, *, until_done: bool) -> set[str]:
        out: set[str] = set()
        steps = 0
        while self._cursor is not None and (until_done or steps < self.scan_steps):
            if is_cluster(self.redis):  # a cursor per primary: one whole pass over each (projections.nodes)
                batch, self._cursor = scan_streams(self.redis, keys.stream_pattern(), self.scan_count), None
            else:
                cursor, batch = self.redis.scan(self._cursor, match=keys.stream_pattern(), count=self.scan_count,
                                                _type="stream")
                self._cursor = int(cursor) or None
            steps += 1
            for k in batch:
                # The pattern's '*' also matches other keys a tenant may create under its own tag
                # ('agent:v1:{T}:x}:stream'): only the tenant's stream key itself counts.
                name = _name(k)
                tenant = keys.tenant_of_stream(name)
                if _valid(tenant) and keys.stream(tenant) == name:
                    out.add(tenant)
        return out

    def _admit(self, names: set[str], *, known_streams: set[str]) -> None:
        valid = []
        for n in names:
            if _valid(n):
                valid.append(n)
            else:
                self._refused.add(n)
        unknown = sorted(n for n in valid if n not in known_streams)
        if unknown:
            pipe = self.redis.pipeline(transaction=False)
            for n in unknown:
                pipe.type(keys.stream(n))
            for n, kind in zip(unknown, pipe.execute(raise_on_error=False), strict=True):
                if _name(kind) != "stream":
                    self._refused.add(n)
        new = sorted(n for n in valid if n not in self._refused)
        for t in new:
            log.info("tenant_discovered", tenant=t)
        self.tenants.update(new)
        self.ensure_groups(new, create_streams=False)

    def add_trusted(self, tenants: Iterable[str]) -> None:
        """Tenants PostgreSQL holds: read even if Redis lost their stream (it is created empty, with its group)."""
        new = [t for t in tenants if t not in self.tenants and t not in self._refused and _valid(t)]
        self.tenants.update(new)
        self.ensure_groups(new, create_streams=True)

    def ensure_groups(self, tenants: Iterable[str], *, create_streams: bool = True) -> None:
        tenants = sorted(t for t in tenants if t not in self.grouped)
        if not tenants:
            return
        pipe = self.redis.pipeline(transaction=False)
        for t in tenants:
            pipe.xgroup_create(keys.stream(t), self.group, id="0", mkstream=create_streams)
        for t, res in zip(tenants, pipe.execute(raise_on_error=False), strict=True):
            if not isinstance(res, Exception) or "BUSYGROUP" in str(res):
                self.grouped.add(t)
            elif isinstance(res, redis.ResponseError):
                # WRONGTYPE, or the stream went away: this tenant only; looked at again by the next scan.
                self.set_aside(t, str(res))
            else:
                raise res

    def regroup(self, tenants: Iterable[str]) -> None:
        """Recreate groups after NOGROUP (Redis restarted empty, or a stream was deleted)."""
        tenants = list(tenants)
        self.grouped.difference_update(tenants)
        self.ensure_groups(tenants)

    def quarantine(self, tenants: Iterable[str]) -> list[str]:
        """Set aside those of ``tenants`` whose stream key is not a stream; returns them."""
        tenants = sorted(tenants)
        pipe = self.redis.pipeline(transaction=False)
        for t in tenants:
            pipe.type(keys.stream(t))
        bad = [t for t, kind in zip(tenants, pipe.execute(raise_on_error=False), strict=True)
               if _name(kind) not in ("stream", "none")]
        for t in bad:
            self.set_aside(t, "its stream key is no longer a stream")
        return bad

    def set_aside(self, tenant: str, why: str) -> None:
        log.error("tenant_stream_unreadable_set_aside", tenant=tenant, reason=why)
        self.tenants.discard(tenant)
        self.grouped.discard(tenant)
        self._refused.add(tenant)

    def readable(self) -> list[str]:
        """Tenants whose group exists, in a stable order."""
        return sorted(self.grouped & self.tenants)


def _valid(name: str) -> bool:
    try:
        keys.validate_id(name, "tenant")
    except JournalError:
        return False
    return True


def _name(v: object) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)
