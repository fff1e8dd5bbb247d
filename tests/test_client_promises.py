"""What the README promises of the client, with real-life arguments, against both clients.

Long waits, reads of threads longer than the hot window, honest idempotency, durability
errors that say whether anything was written, and bad input at every argument.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from conftest import make_client

from journal import keys
from journal.client import JournalClient
from journal.errors import (
    DurabilityError,
    HistoryIncomplete,
    IdempotencyKeyReused,
    InvalidEvent,
    InvalidIdentifier,
)
from journal.events import Draft
from journal.settings import Settings
from projections.worker import Projector, WorkerOptions

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}


@pytest.fixture
def client(any_client: Any) -> Any:
    """Both clients: every test here runs against each."""
    return any_client


def project_all(settings: Settings, tenant: str) -> None:
    p = Projector(settings, WorkerOptions())
    try:
        p.drain(tenants=[tenant])
    finally:
        p.close()


def trim_all(r: redis.Redis, tenant: str) -> None:
    """What the projector's trim does once a tenant's entries are committed and out of the hot window."""
    r.xtrim(keys.stream(tenant), maxlen=0, approximate=False)


def test_wait_of_20s_returns_the_event_appended_after_15s(client: Any, settings: Settings, tenant: str) -> None:
    """wait(timeout=20) outlives redis-py's 5 s socket timeout and returns the resume appended 15 s later."""
    paused = client.append(tenant, "run", "pause", {"reason": "refund over $100"})

    def approve() -> None:
        time.sleep(15)
        with JournalClient.from_settings(settings) as other:
            other.append(tenant, "run", "resume", {"by": "human:alice"})

    t = threading.Thread(target=approve)
    t.start()
    t0 = time.monotonic()
    ev = client.wait(tenant, "run", after_seq=paused.seq, types=("resume",), timeout=20)
    t.join()
    assert ev is not None and ev.type == "resume" and ev.payload == {"by": "human:alice"}
    assert 14 <= time.monotonic() - t0 < 20


def test_wait_times_out_with_none_after_its_own_timeout(client: Any, tenant: str) -> None:
    """A 6 s wait with nothing to find returns None after about 6 s, not a socket timeout error."""
    paused = client.append(tenant, "run", "pause", {"reason": "r"})
    t0 = time.monotonic()
    assert client.wait(tenant, "run", after_seq=paused.seq, timeout=6) is None
    assert 5.9 <= time.monotonic() - t0 < 9


def test_wait_finds_an_approval_already_trimmed_from_redis(client: Any, migrated: Settings, tenant: str) -> None:
    """An approval projected and trimmed from the stream is found in PostgreSQL; wait returns it at once."""
    paused = client.append(tenant, "run", "pause", {"reason": "r"})
    client.append(tenant, "run", "resume", {"by": "human:bob"})
    project_all(migrated, tenant)
    trim_all(client.redis, tenant)
    ev = client.wait(tenant, "run", after_seq=paused.seq, timeout=5)
    assert ev is not None and ev.type == "resume" and ev.payload == {"by": "human:bob"}
    assert client.resume(tenant, "run").state.status == "active"


def test_read_of_a_5000_event_thread_with_4000_trimmed_is_complete(client: Any, migrated: Settings,
                                                                   tenant: str) -> None:
    """read() merges PostgreSQL (seqs 1..4,000, trimmed from Redis) and the Redis tail (4,001..5,000)."""
    for start in range(0, 4000, 1000):
        client.append_many(tenant, [Draft("long", "message", {**MSG, "i": i}) for i in range(start, start + 1000)])
    project_all(migrated, tenant)
    trim_all(client.redis, tenant)
    client.append_many(tenant, [Draft("long", "message", {**MSG, "i": i}) for i in range(4000, 5000)])
    events = client.read(tenant, "long")
    assert [e.seq for e in events] == list(range(1, 5001))
    assert [e.payload["i"] for e in events] == list(range(5000))
    assert [e.seq for e in client.read(tenant, "long", after_seq=3990)][:12] == list(range(3991, 4003))
    assert client.resume(tenant, "long").seq == 5000


def test_read_without_postgres_names_the_missing_tier(migrated: Settings, tenant: str) -> None:
    """With no PostgreSQL configured, a read whose start was trimmed raises HistoryIncomplete, never a part."""
    with JournalClient.from_settings(migrated) as c:
        c.append_many(tenant, [Draft("th", "message", {**MSG, "i": i}) for i in range(20)])
        project_all(migrated, tenant)
        trim_all(c.redis, tenant)
        c.append(tenant, "th", "message", {**MSG, "i": 20})
    with JournalClient.from_settings(migrated.with_(database_url=None)) as hot_only:
        with pytest.raises(HistoryIncomplete, match="no PostgreSQL is configured") as info:
            hot_only.read(tenant, "th")
        assert info.value.missing == 1
        assert [e.seq for e in hot_only.read(tenant, "th", after_seq=20)] == [21]


def test_wait_does_not_scan_the_tenant_stream(client: Any, tenant: str) -> None:
    """With 5,000 entries of other threads in the stream, a wait costs a few commands, not a scan."""
    for start in range(0, 5000, 1000):
        client.append_many(tenant, [Draft(f"other-{i % 50}", "message", MSG) for i in range(start, start + 1000)])
    paused = client.append(tenant, "run", "pause", {"reason": "r"})
    client.append(tenant, "run", "resume", {"by": "x"})

    def calls(name: str) -> int:
        return int(client.redis.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))

    before = calls("xrevrange") + calls("xrange")
    assert client.wait(tenant, "run", after_seq=paused.seq, timeout=1).type == "resume"
    assert calls("xrevrange") + calls("xrange") - before <= 3


def test_idempotent_retry_returns_the_stored_event_exactly(client: Any, tenant: str) -> None:
    """A retry returns the stored event: its seq, time, type, payload, node and actor."""
    first = client.append(tenant, "th", "tool_call", {"call_id": "c1", "tool": "refund", "args": {"order": 1}},
                          node="planner", actor={"agent_id": "bot"}, idempotency_key="call-1")
    again = client.append(tenant, "th", "tool_call", {"call_id": "c1", "tool": "refund", "args": {"order": 1}},
                          node="planner", actor={"agent_id": "bot"}, idempotency_key="call-1")
    assert again == first
    assert client.read(tenant, "th") == [first]


@pytest.mark.parametrize("change", [
    {"payload": {"call_id": "c1", "tool": "refund", "args": {"order": 2}}},
    {"type": "message", "payload": {"role": "user", "content": "hi"}},
    {"node": "executor"},
    {"actor": {"agent_id": "someone-else"}},
])
def test_idempotency_key_reused_with_other_content_is_refused(client: Any, tenant: str,
                                                               change: dict[str, Any]) -> None:
    """The same key with other content raises IdempotencyKeyReused naming key and seq, and writes nothing."""
    base: dict[str, Any] = {"type": "tool_call", "payload": {"call_id": "c1", "tool": "refund", "args": {"order": 1}},
                            "node": "planner", "actor": {"agent_id": "bot"}}
    client.append(tenant, "th", idempotency_key="call-1", **base)
    length = client.redis.xlen(keys.stream(tenant))
    with pytest.raises(IdempotencyKeyReused, match="call-1") as info:
        client.append(tenant, "th", idempotency_key="call-1", **{**base, **change})
    assert info.value.seq == 1 and info.value.key == "call-1"
    assert client.redis.xlen(keys.stream(tenant)) == length and client.head(tenant, "th") == 1


def test_idempotency_key_reused_inside_one_batch_writes_nothing(client: Any, tenant: str) -> None:
    """Two drafts of one batch with one key and different content: refused, and the batch writes nothing."""
    with pytest.raises(IdempotencyKeyReused):
        client.append_many(tenant, [Draft("th", "message", {**MSG, "n": 1}, idempotency_key="k"),
                                    Draft("th", "message", {**MSG, "n": 2}, idempotency_key="k")])
    assert client.head(tenant, "th") == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_projected_timeout_says_the_event_was_written(kind: str, migrated: Settings, tenant: str) -> None:
    """durability='projected' with no projector: DurabilityError naming the written seq, and carrying the event."""
    with make_client(kind, migrated.with_(durability_timeout=0.3)) as c, \
            pytest.raises(DurabilityError, match=r"written \(th#1") as info:
        c.append(tenant, "th", "message", MSG, durability="projected")
    assert [e.seq for e in info.value.written] == [1]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"after_seq": -1}, InvalidEvent, "after_seq"),
    ({"after_seq": "3"}, InvalidEvent, "after_seq"),
    ({"after_seq": 0, "types": "resume"}, InvalidEvent, "not the string"),
    ({"after_seq": 0, "types": ()}, InvalidEvent, "types is empty"),
    ({"after_seq": 0, "types": ("Resume!",)}, InvalidIdentifier, "event type"),
    ({"after_seq": 0, "timeout": -1}, InvalidEvent, "timeout"),
    ({"after_seq": 0, "timeout": "10"}, InvalidEvent, "timeout"),
])
def test_wait_refuses_bad_arguments(client: Any, tenant: str, kwargs: dict[str, Any], error: type[Exception],
                                    match: str) -> None:
    """Every bad argument of wait() gets a typed error naming it, before any blocking."""
    with pytest.raises(error, match=match):
        client.wait(tenant, "th", **kwargs)


@pytest.mark.parametrize(("args", "error"), [
    (("bad tenant", "th"), InvalidIdentifier),
    (("ok", "../th"), InvalidIdentifier),
    (("ok", "th", -5), InvalidEvent),
    (("ok", "th", True), InvalidEvent),
])
def test_read_refuses_bad_arguments(client: Any, args: tuple[Any, ...], error: type[Exception]) -> None:
    """read() refuses bad tenants, threads and seqs with a typed error."""
    with pytest.raises(error):
        client.read(*args)
