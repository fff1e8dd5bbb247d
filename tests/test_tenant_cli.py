"""`agent-journal tenant create/rotate/revoke`: credentials the servers themselves confine to one tenant."""

from __future__ import annotations

import psycopg
import pytest
import redis

from journal.cli import main
from journal.client import JournalClient
from journal.errors import AccessDenied
from journal.settings import Settings

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}


def password_enforced(reader_url: str) -> bool:
    """False on a server with trust authentication (e.g. a CI PostgreSQL), where any password logs in."""
    wrong = reader_url.replace("@", "x@", 1)
    try:
        psycopg.connect(wrong).close()
    except psycopg.OperationalError:
        return True
    return False


def provision(capsys: pytest.CaptureFixture[str], action: str, tenant: str) -> dict[str, str]:
    assert main(["tenant", action, tenant]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("JOURNAL_")]
    return dict(ln.split("=", 1) for ln in lines)


@pytest.fixture
def env(migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in (("REDIS_URL", migrated.redis_url), ("DATABASE_URL", migrated.database_url),
                        ("S3_URL", migrated.s3_url)):
        monkeypatch.setenv(f"JOURNAL_{name}", value or "")
    return migrated


def test_create_rotate_revoke(env: Settings, capsys: pytest.CaptureFixture[str], tenant: str) -> None:
    """create gives working confined credentials, rotate replaces them, revoke removes both."""
    creds = provision(capsys, "create", tenant)
    with JournalClient(redis.Redis.from_url(creds["JOURNAL_REDIS_URL"]), settings=env) as c:
        assert c.append(tenant, "th", "message", {**MSG, "hi": 1}).seq == 1
        with pytest.raises(AccessDenied):
            c.append(tenant + "x", "th", "message", MSG)
    with psycopg.connect(creds["JOURNAL_READER_DATABASE_URL"]) as conn:
        assert conn.execute("SELECT journal.current_tenant()").fetchone() == (tenant,)

    new = provision(capsys, "rotate", tenant)
    assert new["JOURNAL_REDIS_URL"] != creds["JOURNAL_REDIS_URL"]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(creds["JOURNAL_REDIS_URL"]).ping()
    if password_enforced(new["JOURNAL_READER_DATABASE_URL"]):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(creds["JOURNAL_READER_DATABASE_URL"]).close()
    assert redis.Redis.from_url(new["JOURNAL_REDIS_URL"]).ping()

    assert main(["tenant", "revoke", tenant]) == 0
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(new["JOURNAL_REDIS_URL"]).ping()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(new["JOURNAL_READER_DATABASE_URL"]).close()
