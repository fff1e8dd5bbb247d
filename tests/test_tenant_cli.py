"""`agent-journal tenant create/rotate/revoke`: credentials the servers themselves confine to one tenant."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from journal import keys
from journal.cli import main
from journal.client import JournalClient
from journal.errors import AccessDenied
from journal.redis_store import connect
from journal.settings import Settings
from projections.worker import Projector

ROOT = Path(__file__).resolve().parents[1]

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


def parse_block(out: str) -> dict[str, str]:
    """The variables of `export NAME=value` lines, as a POSIX shell would read them."""
    found = {}
    for line in out.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            found[name] = shlex.split(value)[0]
    return found


def provision(capsys: pytest.CaptureFixture[str], action: str, tenant: str) -> dict[str, str]:
    capsys.readouterr()
    assert main(["tenant", action, tenant]) == 0
    return parse_block(capsys.readouterr().out)


@pytest.fixture
def env(migrated: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in (("REDIS_URL", migrated.redis_url), ("DATABASE_URL", migrated.database_url),
                        ("S3_URL", migrated.s3_url)):
        monkeypatch.setenv(f"JOURNAL_{name}", value or "")
    monkeypatch.delenv("JOURNAL_READER_URL", raising=False)
    return migrated


def shell(block: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """`agent-journal ARGV` in a shell that has only evaluated ``block`` (no other JOURNAL_* variable)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOURNAL_")}
    clean["PYTHONPATH"] = str(ROOT)
    command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "journal.cli", *argv))
    return subprocess.run(["bash", "-c", f"{block}\nexec {command}"], env=clean, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_create_rotate_revoke(env: Settings, capsys: pytest.CaptureFixture[str], tenant: str) -> None:
    """create gives working confined credentials, rotate replaces them, revoke removes both."""
    creds = provision(capsys, "create", tenant)
    assert set(creds) == {"JOURNAL_REDIS_URL", "JOURNAL_DATABASE_URL", "JOURNAL_S3_URL", "JOURNAL_S3_BUCKET"}
    with JournalClient(connect(creds["JOURNAL_REDIS_URL"]), settings=env) as c:
        assert c.append(tenant, "th", "message", {**MSG, "hi": 1}).seq == 1
        with pytest.raises(AccessDenied):
            c.append(tenant + "x", "th", "message", MSG)
    with psycopg.connect(creds["JOURNAL_DATABASE_URL"]) as conn:
        assert conn.execute("SELECT journal.current_tenant()").fetchone() == (tenant,)

    new = provision(capsys, "rotate", tenant)
    assert new["JOURNAL_REDIS_URL"] != creds["JOURNAL_REDIS_URL"]
    # A cluster client authenticates as it is made (AccessDenied), one server's at the first command.
    with pytest.raises((redis.AuthenticationError, AccessDenied)):
        connect(creds["JOURNAL_REDIS_URL"]).ping()
    if password_enforced(new["JOURNAL_DATABASE_URL"]):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(creds["JOURNAL_DATABASE_URL"]).close()
    assert connect(new["JOURNAL_REDIS_URL"]).ping()

    assert main(["tenant", "revoke", tenant]) == 0
    with pytest.raises((redis.AuthenticationError, AccessDenied)):
        connect(new["JOURNAL_REDIS_URL"]).ping()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(new["JOURNAL_DATABASE_URL"]).close()
    capsys.readouterr()
    assert main(["tenant", "revoke", tenant]) == 2
    assert "no credentials to revoke" in capsys.readouterr().out


def test_create_refuses_an_existing_tenant(env: Settings, capsys: pytest.CaptureFixture[str], tenant: str) -> None:
    """A second `tenant create` changes nothing, exits non-zero and points to `tenant rotate`."""
    creds = provision(capsys, "create", tenant)
    assert main(["tenant", "create", tenant]) == 2
    out = capsys.readouterr().out
    assert f"agent-journal tenant rotate {tenant}" in out and "export" not in out
    assert connect(creds["JOURNAL_REDIS_URL"]).ping()  # the running agent's password still works
    psycopg.connect(creds["JOURNAL_DATABASE_URL"]).close()
    assert main(["tenant", "rotate", tenant + "-none"]) == 2
    assert "tenant create" in capsys.readouterr().out
    main(["tenant", "revoke", tenant])


def test_export_block_works_as_printed(env: Settings, capsys: pytest.CaptureFixture[str], tenant: str) -> None:
    """The printed block, evaluated by bash and nothing else, lets the tenant append, be discovered, and audit."""
    capsys.readouterr()
    assert main(["tenant", "create", tenant]) == 0
    block = capsys.readouterr().out
    creds = parse_block(block)
    with JournalClient(connect(creds["JOURNAL_REDIS_URL"]), settings=env) as c:
        for i in range(3):
            c.append(tenant, "th", "message", {"role": "user", "content": f"m{i}"})
    admin = connect(env.redis_url or "")
    assert admin.sismember(keys.TENANT_REGISTRY, tenant)  # the tenant user registered itself
    p = Projector(env)
    p.drain(tenants=[tenant])
    p.close()

    done = shell(block, "verify", tenant, "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["ok"] is True
    done = shell(block, "replay", tenant, "th", "--format", "json")
    assert done.returncode == 0 and json.loads(done.stdout)["last_seq"] == 3, done.stdout + done.stderr
    done = shell(block, "verify", "some-other-tenant")
    assert done.returncode == 2 and f"reads tenant {tenant} only" in done.stdout, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    main(["tenant", "revoke", tenant])


def test_env_file_is_private_and_refused_when_present(env: Settings, capsys: pytest.CaptureFixture[str],
                                                      tenant: str, tmp_path: Path) -> None:
    """--env-file writes the same export lines with mode 0600, and refuses an existing file without --force."""
    target = tmp_path / "tenant.env"
    assert main(["tenant", "create", tenant, "--env-file", str(target)]) == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    creds = parse_block(target.read_text())
    assert connect(creds["JOURNAL_REDIS_URL"]).ping()
    assert "export" not in capsys.readouterr().out
    assert main(["tenant", "rotate", tenant, "--env-file", str(target)]) == 2
    assert "--force" in capsys.readouterr().out
    assert connect(creds["JOURNAL_REDIS_URL"]).ping()  # refused before anything changed
    assert main(["tenant", "rotate", tenant, "--env-file", str(target), "--force"]) == 0
    assert parse_block(target.read_text())["JOURNAL_REDIS_URL"] != creds["JOURNAL_REDIS_URL"]
    main(["tenant", "revoke", tenant])


def test_tenant_user_may_add_itself_to_the_registry_and_nothing_more(env: Settings, capsys: pytest.CaptureFixture[str],
                                                                   tenant: str) -> None:
    """The ACL selector allows SADD on the registry only: no reading it, no other tenant's keys, no SADD elsewhere."""
    creds = provision(capsys, "create", tenant)
    other = tenant + "-b"
    admin = connect(env.redis_url or "")
    admin.xadd(keys.stream(other), {"t": "th"})
    r = connect(creds["JOURNAL_REDIS_URL"])
    assert r.sadd(keys.TENANT_REGISTRY, tenant) in (0, 1)
    assert admin.sismember(keys.TENANT_REGISTRY, tenant)
    refused = [
        ("SMEMBERS", keys.TENANT_REGISTRY), ("SREM", keys.TENANT_REGISTRY, tenant), ("DEL", keys.TENANT_REGISTRY),
        ("SADD", keys.stream(other), "x"), ("SADD", f"agent:v1:{{{tenant}}}:set", "x"),
        ("SADD", keys.TENANT_REGISTRY + "x", tenant), ("XRANGE", keys.stream(other), "-", "+"),
        ("XADD", keys.stream(other), "*", "t", "evil"), ("HGET", keys.heads(other), "th"),
    ]
    for command in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.execute_command(*command)
    assert admin.xlen(keys.stream(other)) == 1
    admin.delete(keys.stream(other))
    main(["tenant", "revoke", tenant])


@pytest.fixture(scope="module")
def private_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A SeaweedFS of this module's own: per-tenant keys turn on its authentication for every client."""
    from journal.embedded import EmbeddedStack

    stack = EmbeddedStack(tmp_path_factory.mktemp("s3-tenants"))
    yield stack.up(("s3",))
    stack.down()


def s3_as(settings: Settings, access_key: str, secret_key: str) -> Any:
    from journal.blobs import s3_client

    return s3_client(settings.with_(s3_access_key=access_key, s3_secret_key=secret_key), attempts=1)


def test_tenant_s3_key_is_confined_to_its_prefix(env: Settings, private_s3: Settings,
                                                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                                 tenant: str) -> None:
    """On the embedded SeaweedFS, create adds an S3 key that puts and gets under {tenant}/ only; revoke removes it."""
    import botocore.exceptions

    monkeypatch.setenv("JOURNAL_S3_URL", private_s3.s3_url or "")
    monkeypatch.setenv("JOURNAL_S3_SECRET_KEY", private_s3.s3_secret_key)  # the stack's own operator key
    monkeypatch.setenv("JOURNAL_DATA_DIR", str(private_s3.data_dir))
    creds = provision(capsys, "create", tenant)
    assert {"JOURNAL_S3_ACCESS_KEY", "JOURNAL_S3_SECRET_KEY"} <= set(creds)
    bucket = creds["JOURNAL_S3_BUCKET"]
    mine = s3_as(private_s3, creds["JOURNAL_S3_ACCESS_KEY"], creds["JOURNAL_S3_SECRET_KEY"])
    operator = s3_as(private_s3, private_s3.s3_access_key, private_s3.s3_secret_key)
    operator.put_object(Bucket=bucket, Key=f"{tenant}-b/blobs/x", Body=b"other tenant")
    mine.put_object(Bucket=bucket, Key=f"{tenant}/blobs/x", Body=b"mine")
    assert mine.get_object(Bucket=bucket, Key=f"{tenant}/blobs/x")["Body"].read() == b"mine"
    refused = [lambda: mine.get_object(Bucket=bucket, Key=f"{tenant}-b/blobs/x"),
               lambda: mine.put_object(Bucket=bucket, Key=f"{tenant}-b/blobs/y", Body=b"1"),
               lambda: mine.delete_object(Bucket=bucket, Key=f"{tenant}-b/blobs/x"),
               lambda: mine.list_objects_v2(Bucket=bucket)]
    for call in refused:
        with pytest.raises(botocore.exceptions.ClientError, match=r"AccessDenied|Forbidden|403"):
            call()
    assert operator.get_object(Bucket=bucket, Key=f"{tenant}-b/blobs/x")["Body"].read() == b"other tenant"

    agent = Settings.from_env(creds)  # the export block and nothing else
    with JournalClient.from_settings(agent) as c:
        big = "x" * (agent.blob_threshold + 10)
        assert c.append(tenant, "th", "tool_result", {"call_id": "c", "tool": "t", "output": big}).blob is not None

    assert main(["tenant", "revoke", tenant]) == 0
    with pytest.raises(botocore.exceptions.ClientError, match=r"InvalidAccessKeyId|AccessDenied|403"):
        mine.get_object(Bucket=bucket, Key=f"{tenant}/blobs/x")
