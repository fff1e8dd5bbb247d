"""Audit commands through `agent-journal` (journal.cli.main) against real servers, and the tool query's plan."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from journal.cli import main
from journal.client import JournalClient
from journal.events import Draft
from journal.reducer import fold
from journal.settings import Settings
from journal.state import diff
from projections.worker import Projector
from replayer.audit import explain_tool_usage
from replayer.replay import Replayer

ACTOR = {"agent_id": "support-bot-7", "model": "sim"}


@pytest.fixture
def cli_env(migrated: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """Point `agent-journal` at the test servers through the environment, as a user would."""
    assert migrated.redis_url and migrated.database_url and migrated.s3_url
    monkeypatch.setenv("JOURNAL_REDIS_URL", migrated.redis_url)
    monkeypatch.setenv("JOURNAL_DATABASE_URL", migrated.database_url)
    monkeypatch.setenv("JOURNAL_S3_URL", migrated.s3_url)
    monkeypatch.setenv("JOURNAL_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("JOURNAL_READER_URL", raising=False)
    return migrated


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out = run(capsys, *argv, "--format", "json")
    assert code == 0, out
    return json.loads(out)


def scripted(thread: str, tool: str = "search", calls: int = 1, fail_last: bool = False) -> list[Draft]:
    out = [Draft(thread, "node_enter", {"node": "plan"}, node="plan", actor=ACTOR),
           Draft(thread, "message", {"role": "user", "content": "refund order 42"}, actor=ACTOR)]
    for i in range(calls):
        result: dict[str, Any] = {"call_id": f"c{i}", "tool": tool, "output": {"rows": i}}
        if fail_last and i == calls - 1:
            result = {"call_id": f"c{i}", "tool": tool, "error": "timeout"}
        out += [Draft(thread, "tool_call", {"call_id": f"c{i}", "tool": tool, "args": {"i": i}}, node="tools",
                      actor=ACTOR),
                Draft(thread, "tool_result", result, node="tools", actor=ACTOR)]
    out += [Draft(thread, "pause", {"reason": "needs a human"}, node="approval", actor=ACTOR),
            Draft(thread, "resume", {"by": "human:alice", "decision": "approved"}, node="approval"),
            Draft(thread, "complete", {"summary": "refund issued"}, node="plan", actor=ACTOR)]
    return out


def project(settings: Settings, tenant: str) -> None:
    p = Projector(settings)
    p.drain(tenants=[tenant])
    p.close()


def test_timeline_shows_who_what_when(cli_env: Settings, client: JournalClient, tenant: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`audit timeline` lists every step (PostgreSQL and the Redis tail) with time, type, node, tool, agent, status."""
    drafts = scripted("th")
    client.append_many(tenant, drafts[:4])
    project(cli_env, tenant)
    client.append_many(tenant, drafts[4:])  # the pause/resume/complete are still only in Redis
    steps = run_json(capsys, "audit", "timeline", tenant, "th")
    assert [s["seq"] for s in steps] == list(range(1, 8))
    assert [s["type"] for s in steps] == [d.type for d in drafts]
    assert [s["status"] for s in steps] == ["active"] * 4 + ["paused", "active", "completed"]
    assert steps[2]["tool"] == "search" and steps[2]["node"] == "tools" and steps[2]["agent_id"] == "support-bot-7"
    assert steps[5]["agent_id"] is None and "human:alice" in steps[5]["detail"]
    code, out = run(capsys, "audit", "timeline", tenant, "th")
    assert code == 0 and "tool_call" in out and "support-bot-7" in out and "completed" in out


def test_tools_lists_threads_with_counts(cli_env: Settings, client: JournalClient, tenant: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`audit tools --tool NAME --since 30d` gives each thread that called the tool with call/result/error counts."""
    client.append_many(tenant, scripted("a", calls=3, fail_last=True))
    client.append_many(tenant, scripted("b", calls=1))
    client.append_many(tenant, scripted("c", tool="send_email", calls=2))
    project(cli_env, tenant)
    got = run_json(capsys, "audit", "tools", tenant, "--tool", "search", "--since", "30d")
    assert [(t["thread"], t["calls"], t["results"], t["errors"]) for t in got["threads"]] == [
        ("a", 3, 3, 1), ("b", 1, 1, 0)]
    later = run_json(capsys, "audit", "tools", tenant, "--tool", "search", "--since", "2999-01-01T00:00:00Z")
    assert later["threads"] == []
    code, out = run(capsys, "audit", "tools", tenant, "--tool", "send_email")
    assert code == 0 and "2 call(s)" in out and " c " in out


def fold_counts(events: list[Any], tool: str) -> tuple[int, int, int]:
    """(calls, results, errors) for ``tool`` as the folded state of a thread has them."""
    calls = fold(events).tool_calls.values()
    mine = [c for c in calls if c.tool == tool]
    return (sum(c.seq is not None for c in mine), sum(c.result is not None for c in mine),
            sum(c.result is not None and c.result.failed for c in mine))


def test_tools_counts_offloaded_payloads_as_the_fold_does(cli_env: Settings, tenant: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Offloaded calls and results, results naming no tool, and a reused call id count as in the fold."""
    big = "x" * 400  # over the 300-byte threshold below: the payload goes to S3 and the row keeps no tool
    threads = {
        "a": [("tool_call", {"call_id": "c0", "tool": "search", "args": {}}),
              ("tool_result", {"call_id": "c0", "tool": "search", "output": big}),
              ("tool_call", {"call_id": "c1", "tool": "search", "args": {"q": big}}),
              ("tool_result", {"call_id": "c1", "error": big}),
              ("tool_call", {"call_id": "c2", "tool": "search", "args": {}}),
              ("tool_result", {"call_id": "c2", "output": 1}),  # names no tool: it is the call's
              ("tool_call", {"call_id": "c0", "tool": "search", "args": {}})],  # reused id: the fold keeps the first
        "b": [("tool_call", {"call_id": "e1", "tool": "send_email", "args": {"body": big}}),
              ("tool_result", {"call_id": "e1", "tool": "send_email", "output": big})],
        "c": [("tool_call", {"call_id": "s1", "tool": "search", "args": {"q": big}})],
    }
    with JournalClient.from_settings(cli_env.with_(blob_threshold=300)) as c:
        for thread, steps in threads.items():
            recs = [c.append(tenant, thread, t, p) for t, p in steps]
            assert any(r.blob is not None for r in recs)
        expected = {th: fold_counts(c.read(tenant, th), "search") for th in threads}
    project(cli_env, tenant)
    got = run_json(capsys, "audit", "tools", tenant, "--tool", "search", "--since", "30d")
    assert {t["thread"]: (t["calls"], t["results"], t["errors"]) for t in got["threads"]} == {
        th: n for th, n in expected.items() if any(n)}
    assert expected["a"] == (3, 3, 1) and expected["c"] == (1, 0, 0)
    assert [t["thread"] for t in got["threads"]] == ["a", "c"]
    with Replayer.from_settings(cli_env) as r:  # the timeline names the tool of offloaded calls and results too
        from replayer.audit import timeline

        assert [s.tool for s in timeline(r, tenant, "b")] == ["send_email", "send_email"]


def test_tool_query_plan_uses_events_tool_idx(cli_env: Settings, admin_pg: Any, tenant: str) -> None:
    """With realistic volume and fresh statistics, the tool query is served by events_tool_idx."""
    # 40,000 tool events over 90 days and 40 tools for this tenant (inserted directly: only the plan is tested).
    admin_pg.execute(
        "INSERT INTO journal.events (tenant_id, thread_id, seq, type, tool, ts_ms, appended_at, payload, version, "
        "body, stream_id) SELECT %s, 'th' || (g %% 200), g, 'tool_call', 'tool' || (g %% 40), 0, "
        "now() - (g %% 90) * interval '1 day', '{}'::jsonb, 1, '\\x00'::bytea, 'x' FROM generate_series(1, 40000) g",
        (tenant,))
    admin_pg.execute("ANALYZE journal.events")
    with Replayer.from_settings(cli_env) as r:
        plan = explain_tool_usage(r, tenant, "tool7", datetime.now(UTC) - timedelta(days=30))
    # events is hash-partitioned: the plan names the partition's copy of events_tool_idx (one partition, pruned).
    children = {r[0] for r in admin_pg.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'journal.events_tool_idx'::regclass")}
    used = [name for name in children | {"events_tool_idx"} if f" {name} " in plan or plan.endswith(f" {name}")]
    assert len(used) == 1 and ("Index Scan using" in plan or "Bitmap Index Scan on" in plan), plan
    assert "Seq Scan" not in plan, plan
    assert "Index Cond: ((tenant_id = " in plan and "(tool = 'tool7'::text)" in plan, plan


def test_replay_and_diff_commands(cli_env: Settings, client: JournalClient, tenant: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`replay --at-seq` prints the folded state and `audit diff` prints reducer.diff between two seqs."""
    client.append_many(tenant, scripted("th", calls=2))
    project(cli_env, tenant)
    events = client.read(tenant, "th")
    state = run_json(capsys, "replay", tenant, "th", "--at-seq", "4")
    assert state == json.loads(json.dumps(fold(events[:4]).to_dict()))
    latest = run_json(capsys, "replay", tenant, "th")
    assert latest["last_seq"] == len(events) and latest["status"] == "completed"
    # One append_many shares one server millisecond: "at or before" that time is the batch's last event.
    at = events[2].at.isoformat()
    assert run_json(capsys, "replay", tenant, "th", "--at-time", at)["last_seq"] == max(
        e.seq for e in events if e.ts_ms <= events[2].ts_ms)
    d = run_json(capsys, "audit", "diff", tenant, "th", "--from", "2", "--to", "6")
    assert d == json.loads(json.dumps(diff(fold(events[:2]), fold(events[:6]))))
    assert [c["call_id"] for c in d["tool_calls_added"]] == ["c0", "c1"]
    code, out = run(capsys, "replay", tenant, "th", "--at-seq", "3")
    assert code == 0 and "pending calls" in out and "c0" in out
    code, out = run(capsys, "audit", "diff", tenant, "th", "--from", "2", "--to", "6")
    assert code == 0 and "tool_calls_added" in out


def test_missing_thread_is_one_clear_line_and_exit_2(cli_env: Settings, tenant: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A typed error (NotFound) prints one line naming the thread and exits 2."""
    code, out = run(capsys, "replay", tenant, "nope")
    # One message (rich may wrap it at the terminal width).
    assert code == 2 and out.count("error:") == 1 and f"{tenant}/nope" in out


def test_verify_command_exit_codes(cli_env: Settings, client: JournalClient, tenant: str, admin_pg: Any,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`verify TENANT` exits 0 when every chain holds and 1, naming the seq, after a row is tampered with."""
    client.append_many(tenant, scripted("a") + scripted("b"))
    project(cli_env, tenant)
    assert run_json(capsys, "verify", tenant)["ok"] is True
    admin_pg.execute("UPDATE journal.events SET payload = '{\"role\": \"user\", \"content\": \"no refund\"}' "
                     "WHERE tenant_id = %s AND thread_id = 'b' AND seq = 2", (tenant,))
    code, out = run(capsys, "verify", tenant, "--format", "json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False
    assert [(t["thread"], t["ok"], t["first_bad_seq"]) for t in report["threads"]] == [("a", True, None),
                                                                                        ("b", False, 2)]
    code, out = run(capsys, "verify", tenant, "a")
    assert code == 0 and "1 of 1 thread(s) verified" in out


def test_export_bundle_verifies_offline_and_one_byte_breaks_it(
        cli_env: Settings, client: JournalClient, tenant: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`audit export` writes a bundle (with its blob) that `verify --bundle` accepts offline; one byte changed fails."""
    drafts = scripted("th", calls=2)
    big = "PDF:" + "y" * (cli_env.blob_threshold + 1)
    drafts.insert(4, Draft("th", "tool_result", {"call_id": "big", "tool": "fetch_invoice", "output": big}))
    client.append_many(tenant, drafts)
    project(cli_env, tenant)
    out_file = tmp_path / "th.ajb"
    done = run_json(capsys, "audit", "export", tenant, "th", "--out", str(out_file))
    assert done["events"] == len(drafts) and done["blobs"] == 1 and done["chain"]["ok"] is True
    # Offline: no server URL at all.
    for name in ("JOURNAL_REDIS_URL", "JOURNAL_DATABASE_URL", "JOURNAL_S3_URL"):
        monkeypatch.setenv(name, "postgresql://unreachable.invalid:1/none")
    report = run_json(capsys, "verify", "--bundle", str(out_file))
    assert report["ok"] is True and report["events"] == len(drafts) and report["blobs"] == 1
    data = bytearray(out_file.read_bytes())
    at = data.index(b"refund order 42")
    data[at] ^= 0x01  # "refund" → "sefund": same length, still well-formed msgpack
    out_file.write_bytes(bytes(data))
    code, out = run(capsys, "verify", "--bundle", str(out_file))
    assert code == 1 and "FAILED" in out and "seq 2" in out


def test_timeline_pages_give_the_statuses_of_the_whole_timeline(migrated: Settings, client: JournalClient,
                                                                tenant: str) -> None:
    """A page starting after any seq shows the same steps and statuses as the whole timeline, across tiers."""
    from replayer.audit import timeline

    msg = {"role": "user", "content": "hi"}
    first = [Draft("th", "node_enter", {"node": "planner"}), Draft("th", "message", msg),
             Draft("th", "pause", {"reason": "approval"}), Draft("th", "message", msg),
             Draft("th", "resume", {"by": "human:alice"}), Draft("th", "node_enter", {"node": "executor"})]
    client.append_many(tenant, first)
    p = Projector(migrated)
    p.drain(tenants=[tenant])
    p.close()
    client.append_many(tenant, [Draft("th", "node_exit", {"node": "executor"}), Draft("th", "message", msg),
                                Draft("th", "complete", {"summary": "done"})])  # only in the Redis tail
    with Replayer.from_settings(migrated) as r:
        whole = timeline(r, tenant, "th")
        assert [s.status for s in whole] == ["active", "active", "paused", "paused", "active", "active", "active",
                                             "active", "completed"]
        for k in range(1, 9):
            assert timeline(r, tenant, "th", after=k) == whole[k:], k
