"""Fault: the S3 server is down while agents append, some of them payloads over the blob threshold.

The outage happens once, in the module fixture ``outage``, which records what every step saw;
the tests then check one behaviour each. Runs on the module's private stack: it stops S3.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import assert_exactly_once

from journal import codec, keys
from journal.blobs import BlobStore
from journal.client import JournalClient
from journal.embedded import EmbeddedStack
from journal.errors import BlobError, JournalError, StoreUnavailable
from journal.events import Event
from journal.settings import Settings
from projections.worker import Projector, WorkerOptions

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}


def big_payload(tag: str) -> dict[str, Any]:
    """Over the default 100 kB blob threshold, and incompressible."""
    return {"call_id": f"c-{tag}", "tag": tag, "output": secrets.token_hex(100_000)}


@dataclass
class Outage:
    settings: Settings
    tenant: str
    refused: JournalError | None = None
    state_before: tuple[int, int] = (0, 0)
    state_after: tuple[int, int] = (0, 0)
    small_while_down: list[Event] = field(default_factory=list)
    small_failures: list[str] = field(default_factory=list)
    new_client_error: str | None = None
    new_client_event: Event | None = None
    big_after: Event | None = None
    big_read_back: Any = None
    big_sent: Any = None


def stream_state(client: JournalClient, tenant: str) -> tuple[int, int]:
    """(stream length, head of thread "big"): what a refused append must leave as it was."""
    return client.redis.xlen(keys.stream(tenant)), client.head(tenant, "big")


def append_when_up(client: JournalClient, tenant: str, payload: Any, timeout: float = 30.0) -> Event:
    """The S3 port opens a moment before the filer serves: retry an unavailable store briefly."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.append(tenant, "big", "tool_result", payload)
        except (StoreUnavailable, BlobError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def outage(private_stack: EmbeddedStack, fault_settings: Settings) -> Iterator[Outage]:
    """One blob before the outage; S3 stopped; a big append (refused), small appends, a new client; S3 started;
    the big append again; everything projected."""
    o = Outage(fault_settings, f"s3down-{uuid.uuid4().hex[:6]}")
    client = JournalClient.from_settings(fault_settings)
    try:
        client.append(o.tenant, "big", "message", {**MSG, "i": 0})
        client.append(o.tenant, "big", "tool_result", big_payload("before"))
        private_stack.stop("s3")
        try:
            o.state_before = stream_state(client, o.tenant)
            try:
                client.append(o.tenant, "big", "tool_result", big_payload("refused"))
            except JournalError as e:
                o.refused = e
            o.state_after = stream_state(client, o.tenant)
            for i in range(20):
                try:
                    o.small_while_down.append(client.append(o.tenant, f"small{i % 2}", "message", {**MSG, "i": i}))
                except JournalError as e:
                    o.small_failures.append(f"{type(e).__name__}: {e}")
            try:  # an agent (re)starting during the outage, with only small events to write
                with JournalClient.from_settings(fault_settings) as fresh:
                    o.new_client_event = fresh.append(o.tenant, "fresh", "message", {**MSG, "i": 0})
            except JournalError as e:
                o.new_client_error = f"{type(e).__name__}: {e}"
        finally:
            private_stack.start("s3")
        o.big_sent = big_payload("after")
        o.big_after = append_when_up(client, o.tenant, o.big_sent)
        o.big_read_back = client.read(o.tenant, "big", after_seq=o.big_after.seq - 1)[0].payload
    finally:
        client.close()
    p = Projector(fault_settings, WorkerOptions(claim_idle_ms=100, maintenance_every=0.2))
    try:
        p.drain(tenants=[o.tenant], timeout=60)
    finally:
        p.close()
    yield o


def test_s3_down_big_append_refused_with_typed_error_and_writes_nothing(outage: Outage) -> None:
    """S3 down: a payload over the blob threshold fails with StoreUnavailable/BlobError saying what to do; the
    stream and the thread head are untouched."""
    e = outage.refused
    assert isinstance(e, StoreUnavailable | BlobError), repr(e)
    message = str(e)
    assert "object storage" in message and ("JOURNAL_S3_URL" in message or "S3 server" in message), message
    assert outage.state_after == outage.state_before


def test_s3_down_small_appends_still_succeed(outage: Outage) -> None:
    """While S3 is down, payloads under the threshold append as usual on an existing client."""
    assert outage.small_failures == []
    assert [e.seq for e in outage.small_while_down] == [i // 2 + 1 for i in range(20)]
    assert all(e.blob is None for e in outage.small_while_down)


def test_s3_down_new_client_still_appends_small_events(outage: Outage) -> None:
    """An agent starting while S3 is down can still create a client and append small events."""
    assert outage.new_client_error is None
    assert outage.new_client_event is not None and outage.new_client_event.seq == 1


def test_s3_back_big_append_succeeds_reads_back_and_no_reference_dangles(
        outage: Outage, admin_connect: Callable[..., Any]) -> None:
    """After S3 returns the big append succeeds and reads back; every blob an event references, in Redis or in
    PostgreSQL, exists in S3; the projected thread is gapless and chained."""
    o = outage
    assert o.big_after is not None and o.big_after.blob is not None
    assert o.big_after.seq == o.state_before[1] + 1  # the refused append burned no seq
    assert o.big_read_back == o.big_sent
    store = BlobStore.from_settings(o.settings)
    refs: set[str] = set()
    with JournalClient.from_settings(o.settings) as client:
        for sid, fields in client.redis.xrange(keys.stream(o.tenant)):
            ev = codec.decode_entry(o.tenant, fields, sid.decode())
            if ev.blob is not None:
                refs.add(ev.blob.sha256)
    pg = admin_connect(o.settings)
    try:
        rows = pg.execute("SELECT thread_id, seq, blob_sha256 FROM journal.events WHERE tenant_id = %s",
                          (o.tenant,)).fetchall()
        pg_refs = {r[2] for r in rows if r[2]}
        heads: dict[str, int] = {}
        for th, seq, _ in rows:
            heads[th] = max(heads.get(th, 0), seq)
        assert_exactly_once(pg, o.tenant, heads)
    finally:
        pg.close()
    assert len(pg_refs) == 2 and refs <= pg_refs  # the blob from before the outage, and the one after
    missing = [sha for sha in refs | pg_refs if not store.exists(keys.blob_key(o.tenant, sha))]
    assert missing == [], f"events reference blobs missing from S3: {missing}"
