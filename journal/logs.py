"""Logging: :func:`configure` for entry points (CLI, scripts); :func:`get_logger` for library modules.

structlog left unconfigured prints to stdout, into the output of whatever program imported the
library: the Redis persistence warning landed in the middle of the JSON a script printed. Library
loggers therefore follow the application's structlog configuration when there is one, and print
to stderr when there is none.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO, cast

import structlog


def configure(level: str = "info", json: bool | None = None) -> None:
    """structlog to stderr: JSON when stderr is not a terminal (or when asked), pretty otherwise."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _Stderr())),
        cache_logger_on_first_use=False,
    )


class _Stderr:
    """Whatever ``sys.stderr`` is at write time (it is swapped by test runners and embedders)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def get_logger(name: str) -> Any:
    """A library module's logger (see the module docstring); ``name`` is its dotted name."""
    return _LibraryLogger(name)


class _LibraryLogger:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        if structlog.is_configured():
            return getattr(structlog.get_logger(self._name), method)
        return getattr(structlog.wrap_logger(structlog.PrintLogger(cast(TextIO, _Stderr()))), method)
