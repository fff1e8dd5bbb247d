"""agent-journal: durable, resumable, provable state for long-running multi-tenant AI agents.

The write path and the shared vocabulary: events, codec, keys, the append clients, blobs,
settings, the embedded dev stack and the error hierarchy.
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
    "InvalidEvent",
    "InvalidIdentifier",
    "JournalClient",
    "JournalError",
    "NotFound",
    "PayloadTooLarge",
    "Settings",
    "StoreUnavailable",
    "ThreadFenced",
    "UnserializableValue",
]
