"""Where the projector leans on redis-py beyond its documented API, and the versions that allows.

Two places, both for speed only:

- ``DeferredReplies.read_arrived`` feeds what has arrived on a socket to the hiredis reader without
  waiting for a whole reply (``conn._parser._reader``, ``_parser.read_from_socket(timeout=0,
  raise_on_timeout=False)``, the parser module's ``NOT_ENOUGH_DATA``): a large XREADGROUP reply is
  parsed while PostgreSQL commits instead of after.
- The reader replaces redis-py's XREADGROUP reply callback on its client with one that builds the
  projector's tuples in one pass (``set_response_callback``, fed the raw RESP2 list or RESP3 map).

Outside ``KNOWN_WORKING`` (the redis-py versions these were checked against), or when an attribute
is missing, each falls back to the plain API (whole replies once readable; redis-py's own parse),
which is correct and slower, and says so once in the log.
"""

from __future__ import annotations

import re

import redis

from journal import logs

log = logs.get_logger("projections.redis_internals")

#: [low, high) redis-py versions whose internals the fast paths were checked against (8.1.0).
KNOWN_WORKING = ((8, 0), (9, 0))
_reported: set[str] = set()


def version_tuple(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def known(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed redis-py) is one the fast paths were checked against."""
    low, high = KNOWN_WORKING
    return low <= version_tuple(version if version is not None else redis.__version__) < high


def fall_back(what: str, why: str, version: str | None = None) -> None:
    """Log, once per process and fast path, that ``what`` runs on the plain redis-py API."""
    if what in _reported:
        return
    _reported.add(what)
    low, high = KNOWN_WORKING
    log.warning("redis_py_fast_path_off", fast_path=what, reason=why,
                redis_py=version if version is not None else redis.__version__,
                known_working=f">={low[0]}.{low[1]},<{high[0]}.{high[1]}",
                consequence="correct but slower; pin redis-py in the known range to get it back")
