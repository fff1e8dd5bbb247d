"""The event record and the vocabulary of agent steps.

An event is immutable once appended. The journal assigns ``seq`` (per thread, gapless,
from 1) and ``ts_ms`` (the Redis server clock, milliseconds since the epoch) inside the
atomic append; everything else comes from the writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from journal.errors import InvalidEvent
from journal.keys import validate_id, validate_type

#: Version of the event envelope written by this code. It is the only version so far; a reader refuses
#: any other (``codec.decode_body``), so a newer writer's events are never misread.
SCHEMA_VERSION = 1

MESSAGE = "message"
TOOL_CALL = "tool_call"
TOOL_RESULT = "tool_result"
NODE_ENTER = "node_enter"
NODE_EXIT = "node_exit"
MEMORY_SET = "memory_set"
MEMORY_DELETE = "memory_delete"
PAUSE = "pause"
RESUME = "resume"
COMPLETE = "complete"
FAIL = "fail"
#: Written by ``agent-journal maintain`` (``projections.retention``) for a thread idle past its tenant's limit.
ABANDON = "abandon"

BUILTIN_TYPES = frozenset(
    {MESSAGE, TOOL_CALL, TOOL_RESULT, NODE_ENTER, NODE_EXIT, MEMORY_SET, MEMORY_DELETE, PAUSE, RESUME,
     COMPLETE, FAIL, ABANDON}
)


def check_type(type_: str) -> str:
    """Validate an event type: a built-in agent step or a namespaced custom type."""
    validate_type(type_)
    if type_ not in BUILTIN_TYPES and not type_.startswith("x."):
        raise InvalidEvent(
            f"unknown event type {type_!r}: use one of {sorted(BUILTIN_TYPES)} or a namespaced custom "
            "type such as 'x.acme.refund_issued'"
        )
    return type_


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A payload stored in object storage, named by the SHA-256 of its encoded bytes."""

    sha256: str
    size: int

    def to_wire(self) -> list[Any]:
        return [self.sha256, self.size]

    @classmethod
    def from_wire(cls, value: Any) -> BlobRef:
        sha, size = value
        return cls(str(sha), int(size))


@dataclass(frozen=True, slots=True)
class Draft:
    """An event as a writer proposes it, before the journal assigns seq and time."""

    thread: str
    type: str
    payload: Any = None
    node: str | None = None
    idempotency_key: str | None = None
    expected_seq: int | None = None
    actor: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_id(self.thread, "thread")
        check_type(self.type)
        if self.node is not None and (not isinstance(self.node, str) or not 0 < len(self.node) <= 256):
            raise InvalidEvent(f"node must be a non-empty str of at most 256 characters, got {self.node!r}")
        if self.idempotency_key is not None and (
            not isinstance(self.idempotency_key, str) or not 0 < len(self.idempotency_key) <= 256
        ):
            raise InvalidEvent("idempotency_key must be a non-empty str of at most 256 characters")
        if self.expected_seq is not None and (
            isinstance(self.expected_seq, bool) or not isinstance(self.expected_seq, int) or self.expected_seq < 0
        ):
            raise InvalidEvent(f"expected_seq must be an int >= 0 (0 = empty thread), got {self.expected_seq!r}")
        if not isinstance(self.actor, Mapping):
            raise InvalidEvent("actor must be a mapping such as {'agent_id': ..., 'model': ..., 'run_id': ...}")


@dataclass(frozen=True, slots=True)
class Event:
    """One immutable, acknowledged agent step."""

    tenant: str
    thread: str
    seq: int
    type: str
    payload: Any
    ts_ms: int
    node: str | None = None
    idempotency_key: str | None = None
    actor: Mapping[str, Any] = field(default_factory=dict)
    version: int = SCHEMA_VERSION
    blob: BlobRef | None = None
    #: Position in the tenant's Redis stream, when read from there (not part of the event's identity).
    stream_id: str | None = field(default=None, compare=False)

    @property
    def at(self) -> datetime:
        """The server-assigned append time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.ts_ms / 1000, tz=UTC)
