"""Hash-chain verification (invariant 8): recompute, and name the first bad seq and why.

Pure: it takes the events of one thread as stored (content plus the stored ``hash`` and
``prev_hash`` columns) and recomputes ``hash_n = link(hash_{n-1}, event_n)`` from
``GENESIS``. Where it breaks, it classifies what happened by looking at *which* stored
hash the content does reproduce — the seq is part of the hashed bytes, so an event moved
to another seq can still be recognised as the event originally written at its old seq.

Rules, applied to the rows in the order given (a reader delivers them ``ORDER BY seq``):

1. Two rows with the same seq → **inserted** at that seq (one of them is not original).
2. The next row's seq is above the expected one ``e``:
   ``e`` appears later in the input → **reordered** at ``e``; ``e`` is nowhere → **missing** at ``e``.
3. The row has the expected seq ``n`` and its stored ``prev_hash`` equals the recomputed
   hash of ``n-1`` and its stored ``hash`` equals the recomputation → good, go on.
   (If the caller also read the JSONB copy of the payload and it disagrees with the hashed
   body → **changed** at ``n``.)
4. Otherwise the content at ``n`` is tested as if it had been written at another seq ``m``
   (with the row's own stored hashes, or with the stored hashes of seq ``m``, so that moving
   whole rows and moving only content are both recognised):

   * ``m > n`` (later content moved up): if the content written as ``n`` is found elsewhere
     in the input → **reordered** at ``n``; if it is nowhere → **missing** at ``n`` (an event
     was deleted and the later ones renumbered to close the gap).
   * ``m < n`` (content pushed down): the rows from ``m`` up to here were slipped in and the
     originals renumbered → **inserted** at ``m``.
5. The following row chains to ``n-1`` (its stored ``prev_hash`` is the hash of ``n-1``, or
   its content re-hashes as seq ``n``) → this row is extra → **inserted** at ``n``.
6. The row is self-consistent (its hash is right for its own ``prev_hash``) but that
   ``prev_hash`` is not the predecessor's hash → a row from elsewhere → **inserted** at ``n``.
7. Anything else → **changed** at ``n`` (content, ``hash`` or ``prev_hash`` altered in place).

After the last row, an anchor (``expected_head`` — the head hash recorded by the projector,
a bundle or Redis — or ``expected_last_seq``) catches the two tamperings a chain cannot see
on its own: events appended after the recorded head (**inserted** at the first of them) and
events cut off the end (**missing** at the first absent seq). Without an anchor and without
an HMAC key, a consistent forged extension of the chain is undetectable: that is what
``JOURNAL_HASH_KEY`` and head anchoring are for.

The search for the other seq ``m`` is limited to ``SEARCH_WINDOW`` seqs either side, so a
broken chain of a very long thread is still classified in bounded time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from journal import codec
from journal.chain import GENESIS, link
from journal.events import Event

MISSING = "missing"
INSERTED = "inserted"
REORDERED = "reordered"
CHANGED = "changed"
REASONS = (MISSING, INSERTED, REORDERED, CHANGED)

SEARCH_WINDOW = 1024


class _NotLoaded:
    """Marker: the JSONB copy of the payload was not read, so it is not compared."""

    _instance: _NotLoaded | None = None

    def __new__(cls) -> _NotLoaded:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NOT_LOADED"


NOT_LOADED: Any = _NotLoaded()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as read back from storage, with its stored chain columns."""

    event: Event
    hash: bytes
    prev_hash: bytes
    #: The database's JSONB copy of the payload, when the reader selected it (compared with the hashed body).
    json_payload: Any = NOT_LOADED


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The verdict on one thread's chain."""

    ok: bool
    first_bad_seq: int | None
    reason: str | None
    #: Events verified good before the first bad one (all of them when ok).
    checked: int
    #: Recomputed hash of the last good event (``GENESIS`` if none); the chain head when ok.
    head_hash: bytes
    #: A sentence for people: what exactly did not match.
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "first_bad_seq": self.first_bad_seq, "reason": self.reason, "checked": self.checked,
                "head_hash": self.head_hash.hex(), "detail": self.detail}


def chained(events: Iterable[Event], key: bytes | None = None) -> list[StoredEvent]:
    """``events`` (in seq order) with the hashes a correct chain gives them: what the projector stores."""
    rows, prev = [], GENESIS
    for e in events:
        h = link(prev, e, key)
        rows.append(StoredEvent(e, h, prev))
        prev = h
    return rows


def verify_chain(events: Iterable[StoredEvent], key: bytes | None = None, *, expected_head: bytes | None = None,
                 expected_last_seq: int | None = None) -> VerifyResult:
    """Recompute the chain of one thread's events from ``GENESIS`` and report the first bad seq.

    ``events`` are read into memory (the classification of a break looks ahead). ``key`` is the
    HMAC key the chain was written with (``journal.chain.key_bytes``), if any.
    """
    rows = list(events)
    counts = Counter(r.event.seq for r in rows)
    by_seq = {r.event.seq: r for r in rows if counts[r.event.seq] == 1}
    running = GENESIS
    expected = 1
    checked = 0

    # The last seq the outside world recorded: any row after it was appended behind its back.
    end: int | None = None
    if expected_head is not None:
        end = next((r.event.seq for r in rows if r.hash == expected_head), None)
    if end is None:
        end = expected_last_seq

    good = [GENESIS]  # good[s]: recomputed hash after seq s, for every verified s

    def bad(seq: int, reason: str, detail: str) -> VerifyResult:
        # A break found late can condemn rows already passed (an insertion seen at its shifted successor).
        ok_upto = min(checked, max(seq - 1, 0))
        return VerifyResult(False, seq, reason, ok_upto, good[ok_upto], detail)

    for i, row in enumerate(rows):
        seq = row.event.seq
        if end is not None and seq > end and expected > end:
            return bad(end + 1, INSERTED, f"seq {end + 1} and later follow the recorded head (seq {end})")
        if counts[seq] > 1:
            return bad(seq, INSERTED, f"{counts[seq]} events carry seq {seq}; at most one of them is original")
        if seq != expected:
            if seq < 1:
                return bad(seq, INSERTED, f"seq {seq} is below 1; sequence numbers start at 1")
            if seq < expected:
                return bad(seq, REORDERED, f"seq {seq} comes after seq {expected - 1}")
            if expected in counts:
                return bad(expected, REORDERED, f"seq {expected} comes after seq {seq} in the history")
            return bad(expected, MISSING, f"seq {expected} is absent (next present: {seq})")
        computed = link(running, row.event, key)
        if row.prev_hash == running and row.hash == computed:
            if row.json_payload is not NOT_LOADED and row.event.blob is None and not payload_matches(
                    row.json_payload, row.event.payload):
                return bad(seq, CHANGED, f"seq {seq}: the database payload column differs from the hashed event body")
            running = computed
            good.append(computed)
            expected += 1
            checked += 1
            continue
        reason, at, detail = _classify(rows, i, running, by_seq, key)
        return bad(at, reason, detail)

    last = expected - 1
    if expected_head is not None and running != expected_head:
        return bad(expected, MISSING, f"the recorded head {expected_head.hex()[:16]}… is not in this chain (it ends "
                                      f"at seq {last}): later events were removed, or the whole chain was rewritten")
    if expected_last_seq is not None and last < expected_last_seq:
        return bad(expected, MISSING, f"the history ends at seq {last} but seq {expected_last_seq} was recorded")
    return VerifyResult(True, None, None, checked, running)


def _classify(rows: Sequence[StoredEvent], i: int, running: bytes, by_seq: Mapping[int, StoredEvent],
              key: bytes | None) -> tuple[str, int, str]:
    row = rows[i]
    n = row.event.seq
    m = _written_as(row, n, by_seq, key)
    if m is not None and m > n:
        if any(j != i and _hashes_as(r, n, by_seq, key) for j, r in _near(rows, i)):
            return REORDERED, n, f"seq {n} holds the event written as seq {m}, and seq {n}'s event is elsewhere"
        return MISSING, n, (f"seq {n} holds the event written as seq {m}: seq {n}..{m - 1} were removed and later "
                            "events renumbered")
    if m is not None:
        return INSERTED, m, f"seq {n} holds the event written as seq {m}: {n - m} event(s) were inserted from seq {m}"
    if i + 1 < len(rows):
        nxt = rows[i + 1]
        if nxt.prev_hash == running or link(running, replace(nxt.event, seq=n), key) == nxt.hash:
            return INSERTED, n, f"seq {n} does not chain, but the event after it chains to seq {n - 1}"
    if row.prev_hash != running and link(row.prev_hash, row.event, key) == row.hash:
        return INSERTED, n, f"seq {n} is a self-consistent event that does not chain to seq {n - 1}"
    what = f"its prev_hash is not the hash of seq {n - 1}" if row.prev_hash != running else "content or hash altered"
    hint = ""
    if key and link(row.prev_hash, row.event, None) == row.hash:
        hint = "; the stored hash is unkeyed SHA-256: this chain was written without the HMAC key given"
    elif not key:
        hint = "; if the chain was written with JOURNAL_HASH_KEY, verify with that key"
    return CHANGED, n, f"seq {n} does not match its stored chain hashes ({what}){hint}"


def _near(rows: Sequence[StoredEvent], i: int) -> Iterable[tuple[int, StoredEvent]]:
    lo, hi = max(0, i - SEARCH_WINDOW), min(len(rows), i + SEARCH_WINDOW + 1)
    return ((j, rows[j]) for j in range(lo, hi))


def _hashes_as(row: StoredEvent, m: int, by_seq: Mapping[int, StoredEvent], key: bytes | None) -> bool:
    """Does ``row``'s content hash correctly as seq ``m``, with its own stored hashes or with seq m's?"""
    moved = replace(row.event, seq=m)
    if link(row.prev_hash, moved, key) == row.hash:
        return True
    at = by_seq.get(m)
    if at is None:
        return False
    prev = GENESIS if m == 1 else by_seq[m - 1].hash if m - 1 in by_seq else None
    return prev is not None and link(prev, moved, key) == at.hash


def _written_as(row: StoredEvent, n: int, by_seq: Mapping[int, StoredEvent], key: bytes | None) -> int | None:
    """The seq other than ``n`` that ``row``'s content was originally written as, if any within the window."""
    for d in range(1, min(SEARCH_WINDOW, len(by_seq) + 1) + 1):
        for m in (n + d, n - d):  # nearest first: a swap or a single shift is the common case
            if m >= 1 and _hashes_as(row, m, by_seq, key):
                return m
    return None


def payload_matches(stored_json_payload: Any, event_payload: Any) -> bool:
    """Whether the database's JSONB copy of a payload equals the hashed payload.

    Equality is Python's ``==`` where JSONB legitimately changes the representation (a float
    such as ``1e20`` comes back as the int ``100000000000000000000``; numbers are compared as
    floats when either side is one, so ``1e23`` also matches its integer rendering), and
    stricter where ``==`` would hide a tampering: ``true`` is not ``1``, and map keys and list
    lengths must agree exactly. A bytes value's JSONB copy is ``{"$bytes": length}``
    (``codec.json_default``): its length must agree; its content is covered by the hash of the body.
    """
    a, b = stored_json_payload, event_payload
    if isinstance(b, bytes):
        return isinstance(a, Mapping) and a.keys() == {codec.BYTES_KEY} and payload_matches(a[codec.BYTES_KEY], len(b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is bool and type(b) is bool and a == b
    if isinstance(a, int | float | Decimal) and isinstance(b, int | float | Decimal):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        try:
            fa, fb = float(a), float(b)
        except OverflowError:
            return False
        return math.isfinite(fa) and fa == fb
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(payload_matches(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(payload_matches(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    return a is None and b is None
