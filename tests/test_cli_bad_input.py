"""Every `agent-journal` command answers bad input with one line saying what is wrong and what to do, and a
non-zero exit, never a traceback; mistakes that used to succeed silently get a clear outcome."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from journal import keys
from journal.cli import main
from journal.client import JournalClient
from journal.settings import Settings
from projections.worker import Projector

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Ctx:
    """What a case may need: the good servers, a scratch folder, a port something listens on."""

    settings: Settings
    tmp: Path
    busy_port: int
    tenant: str


def wrong_password(url: str | None) -> str:
    parts = urlsplit(url or "")
    user = parts.username or "default"
    return urlunsplit(parts._replace(netloc=f"{user}:not-the-password@{parts.hostname}:{parts.port}"))


def skip_unless_passwords_checked(name: str, settings: Settings) -> None:
    """The wrong-password cases need servers that check passwords (the embedded ones do; a system PostgreSQL
    with trust authentication or a Redis whose default user is ``nopass`` lets any password in)."""
    from replayer.console.auth import checks_passwords

    if name.startswith("postgres_wrong_password") and not checks_passwords(settings.database_url or ""):
        pytest.skip("this PostgreSQL does not check passwords (trust authentication)")
    if name.startswith("redis_wrong_password"):
        try:
            redis.Redis.from_url(wrong_password(settings.redis_url)).ping()
        except redis.AuthenticationError:
            return
        pytest.skip("this Redis takes any password (its default user is nopass)")


@dataclass(frozen=True)
class Case:
    """``argv`` run with ``env`` changes (None deletes a variable) must exit non-zero saying ``says``."""

    argv: Callable[[Ctx], list[str]]
    says: tuple[str, ...]
    env: Callable[[Ctx], dict[str, str | None]] = field(default=lambda c: {})
    never: tuple[str, ...] = ()


def fixed(*argv: str) -> Callable[[Ctx], list[str]]:
    return lambda c: list(argv)


CASES: dict[str, Case] = {
    # paths
    "verify_bundle_missing": Case(lambda c: ["verify", "--bundle", str(c.tmp / "nope.ajb")], ("does not exist",)),
    "verify_bundle_directory": Case(lambda c: ["verify", "--bundle", str(c.tmp)], ("not a file",)),
    "verify_bundle_not_a_bundle": Case(lambda c: ["verify", "--bundle", str(c.tmp / "existing.ajb")],
                                       ("bundle",)),
    "export_target_exists": Case(lambda c: ["audit", "export", c.tenant, "th", "--out", str(c.tmp / "existing.ajb")],
                                 ("exists", "--force")),
    "export_folder_missing": Case(lambda c: ["audit", "export", c.tenant, "th", "--out", str(c.tmp / "no/x.ajb")],
                                  ("does not exist",)),
    "export_target_is_directory": Case(lambda c: ["audit", "export", c.tenant, "th", "--out", str(c.tmp)],
                                       ("is a directory",)),
    "tenant_env_file_folder_missing": Case(lambda c: ["tenant", "create", c.tenant, "--env-file",
                                                      str(c.tmp / "no" / "t.env")], ("does not exist",)),
    "down_data_dir_is_a_file": Case(fixed("down"), ("existing.ajb",),
                                    env=lambda c: {"JOURNAL_DATA_DIR": str(c.tmp / "existing.ajb")}),
    # malformed URLs, in the environment and in arguments
    "redis_url_no_scheme": Case(lambda c: ["unfence", c.tenant, "th"], ("JOURNAL_REDIS_URL", "not a Redis URL"),
                                env=lambda c: {"JOURNAL_REDIS_URL": "localhost:6379"}),
    "database_url_wrong_scheme": Case(fixed("migrate"), ("JOURNAL_DATABASE_URL", "not a PostgreSQL URL"),
                                      env=lambda c: {"JOURNAL_DATABASE_URL": "http://127.0.0.1:5432/x"}),
    "database_url_bad_port": Case(lambda c: ["replay", c.tenant, "th"], ("JOURNAL_DATABASE_URL", "port"),
                                  env=lambda c: {"JOURNAL_DATABASE_URL": "postgresql://u:pw@127.0.0.1:54x2/db"},
                                  never=("pw@",)),
    "s3_url_wrong_scheme": Case(fixed("project"), ("JOURNAL_S3_URL", "not an S3 URL"),
                                env=lambda c: {"JOURNAL_S3_URL": "ftp://127.0.0.1:1"}),
    "env_with_bad_url": Case(fixed("env"), ("JOURNAL_REDIS_URL",), env=lambda c: {"JOURNAL_REDIS_URL": "nope"}),
    "up_with_bad_url": Case(fixed("up"), ("JOURNAL_S3_URL",), env=lambda c: {"JOURNAL_S3_URL": "s3:/bucket"}),
    "status_with_bad_url": Case(fixed("status"), ("JOURNAL_DATABASE_URL",),
                                env=lambda c: {"JOURNAL_DATABASE_URL": "postgres//x"}),
    "reader_url_malformed": Case(lambda c: ["verify", c.tenant, "--reader-url", "reader@db"], ("--reader-url",)),
    "reader_url_not_a_reader": Case(lambda c: ["verify", c.tenant, "--reader-url", c.settings.database_url or ""],
                                    ("bound to no tenant",), never=("postgres:",)),
    "bad_number_in_env": Case(fixed("env"), ("JOURNAL_BLOB_THRESHOLD",),
                              env=lambda c: {"JOURNAL_BLOB_THRESHOLD": "lots"}),
    "old_reader_variable": Case(lambda c: ["verify", c.tenant], ("JOURNAL_READER_URL", "JOURNAL_DATABASE_URL"),
                                env=lambda c: {"JOURNAL_READER_URL": c.settings.database_url}),
    # numbers
    "metrics_port_out_of_range": Case(fixed("project", "--metrics-port", "70000"), ("out of range",)),
    "metrics_port_negative": Case(fixed("project", "--metrics-port", "-1"), ("out of range",)),
    "metrics_port_env_out_of_range": Case(fixed("project", "--no-migrate"), ("JOURNAL_METRICS_PORT", "out of range"),
                                          env=lambda c: {"JOURNAL_METRICS_PORT": "99999"}),
    "metrics_port_in_use": Case(lambda c: ["project", "--no-migrate", "--metrics-port", str(c.busy_port)],
                                ("cannot serve metrics", "127.0.0.1:")),
    "batch_size_zero": Case(fixed("project", "--batch-size", "0"), ("--batch-size", "positive")),
    "batch_size_negative": Case(fixed("project", "--batch-size", "-5"), ("--batch-size", "positive")),
    "batch_size_not_a_number": Case(fixed("project", "--batch-size", "many"), ("not an integer",)),
    "claim_idle_negative": Case(fixed("project", "--claim-idle-ms", "-1"), ("--claim-idle-ms",)),
    "demo_zero_tenants": Case(fixed("demo", "--tenants", "0"), ("--tenants",)),
    "log_level_unknown": Case(fixed("--log-level", "loud", "env"), ("--log-level",)),
    "at_seq_negative": Case(lambda c: ["replay", c.tenant, "th", "--at-seq", "-1"], ("--at-seq",)),
    "at_time_not_a_time": Case(lambda c: ["replay", c.tenant, "th", "--at-time", "yesterday-ish"],
                               ("ISO 8601",)),
    "until_before_since": Case(lambda c: ["audit", "tools", c.tenant, "--tool", "x", "--since", "2026-01-02",
                                          "--until", "2026-01-01"], ("--until", "before --since")),
    "since_garbage": Case(lambda c: ["audit", "tools", c.tenant, "--tool", "x", "--since", "last tuesday"],
                          ("ISO 8601",)),
    "diff_from_after_to": Case(lambda c: ["audit", "diff", c.tenant, "th", "--from", "5", "--to", "2"],
                               ("--from 5 is after --to 2",)),
    "diff_negative": Case(lambda c: ["audit", "diff", c.tenant, "th", "--from", "-1", "--to", "2"], ("--from",)),
    "verify_without_tenant": Case(fixed("verify"), ("TENANT",)),
    "bad_tenant_id": Case(fixed("audit", "timeline", "a:b", "th"), ("tenant",)),
    "bad_tenant_id_create": Case(fixed("tenant", "create", "a b"), ("tenant",)),
    "unknown_command": Case(fixed("frobnicate"), ("invalid choice",)),
    # authentication failures are said as such: not "unreachable", not a tenant-scope refusal
    "postgres_wrong_password": Case(lambda c: ["verify", c.tenant], ("PostgreSQL authentication failed",),
                                    env=lambda c: {"JOURNAL_DATABASE_URL": wrong_password(c.settings.database_url)},
                                    never=("unreachable", "do not cover", "not-the-password")),
    "postgres_wrong_password_migrate": Case(fixed("migrate"), ("PostgreSQL authentication failed",),
                                            env=lambda c: {"JOURNAL_DATABASE_URL":
                                                           wrong_password(c.settings.database_url)},
                                            never=("unreachable", "do not cover", "not-the-password")),
    "redis_wrong_password": Case(lambda c: ["unfence", c.tenant, "th"], ("Redis authentication failed",),
                                 env=lambda c: {"JOURNAL_REDIS_URL": wrong_password(c.settings.redis_url)},
                                 never=("unreachable", "do not cover", "not-the-password")),
    "redis_wrong_password_tenant": Case(lambda c: ["tenant", "create", c.tenant], ("Redis authentication failed",),
                                        env=lambda c: {"JOURNAL_REDIS_URL": wrong_password(c.settings.redis_url)},
                                        never=("unreachable", "do not cover", "not-the-password")),
    # mistakes that used to succeed silently
    "verify_unknown_tenant": Case(lambda c: ["verify", c.tenant], ("has no threads",)),
    "verify_unknown_thread": Case(lambda c: ["verify", c.tenant, "nope"], ("/nope",)),
    "unfence_unknown_thread": Case(lambda c: ["unfence", c.tenant, "nope"], ("no thread",)),
    "migrate_to_base": Case(fixed("migrate", "--revision", "base"), ("would change nothing",)),
    "migrate_unknown_revision": Case(fixed("migrate", "--revision", "zzz"), ("unknown revision",)),
    "tenant_rotate_unknown": Case(lambda c: ["tenant", "rotate", c.tenant], ("tenant create",)),
    "tenant_revoke_unknown": Case(lambda c: ["tenant", "revoke", c.tenant], ("no credentials",)),
    "tenant_revoke_with_env_file": Case(lambda c: ["tenant", "revoke", c.tenant, "--env-file", str(c.tmp / "t.env")],
                                        ("--env-file goes with create or rotate",)),
    "tenant_env_file_exists": Case(lambda c: ["tenant", "create", c.tenant, "--env-file", str(c.tmp / "existing.ajb")],
                                   ("exists", "--force")),
}


@pytest.fixture
def ctx(migrated: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tenant: str) -> Iterator[Ctx]:
    """The test servers in the environment, a scratch folder holding one file, and a busy port."""
    for name, value in (("REDIS_URL", migrated.redis_url), ("DATABASE_URL", migrated.database_url),
                        ("S3_URL", migrated.s3_url), ("DATA_DIR", str(tmp_path))):
        monkeypatch.setenv(f"JOURNAL_{name}", value or "")
    for name in ("JOURNAL_READER_URL", "JOURNAL_METRICS_PORT", "JOURNAL_HASH_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "existing.ajb").write_bytes(b"not a bundle")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield Ctx(migrated, tmp_path, busy.getsockname()[1], tenant)


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """main(argv) in-process: its exit code (argparse's SystemExit included) and everything it printed."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.strip()]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_a_non_zero_exit(ctx: Ctx, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Each bad input exits non-zero with one line naming the problem, and no traceback."""
    skip_unless_passwords_checked(name, ctx.settings)
    case = CASES[name]
    for var, value in case.env(ctx).items():
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    code, out = run(capsys, case.argv(ctx))
    assert code != 0, out
    assert "Traceback" not in out and "This is a bug" not in out, out
    assert len(lines(out)) == 1, out
    for text in case.says:
        assert text in out, out
    for text in case.never:
        assert text not in out, out


SUBPROCESS_CASES = ("batch_size_zero", "verify_bundle_directory", "redis_url_no_scheme", "postgres_wrong_password",
                    "until_before_since")


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_through_the_real_entry_point(ctx: Ctx, name: str) -> None:
    """The same refusals from a separate process: exit non-zero, one line, no traceback on stdout or stderr."""
    skip_unless_passwords_checked(name, ctx.settings)
    case = CASES[name]
    env = {k: v for k, v in os.environ.items()} | {"PYTHONPATH": str(ROOT)}
    for var, value in case.env(ctx).items():
        if value is None:
            env.pop(var, None)
        else:
            env[var] = value
    done = subprocess.run([sys.executable, "-m", "journal.cli", *case.argv(ctx)], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "Traceback" not in out and len(lines(out)) == 1, out
    assert all(text in out for text in case.says), out


# -- outcomes of commands that used to succeed silently ------------------------------------------------


def project(settings: Settings, tenant: str) -> None:
    p = Projector(settings)
    p.drain(tenants=[tenant])
    p.close()


def test_unfence_of_a_thread_that_is_not_fenced_says_so(ctx: Ctx, client: JournalClient,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """unfence of an existing but unfenced thread exits 2 saying it is not fenced; of a fenced one, exits 0."""
    client.append(ctx.tenant, "th", "message", {"role": "user", "content": "m1"})
    project(ctx.settings, ctx.tenant)
    code, out = run(capsys, ["unfence", ctx.tenant, "th"])
    assert code == 2 and "is not fenced" in out, out
    client.redis.hset(keys.fences(ctx.tenant), "th", "test fence")
    code, out = run(capsys, ["unfence", ctx.tenant, "th"])
    assert code == 0 and "unfenced" in out, out
    assert not client.redis.hexists(keys.fences(ctx.tenant), "th")


def test_wrong_hmac_key_says_tampered_or_key_mismatch(ctx: Ctx, client: JournalClient,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A chain (in PostgreSQL and in a bundle) checked with another key fails saying "tampered" and "key mismatch?"."""
    client.append(ctx.tenant, "th", "message", {"role": "user", "content": "m1"})
    client.append(ctx.tenant, "th", "message", {"role": "user", "content": "m2"})
    project(ctx.settings.with_(hash_key="writer-key"), ctx.tenant)
    code, out = run(capsys, ["verify", ctx.tenant, "--key", "writer-key"])
    assert code == 0, out
    code, out = run(capsys, ["verify", ctx.tenant, "--key", "another-key"])
    assert code == 1 and "tampered" in out and "key mismatch?" in out and "Traceback" not in out, out
    bundle = ctx.tmp / "th.ajb"
    code, out = run(capsys, ["audit", "export", ctx.tenant, "th", "--out", str(bundle), "--format", "json"])
    assert code == 1, out  # exported, and told that its chain does not verify with the default (no) key
    code, out = run(capsys, ["verify", "--bundle", str(bundle), "--key", "another-key"])
    assert code == 1 and "tampered" in out and "key mismatch?" in out, out
    code, out = run(capsys, ["audit", "export", ctx.tenant, "th", "--out", str(bundle), "--force"])
    assert "wrote" in out, out


def test_migrate_says_what_it_did_and_needs_only_postgres(ctx: Ctx, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """migrate at head says "nothing to do", and runs with only JOURNAL_DATABASE_URL (no Redis, no S3 demanded)."""
    monkeypatch.delenv("JOURNAL_REDIS_URL")
    monkeypatch.delenv("JOURNAL_S3_URL")
    code, out = run(capsys, ["migrate"])
    assert code == 0 and "already at" in out, out


def test_status_json_reports_configured_servers_and_fails_when_one_is_down(
        ctx: Ctx, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """status --format json: external URLs are probed (not shown as stopped embedded ones); a dead one exits 1."""
    code, out = run(capsys, ["status", "--format", "json"])
    report = json.loads(out)
    assert code == 0 and report["ok"] is True, out
    assert {s["service"]: (s["source"], s["up"]) for s in report["services"]} == {
        "redis": ("JOURNAL_REDIS_URL", True), "postgres": ("JOURNAL_DATABASE_URL", True),
        "s3": ("JOURNAL_S3_URL", True)}
    assert all(urlsplit(s["url"]).password in (None, "***") for s in report["services"])  # no password shown
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("JOURNAL_REDIS_URL", f"redis://127.0.0.1:{closed}/0")
    code, out = run(capsys, ["status", "--format", "json"])
    report = json.loads(out)
    down = {s["service"]: s for s in report["services"]}
    assert code == 1 and report["ok"] is False and down["redis"]["up"] is False and down["postgres"]["up"], out
    assert "Traceback" not in out


def test_reader_of_one_tenant_asking_for_another_is_refused(ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    """--reader-url of tenant A asking for tenant B exits 2 naming both, instead of an empty answer."""
    from projections import db

    creds = db.create_tenant_reader(ctx.settings, ctx.tenant)
    url = creds.database_url(ctx.settings.database_url or "")
    try:
        code, out = run(capsys, ["verify", ctx.tenant + "-b", "--reader-url", url])
        assert code == 2 and f"reads tenant {ctx.tenant} only" in out, out
        assert creds.password not in out
    finally:
        db.revoke_tenant_reader(ctx.settings, ctx.tenant)


def test_redis_auth_failure_is_not_a_scope_refusal(ctx: Ctx) -> None:
    """journal.redis_store.translate calls a wrong password "authentication failed", not a tenant-scope problem."""
    from journal.redis_store import translate

    skip_unless_passwords_checked("redis_wrong_password", ctx.settings)

    with pytest.raises(redis.AuthenticationError) as caught:
        redis.Redis.from_url(wrong_password(ctx.settings.redis_url)).ping()
    text = str(translate(caught.value, "PING"))
    assert "authentication failed" in text and "do not cover" not in text and "unreachable" not in text


def test_unmigrated_database_says_run_migrate(ctx: Ctx, admin_pg: Any, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a database without the journal schema, each command says to run `agent-journal migrate`."""
    name = f"scratch_{ctx.tenant.replace('-', '_')}"
    admin_pg.execute(f'CREATE DATABASE "{name}"')
    try:
        url = urlsplit(ctx.settings.database_url or "")
        monkeypatch.setenv("JOURNAL_DATABASE_URL", urlunsplit(url._replace(path=f"/{name}")))
        for argv in (["tenant", "create", ctx.tenant], ["verify", ctx.tenant], ["unfence", ctx.tenant, "th"],
                     ["replay", ctx.tenant, "th"], ["audit", "timeline", ctx.tenant, "th"]):
            code, out = run(capsys, argv)
            assert code == 2 and "agent-journal migrate" in out and len(lines(out)) == 1, (argv, out)
        assert not redis.Redis.from_url(ctx.settings.redis_url or "").execute_command(
            "ACL", "GETUSER", f"journal-{ctx.tenant}")  # refused before anything was made
    finally:
        admin_pg.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_an_unexpected_error_is_one_line_exit_70_and_debug_shows_it(ctx: Ctx, capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug inside a command is still one line (exit 70, "a bug"); --log-level debug lets the traceback out."""
    import journal.cli

    def broken(args: Any) -> int:
        raise KeyError("boom")

    monkeypatch.setattr(journal.cli, "_cmd_env", broken)
    code, out = run(capsys, ["env"])
    assert code == 70 and "This is a bug" in out and "Traceback" not in out and len(lines(out)) == 1, out
    with pytest.raises(KeyError):
        main(["--log-level", "debug", "env"])
