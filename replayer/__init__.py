"""The replayer: PostgreSQL/Redis/S3 → state, proofs and audits.

    from replayer import Replayer
    with Replayer.from_settings(settings) as r:
        state = r.replay("acme", "run-42", at_seq=120)     # or at_time=datetime(..., tzinfo=UTC)
        verdicts = r.verify("acme")                         # one ThreadVerdict per thread

Names are loaded on first use (PEP 562): ``projections`` imports ``replayer.reducer`` to write
snapshots, and the replay modules import ``projections``, so importing them eagerly here would
be an import cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # the one fold
    "ThreadState": "replayer.reducer",
    "apply": "replayer.reducer",
    "fold": "replayer.reducer",
    "empty": "replayer.reducer",
    "diff": "replayer.reducer",
    "register": "replayer.reducer",
    "ReducerError": "replayer.reducer",
    # replay and verification from the tiers
    "Replayer": "replayer.replay",
    "ThreadVerdict": "replayer.replay",
    "InvalidQuery": "replayer.replay",
    "replay": "replayer.replay",
    "verify": "replayer.replay",
    "HistorySource": "replayer.sources",
    "ArchiveSource": "replayer.sources",
    "RedisSource": "replayer.sources",
    "PostgresSource": "replayer.sources",
    # resumption
    "Resumed": "replayer.resume",
    "resume": "replayer.resume",
    # offline checks
    "StoredEvent": "replayer.verify",
    "VerifyResult": "replayer.verify",
    "verify_chain": "replayer.verify",
    "write_bundle": "replayer.bundle",
    "verify_bundle": "replayer.bundle",
    "BundleReport": "replayer.bundle",
    # audits
    "Step": "replayer.audit",
    "ToolUsage": "replayer.audit",
    "timeline": "replayer.audit",
    "tool_usage": "replayer.audit",
    "state_diff": "replayer.audit",
    "export_bundle": "replayer.audit",
}

__all__ = ["ArchiveSource", "BundleReport", "HistorySource", "InvalidQuery", "PostgresSource", "RedisSource",
    "ReducerError", "Replayer", "Resumed", "Step", "StoredEvent", "ThreadState", "ThreadVerdict", "ToolUsage",
    "VerifyResult", "apply", "diff", "empty", "export_bundle", "fold", "register", "replay", "resume", "state_diff",
    "timeline", "tool_usage", "verify", "verify_bundle", "verify_chain", "write_bundle"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'replayer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from replayer.audit import Step, ToolUsage, export_bundle, state_diff, timeline, tool_usage
    from replayer.bundle import BundleReport, verify_bundle, write_bundle
    from replayer.reducer import ReducerError, apply, fold, register
    from replayer.replay import InvalidQuery, Replayer, ThreadVerdict, replay, verify
    from replayer.resume import Resumed, resume
    from replayer.sources import ArchiveSource, HistorySource, PostgresSource, RedisSource
    from replayer.state import ThreadState, diff, empty
    from replayer.verify import StoredEvent, VerifyResult, verify_chain
