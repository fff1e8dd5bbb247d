"""The README's agent example, run as written: an hour-long wait satisfied by a human after 6 s."""

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
