"""A Valkey Cluster of its own (3 primaries + 3 replicas) for the cluster tests, beside the session's stack.

PostgreSQL and S3 are the session's; only Redis is the cluster. Under ``pytest --cluster`` the
session's Redis is already a cluster, but these tests kill and reshard nodes, so they keep their
own one either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from journal.embedded import EmbeddedStack
from journal.settings import Settings

PRIMARIES = 3


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
