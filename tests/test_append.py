"""The append path against a real Redis/Valkey and S3."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from journal import keys
from journal.aio import AsyncJournalClient
from journal.blobs import BlobStore
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.errors import BlobMissing, ConflictError, InvalidEvent, PayloadTooLarge, ThreadFenced
from journal.events import Draft
from journal.settings import Settings

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}


@pytest.fixture
def client(any_client: Any) -> Any:
    """Both clients: every test of this module that takes ``client`` runs against each."""
    return any_client


def test_concurrent_writers_get_gapless_seqs(settings: Settings, tenant: str) -> None:
    """8 writers × 500 appends to one thread give seqs 1..4000, no gap, no duplicate."""
    seqs: list[int] = []
    lock = threading.Lock()

    def writer(w: int) -> None:
        with JournalClient.from_settings(settings) as c:
            mine = [c.append(tenant, "shared", "message", {**MSG, "w": w, "i": i}).seq for i in range(500)]
        with lock:
            seqs.extend(mine)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 4001))
    with JournalClient.from_settings(settings) as c:
        assert c.head(tenant, "shared") == 4000
        assert [e.seq for e in c.read(tenant, "shared")] == list(range(1, 4001))


def test_idempotent_retry_returns_first_seq_and_writes_nothing(client: JournalClient, tenant: str) -> None:
    """A retry with the same idempotency key returns the original seq and time; the stream does not grow."""
    first = client.append(tenant, "th", "message", {**MSG, "n": 1}, idempotency_key="req-1")
    client.append(tenant, "th", "message", {**MSG, "n": 2})
    length = client.redis.xlen(keys.stream(tenant))
    again = client.append(tenant, "th", "message", {**MSG, "n": 1}, idempotency_key="req-1")
    assert (again.seq, again.ts_ms) == (first.seq, first.ts_ms) == (1, first.ts_ms)
    assert client.redis.xlen(keys.stream(tenant)) == length
    assert client.head(tenant, "th") == 2


def test_stale_expected_seq_raises_conflict_with_actual_head(client: JournalClient, tenant: str) -> None:
    """expected_seq behind the head raises ConflictError carrying the real head; nothing is written."""
    client.append(tenant, "th", "message", MSG, expected_seq=0)
    client.append(tenant, "th", "message", MSG, expected_seq=1)
    with pytest.raises(ConflictError) as info:
        client.append(tenant, "th", "message", MSG, expected_seq=1)
    assert info.value.actual == 2 and "expected_seq=2" in str(info.value)
    assert client.head(tenant, "th") == 2


def test_append_many_is_atomic_and_multi_thread(client: JournalClient, tenant: str) -> None:
    """A batch over two threads gets per-thread seqs; a conflicting batch writes nothing at all."""
    recs = client.append_many(tenant, [
        Draft("a", "message", {**MSG, "i": 0}), Draft("b", "message", {**MSG, "i": 1}),
        Draft("a", "tool_call", {"call_id": "c2", "tool": "search"}),
    ])
    assert [(r.thread, r.seq) for r in recs] == [("a", 1), ("b", 1), ("a", 2)]
    with pytest.raises(ConflictError):
        client.append_many(tenant, [{"thread": "a", "type": "message", "payload": MSG},
                                    {"thread": "b", "type": "message", "payload": MSG, "expected_seq": 0}])
    assert (client.head(tenant, "a"), client.head(tenant, "b")) == (2, 1)
    assert client.redis.xlen(keys.stream(tenant)) == 3


def test_two_megabyte_payload_round_trips_through_s3(client: JournalClient, settings: Settings, tenant: str) -> None:
    """A 2 MB payload goes to S3 under {tenant}/blobs/{sha256} and reads back identical."""
    payload = {"call_id": "c1", "output": "".join(chr(65 + i % 26) for i in range(2_000_000))}
    rec = client.append(tenant, "th", "tool_result", payload)
    assert rec.blob is not None
    store = BlobStore.from_settings(settings)
    assert store.exists(keys.blob_key(tenant, rec.blob.sha256))
    stored = client.redis.xrange(keys.stream(tenant))[0][1][b"b"]
    assert len(stored) < 1000  # the stream holds the reference, not the 2 MB
    (back,) = client.read(tenant, "th")
    assert back.payload == payload and back.blob == rec.blob


def test_missing_blob_is_a_typed_error(client: JournalClient, settings: Settings, tenant: str) -> None:
    """Reading an event whose blob was deleted raises BlobMissing, never None."""
    rec = client.append(tenant, "th", "tool_result", {"call_id": "c1", "output": "y" * 200_000})
    assert rec.blob is not None
    store = BlobStore.from_settings(settings)
    store._s3.delete_object(Bucket=store.bucket, Key=keys.blob_key(tenant, rec.blob.sha256))
    with pytest.raises(BlobMissing):
        client.read(tenant, "th")


def test_oversized_payload_is_refused_before_any_write(settings: Settings, tenant: str) -> None:
    """A payload over max_payload_bytes raises PayloadTooLarge and writes nothing."""
    with JournalClient.from_settings(settings.with_(max_payload_bytes=300_000)) as c:
        with pytest.raises(PayloadTooLarge):
            c.append(tenant, "th", "message", {**MSG, "x": "y" * 400_000})
        assert c.redis.exists(keys.stream(tenant)) == 0


def test_fenced_thread_refuses_appends(client: JournalClient, tenant: str) -> None:
    """A fenced thread refuses appends with ThreadFenced; other threads still append."""
    client.append(tenant, "th", "message", MSG)
    client.redis.hset(keys.fences(tenant), "th", "seq 1 conflict")
    with pytest.raises(ThreadFenced, match="seq 1 conflict"):
        client.append(tenant, "th", "message", MSG)
    assert client.append(tenant, "other", "message", MSG).seq == 1


def test_bad_drafts_are_refused(client: JournalClient, tenant: str) -> None:
    """Malformed event fields get InvalidEvent naming the problem."""
    with pytest.raises(InvalidEvent, match="expected_seq"):
        client.append(tenant, "th", "message", MSG, expected_seq=-1)
    with pytest.raises(InvalidEvent, match="durability"):
        client.append(tenant, "th", "message", MSG, durability="paper")
    with pytest.raises(InvalidEvent, match="at least one"):
        client.append_many(tenant, [])


def test_fsync_append_survives_kill_9(embedded_redis: EmbeddedStack, settings: Settings, tenant: str) -> None:
    """Events acknowledged with durability='fsync' are all there after SIGKILL and restart of Valkey."""
    with JournalClient.from_settings(settings) as c:
        acked = [c.append(tenant, "th", "message", {**MSG, "i": i}, durability="fsync").seq for i in range(20)]
        acked += [r.seq for r in c.append_many(tenant, [Draft("th", "message", {**MSG, "i": i}) for i in range(50)],
                                               durability="fsync")]
    embedded_redis.kill("redis")
    embedded_redis.start("redis")
    with JournalClient.from_settings(settings) as c:
        seqs = [e.seq for e in c.read(tenant, "th")]
        assert seqs == acked == list(range(1, 71))
        assert c.head(tenant, "th") == 70


def test_async_client_matches_sync(settings: Settings, tenant: str) -> None:
    """The asyncio client appends, dedupes, conflicts and reads like the sync one."""

    async def go() -> None:
        async with await AsyncJournalClient.from_settings(settings) as c:
            recs = await asyncio.gather(*(c.append(tenant, "th", "message", {**MSG, "i": i}) for i in range(50)))
            assert sorted(r.seq for r in recs) == list(range(1, 51))
            one = await c.append(tenant, "th", "message", MSG, idempotency_key="k")
            assert (await c.append(tenant, "th", "message", MSG, idempotency_key="k")).seq == one.seq
            with pytest.raises(ConflictError):
                await c.append(tenant, "th", "message", MSG, expected_seq=3)
            big = await c.append(tenant, "th", "tool_result", {"call_id": "c1", "output": "z" * 300_000})
            assert big.blob is not None
            back = await c.read(tenant, "th", after_seq=50)
            assert [e.seq for e in back] == [51, 52] and back[-1].payload == {"call_id": "c1", "output": "z" * 300_000}
            assert await c.head(tenant, "th") == 52

    asyncio.run(go())


def test_wait_blocks_until_resume_across_processes(settings: Settings, tenant: str) -> None:
    """wait() returns the resume event appended later by another process; times out with None otherwise."""
    import subprocess
    import sys
    import time

    with JournalClient.from_settings(settings) as c:
        paused = c.append(tenant, "th", "pause", {"reason": "approval"})
        assert c.wait(tenant, "th", paused.seq, timeout=0.2) is None
        code = ("import sys, time; from journal.client import JournalClient; from journal.settings import Settings; "
                "time.sleep(0.5); c = JournalClient.from_settings(Settings(redis_url=sys.argv[1])); "
                "c.append(sys.argv[2], 'other', 'resume', {}); "
                "c.append(sys.argv[2], 'th', 'message', {'role': 'user', 'content': 'hi'}); "
                "c.append(sys.argv[2], 'th', 'resume', {'by': 'human:alice'})")
        proc = subprocess.Popen([sys.executable, "-c", code, settings.redis_url or "", tenant])
        t0 = time.monotonic()
        ev = c.wait(tenant, "th", paused.seq, timeout=20)
        proc.wait(10)
        assert ev is not None and ev.type == "resume" and ev.payload == {"by": "human:alice"} and ev.seq == 3
        assert time.monotonic() - t0 >= 0.4
        # Already there: returns at once.
        assert c.wait(tenant, "th", paused.seq, timeout=0) == ev


def test_fsync_durability_is_clear_about_what_the_server_supports(client: JournalClient, tenant: str) -> None:
    """'fsync' works with WAITAOF and AOF on; without either (Redis 7.0, appendonly no) it is DurabilityUnsupported."""
    import redis

    from journal.errors import DurabilityUnsupported

    try:
        client.redis.execute_command("WAITAOF", 0, 0, 1)
        known = True
    except redis.ResponseError as e:
        known = "unknown command" not in str(e).lower()
    aof = int(client.redis.info("persistence").get("aof_enabled", 0))
    if known and aof:
        assert client.append(tenant, "th", "message", MSG, durability="fsync").seq == 1
    else:
        with pytest.raises(DurabilityUnsupported, match="WAITAOF" if not known else "AOF off"):
            client.append(tenant, "th", "message", MSG, durability="fsync")


def test_append_after_script_flush_and_dropped_connections(settings: Settings, tenant: str) -> None:
    """The append's direct EVALSHA (``redis_store.run_script``): a server that lost the script gets it loaded again,
    a pooled connection the server closed is replaced, and a script's own error reply leaves the connection usable."""
    import redis

    with JournalClient.from_settings(settings) as c:
        assert c.append(tenant, "th", "message", MSG).seq == 1
        admin = redis.Redis.from_url(str(settings.redis_url))
        try:
            admin.script_flush()
            assert c.append(tenant, "th", "message", MSG).seq == 2
            admin.client_kill_filter(_type="normal", skipme=True)
            assert c.append(tenant, "th", "message", MSG).seq == 3
            with pytest.raises(ConflictError):
                c.append(tenant, "th", "message", MSG, expected_seq=1)
            assert c.append(tenant, "th", "message", MSG, expected_seq=3).seq == 4
            assert [e.seq for e in c.read(tenant, "th")] == [1, 2, 3, 4]
        finally:
            admin.close()
