"""The savers' event format: event types, journal thread ids, stored values, the packed ``data`` field, errors."""

from __future__ import annotations

import base64
import binascii
import hashlib
import random
from typing import Any, cast

import msgpack
from langchain_core.runnables import RunnableConfig

from journal.errors import InvalidIdentifier, JournalError
from journal.keys import validate_id
from replayer.langgraph_fold import CHECKPOINT, DELETED, PRUNED, WRITES

#: The event types a thread's index folds (the registry's ``THREAD`` events are read apart).
TYPES = (CHECKPOINT, WRITES, DELETED, PRUNED)

#: The tenant's journal thread where each LangGraph thread is registered once (for ``list(None)``).
#: Ids starting with "_" are the journal's; "_lg." + 64 hex digits are hashed thread ids, so no
#: LangGraph thread maps onto this one.
REGISTRY = "_lg.threads"

#: Version of the payloads below; a reader refuses others rather than misread them.
FORMAT = 3
#: Formats this reader folds (1: values base64'd in ``b64``, no deltas, no retention records; 2: every value
#: as ``{"t", "b"}``).
READABLE = (1, 2, 3)

#: Epoch written by a put/put_writes whose parent checkpoint a tombstone removed: never current.
STALE_EPOCH = -1

#: Journal thread ids that are not a LangGraph thread id verbatim start with this (ids starting
#: with "_" are reserved by the journal, e.g. "_tenant", so no verbatim id can start with it).
HASHED_PREFIX = "_lg."


class CheckpointConfigError(JournalError, ValueError):
    """A config the saver cannot use: no ``thread_id``, or a put/put_writes without a checkpoint."""


class CheckpointCorrupt(JournalError):
    """A stored checkpoint event the saver cannot read (unknown format, malformed payload)."""


# -- ids and encoding ------------------------------------------------------------------------------

def journal_thread(thread_id: object) -> str:
    """The journal thread of a LangGraph ``thread_id``.

    A valid journal id (1–128 of ``A-Za-z0-9_.-``) not starting with ``_`` is used verbatim, so
    ``agent-journal audit timeline T <thread_id>`` finds it. Anything else (spaces, ``/``, unicode,
    too long, a leading ``_``) becomes ``_lg.`` + SHA-256 of the id: injective in practice and valid,
    and the original id is kept in every payload.
    """
    if isinstance(thread_id, int) and not isinstance(thread_id, bool):
        thread_id = str(thread_id)  # LangGraph accepts int thread ids and compares them as str
    if not isinstance(thread_id, str) or not thread_id:
        raise CheckpointConfigError(f"thread_id must be a non-empty str, got {thread_id!r}")
    if not thread_id.startswith("_"):
        try:
            return validate_id(thread_id, "thread")
        except InvalidIdentifier:
            pass
    return HASHED_PREFIX + hashlib.sha256(thread_id.encode("utf-8", "surrogatepass")).hexdigest()


def encode_value(typed: tuple[str, bytes]) -> bytes | dict[str, Any]:
    """A serializer's ``(type, bytes)`` as a payload: msgpack as the bytes alone, JSON as text, others typed."""
    type_, data = typed
    if type_ == "msgpack":
        return bytes(data)
    if type_ == "json":
        try:
            return {"t": type_, "s": data.decode("utf-8")}
        except UnicodeDecodeError:
            pass
    return {"t": type_, "b": bytes(data)}


def check_value(stored: Any) -> bytes | dict[str, Any]:
    """``stored`` if it has :func:`encode_value`'s shape (checked when folded; decoded only when asked for)."""
    if isinstance(stored, bytes):
        return stored
    if (isinstance(stored, dict) and isinstance(stored.get("t"), str)
            and (isinstance(stored.get("b"), bytes) or isinstance(stored.get("s"), str)
                 or isinstance(stored.get("b64"), str))):
        return cast(dict[str, Any], stored)
    raise CheckpointCorrupt(f"a stored value must be bytes or {{'t': str, 'b': bytes or 's': str}}, "
                            f"got {stored!r:.80}")


def decode_value(stored: Any) -> tuple[str, bytes]:
    """The serializer's ``(type, bytes)`` back from :func:`encode_value`'s form (or format 1's base64)."""
    check_value(stored)
    if isinstance(stored, bytes):
        return "msgpack", stored
    if isinstance(stored.get("b"), bytes):
        return stored["t"], stored["b"]
    if isinstance(stored.get("s"), str):
        return stored["t"], stored["s"].encode("utf-8")
    try:
        return stored["t"], base64.b64decode(stored["b64"], validate=True)
    except binascii.Error as e:
        raise CheckpointCorrupt(f"a stored {stored['t']!r} value is not base64: {e}") from e


def next_version(current: str | int | None) -> str:
    """The channel version after ``current``: its counter + 1, zero-padded (versions compare as strings), and a
    random suffix, so a fork (``update_state`` on an old checkpoint) never reuses a version its other branch
    stored: values are stored by ``(ns, channel, version)``, and an int counter would repeat across branches.

    Ten digits and six hex (17 characters, each written several times per put in the checkpoint and its
    blobs). Earlier versions had sixteen digits and eight hex; one of them still compares below any later
    one here, whose counter is higher: its extra leading zeros sit where the shorter one has a digit."""
    if current is None:
        n = 0
    elif isinstance(current, int):
        n = current
    else:
        n = int(current.split(".")[0])
    return f"{n + 1:010}.{random.getrandbits(24):06x}"  # not a secret: only unlike its sibling's


#: The fields each event type packs into ``data`` (format 3).
PACKED: dict[str, tuple[str, ...]] = {CHECKPOINT: ("checkpoint", "metadata", "blobs"), WRITES: ("writes",)}


def pack_data(type_: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with the fields of :data:`PACKED` moved into one msgpack ``data`` field."""
    inner = {k: payload.pop(k) for k in PACKED[type_]}
    payload["data"] = msgpack.packb(inner, use_bin_type=True)
    return payload


def payload_fields(payload: Any) -> Any:
    """An event's payload as the saver reads it: a format-3 payload's packed ``data`` unpacked into it."""
    if isinstance(payload, dict) and isinstance(payload.get("data"), bytes):
        inner = msgpack.unpackb(payload["data"], raw=False)
        if not isinstance(inner, dict):
            raise CheckpointCorrupt(f"a payload's data must pack a map, got {type(inner).__name__}")
        return {**payload, **inner}
    return payload


def configurable_of(config: RunnableConfig | None) -> dict[str, Any]:
    return (config or {}).get("configurable") or {}
