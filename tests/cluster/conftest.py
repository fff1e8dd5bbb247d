"""A Valkey Cluster of its own (3 primaries + 3 replicas) for the cluster tests, beside the session's stack.

PostgreSQL and S3 are the session's; only Redis is the cluster. Under ``pytest --cluster`` the
session's Redis is already a cluster, but these tests kill and reshard nodes, so they keep their
own one either way.

pytest imports every ``conftest.py`` under the module name ``conftest``: like
``tests/faults/conftest.py``, this one re-exports the top-level helpers (``assert_exactly_once``…)
so that ``from conftest import ...`` finds them whichever loaded last.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from journal.embedded import EmbeddedStack
from journal.settings import Settings

PRIMARIES = 3

_spec = importlib.util.spec_from_file_location("_journal_tests_top_conftest_cluster",
                                               Path(__file__).resolve().parent.parent / "conftest.py")
assert _spec is not None and _spec.loader is not None
_top = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_top)
assert_exactly_once: Callable[[Any, str, dict[str, int]], None] = _top.assert_exactly_once


def __getattr__(name: str) -> Any:
    """Other helpers of the top-level conftest (never its fixtures: pytest does not look here)."""
    return getattr(_top, name)


@pytest.fixture(scope="session")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """An embedded Valkey Cluster (3 primaries, each with a replica), stopped at the end."""
    if os.environ.get("JOURNAL_REDIS_URL"):
        pytest.skip("starts an embedded Valkey Cluster; JOURNAL_REDIS_URL points elsewhere")
    s = EmbeddedStack(tmp_path_factory.mktemp("cluster"))
    s.up(("redis",), cluster=PRIMARIES)
    yield s
    s.down()


@pytest.fixture(scope="session")
def cluster_settings(migrated: Settings, cluster_stack: EmbeddedStack) -> Settings:
    """The session's PostgreSQL and S3, with the cluster as Redis (a ``redis+cluster://`` URL)."""
    return migrated.with_(redis_url=cluster_stack.settings().redis_url)
