"""Reading the hot tail: a thread's events still in its tenant's Redis stream.

Per thread, stream order is seq order (the Lua append assigns the seq and XADDs in one
step), so a walk backwards from the newest entry stops at the first entry of the thread at
or below ``after``: reading the tail costs what the tail holds, not what the stream holds.
"""

from __future__ import annotations

import redis

from journal import codec, keys
from journal.events import Event
from journal.redis_store import translate

PAGE = 1000


def head(r: redis.Redis, tenant: str, thread: str) -> int:
    """The latest seq issued for the thread (0 if none)."""
    keys.validate_id(thread, "thread")
    try:
        value = r.hget(keys.heads(tenant), thread)
    except redis.RedisError as e:
        raise translate(e, "HGET head") from e
    return int(value or 0)


def read_tail(r: redis.Redis, tenant: str, thread: str, after: int = 0, upto: int | None = None) -> list[Event]:
    """The thread's events in the stream with ``after < seq <= upto`` (default: the head), in seq order."""
    top = head(r, tenant, thread)
    if upto is not None:
        top = min(top, upto)
    if top <= after:
        return []  # the common case for a projected thread: no stream read at all
    stream = keys.stream(tenant)
    want = thread.encode()
    found: dict[int, Event] = {}
    end = "+"
    try:
        while True:
            page = r.xrevrange(stream, max=end, min="-", count=PAGE)
            done = False
            for entry_id, fields in page:
                if fields.get(b"t") != want:
                    continue
                seq = int(fields[b"s"])
                if seq <= after:
                    done = True
                    break
                if seq <= top:
                    found[seq] = codec.decode_entry(tenant, fields, entry_id.decode())
            if done or len(page) < PAGE or len(found) >= top - after:
                break
            end = "(" + page[-1][0].decode()
    except redis.RedisError as e:
        raise translate(e, "XREVRANGE (hot tail)") from e
    return [found[s] for s in sorted(found)]
