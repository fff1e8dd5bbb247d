"""Hash-chain verification: each tampering is detected and names the right first bad seq (pure, no servers)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journal.chain import GENESIS, link
from journal.events import BlobRef, Event
from replayer.verify import (
    CHANGED,
    INSERTED,
    MISSING,
    REORDERED,
    StoredEvent,
    VerifyResult,
    chained,
    payload_matches,
    verify_chain,
)

TENANT, THREAD = "acme", "run-7"
KEY = b"k" * 32
TYPES = ["message", "tool_call", "tool_result", "memory_set", "x.acme.refund_issued"]


def make_events(n: int, texts: list[str] | None = None) -> list[Event]:
    """n distinct events with strictly increasing time."""
    texts = texts or []
    return [
        Event(tenant=TENANT, thread=THREAD, seq=i, type=TYPES[i % len(TYPES)],
              payload={"i": i, "text": texts[i % len(texts)] if texts else f"step {i}", "ok": True},
              ts_ms=1_700_000_000_000 + 10 * i, node="planner" if i % 2 else None,
              actor={"agent_id": "bot-1"}, idempotency_key=f"k{i}")
        for i in range(1, n + 1)
    ]


def content_of(e: Event) -> dict[str, Any]:
    """Everything of an event except its seq."""
    return {"type": e.type, "payload": e.payload, "ts_ms": e.ts_ms, "node": e.node, "actor": e.actor,
            "idempotency_key": e.idempotency_key}


def check(result: VerifyResult, seq: int, reason: str, orig: list[StoredEvent] | None = None) -> None:
    """The verdict names ``seq`` and ``reason``; everything before it counts as checked, with its head."""
    assert not result.ok, result
    assert (result.first_bad_seq, result.reason) == (seq, reason), result
    assert result.checked == max(seq - 1, 0) and result.detail
    if orig is not None:
        assert result.head_hash == (orig[seq - 2].hash if seq > 1 else GENESIS)


def test_intact_chain_verifies() -> None:
    """An untouched chain is ok, every event checked, head = last hash."""
    rows = chained(make_events(12))
    res = verify_chain(rows)
    assert res.ok and res.checked == 12 and res.head_hash == rows[-1].hash
    assert res.first_bad_seq is None and res.reason is None
    assert verify_chain(rows, expected_head=rows[-1].hash, expected_last_seq=12).ok


def test_empty_chain_verifies() -> None:
    """No events is a valid (empty) chain with head GENESIS."""
    res = verify_chain([])
    assert res.ok and res.checked == 0 and res.head_hash == GENESIS
    check(verify_chain([], expected_last_seq=3), 1, MISSING)


def test_to_dict_is_json_friendly() -> None:
    """The result renders as plain data with a hex head."""
    d = verify_chain(chained(make_events(2))).to_dict()
    assert d["ok"] is True and isinstance(d["head_hash"], str) and len(d["head_hash"]) == 64


# -- each tampering, on generated histories --------------------------------------------------------

CASES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
histories = st.integers(3, 20).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n)))
keys = st.sampled_from([None, KEY])


@CASES
@given(histories, keys)
def test_changed_payload_byte(nk: tuple[int, int], key: bytes | None) -> None:
    """One byte of one payload changed (columns untouched) → changed at that seq."""
    n, k = nk
    rows = chained(make_events(n), key)
    orig = list(rows)
    e = rows[k - 1].event
    rows[k - 1] = replace(rows[k - 1], event=replace(e, payload={**e.payload, "i": e.payload["i"] ^ 1}))
    check(verify_chain(rows, key), k, CHANGED, orig)


@CASES
@given(histories, keys)
def test_changed_type_only(nk: tuple[int, int], key: bytes | None) -> None:
    """true → 1 in a payload (equal under Python ==) → changed at that seq."""
    n, k = nk
    rows = chained(make_events(n), key)
    orig = list(rows)
    e = rows[k - 1].event
    rows[k - 1] = replace(rows[k - 1], event=replace(e, payload={**e.payload, "ok": 1}))
    check(verify_chain(rows, key), k, CHANGED, orig)


@CASES
@given(histories, keys)
def test_deleted_event_leaves_a_gap(nk: tuple[int, int], key: bytes | None) -> None:
    """A deleted row (not the last) → missing at its seq."""
    n, k = nk
    if k == n:
        k -= 1
    rows = chained(make_events(n), key)
    orig = list(rows)
    del rows[k - 1]
    check(verify_chain(rows, key), k, MISSING, orig)


@CASES
@given(histories, keys)
def test_deleted_event_with_renumbering(nk: tuple[int, int], key: bytes | None) -> None:
    """A deleted row whose successors were renumbered to close the gap → missing at its seq."""
    n, k = nk
    if k == n:
        k -= 1
    rows = chained(make_events(n), key)
    orig = list(rows)
    del rows[k - 1]
    for j in range(k - 1, len(rows)):
        rows[j] = replace(rows[j], event=replace(rows[j].event, seq=rows[j].event.seq - 1))
    check(verify_chain(rows, key), k, MISSING, orig)


@CASES
@given(histories, keys)
def test_deleted_tail_needs_an_anchor(nk: tuple[int, int], key: bytes | None) -> None:
    """Events cut off the end are caught with the recorded head or last seq → missing at the first cut."""
    n, k = nk
    rows = chained(make_events(n), key)
    orig = list(rows)
    head = rows[-1].hash
    cut = rows[: k - 1]
    check(verify_chain(cut, key, expected_head=head), k, MISSING, orig)
    check(verify_chain(cut, key, expected_last_seq=n), k, MISSING, orig)


@CASES
@given(histories, keys, st.booleans())
def test_inserted_with_duplicate_seq(nk: tuple[int, int], key: bytes | None, fake_first: bool) -> None:
    """An extra row carrying an existing seq → inserted at that seq, whichever copy comes first."""
    n, k = nk
    rows = chained(make_events(n), key)
    orig = list(rows)
    target = rows[k - 1]
    fake = StoredEvent(replace(target.event, payload={"forged": True}), bytes(32), target.prev_hash)
    rows.insert(k - 1 if fake_first else k, fake)
    check(verify_chain(rows, key), k, INSERTED, orig)


@CASES
@given(histories, keys, st.booleans())
def test_inserted_with_renumbering(nk: tuple[int, int], key: bytes | None, forged_hash: bool) -> None:
    """A row slipped in at seq k with the originals renumbered up → inserted at k.

    The fake row either carries a correctly computed unkeyed hash (an attacker without the key)
    or garbage hashes; both are caught.
    """
    n, k = nk
    rows = chained(make_events(n), key)
    orig = list(rows)
    prev = rows[k - 2].hash if k > 1 else GENESIS
    fake_ev = replace(rows[k - 1].event, payload={"forged": True})
    fake = StoredEvent(fake_ev, link(prev, fake_ev) if forged_hash else b"\x01" * 32, prev)
    shifted = [replace(r, event=replace(r.event, seq=r.event.seq + 1)) for r in rows[k - 1:]]
    res = verify_chain([*rows[: k - 1], fake, *shifted], key)
    check(res, k, INSERTED, orig)


@CASES
@given(st.integers(2, 20), keys)
def test_appended_fake_needs_an_anchor(n: int, key: bytes | None) -> None:
    """A fake event appended at the end is inserted at n+1 given the recorded head or last seq."""
    rows = chained(make_events(n), key)
    orig = list(rows)
    head = rows[-1].hash
    extra_ev = replace(rows[-1].event, seq=n + 1, payload={"forged": True}, ts_ms=rows[-1].event.ts_ms + 1)
    extra = StoredEvent(extra_ev, link(head, extra_ev), head)  # no key: the best a forger can do
    tampered = [*rows, extra]
    check(verify_chain(tampered, key, expected_head=head), n + 1, INSERTED, orig)
    check(verify_chain(tampered, key, expected_last_seq=n), n + 1, INSERTED, orig)
    if key is None:
        assert verify_chain(tampered).ok  # documented limit: no key, no anchor → a consistent extension passes
    else:
        check(verify_chain(tampered, key), n + 1, CHANGED, orig)


@CASES
@given(histories, keys)
def test_swapped_contents(nk: tuple[int, int], key: bytes | None) -> None:
    """Two adjacent events' contents exchanged, seq and hash columns in place → reordered at the first."""
    n, k = nk
    if k == n:
        k -= 1
    rows = chained(make_events(n), key)
    orig = list(rows)
    a, b = rows[k - 1], rows[k]
    rows[k - 1] = replace(a, event=replace(a.event, **content_of(b.event)))
    rows[k] = replace(b, event=replace(b.event, **content_of(a.event)))
    check(verify_chain(rows, key), k, REORDERED, orig)


@CASES
@given(histories, keys, st.integers(1, 4))
def test_swapped_rows(nk: tuple[int, int], key: bytes | None, dist: int) -> None:
    """Two whole rows (content and hashes) exchanged, seq column kept → reordered at the lower seq."""
    n, k = nk
    j = min(n, k + dist)
    if j == k:
        k -= 1
    rows = chained(make_events(n), key)
    orig = list(rows)
    a, b = rows[k - 1], rows[j - 1]
    rows[k - 1] = replace(b, event=replace(b.event, seq=a.event.seq))
    rows[j - 1] = replace(a, event=replace(a.event, seq=b.event.seq))
    check(verify_chain(rows, key), k, REORDERED, orig)


@CASES
@given(histories, keys)
def test_delivered_out_of_order(nk: tuple[int, int], key: bytes | None) -> None:
    """Rows delivered out of seq order (seq k after k+1) → reordered at k."""
    n, k = nk
    if k == n:
        k -= 1
    rows = chained(make_events(n), key)
    orig = list(rows)
    rows[k - 1], rows[k] = rows[k], rows[k - 1]
    check(verify_chain(rows, key), k, REORDERED, orig)


# -- single cases ----------------------------------------------------------------------------------


def test_prev_hash_column_altered() -> None:
    """Only the stored prev_hash of one row altered → changed at that seq."""
    rows = chained(make_events(6))
    rows[3] = replace(rows[3], prev_hash=b"\x07" * 32)
    check(verify_chain(rows), 4, CHANGED)


def test_hash_column_altered() -> None:
    """Only the stored hash of one row altered → changed at that seq."""
    rows = chained(make_events(6))
    rows[2] = replace(rows[2], hash=b"\x07" * 32)
    check(verify_chain(rows), 3, CHANGED)


def test_seq_below_one_is_inserted() -> None:
    """A row with seq 0 is not part of any chain."""
    rows = chained(make_events(3))
    rows.insert(0, StoredEvent(replace(rows[0].event, seq=0), bytes(32), GENESIS))
    check(verify_chain(rows), 0, INSERTED)


def test_keyed_chain_verifies_only_with_its_key() -> None:
    """An HMAC chain verifies with its key; with no key or another key it fails at seq 1."""
    keyed = chained(make_events(5), KEY)
    assert verify_chain(keyed, KEY).ok
    check(verify_chain(keyed), 1, CHANGED)
    check(verify_chain(keyed, b"other-key"), 1, CHANGED)


def test_unkeyed_chain_fails_with_a_key_and_says_why() -> None:
    """A chain built without the key fails under the key, and the detail names the unkeyed hash."""
    res = verify_chain(chained(make_events(5)), KEY)
    check(res, 1, CHANGED)
    assert res.detail is not None and "without the HMAC key" in res.detail


def test_blob_event_is_chained_by_its_reference() -> None:
    """An offloaded payload is covered by its blob digest: a changed digest is a changed event."""
    events = make_events(3)
    events[1] = replace(events[1], payload=None, blob=BlobRef("ab" * 32, 1000))
    rows = chained(events)
    assert verify_chain(rows).ok
    rows[1] = replace(rows[1], event=replace(rows[1].event, blob=BlobRef("cd" * 32, 1000)))
    check(verify_chain(rows), 2, CHANGED)


def test_database_payload_copy_is_compared() -> None:
    """A JSONB copy that disagrees with the hashed body is changed; JSONB's number rewriting is not."""
    events = make_events(3)
    events[1] = replace(events[1], payload={"big": 1e20, "x": 0.1, "flag": True})
    rows = chained(events)
    rows[1] = replace(rows[1], json_payload={"big": 10**20, "x": 0.1, "flag": True})
    assert verify_chain(rows).ok
    rows[1] = replace(rows[1], json_payload={"big": 10**20, "x": 0.1, "flag": 1})
    check(verify_chain(rows), 2, CHANGED)


@pytest.mark.parametrize(("stored", "body", "same"), [
    (10**20, 1e20, True),
    (10**23, 1e23, True),
    (1.5, 1.5, True),
    (3, 3, True),
    (3, 4, False),
    (1, True, False),
    (0, False, False),
    (None, None, True),
    (None, 0, False),
    ({"a": [1, {"b": "x"}]}, {"a": [1, {"b": "x"}]}, True),
    ({"a": 1}, {"a": 1, "b": None}, False),
    ([1, 2], [1, 2, 3], False),
    ("1", 1, False),
    (2**70, 1.0, False),
])
def test_payload_matches(stored: Any, body: Any, same: bool) -> None:
    """payload_matches follows == where JSONB rewrites numbers and is strict about bool, keys and lengths."""
    assert payload_matches(stored, body) is same
