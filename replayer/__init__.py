"""The replayer: PostgreSQL/Redis/S3 → state, proofs and audits.

    from replayer import Replayer
    with Replayer.from_settings(settings) as r:
        state = r.replay("acme", "run-42", at_seq=120)     # or at_time=datetime(..., tzinfo=UTC)
        verdicts = r.verify("acme")                         # one ThreadVerdict per thread

The fold itself (``fold``, ``apply``, ``ThreadState``) lives at the bottom of the ladder, in
``journal.reducer`` and ``journal.state``; it is re-exported here for auditors' scripts.
"""

from journal.errors import InvalidQuery
from journal.reducer import ReducerError, apply, fold, register
from journal.state import ThreadState, diff, empty
from replayer.audit import Step, ToolUsage, export_bundle, state_diff, timeline, tool_usage
from replayer.bundle import BundleReport, verify_bundle, write_bundle
from replayer.replay import Replayer, ThreadVerdict, replay, verify
from replayer.sources import ArchiveSource, HistorySource, PostgresSource, RedisSource
from replayer.verify import StoredEvent, VerifyResult, verify_chain

__all__ = ["ArchiveSource", "BundleReport", "HistorySource", "InvalidQuery", "PostgresSource", "RedisSource",
           "ReducerError", "Replayer", "Step", "StoredEvent", "ThreadState", "ThreadVerdict", "ToolUsage",
           "VerifyResult", "apply", "diff", "empty", "export_bundle", "fold", "register", "replay",
           "state_diff", "timeline", "tool_usage", "verify", "verify_bundle", "verify_chain", "write_bundle"]
