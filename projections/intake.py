"""The projector's intake: every stream entry is hostile until checked, before any SQL sees it.

A tenant's Redis user may XADD to its own stream directly, so an entry's fields are whatever that
tenant chose to write. Anything PostgreSQL could refuse (a seq outside ``bigint``, a NUL in a text
column, a timestamp ``to_timestamp`` cannot represent, a type that is not text) would fail the
whole batch, which holds other tenants' events too; then the batch is retried entry by entry, one
transaction each. So each entry is checked here, in Python, and one that fails becomes a
``Poison`` whose every column is storable whatever the entry held: the dead letter always commits.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from typing import Any

import msgpack
import zstandard

from journal import codec, keys, logs
from journal.errors import JournalError
from journal.events import Event
from projections.store import Item, Poison

log = logs.get_logger("projections.intake")

#: The fields journal/lua/append.lua writes, and only those.
FIELDS = frozenset((b"t", b"s", b"ts", b"b"))
#: append.lua computes seqs as Lua numbers (doubles): none above 2**53 is ever issued honestly, and
#: a seq up there would raise the thread's Lua head to where a double can no longer count.
MAX_SEQ = 2**53
INT64_MAX = 2**63 - 1
#: 9999-12-31T23:59:59.999Z: ``to_timestamp`` and every client can represent it.
MAX_TS_MS = 253_402_300_799_999
#: No append client writes a body above its ``max_payload_bytes`` plus the envelope (actor, node,
#: key): bounded by this headroom. The offload threshold is not used as the bound: a projector
#: configured with a lower one than the writers' would dead-letter their honest events.
BODY_HEADROOM = 1024 * 1024
#: A dead letter keeps at most this much of the raw entry (and the SHA-256 of all of it).
MAX_DEAD_ENTRY = 64 * 1024
MAX_REASON = 2000
_DIGITS = re.compile(rb"-?[0-9]{1,40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class HostileEntry(JournalError):
    """A stream entry the append client could not have written; it goes to ``journal.dead_letters``."""


class Intake:
    """Decodes stream entries into ``Item``s, and everything else into storable ``Poison``."""

    def __init__(self, max_body: int, max_unpacked: int) -> None:
        self.max_body = max_body
        #: A compressed body declares its size; one declaring more is a decompression bomb, not an event.
        self.max_unpacked = max_unpacked

    def decode(self, entries: list[tuple[str, str, dict[bytes, Any]]]) -> tuple[list[Item], list[Poison]]:
        items: list[Item] = []
        poison: list[Poison] = []
        for tenant, sid, fields in entries:
            try:
                ev, body = self.admit(tenant, sid, fields)
                # Computed here (an event whose chain bytes cannot be made is poison) and reused by the chain.
                items.append(Item.of(sid, ev, body))
            except (JournalError, KeyError, ValueError, TypeError, OverflowError, RecursionError) as e:
                poison.append(dead_letter(tenant, sid, fields, f"undecodable: {e}"))
        return items, poison

    def admit(self, tenant: str, sid: str, fields: Mapping[bytes, Any]) -> tuple[Event, bytes]:
        """The entry's event and body, or ``HostileEntry`` naming what is wrong with it."""
        if fields.keys() != FIELDS:
            missing = sorted(k.decode(errors="replace") for k in FIELDS - fields.keys())
            extra = sorted(_show(k) for k in fields.keys() - FIELDS)[:5]
            raise HostileEntry(f"stream entry fields are not t, s, ts, b (missing {missing}, unexpected {extra})")
        body = fields[b"b"]
        if not isinstance(body, bytes):
            raise HostileEntry("event body is not bytes")
        if len(body) > self.max_body:
            raise HostileEntry(f"event body of {len(body)} bytes exceeds {self.max_body} "
                               "(the append client offloads payloads that large to object storage)")
        if body[1:2] == b"\x01":  # zstd (journal.codec.FLAG_ZSTD)
            try:
                size = zstandard.frame_content_size(body[2:])
            except zstandard.ZstdError as e:
                raise HostileEntry(f"compressed event body has no valid zstd frame: {e}") from e
            if not 0 <= size <= self.max_unpacked:
                raise HostileEntry(f"compressed event body declares {size} bytes unpacked "
                                   f"(unknown: -1); at most {self.max_unpacked} are accepted")
        seq = _integer(fields[b"s"], "seq", 1, MAX_SEQ)
        ts_ms = _integer(fields[b"ts"], "ts", 0, MAX_TS_MS)
        raw_thread = fields[b"t"]
        if type(raw_thread) is not bytes:
            raise HostileEntry("thread is not bytes")
        ev = codec.decode_body(tenant, _thread(raw_thread), seq, ts_ms, body, sid)
        _event_type(ev.type)
        _optional_text(ev.node, "node")
        _optional_text(ev.idempotency_key, "idempotency key")
        if not isinstance(ev.actor, dict):
            raise HostileEntry(f"actor is a {type(ev.actor).__name__}, not a map")
        if ev.blob is not None and not (_SHA256.fullmatch(ev.blob.sha256) and 0 <= ev.blob.size <= INT64_MAX):
            raise HostileEntry("blob reference is not a SHA-256 hex digest and a size")
        return ev, body


def _integer(raw: object, what: str, low: int, high: int) -> int:
    # Checked on the bytes first: int() of a long digit string is quadratic, and accepts '_', '+',
    # spaces and non-ASCII digits. bytes.isdigit is ASCII only; no valid value has a sign or 20 digits.
    if type(raw) is not bytes or not raw.isdigit():
        raise HostileEntry(f"{what} {_show(raw)} is not a decimal integer in {low}..{high}")
    if len(raw) > 19 or not low <= (value := int(raw)) <= high:
        raise HostileEntry(f"{what} {_show(raw)} is outside {low}..{high}")
    return value


@functools.lru_cache(maxsize=65536)
def _thread(raw: bytes) -> str:
    # Cached: a batch holds few distinct threads, and the id regex is a fifth of the checks' cost.
    if not raw.isascii():
        raise HostileEntry(f"thread {_show(raw)} is not ASCII")
    return keys.validate_id(raw.decode("ascii"), "thread")


def _event_type(value: object) -> None:
    if type(value) is not str:
        raise HostileEntry(f"event type {_show(value)} is not a str")
    _known_type(value)


@functools.lru_cache(maxsize=1024)
def _known_type(value: str) -> None:
    keys.validate_type(value)


def _optional_text(value: object, what: str) -> None:
    # msgpack decodes strings strictly (raw=False): no lone surrogate gets this far.
    if value is not None and (type(value) is not str or "\x00" in value or len(value) > 4096):
        raise HostileEntry(f"{what} is not text PostgreSQL can store (a str of at most 4096 characters, no NUL)")


def _show(raw: object) -> str:
    """A short, printable, NUL-free rendering of a hostile value, for reasons and logs."""
    text = raw.decode("ascii", "backslashreplace") if isinstance(raw, bytes) else repr(raw)
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= 40 else text[:40] + "…"


def storable_text(value: str, limit: int = MAX_REASON) -> str:
    """``value`` as PostgreSQL text: no NUL, no lone surrogate, bounded."""
    value = value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    return value if len(value) <= limit else value[:limit] + "…"


def dead_letter(tenant: str, sid: str, fields: Mapping[bytes, Any], reason: str) -> Poison:
    """A ``Poison`` for ``fields`` that PostgreSQL always stores: the thread and seq only when valid,
    the raw entry (msgpack of the fields, truncated past ``MAX_DEAD_ENTRY`` with its digest in the reason)."""
    thread: str | None = None
    raw_thread = fields.get(b"t")
    if isinstance(raw_thread, bytes) and raw_thread.isascii():
        try:
            thread = keys.validate_id(raw_thread.decode("ascii"), "thread")
        except JournalError:
            thread = None
    seq: int | None = None
    raw_seq = fields.get(b"s")
    if isinstance(raw_seq, bytes) and _DIGITS.fullmatch(raw_seq):
        value = int(raw_seq)
        seq = value if -INT64_MAX - 1 <= value <= INT64_MAX else None
    raw = msgpack.packb(dict(fields), use_bin_type=True)
    if len(raw) > MAX_DEAD_ENTRY:
        reason += f" (entry truncated from {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()})"
        raw = raw[:MAX_DEAD_ENTRY]
    reason = storable_text(reason)
    log.error("dead_letter", tenant=tenant, stream_id=sid, reason=reason)
    return Poison(tenant, sid, reason, raw, thread, seq)
