"""The README's examples, run as written: the agent's hour-long wait (satisfied by a human after 6 s)
and the LangGraph saver."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from journal.client import JournalClient
from journal.settings import Settings

README = Path(__file__).resolve().parent.parent / "README.md"


def example(heading: str) -> str:
    """The first Python block under ``heading`` in the README."""
    section = README.read_text().split(heading, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"the README lost its example under {heading!r}"
    return match.group(1)


def test_readme_agent_example_runs_as_written(migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example appends, waits (timeout=3600) past the socket timeout for the approval, resumes and appends."""
    for name, value in (("REDIS_URL", migrated.redis_url), ("DATABASE_URL", migrated.database_url),
                        ("S3_URL", migrated.s3_url)):
        monkeypatch.setenv(f"JOURNAL_{name}", value or "")
    with JournalClient.from_settings(migrated) as admin:
        try:
            admin.redis.execute_command("WAITAOF", 1, 0, 1)
        except Exception:
            pytest.skip("the example appends with durability='fsync', which this Redis server cannot do")
        admin.redis.delete(*admin.redis.keys("agent:v1:{acme}:*") or ["-"])

        def human() -> None:
            while admin.head("acme", "run-42") < 3:
                time.sleep(0.1)
            time.sleep(6)  # longer than redis-py's default 5 s socket timeout
            admin.append("acme", "run-42", "resume", {"by": "human:alice"})

        t = threading.Thread(target=human)
        t.start()
        scope: dict[str, object] = {}
        exec(compile(example("## Using it from an agent"), "README.md", "exec"), scope)
        t.join()
        approval = scope["approval"]
        resumed = scope["resumed"]
        assert approval is not None and approval.type == "resume"  # type: ignore[attr-defined]
        assert resumed.seq == 4 and resumed.state.status == "active"  # type: ignore[attr-defined]
        assert admin.head("acme", "run-42") == 5


def test_readme_langgraph_example_runs_as_written(migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The LangGraph snippet, given a ``builder`` (a graph with a human-approval interrupt) and ``inputs``: the run
    stops at the interrupt with its checkpoints in tenant acme, and a new saver resumes it to the end."""
    pytest.importorskip("langgraph.graph")
    from langgraph.types import Command
    from langgraph_graphs import approval_builder

    from replayer.langgraph import CHECKPOINT, JournalSaver

    builder = approval_builder()
    for name, value in (("REDIS_URL", migrated.redis_url), ("DATABASE_URL", migrated.database_url),
                        ("S3_URL", migrated.s3_url)):
        monkeypatch.setenv(f"JOURNAL_{name}", value or "")
    with JournalClient.from_settings(migrated) as admin:
        admin.redis.delete(*admin.redis.keys("agent:v1:{acme}:*") or ["-"])
        exec(compile(example("### With LangGraph"), "README.md", "exec"), {"builder": builder, "inputs": {"steps": []}})
        assert CHECKPOINT in {e.type for e in admin.read("acme", "refund-1234")}
        config = {"configurable": {"thread_id": "refund-1234"}}
        graph = builder.compile(checkpointer=JournalSaver(admin, tenant="acme"))
        assert graph.get_state(config).next == ("approve",)
        assert graph.invoke(Command(resume="yes"), config) == {"steps": ["plan", "approved:yes"]}
