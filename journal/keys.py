"""Identifier validation and every Redis key and object key the journal uses.

Redis keys look like ``agent:v1:{tenant}:<what>``. The ``v1`` lets a future schema live
beside this one; the braces make every key of a tenant hash to one Redis Cluster slot, so
the Lua append touching the stream, heads and idempotency keys together is cluster-legal.

Identifiers (tenant, thread) use a safe charset: ASCII letters, digits, ``_``, ``-`` and
``.``, 1 to 128 characters, not starting with ``.`` or ``-`` and never ``..``. That keeps
them out of the key schema (``{ } : *``), out of glob patterns, out of S3 path traversal
and free of Unicode look-alikes.
"""

from __future__ import annotations

import functools
import hashlib
import re

from journal.errors import InvalidIdentifier

PREFIX = "agent:v1"
ID_MAX_LEN = 128
_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")

#: Event types: built-in names are lower_snake; custom ones are namespaced
#: ``x.<org>.<name>`` (e.g. ``x.acme.refund_issued``).
TYPE_MAX_LEN = 96
_TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}|x\.[a-z0-9][a-z0-9_\-]{0,31}(\.[a-z0-9][a-z0-9_]{0,47})+")

#: The reserved per-tenant thread that holds tenant-scoped context.
TENANT_CONTEXT_THREAD = "_tenant"


def validate_id(value: object, what: str = "identifier") -> str:
    """Return ``value`` if it is a valid tenant/thread id, else raise ``InvalidIdentifier``."""
    if not isinstance(value, str):
        raise InvalidIdentifier(f"{what} must be a str, got {type(value).__name__}")
    if not value or len(value) > ID_MAX_LEN or not _ID_RE.fullmatch(value) or ".." in value:
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise InvalidIdentifier(
            f"{what} {shown!r} is not allowed: use 1-{ID_MAX_LEN} ASCII letters, digits, '_', '-' or '.', "
            "starting with a letter, digit or '_' and without '..'"
        )
    return value


def validate_type(value: object) -> str:
    """Return ``value`` if it is a valid event type name, else raise ``InvalidIdentifier``."""
    if not isinstance(value, str) or len(value) > TYPE_MAX_LEN or not _TYPE_RE.fullmatch(value):
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "…"
        raise InvalidIdentifier(
            f"event type {shown!r} is not allowed: built-in types are lower_snake names "
            "(message, tool_call, …); custom types are namespaced, e.g. 'x.acme.refund_issued'"
        )
    return value


def _tag(tenant: str) -> str:
    if type(tenant) is str:
        return _valid_tag(tenant)
    return f"{PREFIX}:{{{validate_id(tenant, 'tenant')}}}"  # raises InvalidIdentifier


@functools.lru_cache(maxsize=4096)
def _valid_tag(tenant: str) -> str:
    # Cached: every append builds three keys, and the id regex dominated that cost.
    return f"{PREFIX}:{{{validate_id(tenant, 'tenant')}}}"


def stream(tenant: str) -> str:
    """The tenant's event stream (the hot write-ahead log)."""
    return f"{_tag(tenant)}:stream"


def heads(tenant: str) -> str:
    """Hash thread -> last issued seq."""
    return f"{_tag(tenant)}:heads"


def fences(tenant: str) -> str:
    """Hash thread -> reason, for threads fenced after a sequence conflict."""
    return f"{_tag(tenant)}:fenced"


def evicted(tenant: str) -> str:
    """Exists once idle threads' heads were dropped from Redis: a thread with no head may have a history."""
    return f"{_tag(tenant)}:evicted"


def projected_feed(tenant: str) -> str:
    """A short stream the projector adds to after each commit; ``durability='projected'`` waits block on it."""
    return f"{_tag(tenant)}:projected:feed"


def projected(tenant: str) -> str:
    """Hash thread -> last seq committed to PostgreSQL (written by the projector)."""
    return f"{_tag(tenant)}:projected"


#: Field of the ``projected`` hash holding the committed stream time (ms); ':' keeps it apart
#: from thread ids. The projector compares it with PostgreSQL to detect a Redis that lost its tail.
COMMITTED_MARK = ":committed_ms"


def idempotency(tenant: str, thread: str, key: str) -> str:
    """String key holding the seq first issued for an idempotency key (with a TTL).

    The user's key is hashed so that any string is safe inside the key schema.
    """
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    return f"{_tag(tenant)}:idem:{validate_id(thread, 'thread')}:{digest}"


def stream_pattern() -> str:
    """SCAN pattern matching every tenant stream (operators' discovery fallback)."""
    return f"{PREFIX}:{{*}}:stream"


#: Set of tenants that have a stream; written by clients when a tenant's stream is created.
TENANT_REGISTRY = f"{PREFIX}:tenants"


def tenant_of_stream(key: str) -> str:
    """Inverse of :func:`stream`."""
    start = key.index("{") + 1
    return key[start : key.index("}", start)]


def blob_key(tenant: str, sha256_hex: str) -> str:
    """Object key of a content-addressed payload blob."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256_hex):
        raise InvalidIdentifier(f"blob digest {sha256_hex!r} is not a sha256 hex digest")
    return f"{validate_id(tenant, 'tenant')}/blobs/{sha256_hex}"


def archive_prefix(tenant: str, thread: str) -> str:
    """Object key prefix of a thread's archived history segments."""
    return f"{validate_id(tenant, 'tenant')}/archive/{validate_id(thread, 'thread')}/"
