"""Fixtures of the audit console tests: two tenants with projected threads, their reader logins, the app.

Tenant A has ``run-1`` (messages, tool calls, a tool result large enough to go to S3, a message
carrying hostile HTML, a pause and its resume, completion), ``run-2`` and ``tampered`` (its seq 3
body altered as the admin user after projection). Tenant B has ``secret-1``, whose content
(``B-SECRET``) must never appear in anything tenant A's reader is shown.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from journal.client import JournalClient
from journal.events import Draft
from journal.settings import Settings
from projections import db
from projections.worker import Projector

HOSTILE = ("<script>alert('xss')</script><img src=x onerror=\"alert('img')\">"
           "<svg onload=alert(2)></svg>\"'><iframe src=javascript:alert(3)>")
SECRET = "B-SECRET-do-not-leak"
ACTOR = {"agent_id": "support-bot-7", "model": "sim"}


@dataclass(frozen=True)
class World:
    """What the console tests read: the tenants, their readers' logins, the settings."""

    settings: Settings
    a: str
    b: str
    reader_a: db.ReaderCredentials
    reader_b: db.ReaderCredentials


def run_1(thread: str) -> list[Draft]:
    big = {"call_id": "c2", "tool": "issue_refund", "output": {"log": "x" * 150_000, "refund": 1234}}
    return [
        Draft(thread, "node_enter", {"node": "plan"}, node="plan", actor=ACTOR),
        Draft(thread, "message", {"role": "user", "content": "refund order 1234?"}, actor=ACTOR),
        Draft(thread, "tool_call", {"call_id": "c1", "tool": "search_orders", "args": {"order": 1234}},
              node="tools", actor=ACTOR),
        Draft(thread, "tool_result", {"call_id": "c1", "tool": "search_orders", "output": {"rows": 1}},
              node="tools", actor=ACTOR),
        Draft(thread, "message", {"role": "assistant", "content": HOSTILE}, node="plan", actor=ACTOR),
        Draft(thread, "memory_set", {"path": ["customer", "order"], "value": 1234}, actor=ACTOR),
        Draft(thread, "tool_call", {"call_id": "c2", "tool": "issue_refund", "args": {"order": 1234}},
              node="tools", actor=ACTOR),
        Draft(thread, "tool_result", big, node="tools", actor=ACTOR),
        Draft(thread, "pause", {"reason": "refund over $100 needs a human"}, node="approval", actor=ACTOR),
        Draft(thread, "resume", {"by": "human:alice", "decision": "approved"}, node="approval"),
        Draft(thread, "message", {"role": "assistant", "content": "Refund issued."}, actor=ACTOR),
        Draft(thread, "complete", {"summary": "refunded order 1234"}, actor=ACTOR),
    ]


@pytest.fixture(scope="module")
def world(migrated: Settings) -> Iterator[World]:
    """Two fresh tenants, projected, with a reader login each; ``tampered`` altered at seq 3."""
    from replayer.console.auth import checks_passwords

    if not checks_passwords(migrated.database_url or ""):
        pytest.skip("this PostgreSQL does not check passwords (trust): the console lets no tenant reader sign in "
                    "there (tests/webconsole/test_console_http.py checks that refusal)")
    a, b = f"ca-{uuid.uuid4().hex[:10]}", f"cb-{uuid.uuid4().hex[:10]}"
    with JournalClient.from_settings(migrated) as client:
        client.append_many(a, run_1("run-1"))
        client.append_many(a, [Draft("run-2", "message", {"role": "user", "content": f"hello {i}"}, actor=ACTOR)
                               for i in range(1, 8)])
        client.append_many(a, [Draft("tampered", "message", {"role": "user", "content": f"hello-{i}"}, actor=ACTOR)
                               for i in range(1, 7)])
        client.append_many(b, [Draft("secret-1", "message", {"role": "user", "content": SECRET}, actor=ACTOR),
                               Draft("secret-1", "tool_call", {"call_id": "s1", "tool": "search_orders",
                                                               "args": {"q": SECRET}})])
    p = Projector(migrated)
    p.drain(tenants=[a, b])
    p.close()
    with db.connect(migrated, role=None, autocommit=True) as admin:
        tamper(admin, a, "tampered", 3)
    reader_a = db.create_tenant_reader(migrated, a)
    reader_b = db.create_tenant_reader(migrated, b)
    yield World(migrated, a, b, reader_a, reader_b)
    db.revoke_tenant_reader(migrated, a)
    db.revoke_tenant_reader(migrated, b)


def tamper(admin: Any, tenant: str, thread: str, seq: int) -> None:
    """Change one byte of a stored body as the admin user (still decodes: 'hello-3' becomes 'jello-3')."""
    (body,) = admin.execute("SELECT body FROM journal.events WHERE tenant_id = %s AND thread_id = %s AND seq = %s",
                            (tenant, thread, seq)).fetchone()
    body = bytes(body)
    at = body.index(f"hello-{seq}".encode())
    admin.execute("UPDATE journal.events SET body = %s WHERE tenant_id = %s AND thread_id = %s AND seq = %s",
                  (body[:at] + b"j" + body[at + 1:], tenant, thread, seq))
