"""Payload validation, the wire format, and canonical bytes for hashing.

The chain is short: ``normalize`` (refuse anything but plain data, sort map keys) →
msgpack → zstd above a small size → a two-byte tag in front (magic + flags), so a reader
refuses what it does not know. Decoding never imports anything: msgpack with
``raw=False`` and no ext hooks.

``canonical_bytes`` is what the hash chain hashes: deterministic for equal events, since
maps are key-sorted by ``normalize`` and msgpack packs ints and floats one way only.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import msgpack
import zstandard

from journal.errors import CodecError, PayloadTooLarge, UnserializableValue
from journal.events import SCHEMA_VERSION, BlobRef, Event

MAGIC = 0x4A  # "J"
FLAG_ZSTD = 0x01
COMPRESS_ABOVE = 512
MAX_DEPTH = 64
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

_local = threading.local()


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    # zstandard (de)compressors are not safe for concurrent use; one pair per thread.
    pair = getattr(_local, "zstd", None)
    if pair is None:
        pair = (zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor())
        _local.zstd = pair
    return pair


def normalize(value: Any, path: str = "payload", limit: int | None = None) -> Any:
    """Return ``value`` as canonical plain data (maps key-sorted, tuples as lists).

    Raises ``UnserializableValue`` naming the field path of the first offending value,
    and ``PayloadTooLarge`` as soon as the strings alone exceed ``limit`` bytes.
    """
    budget = [0, limit if limit is not None else -1]  # [string bytes seen, limit or -1]
    return _normalize(value, path, 0, set(), budget)


def _normalize(value: Any, path: str, depth: int, on_path: set[int], budget: list[int]) -> Any:
    if value is None or value is True or value is False:
        return value
    kind = type(value)
    if kind is str:
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise UnserializableValue(path, "string is not valid UTF-8 (lone surrogate)") from None
        if "\x00" in value:
            raise UnserializableValue(path, "string contains a NUL character, which PostgreSQL JSONB cannot store")
        if budget[1] >= 0:
            budget[0] += len(value)
            if budget[0] > budget[1]:
                raise PayloadTooLarge(budget[0], budget[1])
        return value
    if kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise UnserializableValue(path, "integer does not fit in 64 bits")
        return value
    if kind is float:
        if not math.isfinite(value):
            raise UnserializableValue(path, f"float {value!r} is not finite")
        return value
    if depth >= MAX_DEPTH:
        raise UnserializableValue(path, f"nesting is deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping | list | tuple):
        ident = id(value)
        if ident in on_path:
            raise UnserializableValue(path, "value contains itself (a reference cycle)")
        on_path.add(ident)
        try:
            if isinstance(value, Mapping):
                out: dict[str, Any] = {}
                for key in sorted(value, key=_key_order(path)):
                    out[key] = _normalize(value[key], f"{path}.{key}", depth + 1, on_path, budget)
                return out
            return [_normalize(v, f"{path}[{i}]", depth + 1, on_path, budget) for i, v in enumerate(value)]
        finally:
            on_path.discard(ident)
    if isinstance(value, bool | int | float | str):  # subclasses (IntEnum, str enums): store the plain value
        return _normalize(kind.__mro__[-2](value), path, depth, on_path, budget)
    raise UnserializableValue(path, f"type {kind.__name__} is not plain data")


def _key_order(path: str) -> Any:
    def check(key: Any) -> str:
        if type(key) is not str:
            raise UnserializableValue(f"{path}[{key!r}]", f"map key of type {type(key).__name__} is not a str")
        return key

    return check


def pack(value: Any) -> bytes:
    """msgpack a normalized value."""
    return msgpack.packb(value, use_bin_type=True)


def frame(raw: bytes) -> bytes:
    """Tag (and maybe compress) packed bytes for storage."""
    if len(raw) > COMPRESS_ABOVE:
        return bytes((MAGIC, FLAG_ZSTD)) + _zstd()[0].compress(raw)
    return bytes((MAGIC, 0)) + raw


def unframe(data: bytes) -> Any:
    """Inverse of ``frame`` + ``pack``; refuses unknown tags."""
    if len(data) < 2 or data[0] != MAGIC or data[1] & ~FLAG_ZSTD:
        raise CodecError(f"unknown event format tag {data[:2]!r}; this reader knows 'J' with flags 0/1")
    body = data[2:]
    try:
        if data[1] & FLAG_ZSTD:
            body = _zstd()[1].decompress(body)
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    except (zstandard.ZstdError, ValueError, msgpack.UnpackException) as e:
        raise CodecError(f"corrupt event body: {e}") from e


def encode_body(
    type_: str,
    payload: Any,
    node: str | None,
    idempotency_key: str | None,
    actor: Mapping[str, Any],
    blob: BlobRef | None,
) -> bytes:
    """The writer's half of an event as stored in the stream (seq and time are added by Redis).

    ``payload`` and ``actor`` must already be normalized.
    """
    return frame(
        pack([SCHEMA_VERSION, type_, node, None if blob else payload, idempotency_key, actor,
              blob.to_wire() if blob else None])
    )


def decode_entry(tenant: str, fields: Mapping[bytes | str, Any], stream_id: str | None = None) -> Event:
    """Build an ``Event`` from a stream entry's fields (``t`` thread, ``s`` seq, ``ts`` ms, ``b`` body)."""
    try:
        get = fields.get
        thread = _text(get(b"t", get("t")))
        seq = int(get(b"s", get("s")))
        ts_ms = int(get(b"ts", get("ts")))
        body = get(b"b", get("b"))
    except (TypeError, ValueError) as e:
        raise CodecError(f"stream entry {stream_id} is malformed: {e}") from e
    if not isinstance(body, bytes):
        raise CodecError(f"stream entry {stream_id} has no event body")
    return decode_body(tenant, thread, seq, ts_ms, body, stream_id)


def decode_body(tenant: str, thread: str, seq: int, ts_ms: int, body: bytes, stream_id: str | None = None) -> Event:
    """Decode a stored body into an ``Event`` (upcasting older schema versions)."""
    parts = unframe(body)
    if not isinstance(parts, list) or not parts:
        raise CodecError("event body is not a version-tagged list")
    version = parts[0]
    if version != SCHEMA_VERSION:
        raise CodecError(f"event schema version {version!r} is newer than this reader ({SCHEMA_VERSION}); upgrade")
    try:
        _, type_, node, payload, idem, actor, blob = parts
    except ValueError as e:
        raise CodecError(f"event body has {len(parts)} fields, expected 7") from e
    return Event(
        tenant=tenant, thread=thread, seq=seq, type=type_, payload=payload, ts_ms=ts_ms, node=node,
        idempotency_key=idem, actor=actor or {}, version=version,
        blob=BlobRef.from_wire(blob) if blob else None, stream_id=stream_id,
    )


def canonical_bytes(event: Event) -> bytes:
    """Deterministic bytes identifying the event's content, for the hash chain and conflict checks.

    An offloaded payload is covered by its blob digest rather than its bytes.
    """
    return pack(
        [event.version, event.tenant, event.thread, event.seq, event.type, event.node, event.ts_ms,
         None if event.blob else normalize(event.payload), event.idempotency_key, normalize(event.actor),
         event.blob.to_wire() if event.blob else None]
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
