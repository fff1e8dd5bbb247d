"""The embedded stack: start, reuse, stop, restart on the same data, and the CLI around it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from journal.cli import main
from journal.client import JournalClient
from journal.embedded import EmbeddedStack, resolve
from journal.errors import ConfigError
from journal.settings import Settings

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}


@pytest.mark.skipif(bool(os.environ.get("JOURNAL_REDIS_URL")), reason="exercises the embedded Valkey")
def test_up_down_up_keeps_data_and_port(tmp_path: Path) -> None:
    """Data appended before `down` is there after the next `up`, on the same port, password-protected."""
    stack = EmbeddedStack(tmp_path)
    try:
        first = stack.up(("redis",))
        assert stack.up(("redis",)).redis_url == first.redis_url  # reuse, not a second server
        with JournalClient.from_settings(first) as c:
            c.append("acme", "th", "message", {**MSG, "n": 1}, durability="fsync")
        stack.down()
        assert stack.running() == []
        again = stack.up(("redis",))
        assert again.redis_url == first.redis_url and "@127.0.0.1" in (again.redis_url or "")
        with JournalClient.from_settings(again) as c:
            assert [e.payload for e in c.read("acme", "th")] == [{**MSG, "n": 1}]
    finally:
        stack.down()


def test_resolve_without_servers_says_what_to_do(tmp_path: Path) -> None:
    """With no URL and nothing running, resolve raises ConfigError naming `agent-journal up`."""
    with pytest.raises(ConfigError, match="agent-journal up"):
        resolve(Settings(data_dir=tmp_path))


def test_env_and_status_commands(settings: Settings, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`env` prints export lines for the configured servers; `status` runs and exits 0."""
    for name, value in (("REDIS_URL", settings.redis_url), ("DATABASE_URL", settings.database_url),
                        ("S3_URL", settings.s3_url)):
        monkeypatch.setenv(f"JOURNAL_{name}", value or "")
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"export JOURNAL_REDIS_URL={settings.redis_url}" in out
    assert main(["status"]) == 0


def test_settings_from_env_parses_types_and_refuses_bad_values() -> None:
    """JOURNAL_* values are typed; a bad number or durability is a ConfigError naming the variable."""
    s = Settings.from_env({"JOURNAL_BLOB_THRESHOLD": "2048", "JOURNAL_DURABILITY_TIMEOUT": "1.5",
                           "JOURNAL_DATA_DIR": "/tmp/x", "JOURNAL_DURABILITY": "fsync"})
    assert (s.blob_threshold, s.durability_timeout, s.data_dir, s.durability) == (2048, 1.5, Path("/tmp/x"), "fsync")
    with pytest.raises(ConfigError, match="JOURNAL_BLOB_THRESHOLD"):
        Settings.from_env({"JOURNAL_BLOB_THRESHOLD": "lots"})
    with pytest.raises(ConfigError, match="durability"):
        Settings.from_env({"JOURNAL_DURABILITY": "paper"})
