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


def agent_example() -> str:
    section = README.read_text().split("## Using it from an agent", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its agent example"
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
        exec(compile(agent_example(), "README.md", "exec"), scope)
        t.join()
        approval = scope["approval"]
        resumed = scope["resumed"]
        assert approval is not None and approval.type == "resume"  # type: ignore[attr-defined]
        assert resumed.seq == 4 and resumed.state.status == "active"  # type: ignore[attr-defined]
        assert admin.head("acme", "run-42") == 5


def langgraph_example() -> str:
    section = README.read_text().split("### With LangGraph", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its LangGraph example"
    return match.group(1)


def test_readme_langgraph_example_runs_as_written(migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The LangGraph snippet, given a ``builder`` (a graph with a human-approval interrupt) and ``inputs``: the run
    stops at the interrupt with its checkpoints in tenant acme, and a new saver resumes it to the end."""
    pytest.importorskip("langgraph.graph")
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command, interrupt

    from replayer.langgraph import CHECKPOINT, JournalSaver

    class State(TypedDict):
        steps: list[str]

    builder = StateGraph(State)
    builder.add_node("plan", lambda s: {"steps": [*s["steps"], "plan"]})
    builder.add_node("approve", lambda s: {"steps": [*s["steps"], f"approved:{interrupt('refund $240?')}"]})
    builder.add_edge(START, "plan")
    builder.add_edge("plan", "approve")
    builder.add_edge("approve", END)
    for name, value in (("REDIS_URL", migrated.redis_url), ("DATABASE_URL", migrated.database_url),
                        ("S3_URL", migrated.s3_url)):
        monkeypatch.setenv(f"JOURNAL_{name}", value or "")
    with JournalClient.from_settings(migrated) as admin:
        admin.redis.delete(*admin.redis.keys("agent:v1:{acme}:*") or ["-"])
        exec(compile(langgraph_example(), "README.md", "exec"), {"builder": builder, "inputs": {"steps": []}})
        assert CHECKPOINT in {e.type for e in admin.read("acme", "refund-1234")}
        config = {"configurable": {"thread_id": "refund-1234"}}
        graph = builder.compile(checkpointer=JournalSaver(admin, tenant="acme"))
        assert graph.get_state(config).next == ("approve",)
        assert graph.invoke(Command(resume="yes"), config) == {"steps": ["plan", "approved:yes"]}
