"""agent-journal: durable, resumable, provable state for long-running multi-tenant AI agents.

The bottom of the ladder: events, codec, keys, the one fold (reducer, thread state), the
clients (append, read, wait, resume over every tier), blobs, settings and the error hierarchy.
"""

from journal.aio import AsyncJournalClient
from journal.client import JournalClient
from journal.errors import (
    AccessDenied,
    BlobMissing,
    CodecError,
    ConfigError,
    ConflictError,
    DurabilityError,
    DurabilityUnsupported,
    GapError,
    HistoryIncomplete,
    IdempotencyKeyReused,
    InvalidEvent,
    InvalidIdentifier,
    JournalError,
    NotFound,
    PayloadTooLarge,
    StoreUnavailable,
    ThreadFenced,
    UnserializableValue,
)
from journal.events import BUILTIN_TYPES, BlobRef, Draft, Event
from journal.ops import Resumed
from journal.settings import Settings

__all__ = [
    "BUILTIN_TYPES",
    "AccessDenied",
    "AsyncJournalClient",
    "BlobMissing",
    "BlobRef",
    "CodecError",
    "ConfigError",
    "ConflictError",
    "Draft",
    "DurabilityError",
    "DurabilityUnsupported",
    "Event",
    "GapError",
    "HistoryIncomplete",
    "IdempotencyKeyReused",
    "InvalidEvent",
    "InvalidIdentifier",
    "JournalClient",
    "JournalError",
    "NotFound",
    "PayloadTooLarge",
    "Resumed",
    "Settings",
    "StoreUnavailable",
    "ThreadFenced",
    "UnserializableValue",
]
