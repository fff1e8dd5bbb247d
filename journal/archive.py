"""The cold tier's format: a thread's history as sealed segments plus a manifest, in S3.

    {tenant}/archive/{thread}/seg-{first:012d}-{last:012d}.ajs     immutable, one seq range each
    {tenant}/archive/{thread}/manifest-{last:012d}.json           every segment from seq 1 to last

A **segment** is ``SEGMENT_MAGIC`` + zstd(msgpack ``[[seq, ts_ms, body, prev_hash, hash], …]``):
the stored rows exactly as PostgreSQL held them (``body`` is the hashed truth, framed by
``journal.codec``), so an archived event decodes to the same ``Event`` and the chain is
recomputed from the same bytes. A **manifest** is JSON: codec version, seq range, event count,
the first and last chain hash, and each segment's range, size and SHA-256. Keys name their
content (a seq range of one thread never changes, and encoding is deterministic), so a
re-run after a crash writes the same bytes to the same keys; a thread archived a second time
(after it became active again) gets new segments and a new manifest that lists the old ones too.

PostgreSQL keeps a stub (``journal.archives``: newest manifest key, last seq, last hash) that
every reader looks up: the client (``journal.ops.history``), the replayer and the append's
head restore. Everything lives under ``{tenant}/``, where a tenant's own S3 key may read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgpack
import zstandard

from journal import codec
from journal.chain import GENESIS, link
from journal.errors import ArchiveCorrupt, CodecError
from journal.events import Event
from journal.keys import archive_prefix, validate_id

CODEC_VERSION = 1
SEGMENT_MAGIC = b"AJSEG1\n"
#: Events per segment: a replay at seq n reads the segments up to n only; 10,000 typical events
#: make a segment of a few hundred KiB, one GET each.
SEGMENT_EVENTS = 10_000
#: zstd level of segments: bodies above 512 bytes are already zstd-framed; the level matters for the
#: many small ones and the repeated hashes' neighbours (level 9 vs 3: a few % smaller, written once).
ZSTD_LEVEL = 9


class ObjectStore(Protocol):
    """What the archive needs of object storage (``journal.blobs.BlobStore``)."""

    bucket: str

    def put_object(self, key: str, data: bytes) -> None: ...

    def get_object(self, key: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class ArchivedRow:
    """One stored event as archived: its seq, time, hashed body and chain hashes."""

    seq: int
    ts_ms: int
    body: bytes
    prev_hash: bytes
    hash: bytes

    def event(self, tenant: str, thread: str) -> Event:
        return codec.decode_body(tenant, thread, self.seq, self.ts_ms, self.body)


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A segment as its manifest describes it."""

    key: str
    first_seq: int
    last_seq: int
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "first_seq": self.first_seq, "last_seq": self.last_seq, "size": self.size,
                "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class Manifest:
    """The archive of one thread: seq 1..last_seq in ``segments``, in order, gapless."""

    tenant: str
    thread: str
    codec_version: int
    first_seq: int
    last_seq: int
    event_count: int
    first_hash: bytes
    last_hash: bytes
    segments: tuple[SegmentInfo, ...]

    @property
    def stored_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def to_bytes(self) -> bytes:
        data = {"format": "agent-journal-archive", "codec_version": self.codec_version, "tenant": self.tenant,
                "thread": self.thread, "first_seq": self.first_seq, "last_seq": self.last_seq,
                "event_count": self.event_count, "first_hash": self.first_hash.hex(),
                "last_hash": self.last_hash.hex(), "segments": [s.to_dict() for s in self.segments]}
        return json.dumps(data, sort_keys=True, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Manifest:
        try:
            d = json.loads(data)
            if d.get("format") != "agent-journal-archive" or d.get("codec_version") != CODEC_VERSION:
                raise ArchiveCorrupt(f"archive manifest {where} is format {d.get('format')!r} version "
                                     f"{d.get('codec_version')!r}; this reader knows agent-journal-archive "
                                     f"version {CODEC_VERSION}: read it with the version that wrote it")
            segs = tuple(SegmentInfo(str(s["key"]), int(s["first_seq"]), int(s["last_seq"]), int(s["size"]),
                                     str(s["sha256"])) for s in d["segments"])
            m = cls(str(d["tenant"]), str(d["thread"]), int(d["codec_version"]), int(d["first_seq"]),
                    int(d["last_seq"]), int(d["event_count"]), bytes.fromhex(d["first_hash"]),
                    bytes.fromhex(d["last_hash"]), segs)
        except ArchiveCorrupt:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ArchiveCorrupt(f"archive manifest {where} is not a readable manifest ({e!r}); restore it "
                                 "from a backup of the bucket") from e
        expected = 1
        for s in segs:
            if s.first_seq != expected or s.last_seq < s.first_seq:
                raise ArchiveCorrupt(f"archive manifest {where}: segment {s.key} starts at seq {s.first_seq}, "
                                     f"expected {expected}; the manifest is damaged")
            expected = s.last_seq + 1
        if m.first_seq != 1 or expected != m.last_seq + 1 or m.event_count != m.last_seq:
            raise ArchiveCorrupt(f"archive manifest {where} claims seqs {m.first_seq}..{m.last_seq} "
                                 f"({m.event_count} events) but its segments cover 1..{expected - 1}")
        return m


@dataclass(frozen=True, slots=True)
class ArchiveRef:
    """The stub PostgreSQL keeps of an archived thread (``journal.archives``)."""

    manifest_key: str
    last_seq: int
    last_hash: bytes


def segment_key(tenant: str, thread: str, first: int, last: int) -> str:
    return f"{archive_prefix(tenant, thread)}seg-{first:012d}-{last:012d}.ajs"


def manifest_key(tenant: str, thread: str, last: int) -> str:
    return f"{archive_prefix(tenant, thread)}manifest-{last:012d}.json"


def encode_segment(rows: Sequence[ArchivedRow]) -> bytes:
    packed = msgpack.packb([[r.seq, r.ts_ms, r.body, r.prev_hash, r.hash] for r in rows], use_bin_type=True)
    return SEGMENT_MAGIC + zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(packed)


def decode_segment(data: bytes, info: SegmentInfo) -> list[ArchivedRow]:
    """The rows of a segment, checked against its manifest entry (digest, size, seq range)."""
    if len(data) != info.size or hashlib.sha256(data).hexdigest() != info.sha256:
        raise ArchiveCorrupt(f"archive segment {info.key} does not match its manifest (size {len(data)} vs "
                             f"{info.size}, or its sha256); restore it from a backup of the bucket")
    if not data.startswith(SEGMENT_MAGIC):
        raise ArchiveCorrupt(f"archive segment {info.key} has an unknown format tag {data[:7]!r}")
    try:
        raw = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(data[len(SEGMENT_MAGIC):]), raw=False)
        rows = [ArchivedRow(int(s), int(t), bytes(b), bytes(p), bytes(h)) for s, t, b, p, h in raw]
    except (zstandard.ZstdError, ValueError, TypeError, msgpack.UnpackException) as e:
        raise ArchiveCorrupt(f"archive segment {info.key} cannot be decoded: {e}") from e
    if [r.seq for r in rows] != list(range(info.first_seq, info.last_seq + 1)):
        raise ArchiveCorrupt(f"archive segment {info.key} does not hold exactly seqs {info.first_seq}.."
                             f"{info.last_seq}")
    return rows


def check_chain(tenant: str, thread: str, rows: Iterable[ArchivedRow], prev: bytes, key: bytes | None) -> bytes:
    """Recompute the chain over ``rows`` from ``prev``; the last hash. ``ArchiveCorrupt`` naming the first bad seq."""
    for r in rows:
        try:
            ok = r.prev_hash == prev and link(prev, r.event(tenant, thread), key) == r.hash
        except CodecError as e:
            raise ArchiveCorrupt(f"seq {r.seq} of {tenant}/{thread}: the archived body cannot be decoded ({e})") from e
        if not ok:
            raise ArchiveCorrupt(f"seq {r.seq} of {tenant}/{thread}: the chain breaks there (its hash or prev_hash "
                                 "does not follow from the seq before it); nothing is archived from a broken chain. "
                                 "Run `agent-journal verify` on the thread, and check that JOURNAL_HASH_KEY is the "
                                 "projector's")
        prev = r.hash
    return prev


def seal(tenant: str, thread: str, rows: Sequence[ArchivedRow]) -> tuple[SegmentInfo, bytes]:
    """One segment of ``rows`` (gapless, in seq order): its manifest entry and its bytes."""
    if not rows or [r.seq for r in rows] != list(range(rows[0].seq, rows[0].seq + len(rows))):
        raise ArchiveCorrupt(f"rows to archive for {tenant}/{thread} must be gapless")
    data = encode_segment(rows)
    key = segment_key(tenant, thread, rows[0].seq, rows[-1].seq)
    return SegmentInfo(key, rows[0].seq, rows[-1].seq, len(data), hashlib.sha256(data).hexdigest()), data


def extend(tenant: str, thread: str, previous: Manifest | None, new: Sequence[SegmentInfo], first_hash: bytes,
           last_hash: bytes) -> Manifest:
    """The manifest of ``previous``'s segments followed by ``new`` ones (``first_hash``: seq 1's, if no previous)."""
    validate_id(tenant, "tenant")
    validate_id(thread, "thread")
    start = previous.last_seq + 1 if previous else 1
    if not new or new[0].first_seq != start:
        raise ArchiveCorrupt(f"new segments of {tenant}/{thread} must start at seq {start}")
    last = new[-1].last_seq
    return Manifest(tenant, thread, CODEC_VERSION, 1, last, last, previous.first_hash if previous else first_hash,
                    last_hash, (*(previous.segments if previous else ()), *new))


class ArchiveReader:
    """Reads archived history through object storage: a manifest, then only the segments a range needs."""

    #: Manifests kept per reader: a manifest key names immutable content (a re-run writes the same bytes),
    #: so a cached one is never stale, and a replay of an archived thread saves a GET.
    CACHED_MANIFESTS = 256

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._manifests: dict[str, Manifest] = {}

    def manifest(self, tenant: str, thread: str, ref: ArchiveRef) -> Manifest:
        """The manifest the stub names, checked against the stub and the thread."""
        m = self._manifests.get(ref.manifest_key)
        if m is None:
            m = Manifest.from_bytes(self.store.get_object(ref.manifest_key), ref.manifest_key)
            if len(self._manifests) >= self.CACHED_MANIFESTS:
                self._manifests.pop(next(iter(self._manifests)))
            self._manifests[ref.manifest_key] = m
        if (m.tenant, m.thread) != (tenant, thread) or m.last_seq != ref.last_seq or m.last_hash != ref.last_hash:
            raise ArchiveCorrupt(f"archive manifest {ref.manifest_key} does not match PostgreSQL's record of "
                                 f"{tenant}/{thread} (seq {ref.last_seq}); restore the bucket or the stub")
        return m

    def rows(self, manifest: Manifest, after: int = 0, upto: int | None = None) -> list[ArchivedRow]:
        """Archived rows with ``after < seq <= upto`` (default: all), in seq order."""
        top = manifest.last_seq if upto is None else min(upto, manifest.last_seq)
        out: list[ArchivedRow] = []
        for info in manifest.segments:
            if info.last_seq <= after or info.first_seq > top:
                continue
            rows = decode_segment(self.store.get_object(info.key), info)
            out.extend(r for r in rows if after < r.seq <= top)
        return out

    def verify(self, manifest: Manifest, key: bytes | None) -> bytes:
        """Read every segment back and recompute the whole chain from genesis, a segment at a time; the last hash."""
        prev = GENESIS
        for info in manifest.segments:
            rows = decode_segment(self.store.get_object(info.key), info)
            prev = check_chain(manifest.tenant, manifest.thread, rows, prev, key)
        if prev != manifest.last_hash:
            raise ArchiveCorrupt(f"the archive of {manifest.tenant}/{manifest.thread} ends in a hash other than "
                                 "its manifest's last hash")
        return prev

    def events(self, tenant: str, thread: str, ref: ArchiveRef, after: int = 0,
               upto: int | None = None) -> list[Event]:
        """Archived events with ``after < seq <= upto``, decoded as every other tier decodes them."""
        if (upto is not None and upto <= after) or after >= ref.last_seq:
            return []
        m = self.manifest(tenant, thread, ref)
        try:
            return [r.event(tenant, thread) for r in self.rows(m, after, upto)]
        except CodecError as e:
            raise ArchiveCorrupt(f"an archived event of {tenant}/{thread} cannot be decoded: {e}") from e


__all__ = ["CODEC_VERSION", "ArchiveReader", "ArchiveRef", "ArchivedRow", "Manifest", "SegmentInfo", "check_chain",
           "decode_segment", "encode_segment", "extend", "manifest_key", "seal", "segment_key"]
