"""Operators' inspection commands: tenants, threads, dead letters and conflicts (both bodies side by side)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from journal import keys
from journal.cli import main
from journal.client import JournalClient
from journal.redis_store import connect
from journal.settings import Settings
from projections.worker import Projector, WorkerOptions

MSG = {"role": "user", "content": "hi"}


def project(settings: Settings, tenant: str) -> None:
    p = Projector(settings, WorkerOptions())
    p.drain(tenants=[tenant])
    p.close()


@pytest.fixture
def operator_env(migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("redis_url", "database_url", "s3_url", "s3_access_key", "s3_secret_key"):
        monkeypatch.setenv(f"JOURNAL_{name.upper()}", str(getattr(migrated, name)))
    return migrated


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert main([*argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_inspection_commands_show_threads_dead_letters_and_conflicts(operator_env: Settings,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """threads filters by status and idle time; dead-letters lists a malformed entry; conflicts shows both bodies."""
    tenant = f"insp-{uuid.uuid4().hex[:8]}"
    with JournalClient.from_settings(operator_env) as c:
        c.append(tenant, "done", "message", MSG)
        c.append(tenant, "done", "complete", {"summary": "ok"})
        c.append(tenant, "open", "message", MSG)
        c.append(tenant, "forked", "message", {"role": "user", "content": "original"})
        admin = connect(operator_env.redis_url or "")
        admin.xadd(keys.stream(tenant), {"t": "open", "s": "not-a-number", "ts": "1", "b": b"junk"})
        project(operator_env, tenant)
        admin.hset(keys.heads(tenant), "forked", 0)  # Redis forgot the head: seq 1 is issued again
        admin.close()
        c.append(tenant, "forked", "message", {"role": "user", "content": "reissued"})
        project(operator_env, tenant)

    listed = {t["tenant"]: t for t in run_json(capsys, "tenants")}
    assert listed[tenant]["threads"] == 3 and listed[tenant]["fenced"] == 1
    assert [t["thread"] for t in run_json(capsys, "threads", tenant, "--status", "completed")] == ["done"]
    assert {t["thread"] for t in run_json(capsys, "threads", tenant)} == {"done", "open", "forked"}
    assert run_json(capsys, "threads", tenant, "--idle", "1d") == []
    dead = run_json(capsys, "dead-letters", tenant)
    assert len(dead) == 1 and dead[0]["thread"] == "open" and dead[0]["seq"] is None
    (conflict,) = run_json(capsys, "conflicts", tenant)
    assert conflict["seq"] == 1 and conflict["thread"] == "forked"
    assert conflict["existing"]["payload"]["content"] == "original"
    assert conflict["incoming"]["payload"]["content"] == "reissued"
    assert main(["threads", tenant, "--idle", "soon"]) == 2  # a bad span is one line, exit 2
    assert main(["conflicts", tenant]) == 0  # the table form renders too
