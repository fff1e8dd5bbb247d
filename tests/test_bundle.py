"""Audit bundles: write, verify offline, and fail clearly on any tampering (pure, no servers)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest

from journal import codec
from journal.chain import GENESIS, link
from journal.errors import BlobMissing, InvalidEvent
from journal.events import BlobRef, Event
from journal.reducer import Reducer, fold, register
from journal.state import ThreadState, empty
from replayer import bundle as b
from replayer.bundle import BundleError, UnsupportedBundleVersion, verify_bundle, write_bundle
from replayer.verify import chained

TENANT, THREAD = "acme", "run-42"
KEY = b"audit-key-0123456789abcdef012345"
BIG_OUTPUT = "PDF:" + "scanned invoice " * 80


def offload(payload: Any) -> tuple[bytes, BlobRef]:
    """The blob bytes and reference the append client would make for a large payload."""
    data = codec.frame(codec.pack(codec.normalize(payload)))
    return data, BlobRef(hashlib.sha256(data).hexdigest(), len(data))


def history(extra: list[tuple[str, Any]] | None = None) -> tuple[list[Event], dict[str, bytes]]:
    """A demo-like agent thread with one tool result offloaded to a blob (payload resolved, as a replay reads it)."""
    big = {"call_id": "call_1", "tool": "fetch_invoice", "output": BIG_OUTPUT}
    blob, ref = offload(big)
    steps: list[tuple[str, Any, str | None, BlobRef | None]] = [
        ("node_enter", {"node": "planner"}, "planner", None),
        ("message", {"role": "user", "content": "Order #4242 arrived damaged, refund?"}, None, None),
        ("message", {"role": "assistant", "content": "Let me check.", "tool_calls": ["call_1"]}, "planner", None),
        ("tool_call", {"call_id": "call_1", "tool": "fetch_invoice", "args": {"order": 4242}}, "tools", None),
        ("tool_result", big, "tools", ref),
        ("memory_set", {"path": ["customer", "last_tool"], "value": "fetch_invoice"}, "planner", None),
        ("pause", {"reason": "refund over $100 needs a human"}, "approval", None),
        ("resume", {"by": "human:alice", "decision": "approved"}, "approval", None),
        ("complete", {"summary": "refund issued"}, "planner", None),
    ]
    steps += [(t, p, None, None) for t, p in extra or []]
    events = [Event(tenant=TENANT, thread=THREAD, seq=i, type=t, payload=p, ts_ms=1_700_000_000_000 + 100 * i,
                    node=n, actor={"agent_id": "support-bot-1"}, blob=r)
              for i, (t, p, n, r) in enumerate(steps, 1)]
    return events, {ref.sha256: blob}


def make(tmp_path: Path, key: bytes | None = None, key_id: str | None = None,
         registry: dict[str, Reducer] | None = None, extra: list[tuple[str, Any]] | None = None,
         name: str = "run.ajb") -> tuple[Path, list[Event], dict[str, bytes]]:
    events, blobs = history(extra)
    path = write_bundle(tmp_path / name, TENANT, THREAD, chained(events, key), blobs,
                        fold(events, empty(TENANT, THREAD), registry), key_id, created_ms=1_700_000_999_000)
    return path, events, blobs


def flip(path: Path, offset: int, mask: int = 0x01) -> Path:
    """A copy of the file with one byte changed."""
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    out = path.with_name(f"flipped-{offset}-{mask}.ajb")
    out.write_bytes(bytes(data))
    return out


def rewrite(path: Path, change: Any) -> Path:
    """A forged copy: the body decoded, changed, re-packed canonically with a recomputed header digest."""
    raw = path.read_bytes()
    body = msgpack.unpackb(raw[10:], raw=False)
    change(body)
    body["header_sha256"] = b._header_digest(body["tenant"], body["thread"], body["created_ms"], body["key_id"],
                                             body["head"], len(body["events"]), [n for n, _ in body["blobs"]])
    out = path.with_name("forged.ajb")
    out.write_bytes(raw[:10] + msgpack.packb(body, use_bin_type=True))
    return out


def test_round_trip_verifies(tmp_path: Path) -> None:
    """A freshly written bundle verifies offline and reports its contents and recorded state."""
    path, events, _ = make(tmp_path)
    rep = verify_bundle(path)
    assert rep.ok, rep.problems
    assert rep.problems == () and rep.reason is None
    assert (rep.tenant, rep.thread, rep.events, rep.blobs, rep.created_ms) == (TENANT, THREAD, 9, 1, 1_700_000_999_000)
    assert rep.chain is not None and rep.chain.ok and rep.head_hash == rep.chain.head_hash
    assert rep.state == fold(events, empty(TENANT, THREAD))
    assert rep.state is not None and rep.state.status == "completed" and rep.state.anomalies == ()
    assert rep.to_dict()["head_hash"] == rep.head_hash.hex()  # type: ignore[union-attr]
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file is left behind"


def test_empty_thread_bundle_verifies(tmp_path: Path) -> None:
    """A thread with no events makes a valid bundle with the GENESIS head."""
    path = write_bundle(tmp_path / "e.ajb", TENANT, THREAD, [], {}, empty(TENANT, THREAD), None)
    rep = verify_bundle(path)
    assert rep.ok and rep.events == 0 and rep.head_hash == GENESIS


def test_keyed_bundle_needs_its_key(tmp_path: Path) -> None:
    """An HMAC-chained bundle verifies with its key; without it the failure names the key id."""
    path, _, _ = make(tmp_path, KEY, "k-2025")
    assert verify_bundle(path, KEY).ok
    rep = verify_bundle(path)
    assert not rep.ok and "seq 1" in rep.problems[0] and "'k-2025'" in rep.problems[0]


def test_flipped_byte_in_an_event(tmp_path: Path) -> None:
    """One byte changed inside an event's payload → the chain names that event's seq."""
    path, _, _ = make(tmp_path)
    at = path.read_bytes().index(b"Order #4242")
    rep = verify_bundle(flip(path, at + 7))
    assert not rep.ok and rep.problems[0].startswith("hash chain broken at seq 2: changed")
    assert rep.chain is not None and rep.chain.first_bad_seq == 2


def test_flipped_byte_in_a_blob(tmp_path: Path) -> None:
    """One byte changed inside a blob → the blob fails its sha256 and the state is not re-derived."""
    path, _, blobs = make(tmp_path)
    (name, data), = blobs.items()
    at = path.read_bytes().index(data) + len(data) // 2
    rep = verify_bundle(flip(path, at))
    assert not rep.ok
    assert f"blob {name} does not match its sha256 (corrupt or altered)" in rep.problems
    assert rep.chain is not None and rep.chain.ok


def test_flipped_byte_in_the_state(tmp_path: Path) -> None:
    """One byte changed inside the recorded final state → the refold disagrees with it."""
    path, events, _ = make(tmp_path)
    state = codec.pack(codec.normalize(fold(events, empty(TENANT, THREAD)).to_dict()))
    at = path.read_bytes().index(b"refund issued", path.read_bytes().index(state))
    rep = verify_bundle(flip(path, at))
    assert not rep.ok and any(p.startswith("final state differs") and "summary" in p for p in rep.problems)


def test_flipped_byte_in_the_header(tmp_path: Path) -> None:
    """A changed creation time (covered by nothing but the header digest) is caught."""
    path, _, _ = make(tmp_path)
    data = path.read_bytes()
    at = data.index(msgpack.packb(1_700_000_999_000)) + 8
    rep = verify_bundle(flip(path, at))
    assert not rep.ok and any("header digest mismatch" in p for p in rep.problems)


def test_every_single_byte_flip_fails(tmp_path: Path) -> None:
    """Changing any one byte of a bundle anywhere makes verification fail (report or typed error)."""
    events, _ = history()
    small = [e for e in events if e.blob is None][:4]
    small = [replace(e, seq=i) for i, e in enumerate(small, 1)]
    path = write_bundle(tmp_path / "s.ajb", TENANT, THREAD, chained(small), {}, fold(small), None, created_ms=5)
    data = path.read_bytes()
    assert verify_bundle(path).ok
    undetected = []
    for offset in range(len(data)):
        for mask in (0x01, 0x80):
            copy = bytearray(data)
            copy[offset] ^= mask
            path.write_bytes(bytes(copy))
            try:
                if verify_bundle(path).ok:
                    undetected.append((offset, mask))
            except BundleError:
                pass
    assert undetected == []


def test_missing_blob(tmp_path: Path) -> None:
    """A bundle whose referenced blob was removed fails, naming the blob and the seq that needs it."""
    path, _, blobs = make(tmp_path)
    (name, _), = blobs.items()
    rep = verify_bundle(rewrite(path, lambda body: body.__setitem__("blobs", [])))
    assert not rep.ok
    assert f"blob {name} referenced by seq 5 is missing from the bundle" in rep.problems


def test_unreferenced_blob(tmp_path: Path) -> None:
    """A blob no event references is flagged: a bundle holds exactly what its events need."""
    path, _, _ = make(tmp_path)
    extra = b"stray"
    sha = hashlib.sha256(extra).hexdigest()
    rep = verify_bundle(rewrite(path, lambda body: body["blobs"].append([sha, extra])))
    assert not rep.ok and rep.problems == (f"blob {sha} is in the bundle but no event references it",)


def test_forged_bundle_without_its_last_event(tmp_path: Path) -> None:
    """Dropping the last event and recomputing the (unkeyed) header digest is still caught by the head."""
    path, _, _ = make(tmp_path)
    rep = verify_bundle(rewrite(path, lambda body: body["events"].pop()))
    assert not rep.ok and rep.problems[0].startswith("hash chain broken at seq 9: missing")


def test_forged_bundle_with_an_extra_event(tmp_path: Path) -> None:
    """An event appended behind the recorded head is inserted, even with a correctly computed hash."""
    path, events, _ = make(tmp_path)

    def append(body: dict[str, Any]) -> None:
        last = body["events"][-1]
        ev = replace(events[-1], seq=10, type="message", payload={"role": "user", "content": "x"}, node=None)
        body["events"].append([10, ev.ts_ms, 1, ev.type, None, ev.payload, None, dict(ev.actor), None,
                               link(last[9], ev), last[9]])

    rep = verify_bundle(rewrite(path, append))
    assert not rep.ok and rep.problems[0].startswith("hash chain broken at seq 10: inserted")


def test_non_canonical_encoding_is_caught(tmp_path: Path) -> None:
    """Re-encoding a value without changing it (int as a wider msgpack int) is still an alteration."""
    path = write_bundle(tmp_path / "c.ajb", TENANT, THREAD, [], {}, empty(TENANT, THREAD), None, created_ms=5)
    data = path.read_bytes()
    at = data.index(b"\xaacreated_ms\x05")
    forged = data[: at + 11] + b"\xcc\x05" + data[at + 12:]
    path.write_bytes(forged)
    rep = verify_bundle(path)
    assert not rep.ok and "not in canonical form" in rep.problems[0]


def test_truncated_file_is_corrupt(tmp_path: Path) -> None:
    """A bundle cut short cannot be decoded, and says so."""
    path, _, _ = make(tmp_path)
    path.write_bytes(path.read_bytes()[:-20])
    rep = verify_bundle(path)
    assert not rep.ok and "corrupt" in rep.problems[0]


def test_unknown_version_is_refused(tmp_path: Path) -> None:
    """A bundle of another format version raises UnsupportedBundleVersion."""
    path, _, _ = make(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:8] + (2).to_bytes(2, "big") + data[10:])
    with pytest.raises(UnsupportedBundleVersion, match="version 2"):
        verify_bundle(path)


def test_not_a_bundle_is_refused(tmp_path: Path) -> None:
    """A file without the magic, or too short, raises BundleError."""
    p = tmp_path / "x.ajb"
    p.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(BundleError, match="not an agent-journal audit bundle"):
        verify_bundle(p)
    p.write_bytes(b"AJB")
    with pytest.raises(BundleError, match="too short"):
        verify_bundle(p)


def test_custom_types_need_their_reducers(tmp_path: Path) -> None:
    """A bundle with a custom event verifies with the reducer registry it was folded with, not without it."""
    reg: dict[str, Reducer] = {}

    def refunds(state: ThreadState, event: Event) -> ThreadState:
        return state.with_custom("refunds", (state.custom.get("refunds") or 0) + event.payload["amount"])

    register("x.acme.refund_issued", refunds, reg)
    path, _, _ = make(tmp_path, registry=reg, extra=[("x.acme.refund_issued", {"amount": 120})])
    assert verify_bundle(path, registry=reg).ok
    rep = verify_bundle(path, registry={})
    assert not rep.ok and "custom" in rep.problems[0] and "opaque" in rep.problems[0]


def test_write_refuses_missing_or_wrong_inputs(tmp_path: Path) -> None:
    """Writing refuses a referenced blob that is absent and events or state of another thread."""
    events, blobs = history()
    rows = chained(events)
    state = fold(events)
    with pytest.raises(BlobMissing):
        write_bundle(tmp_path / "a.ajb", TENANT, THREAD, rows, {}, state, None)
    with pytest.raises(InvalidEvent, match="not acme/other"):
        write_bundle(tmp_path / "a.ajb", TENANT, "other", rows, blobs, replace(state, thread="other"), None)
    with pytest.raises(InvalidEvent, match="final state"):
        write_bundle(tmp_path / "a.ajb", TENANT, "other", rows, blobs, state, None)
    assert not (tmp_path / "a.ajb").exists()
