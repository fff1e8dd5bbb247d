"""`agent-journal serve` as a user runs it: a process on loopback that prints an operator token."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from journal.embedded import free_port

from .conftest import World

pytestmark = pytest.mark.timeout(120)


def test_serve_binds_loopback_and_prints_a_working_operator_token(world: World, tmp_path: Path) -> None:
    """The served console listens on 127.0.0.1, and the token it prints signs an operator in."""
    s = world.settings
    env = {**os.environ, "JOURNAL_REDIS_URL": s.redis_url or "", "JOURNAL_DATABASE_URL": s.database_url or "",
           "JOURNAL_S3_URL": s.s3_url or "", "JOURNAL_DATA_DIR": str(tmp_path)}
    port = free_port()
    err = (tmp_path / "serve.err").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "replayer.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=err)
    try:
        token = None
        deadline = time.monotonic() + 60
        while token is None:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.err").read_text()
            m = re.search(r"with token (\S+)", (tmp_path / "serve.err").read_text())
            token = m.group(1) if m else None
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, follow_redirects=False, timeout=10) as http:
            while True:
                try:
                    http.get("/login")
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            r = http.post("/login", data={"user": "operator", "password": token, "tenant": world.a})
            assert r.status_code == 303 and r.headers["location"] == f"/t/{world.a}/threads"
            page = http.get(f"/t/{world.a}/threads")
            assert page.status_code == 200 and "run-1" in page.text
        assert f"127.0.0.1:{port}" in (tmp_path / "serve.err").read_text()
    finally:
        proc.terminate()
        proc.wait(15)
        err.close()
