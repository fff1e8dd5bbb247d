"""The append protocol, shared by the sync and asyncio clients.

``prepare`` turns drafts into the Lua script's KEYS/ARGV (validating and encoding every
event, deciding which payloads go to object storage) without any I/O; the client uploads
the blobs, runs the script, and ``parse_reply`` turns the reply into records or a typed
error. Keeping the pure part here means both clients run the very same checks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from journal import codec, keys, payloads
from journal.errors import (
    ConflictError,
    DurabilityError,
    IdempotencyKeyReused,
    InvalidEvent,
    JournalError,
    PayloadTooLarge,
    ThreadFenced,
    ThreadHeld,
)
from journal.events import BlobRef, Draft, Event
from journal.settings import DURABILITY_LEVELS, Settings

#: Most events one script call takes; larger batches are refused (split them).
MAX_BATCH = 1000
#: Actor metadata (agent id, model, run id) is small; a large one is a mistake or an attack.
MAX_ACTOR_BYTES = 64 * 1024


@dataclass(slots=True)
class Prepared:
    """One script call's worth of validated, encoded events."""

    tenant: str
    drafts: list[Draft]
    payloads: list[Any]
    actors: list[dict[str, Any]]
    blob_refs: list[BlobRef | None]
    keys: list[str]
    args: list[Any]
    #: (ref, encoded payload) still to upload before the script runs.
    uploads: list[tuple[BlobRef, bytes]] = field(default_factory=list)


def as_draft(item: Draft | Mapping[str, Any]) -> Draft:
    if isinstance(item, Draft):
        return item
    if not isinstance(item, Mapping):
        raise InvalidEvent(f"append_many takes Draft objects or mappings, got {type(item).__name__}")
    try:
        return Draft(**item)
    except TypeError as e:
        raise InvalidEvent(f"bad event fields {sorted(item)}: {e}") from e


def prepare(settings: Settings, tenant: str, drafts: Iterable[Draft | Mapping[str, Any]]) -> Prepared:
    keys.validate_id(tenant, "tenant")
    items = [as_draft(d) for d in drafts]
    if not items:
        raise InvalidEvent("append_many needs at least one event")
    if len(items) > MAX_BATCH:
        raise InvalidEvent(f"a batch holds at most {MAX_BATCH} events, got {len(items)}")
    script_keys = [keys.stream(tenant), keys.heads(tenant), keys.fences(tenant), keys.evicted(tenant)]
    idem_index: dict[tuple[str, str], int] = {}
    args: list[Any] = [settings.idempotency_ttl, len(items)]
    prepared = Prepared(tenant, items, [], [], [], script_keys, args)
    actors: dict[int, dict[str, Any]] = {}  # agents pass one actor mapping for a whole batch
    for i, d in enumerate(items):
        where = f"event[{i}].payload" if len(items) > 1 else "payload"
        payload = codec.normalize(d.payload, where, settings.max_payload_bytes)
        payloads.check(d.type, payload, d.node, where)
        actor = actors.get(id(d.actor))
        if actor is None:
            actor = actors[id(d.actor)] = codec.normalize(dict(d.actor), where.replace("payload", "actor"),
                                                          MAX_ACTOR_BYTES)
        # One pack per event: the size that decides on offloading is the packed event body
        # (payload plus its small envelope); the rare offloaded event is packed again.
        raw = codec.pack_body(d.type, payload, d.node, d.idempotency_key, actor, None)
        if len(raw) > settings.max_payload_bytes:
            raise PayloadTooLarge(len(raw), settings.max_payload_bytes)
        ref = None
        if len(raw) > settings.blob_threshold:
            blob = codec.frame(codec.pack(payload))
            ref = BlobRef(hashlib.sha256(blob).hexdigest(), len(blob))
            prepared.uploads.append((ref, blob))
            raw = codec.pack_body(d.type, None, d.node, d.idempotency_key, actor, ref)
        ik, digest = 0, ""
        if d.idempotency_key is not None:
            # What a retry must match: the whole body (type, payload or its blob digest, node, actor).
            digest = hashlib.blake2b(raw, digest_size=12).hexdigest()
            slot = (d.thread, d.idempotency_key)
            if slot not in idem_index:
                script_keys.append(keys.idempotency(tenant, d.thread, d.idempotency_key))
                idem_index[slot] = len(script_keys)  # Lua's KEYS is 1-based
            ik = idem_index[slot]
        body = codec.frame(raw)
        args.extend((d.thread, "" if d.expected_seq is None else d.expected_seq, ik, digest, body))
        prepared.payloads.append(payload)
        prepared.actors.append(actor)
        prepared.blob_refs.append(ref)
    args.append(0)  # no floors: see with_floors
    return prepared


def restore_request(reply: Any) -> list[str] | None:
    """The threads whose heads the script asks for (their tenant had idle threads evicted), or None."""
    if isinstance(reply, list) and reply and _text(reply[0]) == "restore":
        return [_text(t) for t in reply[1:]]
    return None


def held_request(reply: Any) -> tuple[str, str] | None:
    """``(thread, reason)`` when the script refused the batch because a thread is held for a moment, else None."""
    if isinstance(reply, list) and len(reply) == 3 and _text(reply[0]) == "held":
        return _text(reply[1]), _text(reply[2])
    return None


def with_floors(p: Prepared, floors: Mapping[str, int]) -> None:
    """Give the script the heads PostgreSQL holds for threads Redis has no head for (after a restore reply)."""
    del p.args[2 + 5 * len(p.drafts):]
    p.args.append(len(floors))
    for thread, head in floors.items():
        p.args.extend((thread, head))


@dataclass(frozen=True, slots=True)
class Outcome:
    events: list[Event]
    #: True when this call created the tenant's stream (register the tenant).
    created_stream: bool
    #: True when at least one event was written (not all were idempotent repeats).
    wrote: bool


def parse_reply(p: Prepared, reply: list[Any] | bytes) -> Outcome:
    if isinstance(reply, bytes | str):  # the "ok" reply comes as one space-separated string (cheap to parse)
        reply = _text(reply).split()
    status = _text(reply[0])
    if status == "conflict":
        d = p.drafts[int(reply[1])]
        raise ConflictError(p.tenant, d.thread, d.expected_seq if d.expected_seq is not None else -1, int(reply[2]))
    if status == "fenced":
        raise ThreadFenced(p.tenant, _text(reply[1]), _text(reply[2]))
    if status == "held":
        raise ThreadHeld(p.tenant, _text(reply[1]), _text(reply[2]), 0.0)
    if status == "reused":
        d = p.drafts[int(reply[1])]
        raise IdempotencyKeyReused(p.tenant, d.thread, d.idempotency_key or "", int(reply[2]))
    if status != "ok":
        raise JournalError(f"unexpected reply from the append script: {reply[:3]!r}")
    created = bool(int(reply[1]))
    events = []
    wrote = False
    for i, d in enumerate(p.drafts):
        seq, dup, ts = (int(x) for x in reply[3 + 3 * i : 6 + 3 * i])
        wrote = wrote or not dup
        events.append(Event(tenant=p.tenant, thread=d.thread, seq=seq, type=d.type, payload=p.payloads[i],
                            ts_ms=ts, node=d.node, idempotency_key=d.idempotency_key, actor=p.actors[i],
                            blob=p.blob_refs[i]))
    return Outcome(events, created, wrote)


def durability_level(requested: str | None, settings: Settings) -> str:
    level = requested or settings.durability
    if level not in DURABILITY_LEVELS:
        raise InvalidEvent(f"durability {level!r} is not one of {DURABILITY_LEVELS}")
    return level


def projected_targets(events: list[Event]) -> dict[str, int]:
    """thread -> the seq PostgreSQL must have committed for ``durability='projected'``."""
    want: dict[str, int] = {}
    for e in events:
        want[e.thread] = max(want.get(e.thread, 0), e.seq)
    return want


def all_projected(want: dict[str, int], committed: list[Any]) -> bool:
    """``committed`` are the ``projected`` hash values for ``want``'s threads, in order."""
    return all(v is not None and int(v) >= seq for seq, v in zip(want.values(), committed, strict=True))


def wait_commands(level: str, timeout_ms: int, aof: bool) -> tuple[tuple[Any, ...], ...]:
    """What must follow the append script on its connection for ``level`` (``aof``: WAITAOF works here).

    ``replicated`` asks ``WAITAOF 1 0`` (fsynced on the primary, where WAITAOF works) and ``WAIT 1``
    (a replica holds it): it survives a restart of the primary and the loss of the primary. Not
    ``WAITAOF 1 1`` (fsynced on a replica too): a replica reports its fsynced offset once a second,
    so that costs ~1 s per append (measured: 1,003 ms mean on the embedded cluster, against
    0.5 ms for WAITAOF 1 0 + WAIT 1), and a replica that has it in memory already survives the
    primary's loss.
    """
    if level == "fsync":
        return (("WAITAOF", 1, 0, timeout_ms),)
    if level == "replicated":
        return ((("WAITAOF", 1, 0, timeout_ms),) if aof else ()) + (("WAIT", 1, timeout_ms),)
    return ()


def check_replicated(waited: list[Any], timeout: float, events: list[Event]) -> None:
    """Raise unless the WAIT that followed the append counts a replica (and WAITAOF a local fsync, if asked).

    The events are written either way; the error says so.
    """
    if len(waited) == 2:  # WAITAOF 1 0 first, where the server has it
        check_fsynced(waited[0], timeout, events)
    reply = waited[-1] if waited else None
    if isinstance(reply, JournalError):
        raise DurabilityError(f"{_written(events)}, but no replica could be asked to confirm it: {reply}",
                              tuple(events))
    if int(reply or 0) < 1:
        raise DurabilityError(f"{_written(events)} on the primary, but no replica acknowledged it within {timeout}s; "
                              "they may be lost if the primary fails now. Check that the primary has a replica "
                              "(`agent-journal status`) and its link is up.", tuple(events))


def check_fsynced(waited: Any, timeout: float, events: list[Event]) -> None:
    """Raise unless the WAITAOF that followed the append confirms the AOF fsync (the events are written either way)."""
    if isinstance(waited, JournalError):
        raise DurabilityError(f"{_written(events)}, but the fsync could not be confirmed: {waited}", tuple(events))
    if waited is None or int(waited[0]) < 1:
        raise DurabilityError(f"{_written(events)}, but not fsynced to the AOF within {timeout}s; they may be lost if "
                              "Redis crashes now. Check the server's disk.", tuple(events))


def not_projected(timeout: float, events: list[Event]) -> DurabilityError:
    return DurabilityError(f"{_written(events)}, but not committed to PostgreSQL within {timeout}s; is a projector "
                           "running (`agent-journal project`)? They are safe in Redis and will be projected later.",
                           tuple(events))


def _written(events: list[Event]) -> str:
    seqs = ", ".join(f"{e.thread}#{e.seq}" for e in events[:5]) + (" …" if len(events) > 5 else "")
    return f"the append was written ({seqs}; do not retry it without its idempotency key)"


def resolve_blob(event: Event, data: bytes) -> Event:
    """The event with its offloaded payload filled in from the blob's bytes."""
    return replace(event, payload=codec.unframe(data))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
