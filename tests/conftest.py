"""Session-wide real servers: the embedded stack, or the URLs given in the environment.

Set ``JOURNAL_REDIS_URL`` / ``JOURNAL_DATABASE_URL`` / ``JOURNAL_S3_URL`` to run the suite
against other servers (e.g. the machine's Redis 7.0 and PostgreSQL 15); whatever is not
set is started from the PyPI wheels in a temporary folder and stopped at the end.

``pytest --cluster`` (or ``JOURNAL_TEST_CLUSTER=1``) makes the embedded Redis a Valkey Cluster
of 3 primaries and 3 replicas, so the suites run through ``redis+cluster://``.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from journal.chain import GENESIS, link
from journal.client import JournalClient
from journal.codec import decode_body
from journal.embedded import EmbeddedStack
from journal.local_stack import fill_from
from journal.settings import Settings

# The property tests draw the same examples on every run, so the suite is reproducible (a red CI run
# is a real failure). HYPOTHESIS_PROFILE=explore draws new examples each run, to search for bugs.
hypothesis_settings.register_profile("repeatable", derandomize=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


#: Primaries of the cluster `--cluster` starts.
CLUSTER_PRIMARIES = 3


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cluster", action="store_true", default=False,
                     help="run against an embedded Valkey Cluster (3 primaries + 3 replicas) instead of one node; "
                          "also JOURNAL_TEST_CLUSTER=1")


def on_cluster(config: pytest.Config) -> bool:
    """Whether this session runs the suites on the embedded Valkey Cluster."""
    return bool(config.getoption("--cluster")) or os.environ.get("JOURNAL_TEST_CLUSTER") == "1"


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    """The embedded servers for whatever the environment does not configure."""
    s = EmbeddedStack(tmp_path_factory.mktemp("stack"))
    yield s
    s.down()


@pytest.fixture(scope="session")
def settings(stack: EmbeddedStack, pytestconfig: pytest.Config) -> Settings:
    base = Settings.from_env(data_dir=stack.data_dir)
    cluster = CLUSTER_PRIMARIES if on_cluster(pytestconfig) and not base.redis_url else 0
    embedded = stack.up(tuple(base.missing_urls), cluster=cluster) if base.missing_urls else base
    return fill_from(base, embedded)


@pytest.fixture(scope="session")
def embedded_redis(settings: Settings, stack: EmbeddedStack, pytestconfig: pytest.Config) -> EmbeddedStack:
    """The stack, for tests that kill and restart the Redis server; skipped against an external Redis."""
    if os.environ.get("JOURNAL_REDIS_URL"):
        pytest.skip("kills the Redis server: runs only against the embedded Valkey")
    if on_cluster(pytestconfig):
        pytest.skip("kills the one Valkey node; on the cluster, tests/cluster/ kills primaries")
    return stack


@pytest.fixture
def client(settings: Settings) -> Iterator[JournalClient]:
    with JournalClient.from_settings(settings) as c:
        yield c


class AsyncClientFacade:
    """The asyncio client behind the sync client's interface, so one test suite checks both clients.

    Its coroutines run on an event loop of its own thread; ``redis`` is a plain sync connection
    to the same server, for the tests' own assertions.
    """

    def __init__(self, settings: Settings) -> None:
        import asyncio

        from journal.aio import AsyncJournalClient
        from journal.redis_store import connect

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = self._call(AsyncJournalClient.from_settings(settings))
        self.settings = settings
        self.redis = connect(settings.redis_url or "")

    def _call(self, coro: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        import inspect

        attr = getattr(self._client, name)
        if inspect.iscoroutinefunction(attr):
            return lambda *args, **kwargs: self._call(attr(*args, **kwargs))
        return attr

    def close(self) -> None:
        self._call(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self.redis.close()

    def __enter__(self) -> AsyncClientFacade:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_client(kind: str, settings: Settings) -> Any:
    """A sync ``JournalClient``, or the asyncio one behind :class:`AsyncClientFacade` (``kind`` 'async')."""
    return AsyncClientFacade(settings) if kind == "async" else JournalClient.from_settings(settings)


@pytest.fixture(params=["sync", "async"])
def any_client(request: pytest.FixtureRequest, migrated: Settings) -> Iterator[Any]:
    """Each client in turn (the contract suite runs against both)."""
    with make_client(request.param, migrated) as c:
        yield c


@pytest.fixture
def tenant() -> str:
    """A tenant id no other test uses, so tests never see each other's data."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def migrated(settings: Settings) -> Settings:
    """Settings whose database has the schema at head."""
    from projections import db

    db.migrate(settings)
    return settings


@pytest.fixture
def tenant_settings(migrated: Settings, tenant: str) -> Iterator[Settings]:
    """Settings holding only ``tenant``'s own Redis user and PostgreSQL reader login (what
    `agent-journal tenant create` hands out)."""
    from journal import acl
    from journal.redis_store import connect
    from projections import db

    admin = connect(migrated.redis_url or "")
    creds = acl.create_tenant_user(admin, tenant)
    reader = db.create_tenant_reader(migrated, tenant)
    yield migrated.with_(redis_url=creds.redis_url(migrated.redis_url or ""),
                         database_url=reader.database_url(migrated.database_url or ""))
    acl.revoke_tenant_user(admin, tenant)
    db.revoke_tenant_reader(migrated, tenant)
    admin.close()


@pytest.fixture
def admin_pg(migrated: Settings) -> Iterator[object]:
    """A connection as the configured (administrative) database user, for assertions."""
    from projections import db

    with db.connect(migrated, role=None, autocommit=True) as conn:
        yield conn


def assert_exactly_once(pg: Any, tenant: str, heads: dict[str, int]) -> None:
    """Every thread has seqs 1..head exactly once, all chained, chain recomputes."""
    for thread, head in heads.items():
        rows = pg.execute("SELECT seq, ts_ms, body, prev_hash, hash FROM journal.events WHERE tenant_id = %s AND "
                          "thread_id = %s ORDER BY seq", (tenant, thread)).fetchall()
        assert [r[0] for r in rows] == list(range(1, head + 1)), (tenant, thread)
        h = GENESIS
        for seq, ts, body, prev, stored in rows:
            ev = decode_body(tenant, thread, seq, ts, bytes(body))
            assert bytes(prev) == h
            h = link(h, ev)
            assert bytes(stored) == h
        t = pg.execute("SELECT last_seq, event_count FROM journal.threads WHERE tenant_id = %s AND thread_id = %s",
                       (tenant, thread)).fetchone()
        assert t == (head, head)
