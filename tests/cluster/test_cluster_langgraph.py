"""The LangGraph savers on a real Valkey Cluster: tenants on every primary pause, resume and list."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("langgraph.checkpoint.base")

from langgraph.types import Command
from langgraph_graphs import approval_graph
from test_cluster_client import tenants_on_every_primary

from journal import keys
from journal.aio import AsyncJournalClient
from journal.client import JournalClient
from journal.redis_store import connect
from journal.settings import Settings
from projections.worker import Projector, WorkerOptions
from replayer.langgraph import AsyncJournalSaver, JournalSaver


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_graphs_of_tenants_on_every_primary_pause_and_resume_from_postgresql(kind: str,
                                                                            cluster_settings: Settings) -> None:
    """Each tenant's graph checkpoints with durability 'replicated' (on the replica when acknowledged) up to its
    interrupt; the projector drains the cluster, the streams are trimmed to nothing, and new savers on new
    clients resume every graph and list its history and the tenant's threads from PostgreSQL."""
    tenants = tenants_on_every_primary(cluster_settings.redis_url or "")
    config = {"configurable": {"thread_id": "refund-1"}}

    async def run_async(tenant: str, resume: bool) -> Any:
        c = await AsyncJournalClient.from_settings(cluster_settings)
        try:
            saver = AsyncJournalSaver(c, tenant=tenant, durability="replicated")
            graph = approval_graph(saver)
            if not resume:
                return await graph.ainvoke({"steps": []}, config)
            nxt = (await graph.aget_state(config)).next
            done = await graph.ainvoke(Command(resume="yes"), config)
            listed = [t.metadata["step"] async for t in saver.alist(config)]
            threads = {t.config["configurable"]["thread_id"] async for t in saver.alist(None)}
            return nxt, done, listed, threads
        finally:
            await c.close()

    def run_sync(tenant: str, resume: bool) -> Any:
        with JournalClient.from_settings(cluster_settings) as c:
            saver = JournalSaver(c, tenant=tenant, durability="replicated")
            graph = approval_graph(saver)
            if not resume:
                return graph.invoke({"steps": []}, config)
            nxt = graph.get_state(config).next
            done = graph.invoke(Command(resume="yes"), config)
            return nxt, done, [t.metadata["step"] for t in saver.list(config)], \
                {t.config["configurable"]["thread_id"] for t in saver.list(None)}

    def run(tenant: str, resume: bool) -> Any:
        return asyncio.run(run_async(tenant, resume)) if kind == "async" else run_sync(tenant, resume)

    for tenant in tenants:
        assert "__interrupt__" in run(tenant, resume=False)
    p = Projector(cluster_settings, WorkerOptions())
    p.drain(tenants=tenants)
    p.close()
    admin = connect(cluster_settings.redis_url or "")
    try:
        for tenant in tenants:
            admin.xtrim(keys.stream(tenant), maxlen=0, approximate=False)
    finally:
        admin.close()
    for tenant in tenants:
        nxt, done, listed, threads = run(tenant, resume=True)
        assert nxt == ("approve",) and done == {"steps": ["plan", "approved:yes"]}, tenant
        assert listed == sorted(listed, reverse=True) and listed[-1] == -1 and listed[0] >= 2, listed
        assert threads == {"refund-1"}
