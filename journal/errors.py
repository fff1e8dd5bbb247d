"""One exception hierarchy for the whole journal.

Every error says what was wrong and what to do about it. Driver exceptions (redis,
psycopg, botocore) are translated at the boundary that talks to the driver and chained
with ``raise ... from e``; they never reach a caller of the public API.
"""

from __future__ import annotations


class JournalError(Exception):
    """Root of every error agent-journal raises."""


class ConfigError(JournalError):
    """The configuration is missing or inconsistent."""


class InvalidIdentifier(JournalError, ValueError):
    """A tenant, thread or event-type name is not allowed by the key schema."""


class InvalidEvent(JournalError, ValueError):
    """An event cannot be accepted as given (bad field, bad type, bad shape)."""


class UnserializableValue(InvalidEvent):
    """A payload holds a value the codec refuses; ``path`` names where it is."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"{path}: {reason}. Payloads hold only None, bool, int (64-bit), finite float, str, "
            "list and dict with str keys; convert the value (e.g. bytes to base64, datetime to ISO text)."
        )


class PayloadTooLarge(InvalidEvent):
    """The encoded payload is over the configured maximum."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"payload encodes to {size} bytes, over the limit of {limit} bytes; split it into several "
            "events or store it elsewhere and put a reference in the payload (JOURNAL_MAX_PAYLOAD_BYTES)"
        )


class CodecError(JournalError):
    """Stored bytes cannot be decoded (unknown format tag, corrupt data)."""


class ConflictError(JournalError):
    """``expected_seq`` did not match the thread's head: another writer got there first."""

    def __init__(self, tenant: str, thread: str, expected: int, actual: int) -> None:
        self.tenant = tenant
        self.thread = thread
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"thread {tenant}/{thread}: expected head {expected} but it is {actual}; "
            "another writer appended first. Re-read the thread (resume) and retry with expected_seq="
            f"{actual}."
        )


class ThreadFenced(JournalError):
    """The thread is fenced after a sequence conflict and refuses appends until resolved."""

    def __init__(self, tenant: str, thread: str, reason: str) -> None:
        self.tenant = tenant
        self.thread = thread
        self.reason = reason
        super().__init__(
            f"thread {tenant}/{thread} is fenced ({reason}); appends are refused until an operator "
            "inspects the conflicts table and runs `agent-journal unfence`."
        )


class IdempotencyKeyReused(InvalidEvent):
    """An idempotency key already names an event with other content: a client bug, and nothing was written."""

    def __init__(self, tenant: str, thread: str, key: str, seq: int) -> None:
        self.tenant = tenant
        self.thread = thread
        self.key = key
        self.seq = seq
        super().__init__(
            f"idempotency key {key!r} of thread {tenant}/{thread} already names seq {seq}, whose content "
            "(type, payload, node or actor) differs from this append; nothing was written. A retry must send "
            "the same event; a new event needs a new key."
        )


class DurabilityError(JournalError):
    """The requested durability level could not be confirmed.

    ``written`` holds the events that were appended all the same (empty if nothing was written):
    retrying them without an idempotency key would write them twice.
    """

    def __init__(self, message: str, written: tuple[object, ...] = ()) -> None:
        self.written = written
        super().__init__(message)


class DurabilityUnsupported(DurabilityError):
    """The server cannot provide the requested durability level."""


class StoreUnavailable(JournalError):
    """A backing store (Redis, PostgreSQL, S3) could not be reached or refused the request."""


class ThreadHeld(StoreUnavailable):
    """The thread was held (retention deleting its expired history) for longer than an append waits."""

    def __init__(self, tenant: str, thread: str, reason: str, waited: float) -> None:
        self.tenant = tenant
        self.thread = thread
        self.reason = reason
        super().__init__(
            f"thread {tenant}/{thread} is held ({reason}); the append waited {waited:.1f}s and wrote nothing. "
            "Retry it; a hold left by a crashed `agent-journal maintain` is cleared by its next run "
            "(or `agent-journal unfence`)."
        )


class AccessDenied(JournalError):
    """The server refused the operation for these credentials (ACL, row-level security)."""


class BlobError(JournalError):
    """The blob store failed."""


class BlobMissing(BlobError):
    """An event references a blob that the object store does not have."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(
            f"blob {key} is referenced by an event but missing from object storage; the payload cannot "
            "be read. Restore the object from backup or the archive bundle."
        )


class BlobCorrupt(BlobError):
    """A blob's bytes do not hash to the digest that names it."""


class NothingToDo(JournalError):
    """An operation would change nothing (e.g. unfencing a thread that is not fenced): said, not silently done."""


class InvalidQuery(JournalError, ValueError):
    """A replay or audit was asked something that has no answer as posed (both a seq and a time, a naive time)."""


class NotFound(JournalError):
    """The tenant, thread or sequence asked for does not exist."""


class HistoryIncomplete(JournalError):
    """Part of a thread's history is in no tier this reader can reach; ``missing`` is the first absent seq."""

    def __init__(self, tenant: str, thread: str, missing: int, where: str) -> None:
        self.tenant = tenant
        self.thread = thread
        self.missing = missing
        super().__init__(f"thread {tenant}/{thread}: seq {missing} is {where}; the answer would be incomplete.")


class GapError(JournalError):
    """A sequence number is missing from a range that must be gapless."""

    def __init__(self, tenant: str, thread: str, missing: int) -> None:
        self.tenant = tenant
        self.thread = thread
        self.missing = missing
        super().__init__(
            f"thread {tenant}/{thread}: seq {missing} is missing from the history; the record is "
            "incomplete. Run `agent-journal verify` and restore the event from the archive."
        )


class ArchiveError(JournalError):
    """The S3 archive of a thread cannot be written or read as it must be."""


class ArchiveCorrupt(ArchiveError):
    """An archive object does not match its manifest (digest, seq range, chain) or is in an unknown format."""
