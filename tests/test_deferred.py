"""DeferredReplies against a real server: replies read later, whole or as they arrive, keep their order."""

from __future__ import annotations

import time
import uuid

import redis

from journal.settings import Settings
from projections.deferred import DeferredReplies


def test_replies_parsed_as_they_arrive_match_replies_read_whole(settings: Settings) -> None:
    key = f"deferred-test:{uuid.uuid4().hex}"
    r = redis.Redis.from_url(settings.redis_url or "")
    # A reply of several MB arrives over many socket reads: partial reads must not lose or split it.
    values = [f"v{i:06d}-" + "x" * 200 for i in range(20_000)]
    for i in range(0, len(values), 5000):
        r.rpush(key, *values[i : i + 5000])
    d = DeferredReplies(settings.redis_url or "")
    try:
        commands = [("LRANGE", key, 0, -1), ("INCR", key), ("LLEN", key)]  # the INCR fails: WRONGTYPE
        d.send(commands)
        deadline = time.monotonic() + 10
        while d.unread and len(d._read) < len(commands) and time.monotonic() < deadline:
            d.read_arrived()
        assert len(d._read) == len(commands), "read_arrived never completed the replies"
        assert d.unread == len(commands)  # parsed, not yet returned
        first, error, length = d.replies()
        assert [v.decode() for v in first] == values
        assert isinstance(error, redis.ResponseError) and "WRONGTYPE" in str(error)
        assert length == len(values)
        assert d.unread == 0

        # Mixed: one parsed ahead, the rest read whole by replies(); and nothing arrived yet is not waited for.
        d.send([("LLEN", key), ("LRANGE", key, 0, 2)])
        d.read_one()
        assert d.replies() == [len(values), [v.encode() for v in values[:3]]]
        d.read_arrived()  # nothing sent: a no-op
        assert d.replies() == []
    finally:
        d.reset()
        r.delete(key)
        r.close()
