"""Self-contained audit bundles: one file per thread that proves its own history offline.

An auditor gets one file and needs no database, Redis or S3 to check it: the bundle holds
every event with its stored chain hashes, the payload blobs the events reference, the chain
head, and the final state the journal computed. :func:`verify_bundle` recomputes the chain,
re-hashes every blob and folds the events with the one reducer to reproduce that state.

File format (``.ajb``), version 1::

    b"AJBUNDLE"                8 bytes, magic
    version                    2 bytes, big-endian unsigned (1)
    body                       one msgpack map, packed by msgpack-python with use_bin_type=True:
      "tenant"       str
      "thread"       str
      "created_ms"   int        when the bundle was written (ms since the epoch)
      "key_id"       str | nil  id of the HMAC key the chain was written with (the key is not in the file)
      "head"         bin(32)    stored hash of the last event (32 zero bytes for an empty thread)
      "events"       [[seq, ts_ms, version, type, node, payload, idempotency_key, actor, blob, hash, prev_hash]]
                                in seq order; payload is nil when blob = [sha256 hex, size] names it
      "blobs"        [[sha256 hex, bin]]  sorted by digest: the framed payload bytes as stored in S3
      "state"        bin        msgpack of codec.normalize(ThreadState.to_dict()) — the final state
      "header_sha256" bin(32)   SHA-256 over msgpack [version, tenant, thread, created_ms, key_id, head,
                                event count, blob digests]

Why this shape: events are stored as their fields (not as framed, possibly compressed bodies)
and the container is not compressed, so every byte of the file is either structure or a value
that some check covers — the chain hashes cover every event field, blob digests cover blob
bytes, the refold covers the state bytes, the header digest covers the rest — and msgpack-python
packs canonically (smallest encodings), so re-packing the parsed body must reproduce the file
byte for byte: an edit that keeps values equal (say a uint8 rewritten as an int8) is still
caught. The header digest is plain SHA-256 (it catches corruption; authenticity comes from the
HMAC chain, whose head it covers).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgpack

from journal import codec
from journal.chain import GENESIS
from journal.errors import BlobCorrupt, BlobMissing, InvalidEvent, JournalError
from journal.events import BlobRef, Event
from journal.keys import blob_key, validate_id
from journal.reducer import Reducer, fold
from journal.state import ThreadState, empty
from replayer.verify import StoredEvent, VerifyResult, verify_chain

MAGIC = b"AJBUNDLE"
VERSION = 1
_PREFIX = struct.Struct(">8sH")
SUFFIX = ".ajb"


class BundleError(JournalError):
    """A file is not an audit bundle this reader can check."""


class UnsupportedBundleVersion(BundleError):
    """The bundle was written in a format version this reader does not know."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(
            f"audit bundle format version {version} is not supported (this reader knows {VERSION}); "
            "verify it with the agent-journal release that wrote it, or a newer one"
        )


@dataclass(frozen=True, slots=True)
class BundleReport:
    """The verdict on one bundle; ``ok`` only if every check passed."""

    ok: bool
    problems: tuple[str, ...]
    tenant: str | None = None
    thread: str | None = None
    created_ms: int | None = None
    key_id: str | None = None
    events: int = 0
    blobs: int = 0
    head_hash: bytes | None = None
    chain: VerifyResult | None = None
    #: The final state recorded in the bundle (None if it could not be decoded).
    state: ThreadState | None = field(default=None, compare=False)

    @property
    def reason(self) -> str | None:
        """The first problem found, for one-line output."""
        return self.problems[0] if self.problems else None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": list(self.problems), "tenant": self.tenant, "thread": self.thread,
                "created_ms": self.created_ms, "key_id": self.key_id, "events": self.events, "blobs": self.blobs,
                "head_hash": self.head_hash.hex() if self.head_hash is not None else None,
                "chain": self.chain.to_dict() if self.chain else None}


# -- writing ---------------------------------------------------------------------------------------


def write_bundle(path: str | os.PathLike[str], tenant: str, thread: str, stored_events: Sequence[StoredEvent],
                 blobs: Mapping[str, bytes], final_state: ThreadState, key_id: str | None,
                 *, created_ms: int | None = None) -> Path:
    """Write the audit bundle of one thread to ``path`` (atomically) and return the path.

    ``stored_events`` are the thread's events as read from storage, in seq order, with their
    stored hashes; ``blobs`` maps sha256 hex → stored bytes and must hold every blob an event
    references (others are left out); ``final_state`` is the state the journal computed.
    """
    validate_id(tenant, "tenant")
    validate_id(thread, "thread")
    if (final_state.tenant, final_state.thread) != (tenant, thread):
        raise InvalidEvent(f"final state is of {final_state.tenant}/{final_state.thread}, not {tenant}/{thread}")
    rows: list[list[Any]] = []
    used: dict[str, bytes] = {}
    for s in stored_events:
        e = s.event
        if (e.tenant, e.thread) != (tenant, thread):
            raise InvalidEvent(f"event seq {e.seq} is of {e.tenant}/{e.thread}, not {tenant}/{thread}")
        if e.blob is not None:
            data = blobs.get(e.blob.sha256)
            if data is None:
                raise BlobMissing(blob_key(tenant, e.blob.sha256))
            if hashlib.sha256(data).hexdigest() != e.blob.sha256:
                raise BlobCorrupt(f"blob {e.blob.sha256} given for seq {e.seq} does not match its sha256")
            used[e.blob.sha256] = bytes(data)
        rows.append([
            e.seq, e.ts_ms, e.version, e.type, e.node,
            None if e.blob else codec.normalize(e.payload, f"event[{e.seq}].payload"), e.idempotency_key,
            codec.normalize(dict(e.actor), f"event[{e.seq}].actor"), e.blob.to_wire() if e.blob else None,
            bytes(s.hash), bytes(s.prev_hash),
        ])
    head = bytes(stored_events[-1].hash) if stored_events else GENESIS
    created = time.time_ns() // 1_000_000 if created_ms is None else created_ms
    names = sorted(used)
    body = {
        "tenant": tenant,
        "thread": thread,
        "created_ms": created,
        "key_id": key_id,
        "head": head,
        "events": rows,
        "blobs": [[name, used[name]] for name in names],
        "state": codec.pack(codec.normalize(final_state.to_dict(), "state")),
        "header_sha256": _header_digest(tenant, thread, created, key_id, head, len(rows), names),
    }
    data = _PREFIX.pack(MAGIC, VERSION) + msgpack.packb(body, use_bin_type=True)
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)  # readers never see a half-written bundle
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _header_digest(tenant: str, thread: str, created_ms: int, key_id: str | None, head: bytes, count: int,
                   names: Sequence[str]) -> bytes:
    return hashlib.sha256(
        msgpack.packb([VERSION, tenant, thread, created_ms, key_id, head, count, list(names)], use_bin_type=True)
    ).digest()


# -- verifying -------------------------------------------------------------------------------------


def read_header(data: bytes) -> int:
    """The format version of bundle bytes; ``BundleError`` if they are not a bundle."""
    if len(data) < _PREFIX.size:
        raise BundleError(f"file is {len(data)} bytes: too short to be an agent-journal audit bundle")
    magic, version = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise BundleError(f"not an agent-journal audit bundle (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise UnsupportedBundleVersion(version)
    return int(version)


def verify_bundle(path: str | os.PathLike[str], key: bytes | None = None,
                  registry: Mapping[str, Reducer] | None = None) -> BundleReport:
    """Check a bundle fully offline: container, header, chain, blobs, and the refolded final state.

    Raises ``BundleError`` (``UnsupportedBundleVersion``) for a file this reader cannot judge;
    every integrity failure of a bundle it can read is reported in ``BundleReport.problems``.
    ``registry`` holds the custom reducers the thread's custom event types need (default: none;
    the CLI loads ``JOURNAL_REDUCERS``), exactly as when the state was first computed.
    """
    data = Path(path).read_bytes()
    read_header(data)
    raw = data[_PREFIX.size:]
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # any parse failure of untrusted bytes is a corrupt bundle, whatever msgpack raises
        return BundleReport(False, (f"bundle body is corrupt and cannot be decoded ({type(e).__name__}: {e})",))
    problems: list[str] = []
    if msgpack.packb(body, use_bin_type=True) != raw:
        problems.append("bundle bytes are not in canonical form: the file was altered after it was written")
    try:
        parsed = _parse(body)
    except (KeyError, TypeError, ValueError, JournalError) as e:
        return BundleReport(False, (*problems, f"bundle body is malformed ({type(e).__name__}: {e})"))
    tenant, thread, created, key_id, head, rows, blobs, state_bytes, digest = parsed
    names = [name for name, _ in blobs]
    if _header_digest(tenant, thread, created, key_id, head, len(rows), names) != digest:
        problems.append("header digest mismatch: tenant, thread, creation time, key id, head or counts were altered")

    chain = verify_chain(rows, key, expected_head=head)
    if not chain.ok:
        hint = ""
        if chain.first_bad_seq == 1 and chain.reason == "changed":
            if key_id and not key:
                hint = f" (the chain was written with HMAC key {key_id!r}: pass that key)"
            elif key and not key_id:
                hint = " (the bundle records no HMAC key: verify without a key)"
        problems.append(f"hash chain broken at seq {chain.first_bad_seq}: {chain.reason} — {chain.detail}{hint}")

    store: dict[str, bytes] = {}
    blobs_ok = True
    for name, blob in blobs:
        if name in store:
            problems.append(f"blob {name} appears twice")
            blobs_ok = False
        elif hashlib.sha256(blob).hexdigest() != name:
            problems.append(f"blob {name} does not match its sha256 (corrupt or altered)")
            blobs_ok = False
        store[name] = blob
    referenced: set[str] = set()
    for r in rows:
        ref = r.event.blob
        if ref is None:
            continue
        referenced.add(ref.sha256)
        if ref.sha256 not in store:
            problems.append(f"blob {ref.sha256} referenced by seq {r.event.seq} is missing from the bundle")
            blobs_ok = False
        elif len(store[ref.sha256]) != ref.size:
            problems.append(f"blob {ref.sha256} is {len(store[ref.sha256])} bytes, seq {r.event.seq} says {ref.size}")
            blobs_ok = False
    problems.extend(f"blob {name} is in the bundle but no event references it" for name in names
                    if name not in referenced)

    recorded: ThreadState | None = None
    try:
        recorded = ThreadState.from_dict(msgpack.unpackb(state_bytes, raw=False, strict_map_key=True))
    except Exception as e:  # untrusted bytes: whatever fails, the recorded state is unreadable
        problems.append(f"recorded final state cannot be decoded ({type(e).__name__}: {e})")
    if blobs_ok:
        problems.extend(_check_state(tenant, thread, rows, store, state_bytes, registry))
    else:
        problems.append("final state not re-derived: the blobs it needs are missing or corrupt")

    return BundleReport(not problems, tuple(problems), tenant, thread, created, key_id, len(rows), len(blobs), head,
                        chain, recorded)


def _check_state(tenant: str, thread: str, rows: Sequence[StoredEvent], store: Mapping[str, bytes],
                 state_bytes: bytes, registry: Mapping[str, Reducer] | None) -> list[str]:
    try:
        events = [r.event if r.event.blob is None else
                  replace(r.event, payload=codec.unframe(store[r.event.blob.sha256])) for r in rows]
        folded = fold(events, empty(tenant, thread), registry)
        mine = codec.pack(codec.normalize(folded.to_dict(), "state"))
    except JournalError as e:
        return [f"final state cannot be re-derived: {e}"]
    if mine == state_bytes:
        return []
    try:
        theirs = msgpack.unpackb(state_bytes, raw=False, strict_map_key=True)
        ours = folded.to_dict()
        keys = sorted(k for k in set(ours) | set(theirs) if codec.pack(codec.normalize(ours.get(k))) !=
                      codec.pack(codec.normalize(theirs.get(k))))
    except Exception as e:  # the recorded state is untrusted bytes; any failure just means "it differs"
        keys = [f"<undecodable: {type(e).__name__}>"]
    return [f"final state differs from the fold of the bundled events (fields: {', '.join(keys) or 'encoding'})"]


def _parse(body: Any) -> tuple[str, str, int, str | None, bytes, list[StoredEvent], list[tuple[str, bytes]], bytes,
                               bytes]:
    """Typed fields of a decoded body; raises KeyError/TypeError/ValueError on anything unexpected."""
    if not isinstance(body, dict):
        raise TypeError(f"body is {type(body).__name__}, expected a map")
    expected = {"tenant", "thread", "created_ms", "key_id", "head", "events", "blobs", "state", "header_sha256"}
    if set(body) != expected:
        raise KeyError(f"fields {sorted(set(body) ^ expected)} unexpected or missing")
    tenant = validate_id(body["tenant"], "tenant")
    thread = validate_id(body["thread"], "thread")
    created = _typed(body["created_ms"], int, "created_ms")
    key_id = body["key_id"]
    if key_id is not None and not isinstance(key_id, str):
        raise TypeError("key_id must be a str or nil")
    head = _typed(body["head"], bytes, "head")
    rows: list[StoredEvent] = []
    for i, row in enumerate(_typed(body["events"], list, "events")):
        if not isinstance(row, list) or len(row) != 11:
            raise ValueError(f"events[{i}] is not an 11-field list")
        seq, ts_ms, version, type_, node, payload, idem, actor, blob, h, prev = row
        if not isinstance(actor, dict):
            raise TypeError(f"events[{i}].actor must be a map")
        _typed(type_, str, f"events[{i}].type")
        for name, value in (("node", node), ("idempotency_key", idem)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"events[{i}].{name} must be a str or nil")
        event = Event(tenant=tenant, thread=thread, seq=_typed(seq, int, "seq"), type=type_, payload=payload,
                      ts_ms=_typed(ts_ms, int, "ts_ms"), node=node, idempotency_key=idem, actor=actor,
                      version=_typed(version, int, "version"), blob=BlobRef.from_wire(blob) if blob else None)
        rows.append(StoredEvent(event, _typed(h, bytes, "hash"), _typed(prev, bytes, "prev_hash")))
    blobs: list[tuple[str, bytes]] = []
    for i, item in enumerate(_typed(body["blobs"], list, "blobs")):
        if not isinstance(item, list) or len(item) != 2:
            raise ValueError(f"blobs[{i}] is not a [sha256, bytes] pair")
        blobs.append((_typed(item[0], str, "blob name"), _typed(item[1], bytes, "blob")))
    return (tenant, thread, created, key_id, head, rows, blobs, _typed(body["state"], bytes, "state"),
            _typed(body["header_sha256"], bytes, "header_sha256"))


def _typed(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise TypeError(f"{what} must be {kind.__name__}, got {type(value).__name__}")
    return value
