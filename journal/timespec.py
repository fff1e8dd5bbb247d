"""Times and spans as people type them on a command line: ``30d``, ``12h``, ``2026-11-29T10:00Z``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from journal.errors import InvalidQuery

_SPAN = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_span(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` as a duration."""
    m = _SPAN.fullmatch(text.strip())
    if not m:
        raise InvalidQuery(f"{text!r} is not a span such as 30d, 12h, 90m, 2w or 45s")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A span ago (``30d``), or an ISO 8601 time (UTC if it names no zone)."""
    if _SPAN.fullmatch(text.strip()):
        return (now or datetime.now(UTC)) - parse_span(text)
    return parse_time(text)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; ``Z`` accepted; a time without a zone is taken as UTC."""
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as e:
        raise InvalidQuery(f"{text!r} is neither a span like 30d/12h/90m nor an ISO 8601 time") from e
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
