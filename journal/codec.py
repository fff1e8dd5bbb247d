"""Payload validation, the wire format, and canonical bytes for hashing.

The chain is short: ``normalize`` (refuse anything but plain data, sort map keys) →
msgpack → zstd above a small size → a two-byte tag in front (magic + flags), so a reader
refuses what it does not know. Decoding never imports anything: msgpack with
``raw=False`` and no ext hooks.

``canonical_bytes`` is what the hash chain hashes: deterministic for equal events, since
maps are key-sorted by ``normalize`` and msgpack packs ints and floats one way only.

Plain data is JSON's (None, bool, int, float, str, lists, str-keyed maps) plus ``bytes``, which
msgpack carries as its bin type (a ``bytearray``/``memoryview`` is stored as ``bytes``). JSON has no
bytes: where a payload is rendered as JSON (the JSONB ``payload`` column, the CLI, the console)
a bytes value appears as ``{"$bytes": <length>}`` (:func:`json_default`); the hashed body keeps
the bytes themselves, and it is what every reader decodes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import msgpack
import zstandard

from journal.errors import CodecError, JournalError, PayloadTooLarge, UnserializableValue
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

    Raises ``UnserializableValue`` naming the field path of the first offending value, and
    ``PayloadTooLarge`` as soon as a lower bound of the packed size (every value counts at
    least one byte, strings and map keys at least one per character) exceeds ``limit`` bytes,
    so an oversized payload is refused while walking, before it is packed.
    """
    try:
        return _fast(value, 0, [0, limit if limit is not None else -1])
    except _Slow:
        pass
    budget = [0, limit if limit is not None else -1]  # [lower bound of packed bytes so far, limit or -1]
    return _normalize(value, path, 0, set(), budget)


class _Slow(Exception):
    """The fast walk met something unusual: redo the walk with paths, checks and messages."""


def _fast(value: Any, depth: int, budget: list[int]) -> Any:
    # The common case (exact dict/list/str/int/float/bool/None, valid text, within limits) without
    # building field paths; anything else falls back to the checked walk, so results and errors
    # are the same either way. Cycles end here too: they exceed MAX_DEPTH.
    kind = type(value)
    if kind is str:
        if "\x00" in value or (not value.isascii() and not _utf8_ok(value)):
            raise _Slow
        budget[0] += len(value) + 1
    elif value is None or kind is bool:
        budget[0] += 1
    elif kind is bytes:
        budget[0] += len(value) + 1
    elif kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise _Slow
        budget[0] += 1
    elif kind is float:
        if not math.isfinite(value):
            raise _Slow
        budget[0] += 9
    elif kind is dict:
        if depth >= MAX_DEPTH:
            raise _Slow
        out = {}
        for key in sorted(value) if all(type(k) is str for k in value) else _raise_slow():
            if "\x00" in key or (not key.isascii() and not _utf8_ok(key)):
                raise _Slow
            budget[0] += len(key) + 1
            out[key] = _fast(value[key], depth + 1, budget)
        value = out
    elif kind is list or kind is tuple:
        if depth >= MAX_DEPTH:
            raise _Slow
        value = [_fast(v, depth + 1, budget) for v in value]
    else:
        raise _Slow
    if 0 <= budget[1] < budget[0]:
        raise _Slow
    return value


def _raise_slow() -> Any:
    raise _Slow


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _spend(budget: list[int], size: int) -> None:
    if budget[1] >= 0:
        budget[0] += size
        if budget[0] > budget[1]:
            raise PayloadTooLarge(budget[0], budget[1])


def _check_text(value: str, path: str) -> None:
    """Refuse strings msgpack or PostgreSQL cannot store: lone surrogates and NUL characters."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise UnserializableValue(path, "string is not valid UTF-8 (lone surrogate)") from None
    if "\x00" in value:
        raise UnserializableValue(path, "string contains a NUL character, which PostgreSQL JSONB cannot store")


def _int_size(value: int) -> int:
    if -32 <= value <= 127:
        return 1
    bits = value.bit_length() if value >= 0 else (~value).bit_length() + 1
    return 2 if bits <= 8 else 3 if bits <= 16 else 5 if bits <= 32 else 9


def _normalize(value: Any, path: str, depth: int, on_path: set[int], budget: list[int]) -> Any:
    if value is None or value is True or value is False:
        _spend(budget, 1)
        return value
    kind = type(value)
    if kind is str:
        _spend(budget, len(value) + 1)  # checked first: a huge string is refused without scanning it
        _check_text(value, path)
        return value
    if kind is bytes:
        _spend(budget, len(value) + 1)
        return value
    if isinstance(value, bytearray | memoryview):
        # msgpack's bin type, read back as bytes: stored as the immutable form so the state can hold it.
        return _normalize(bytes(value), path, depth, on_path, budget)
    if kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise UnserializableValue(path, "integer does not fit in 64 bits")
        _spend(budget, _int_size(value))
        return value
    if kind is float:
        if not math.isfinite(value):
            raise UnserializableValue(path, f"float {value!r} is not finite")
        _spend(budget, 9)
        return value
    # Subclasses of the scalars (IntEnum, StrEnum, float subclasses): store the exact base value. The
    # base type's own conversion is used, so an overridden __int__/__str__/__float__ is never called.
    if isinstance(value, int):  # bool cannot be subclassed, so this is a true int subclass
        return _normalize(int.__int__(value), path, depth, on_path, budget)
    if isinstance(value, float):
        return _normalize(float.__float__(value), path, depth, on_path, budget)
    if isinstance(value, str):
        return _normalize(str.__str__(value), path, depth, on_path, budget)
    if depth >= MAX_DEPTH:
        raise UnserializableValue(path, f"nesting is deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping | list | tuple):
        ident = id(value)
        if ident in on_path:
            raise UnserializableValue(path, "value contains itself (a reference cycle)")
        on_path.add(ident)
        _spend(budget, 1)
        try:
            if isinstance(value, Mapping):
                if isinstance(value, dict):
                    return _normalize_map(value, path, depth, on_path, budget)
                try:  # a user-defined Mapping may fail in any way while being read
                    return _normalize_map(value, path, depth, on_path, budget)
                except (JournalError, RecursionError, MemoryError):
                    raise
                except Exception as e:
                    raise UnserializableValue(path, f"reading the {kind.__name__} failed: {e!r:.200}") from e
            return [_normalize(v, f"{path}[{i}]", depth + 1, on_path, budget) for i, v in enumerate(value)]
        finally:
            on_path.discard(ident)
    raise UnserializableValue(path, f"type {kind.__name__} is not plain data")


def _normalize_map(value: Mapping[Any, Any], path: str, depth: int, on_path: set[int],
                   budget: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(value, key=_key_order(path)):
        _spend(budget, len(key) + 1)
        _check_text(key, f"{path}[{_describe(key)}]")
        where = f"{path}.{key}" if len(key) <= 64 else f"{path}.{key[:64]}…"
        out[key] = _normalize(value[key], where, depth + 1, on_path, budget)
    return out


def _key_order(path: str) -> Any:
    def check(key: Any) -> str:
        if type(key) is not str:
            raise UnserializableValue(f"{path}[{_describe(key)}]",
                                      f"map key of type {type(key).__name__} is not a str")
        return key

    return check


def _describe(value: Any) -> str:
    """A short repr for error messages that cannot itself fail or flood the message."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= 64 else text[:64] + "…"


#: The key of the JSON stand-in for a bytes value (see :func:`json_default`).
BYTES_KEY = "$bytes"


def json_default(value: Any) -> Any:
    """``default`` for ``orjson.dumps``/``json.dumps``: a bytes value as ``{"$bytes": length}``.

    Only its length, not base64: the JSON copy is for queries and people, the hashed body holds the
    bytes (typically serialized objects, opaque to SQL), and a base64 copy would store them twice over.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        return {BYTES_KEY: len(value)}
    raise TypeError(f"type {type(value).__name__} is not JSON serializable")


def show_default(value: Any) -> Any:
    """``default`` for JSON shown to people (CLI, console): bytes as :func:`json_default`, anything else as ``str``."""
    if isinstance(value, bytes | bytearray | memoryview):
        return json_default(value)
    return str(value)


def pack(value: Any) -> bytes:
    """msgpack a normalized value (``UnserializableValue`` if it was not normalized after all)."""
    try:
        packed: bytes = msgpack.packb(value, use_bin_type=True)
        return packed
    except (TypeError, ValueError, OverflowError) as e:
        raise UnserializableValue("value", f"msgpack cannot encode it ({e}); pass it through normalize first") from e


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


def pack_body(
    type_: str,
    payload: Any,
    node: str | None,
    idempotency_key: str | None,
    actor: Mapping[str, Any],
    blob: BlobRef | None,
) -> bytes:
    """The writer's half of an event, packed but not framed (seq and time are added by Redis).

    ``payload`` and ``actor`` must already be normalized; ``node`` and ``idempotency_key``
    are refused here if msgpack or PostgreSQL could not store them.
    """
    for name, text in (("node", node), ("idempotency_key", idempotency_key)):
        if text is not None:
            if type(text) is not str:
                raise UnserializableValue(name, f"must be a str, got {type(text).__name__}")
            _check_text(text, name)
    return pack([SCHEMA_VERSION, type_, node, None if blob else payload, idempotency_key, actor,
                 blob.to_wire() if blob else None])


def decode_entry(tenant: str, fields: Mapping[bytes, Any] | Mapping[str, Any], stream_id: str | None = None) -> Event:
    """Build an ``Event`` from a stream entry's fields (``t`` thread, ``s`` seq, ``ts`` ms, ``b`` body)."""
    by_name: Mapping[bytes, Any] = fields if b"b" in fields else {  # type: ignore[assignment]
        k.encode() if isinstance(k, str) else k: v for k, v in fields.items()}  # str names: a decoding client
    try:
        thread = _text(by_name[b"t"])
        seq = int(by_name[b"s"])
        ts_ms = int(by_name[b"ts"])
        body = by_name.get(b"b")
    except (KeyError, TypeError, ValueError) as e:
        raise CodecError(f"stream entry {stream_id} is malformed: {e!r}") from e
    if not isinstance(body, bytes):
        raise CodecError(f"stream entry {stream_id} has no event body")
    return decode_body(tenant, thread, seq, ts_ms, body, stream_id)


def decode_body(tenant: str, thread: str, seq: int, ts_ms: int, body: bytes, stream_id: str | None = None) -> Event:
    """Decode a stored body into an ``Event``; a schema version other than this reader's is refused."""
    parts = unframe(body)
    if not isinstance(parts, list) or not parts:
        raise CodecError("event body is not a version-tagged list")
    version = parts[0]
    if version != SCHEMA_VERSION:
        raise CodecError(f"event schema version {version!r} is not this reader's ({SCHEMA_VERSION}); read it with "
                         "the agent-journal version that wrote it, or upgrade")
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
    payload = None if event.blob else event.payload
    actor = event.actor
    # Decoded events are canonical already (the writer normalized them); checking is cheaper than rebuilding.
    if not _is_canonical(payload, 0):
        payload = normalize(payload)
    if not _is_canonical(actor, 0):
        actor = normalize(actor)
    return pack(
        [event.version, event.tenant, event.thread, event.seq, event.type, event.node, event.ts_ms,
         payload, event.idempotency_key, actor, event.blob.to_wire() if event.blob else None]
    )


def _is_canonical(value: Any, depth: int) -> bool:
    """Whether ``normalize(value)`` would return an equal value unchanged: plain, valid, key-sorted."""
    kind = type(value)
    if kind is str:
        return "\x00" not in value and (value.isascii() or _utf8_ok(value))
    if value is None or kind is bool or kind is bytes:
        return True
    if kind is int:
        return bool(_INT_MIN <= value <= _INT_MAX)
    if kind is float:
        return math.isfinite(value)
    if depth >= MAX_DEPTH:
        return False
    if kind is dict:
        prev = None
        for k, v in value.items():
            if type(k) is not str or "\x00" in k or (prev is not None and k <= prev):
                return False
            if not k.isascii() and not _utf8_ok(k):
                return False
            if not _is_canonical(v, depth + 1):
                return False
            prev = k
        return True
    if kind is list:
        return all(_is_canonical(v, depth + 1) for v in value)
    return False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
