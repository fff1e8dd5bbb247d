"""The per-thread hash chain: ``hash_n = H(hash_{n-1} ‖ canonical bytes of event n)``.

H is SHA-256, or HMAC-SHA-256 when a key is configured (``JOURNAL_HASH_KEY``), so that
someone who can rewrite the database but does not hold the key cannot forge a consistent
chain. The chain of a thread starts from 32 zero bytes. The projector writes it, the
verifier recomputes it; both call :func:`link`.
"""

from __future__ import annotations

import hashlib
import hmac

from journal.codec import canonical_bytes
from journal.events import Event

GENESIS = bytes(32)


def key_bytes(key: str | bytes | None) -> bytes | None:
    """The HMAC key from its configured form: hex if it parses as hex, else UTF-8 text."""
    if key is None or key == "":
        return None
    if isinstance(key, bytes):
        return key
    try:
        return bytes.fromhex(key)
    except ValueError:
        return key.encode()


def link(prev_hash: bytes, event: Event, key: bytes | None = None, canonical: bytes | None = None) -> bytes:
    """The chain hash of ``event`` given the hash of the event before it (``canonical``: its bytes, if known)."""
    data = prev_hash + (canonical if canonical is not None else canonical_bytes(event))
    if key:
        return hmac.new(key, data, hashlib.sha256).digest()
    return hashlib.sha256(data).digest()
