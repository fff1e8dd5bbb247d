"""DeferredReplies against a real server: replies read later, whole or as they arrive, keep their order."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from structlog.testing import capture_logs

from journal import keys
from journal.redis_store import is_cluster_url
from journal.settings import Settings
from projections import redis_internals
from projections.deferred import DeferredReplies
from projections.reader import install_parser, parsed_entries


@pytest.fixture(autouse=True)
def one_server(settings: Settings) -> None:
    """DeferredReplies is one server's connection; on a cluster the projector uses NodeReplies (tests/cluster)."""
    if is_cluster_url(settings.redis_url):
        pytest.skip("one server's connection internals; the cluster's are exercised by tests/cluster")


def test_replies_parsed_as_they_arrive_match_replies_read_whole(settings: Settings) -> None:
    """Replies parsed as they arrive (redis-py internals, known version) equal replies read whole, in order."""
    key = f"deferred-test:{uuid.uuid4().hex}"
    r = redis.Redis.from_url(settings.redis_url or "")
    # A reply of several MB arrives over many socket reads: partial reads must not lose or split it.
    values = [f"v{i:06d}-" + "x" * 200 for i in range(20_000)]
    for i in range(0, len(values), 5000):
        r.rpush(key, *values[i : i + 5000])
    d = DeferredReplies(settings.redis_url or "")
    assert d.partial_reads
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


def test_redis_py_versions_outside_the_known_range_are_not_trusted() -> None:
    """Only redis-py versions in KNOWN_WORKING enable the fast paths that use its internals."""
    low, high = redis_internals.KNOWN_WORKING
    assert redis_internals.known(f"{low[0]}.{low[1]}.0")
    assert not redis_internals.known(f"{high[0]}.{high[1]}.0")
    assert not redis_internals.known(f"{low[0] - 1}.99.0")
    assert not redis_internals.known("not a version")


def test_partial_reads_off_reads_whole_replies_and_says_so_once(settings: Settings,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """On a redis-py outside the known range, read_arrived reads whole replies (plain API) and logs it once."""
    monkeypatch.setattr(redis, "__version__", "99.0.0")
    monkeypatch.setattr(redis_internals, "_reported", set())
    key = f"deferred-test:{uuid.uuid4().hex}"
    r = redis.Redis.from_url(settings.redis_url or "")
    r.rpush(key, *[f"v{i}" for i in range(1000)])
    with capture_logs() as logs:
        d = DeferredReplies(settings.redis_url or "")
        DeferredReplies(settings.redis_url or "")
    try:
        assert not d.partial_reads
        d.send([("LRANGE", key, 0, -1), ("LLEN", key)])
        deadline = time.monotonic() + 10
        while len(d._read) < 2 and time.monotonic() < deadline:
            d.read_arrived()
        first, length = d.replies()
        assert len(first) == 1000 and length == 1000
    finally:
        d.reset()
        r.delete(key)
        r.close()
    warned = [e for e in logs if e["event"] == "redis_py_fast_path_off"]
    assert len(warned) == 1 and warned[0]["redis_py"] == "99.0.0" and "<" in warned[0]["known_working"]


def test_reader_parses_redis_py_own_xreadgroup_reply_when_its_parser_is_not_installed(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the replaced XREADGROUP parser (unknown redis-py), entries parse the same from redis-py's own."""
    stream = keys.stream(f"t-{uuid.uuid4().hex[:10]}")
    fast = redis.Redis.from_url(settings.redis_url or "")
    install_parser(fast)
    monkeypatch.setattr(redis, "__version__", "99.0.0")
    monkeypatch.setattr(redis_internals, "_reported", set())
    plain = redis.Redis.from_url(settings.redis_url or "")
    with capture_logs() as logs:
        install_parser(plain)
    assert [e["fast_path"] for e in logs if e["event"] == "redis_py_fast_path_off"] == ["xreadgroup_parser"]
    try:
        for i in range(3):
            fast.xadd(stream, {"t": "th", "s": i + 1, "ts": 1, "b": b"J\x00x"})
        fast.xgroup_create(stream, "g", id="0")
        got_fast = fast.xreadgroup("g", "c1", {stream: ">"})
        plain.xgroup_setid(stream, "g", id="0")
        got_plain = parsed_entries(plain.xreadgroup("g", "c2", {stream: ">"}))
        assert got_fast == got_plain and len(got_fast) == 3
        assert got_fast[0][2] == {b"t": b"th", b"s": b"1", b"ts": b"1", b"b": b"J\x00x"}
    finally:
        fast.delete(stream)
        fast.close()
        plain.close()
