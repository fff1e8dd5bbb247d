"""Fault-suite fixtures: a private embedded stack per test module, which its tests may kill and restart.

The session-wide stack of ``tests/conftest.py`` is shared with every other test and must stay
up, so a test that SIGKILLs Valkey or stops PostgreSQL gets servers of its own here. External
servers (``JOURNAL_*_URL``) cannot be killed: these fixtures skip then.

pytest imports every ``conftest.py`` under the module name ``conftest``; this one loading last
would hide the top-level helpers that tests import with ``from conftest import ...``, so it
re-exports them (``assert_exactly_once`` and any other non-fixture name, via ``__getattr__``).
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from journal.embedded import EmbeddedStack
from journal.settings import Settings

EXTERNAL = ("JOURNAL_REDIS_URL", "JOURNAL_DATABASE_URL", "JOURNAL_S3_URL")


def _load_top_conftest() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("_journal_tests_top_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_top = _load_top_conftest()
assert_exactly_once: Callable[[Any, str, dict[str, int]], None] = _top.assert_exactly_once


def __getattr__(name: str) -> Any:
    """Other helpers of the top-level conftest (never its fixtures: pytest does not look here)."""
    return getattr(_top, name)


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """Valkey, PostgreSQL and S3 of this test module alone, migrated; stopped at the end of the module."""
    external = [name for name in EXTERNAL if os.environ.get(name)]
    if external:
        pytest.skip(f"fault tests kill and restart the servers; {', '.join(external)} point at external servers "
                    "that cannot be killed (unset them to run these tests on private embedded servers)")
    from projections import db

    stack = EmbeddedStack(tmp_path_factory.mktemp("faultstack"))
    try:
        db.migrate(stack.up())
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def fault_settings(private_stack: EmbeddedStack) -> Settings:
    """Settings pointing at the module's private stack (durability timeout generous for a busy 2-core box)."""
    return private_stack.settings().with_(durability_timeout=10.0)


def _admin_connect(settings: Settings, timeout: float = 30.0) -> Any:
    from projections import db

    deadline = time.monotonic() + timeout
    while True:
        try:
            return db.connect(settings, role=None, autocommit=True)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def admin_connect() -> Callable[..., Any]:
    """``admin_connect(settings)``: an autocommit administrative PostgreSQL connection, retried while it (re)starts."""
    return _admin_connect
