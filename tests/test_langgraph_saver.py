"""The LangGraph checkpointers on the real stack: LangGraph's conformance suite, then what the journal adds.

Both savers run ``langgraph-checkpoint-conformance`` (put, put_writes, get_tuple, list, delete_thread)
against the embedded Valkey + PostgreSQL; the other tests check the journal's own promises: the
tombstone is final, ids are encoded, payloads are plain data, unchanged channels are not stored
again, the tenant comes from the config, and a graph interrupted in one saver resumes in another.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import pytest

pytest.importorskip("langgraph.checkpoint.conformance")

from langgraph.checkpoint.base import BaseCheckpointSaver, empty_checkpoint
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.report import CapabilityReport
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt
from langgraph_graphs import Steps, approval_graph

from journal import keys
from journal.aio import AsyncJournalClient
from journal.client import JournalClient
from journal.errors import AccessDenied, JournalError
from journal.redis_store import connect as redis_connect
from journal.settings import Settings
from projections.worker import Projector, WorkerOptions
from replayer.langgraph import (
    CHECKPOINT,
    DELETED,
    WRITES,
    AsyncJournalSaver,
    CheckpointConfigError,
    CheckpointCorrupt,
    JournalSaver,
    journal_thread,
    payload_fields,
)


def _tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _check(report: CapabilityReport) -> None:
    """Every capability, base and extended, ran its checks and passed them all (a run that checked nothing fails)."""
    failures = "\n".join(f"{cap}: {f}" for cap, r in report.results.items() for f in (r.failures or []))
    assert report.passed_all_base(), failures
    assert not failures, failures
    ran = {cap: r.tests_passed for cap, r in report.results.items() if r.detected}
    assert set(ran) == {"put", "put_writes", "get_tuple", "list", "delete_thread", "prune", "copy_thread",
                        "delete_for_runs"} and all(ran.values()), ran
    # conformance 0.0.2: put 17, put_writes 10, get_tuple 10, list 16, delete_thread 5, delete_for_runs 7,
    # copy_thread 8, prune 8
    assert sum(ran.values()) >= 81, ran


def _checkpoint(**values: Any) -> Any:
    cp = empty_checkpoint()
    cp["id"] = str(uuid6(clock_seq=-1))
    cp["channel_values"] = dict(values)
    cp["channel_versions"] = dict.fromkeys(values, 1)
    return cp


def _config(thread_id: str, checkpoint_id: str | None = None, **extra: Any) -> Any:
    conf: dict[str, Any] = {"thread_id": thread_id, "checkpoint_ns": "", **extra}
    if checkpoint_id:
        conf["checkpoint_id"] = checkpoint_id
    return {"configurable": conf}


# -- LangGraph's conformance suite ------------------------------------------------------------------

def test_sync_saver_passes_langgraph_conformance(migrated: Settings) -> None:
    """JournalSaver passes every capability of langgraph-checkpoint-conformance on the real stack."""
    with JournalClient.from_settings(migrated) as client:

        @checkpointer_test(name="JournalSaver")
        async def saver() -> AsyncGenerator[BaseCheckpointSaver[Any], None]:
            yield JournalSaver(client, tenant=_tenant())  # a fresh tenant per suite: suites reuse thread ids

        report = asyncio.run(validate(saver))
    _check(report)


def test_async_saver_passes_langgraph_conformance(migrated: Settings) -> None:
    """AsyncJournalSaver passes every capability of langgraph-checkpoint-conformance on the real stack."""

    async def run() -> CapabilityReport:
        client = await AsyncJournalClient.from_settings(migrated)
        try:
            @checkpointer_test(name="AsyncJournalSaver")
            async def saver() -> AsyncGenerator[BaseCheckpointSaver[Any], None]:
                yield AsyncJournalSaver(client, tenant=_tenant())

            return await validate(saver)
        finally:
            await client.close()

    report = asyncio.run(run())
    _check(report)


# -- what the journal adds ---------------------------------------------------------------------------

def test_delete_is_final_even_for_writes_that_raced_it(client: JournalClient, settings: Settings,
                                                       tenant: str) -> None:
    """After delete_thread, a put/put_writes from a saver that had not seen the tombstone reads as nothing."""
    writer = JournalSaver(client, tenant=tenant)
    stored = writer.put(_config("race"), _checkpoint(a="before"), {"source": "loop", "step": 0}, {"a": 1})
    with JournalClient.from_settings(settings) as other_client:
        JournalSaver(other_client, tenant=tenant).delete_thread("race")
    # The writer still believes epoch 0: its writes against the deleted checkpoint land after the tombstone.
    writer.put_writes(stored, [("a", "late")], "task-1")
    stale = _checkpoint(a="raced")
    head = client.head(tenant, "race")
    client.append(tenant, "race", CHECKPOINT, {**client.read(tenant, "race")[0].payload, "id": stale["id"]},
                  expected_seq=head)  # exactly what a put racing the delete would have written (epoch 0)
    fresh = JournalSaver(client, tenant=tenant)
    assert fresh.get_tuple(_config("race")) is None
    assert list(fresh.list(_config("race"))) == []
    assert [e.type for e in client.read(tenant, "race")] == [CHECKPOINT, DELETED, WRITES, CHECKPOINT]
    # A put made after the delete was seen starts the thread afresh.
    again = writer.put(_config("race"), _checkpoint(a="after"), {"source": "input", "step": -1}, {"a": 1})
    tup = fresh.get_tuple(_config("race"))
    assert tup is not None and tup.config == again and tup.checkpoint["channel_values"] == {"a": "after"}


def test_thread_ids_that_are_not_journal_ids_are_hashed_and_kept(client: JournalClient, tenant: str) -> None:
    """A thread_id with '/', spaces, unicode, >128 chars or a leading '_' maps to a valid '_lg.<sha256>' thread."""
    saver = JournalSaver(client, tenant=tenant)
    assert journal_thread("run-42.a_b") == "run-42.a_b"
    odd = ["user/42 chat", "ünï", "x" * 200, "_tenant", "a..b", 7]
    threads = {journal_thread(t) for t in odd}
    assert len(threads) == len(odd) and all(t.startswith("_lg.") and len(t) == 68 for t in threads - {"7"})
    for thread_id in odd:
        saver.put(_config(thread_id), _checkpoint(v=str(thread_id)), {"source": "loop", "step": 0}, {"v": 1})
        tup = saver.get_tuple(_config(thread_id))
        assert tup is not None and tup.checkpoint["channel_values"] == {"v": str(thread_id)}
        assert tup.config["configurable"]["thread_id"] == str(thread_id)
    with pytest.raises(CheckpointConfigError):
        saver.get_tuple({"configurable": {}})


def test_payloads_are_plain_data_and_only_changed_channels_are_stored(client: JournalClient, tenant: str) -> None:
    """Serializer bytes are stored as bytes (msgpack bin, not base64); a put stores only the changed channels."""
    saver = JournalSaver(client, tenant=tenant)
    first = saver.put(_config("plain"), _checkpoint(big="x" * 1000, small=b"\x00\xff"),
                      {"source": "loop", "step": 0}, {"big": 1, "small": 1})
    cp = _checkpoint(big="x" * 1000, small=b"\x01")
    cp["channel_versions"] = {"big": 1, "small": 2}
    saver.put(_config("plain", first["configurable"]["checkpoint_id"]), cp, {"source": "loop", "step": 1},
              {"small": 2})
    one, two = client.read(tenant, "plain")
    one_f, two_f = payload_fields(one.payload), payload_fields(two.payload)
    assert set(one_f["blobs"]) == {"big", "small"} and set(two_f["blobs"]) == {"small"}
    value = two_f["blobs"]["small"]["value"]
    assert set(value) == {"t", "b"} and value["b"] == saver.serde.dumps_typed(b"\x01")[1]
    assert two.payload["step"] == 1 and two.payload["source"] == "loop"  # readable in an audit as is
    tup = saver.get_tuple(_config("plain"))
    assert tup is not None and tup.checkpoint["channel_values"] == {"big": "x" * 1000, "small": b"\x01"}


def test_writes_after_the_index_left_the_cache_use_the_current_epoch(client: JournalClient, tenant: str) -> None:
    """put_writes on a thread whose index the LRU dropped reads the epoch first, so writes after a delete count."""
    saver = JournalSaver(client, tenant=tenant, cache_threads=1)
    saver.put(_config("a"), _checkpoint(x=1), {"source": "loop", "step": 0}, {"x": 1})
    saver.delete_thread("a")
    stored = saver.put(_config("a"), _checkpoint(x=2), {"source": "loop", "step": 0}, {"x": 1})  # epoch 1
    saver.get_tuple(_config("b"))  # drops a's index
    saver.put_writes(stored, [("x", 3)], "task-1")
    tup = JournalSaver(client, tenant=tenant).get_tuple(_config("a"))
    assert tup is not None and tup.pending_writes == [("task-1", "x", 3)]
    assert client.read(tenant, "a")[-1].payload["epoch"] == 1


def test_a_checkpoint_over_the_blob_threshold_round_trips_through_s3(client: JournalClient, settings: Settings,
                                                                     tenant: str) -> None:
    """A checkpoint event larger than JOURNAL_BLOB_THRESHOLD is offloaded to S3 and reads back whole."""
    big = "z" * (settings.blob_threshold + 10)
    saver = JournalSaver(client, tenant=tenant)
    saver.put(_config("big"), _checkpoint(doc=big), {"source": "loop", "step": 0}, {"doc": 1})
    assert client.read(tenant, "big", resolve_blobs=False)[0].blob is not None
    tup = JournalSaver(client, tenant=tenant).get_tuple(_config("big"))
    assert tup is not None and tup.checkpoint["channel_values"] == {"doc": big}


def test_other_steps_share_the_thread_and_a_malformed_checkpoint_is_named_every_time(client: JournalClient,
                                                                                   tenant: str) -> None:
    """Agent steps in the thread are skipped; a bad x.langgraph.checkpoint raises CheckpointCorrupt on every read."""
    saver = JournalSaver(client, tenant=tenant)
    saver.put(_config("mixed"), _checkpoint(a=1), {"source": "loop", "step": 0}, {"a": 1})
    client.append(tenant, "mixed", "message", {"role": "user", "content": "hi"})
    assert saver.get_tuple(_config("mixed")) is not None
    client.append(tenant, "mixed", CHECKPOINT, {"v": 1, "epoch": 0, "ns": "", "id": "z", "blobs": {}})
    for _ in range(2):  # the second read must not have moved past it
        with pytest.raises(CheckpointCorrupt, match="seq 3"):
            saver.get_tuple(_config("mixed"))


@pytest.mark.parametrize(("data", "says"), [
    (b"\xc1", "malformed payload"),                 # not msgpack
    (b"\x93\x01\x02\x03", "must pack a map"),       # msgpack, but a list
    (b"\x81\xa4blobs\xc0", "malformed payload"),    # a map, its blobs null
])
def test_a_format_3_checkpoint_whose_packed_data_is_bad_is_named(client: JournalClient, tenant: str, data: bytes,
                                                                 says: str) -> None:
    """A format-3 event whose ``data`` is not the map the saver packs raises CheckpointCorrupt, naming its seq."""
    saver = JournalSaver(client, tenant=tenant)
    saver.put(_config("packed"), _checkpoint(a=1), {"source": "loop", "step": 0}, {"a": 1})
    client.append(tenant, "packed", CHECKPOINT, {"v": 3, "epoch": 0, "ns": "", "id": "z", "parent": None,
                                                 "thread_id": "packed", "data": data})
    for fresh in (saver, JournalSaver(client, tenant=tenant)):
        with pytest.raises(CheckpointCorrupt, match=f"seq 2.*{says}"):
            fresh.get_tuple(_config("packed"))


def test_tenant_comes_from_the_config_or_the_default(client: JournalClient, tenant: str) -> None:
    """config['configurable']['tenant_id'] picks the tenant (and is in the configs returned); else the default."""
    other = _tenant()
    saver = JournalSaver(client, tenant=tenant)
    stored = saver.put(_config("th", tenant_id=other), _checkpoint(a=1), {"source": "loop", "step": 0}, {"a": 1})
    assert stored["configurable"]["tenant_id"] == other  # handed back, so writes against it route the same way
    saver.put_writes(stored, [("a", 2)], "task-1")
    assert client.head(other, "th") == 2 and client.head(tenant, "th") == 0
    tup = saver.get_tuple(stored)
    assert tup is not None and tup.config["configurable"]["tenant_id"] == other and tup.pending_writes
    assert saver.get_tuple(_config("th")) is None
    assert saver.get_tuple(_config("th", tenant_id=other)) is not None
    saver.delete_thread("th", tenant=other)
    assert saver.get_tuple(_config("th", tenant_id=other)) is None


def test_checkpoints_read_back_from_postgresql_after_projection(migrated: Settings, tenant: str) -> None:
    """A saver with no cache reads checkpoints the projector moved to PostgreSQL (Redis stream trimmed)."""
    with JournalClient.from_settings(migrated) as client:
        saver = JournalSaver(client, tenant=tenant)
        stored = saver.put(_config("pg"), _checkpoint(a="v"), {"source": "loop", "step": 0}, {"a": 1})
        saver.put_writes(stored, [("a", "w")], "task-1")
        p = Projector(migrated, WorkerOptions())
        try:
            p.drain(tenants=[tenant])
        finally:
            p.close()
        from journal import keys
        client.redis.xtrim(keys.stream(tenant), maxlen=0, approximate=False)
        tup = JournalSaver(client, tenant=tenant).get_tuple(_config("pg"))
    assert tup is not None and tup.checkpoint["channel_values"] == {"a": "v"}
    assert tup.pending_writes == [("task-1", "a", "w")]


# -- a real graph: interrupt in one saver, resume in another -------------------------------------------

def test_graph_interrupted_with_one_saver_resumes_with_another(client: JournalClient, settings: Settings,
                                                                tenant: str) -> None:
    """A StateGraph stopped at interrupt() resumes from the journal in a saver (and client) that never saw it."""
    config = {"configurable": {"thread_id": "g1"}}
    out = approval_graph(JournalSaver(client, tenant=tenant)).invoke({"steps": []}, config)
    assert "__interrupt__" in out
    with JournalClient.from_settings(settings) as other:
        graph = approval_graph(JournalSaver(other, tenant=tenant))
        assert graph.get_state(config).next == ("approve",)
        done = graph.invoke(Command(resume="yes"), config)
    assert done == {"steps": ["plan", "approved:yes"]}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_graph_on_its_tenants_own_credentials_resumes_from_postgresql_and_reaches_no_other_tenant(
        kind: str, migrated: Settings, tenant_settings: Settings, tenant: str) -> None:
    """With only what `agent-journal tenant create` hands out (a Redis user confined to the tenant's keys, a
    PostgreSQL reader bound to it): a graph runs to its interrupt; once projected and gone from Redis, a new
    saver resumes it from PostgreSQL, lists its history and the tenant's threads; a run whose config names
    another tenant is refused with AccessDenied and leaves nothing there."""
    config = {"configurable": {"thread_id": "approval-7"}}
    other = _tenant()
    foreign = {"configurable": {"thread_id": "approval-7", "tenant_id": other}}

    def project_and_trim() -> None:
        p = Projector(migrated, WorkerOptions())
        p.drain(tenants=[tenant])
        p.close()
        admin = redis_connect(migrated.redis_url or "")
        admin.xtrim(keys.stream(tenant), maxlen=0, approximate=False)  # the history now only in PostgreSQL
        admin.close()

    if kind == "sync":
        with JournalClient.from_settings(tenant_settings) as c:
            assert "__interrupt__" in approval_graph(JournalSaver(c, tenant=tenant)).invoke({"steps": []}, config)
        project_and_trim()
        with JournalClient.from_settings(tenant_settings) as c:
            saver = JournalSaver(c, tenant=tenant)
            graph = approval_graph(saver)
            assert graph.get_state(config).next == ("approve",)
            assert graph.invoke(Command(resume="yes"), config) == {"steps": ["plan", "approved:yes"]}
            history = [t.metadata["step"] for t in saver.list(config)]
            threads = {t.config["configurable"]["thread_id"] for t in saver.list(None)}
            with pytest.raises(AccessDenied):
                graph.invoke({"steps": []}, foreign)
    else:
        async def first() -> Any:
            c = await AsyncJournalClient.from_settings(tenant_settings)
            try:
                return await approval_graph(AsyncJournalSaver(c, tenant=tenant)).ainvoke({"steps": []}, config)
            finally:
                await c.close()

        async def resumed() -> tuple[Any, Any, list[Any], set[str]]:
            c = await AsyncJournalClient.from_settings(tenant_settings)
            try:
                saver = AsyncJournalSaver(c, tenant=tenant)
                graph = approval_graph(saver)
                nxt = (await graph.aget_state(config)).next
                done = await graph.ainvoke(Command(resume="yes"), config)
                steps = [t.metadata["step"] async for t in saver.alist(config)]
                names = {t.config["configurable"]["thread_id"] async for t in saver.alist(None)}
                with pytest.raises(AccessDenied):
                    await graph.ainvoke({"steps": []}, foreign)
                return nxt, done, steps, names
            finally:
                await c.close()

        assert "__interrupt__" in asyncio.run(first())
        project_and_trim()
        nxt, done, history, threads = asyncio.run(resumed())
        assert nxt == ("approve",) and done == {"steps": ["plan", "approved:yes"]}
    assert sorted(history, reverse=True) == history and history[0] >= 2 and -1 in history
    assert threads == {"approval-7"}
    with JournalClient.from_settings(migrated) as admin_client:
        assert admin_client.head(other, "approval-7") == 0


BAD_SAVER_OPTIONS = [({"durability": "fast"}, "journal level"), ({"durability": "sync"}, "journal level"),
                     ({"ttl": "1d"}, "timedelta or a number"), ({"ttl": True}, "timedelta or a number"),
                     ({"ttl": -5}, "positive"), ({"cache_threads": 0}, "cache_threads"),
                     ({"cache_threads": 2.5}, "cache_threads"), ({"cache_bytes": 0}, "cache_bytes"),
                     ({"tenant": "a}b"}, "tenant")]


@pytest.mark.parametrize(("options", "says"), BAD_SAVER_OPTIONS)
def test_bad_saver_options_are_refused_when_the_saver_is_made(client: JournalClient, tenant: str,
                                                              options: dict[str, Any], says: str) -> None:
    for cls, c in ((JournalSaver, client), (AsyncJournalSaver, None)):
        with pytest.raises(JournalError, match=says):
            cls(c, **{"tenant": tenant, **options})  # type: ignore[arg-type]


def test_bad_arguments_of_every_saver_call_are_typed_errors_that_say_what_to_pass(client: JournalClient,
                                                                                 tenant: str) -> None:
    """One id where a list belongs (a str would be pruned character by character), a filter or limit of
    the wrong type, a checkpoint_ns that is not a str, a thread copied onto itself: refused, nothing
    appended; the same for the async saver."""
    saver = JournalSaver(client, tenant=tenant)
    approval_graph(saver).invoke({"steps": []}, _config("abc"))
    head = client.head(tenant, "abc")
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any], str]] = [
        ("prune", ("abc",), {}, r"list of ids.*\['abc'\]"),
        ("expire", ("abc",), {}, "list of ids"),
        ("delete_for_runs", ("run-1",), {}, "run_ids must be a list"),
        ("list", (_config("abc"),), {"filter": "step"}, "filter must be a dict"),
        ("list", (_config("abc"),), {"limit": "3"}, "limit must be an int"),
        ("list", (None,), {"limit": 2.0}, "limit must be an int"),
        ("get_tuple", ({"configurable": {"thread_id": "abc", "checkpoint_ns": 5}},), {}, "checkpoint_ns must be a str"),
        ("copy_thread", ("abc", "abc"), {}, "two threads"),
    ]
    ttl_saver = JournalSaver(client, tenant=tenant, ttl=60)

    async def run_async() -> list[str]:
        aclient = await AsyncJournalClient.from_settings(client.settings)
        said = []
        try:
            asaver = AsyncJournalSaver(aclient, tenant=tenant, ttl=60)
            for name, args, kwargs, says in calls:
                with pytest.raises(CheckpointConfigError, match=says):
                    if name == "list":
                        [t async for t in asaver.alist(*args, **kwargs)]
                    else:
                        await getattr(asaver, "a" + name)(*args, **kwargs)
                said.append(name)
        finally:
            await aclient.close()
        return said

    for name, args, kwargs, says in calls:
        with pytest.raises(CheckpointConfigError, match=says):
            target = ttl_saver if name == "expire" else saver
            result = getattr(target, name)(*args, **kwargs)
            if name == "list":
                list(result)
    assert asyncio.run(run_async()) == [c[0] for c in calls]
    assert client.head(tenant, "abc") == head and client.head(tenant, "a") == 0


def test_a_graph_run_with_tenant_id_in_its_config_stays_in_that_tenant(client: JournalClient, tenant: str) -> None:
    """Every event of a run whose config names tenant_id (checkpoints, writes, resume) goes to that tenant."""
    other = _tenant()
    graph = approval_graph(JournalSaver(client, tenant=tenant))
    config = {"configurable": {"thread_id": "g3", "tenant_id": other}}
    graph.invoke({"steps": []}, config)
    assert graph.get_state(config).next == ("approve",)
    assert graph.invoke(Command(resume="fine"), config) == {"steps": ["plan", "approved:fine"]}
    assert client.head(tenant, "g3") == 0
    assert {e.type for e in client.read(other, "g3")} == {CHECKPOINT, WRITES}


def test_an_interrupt_inside_a_subgraph_resumes_from_its_namespace(client: JournalClient, tenant: str) -> None:
    """A subgraph checkpoints under its checkpoint_ns in the root's thread; its interrupt resumes in a new saver."""
    def child() -> Any:
        def ask(state: Steps) -> dict[str, list[str]]:
            return {"steps": [*state["steps"], f"child:{interrupt('ok?')}"]}

        g = StateGraph(Steps)
        g.add_node("ask", ask)
        g.add_edge(START, "ask")
        g.add_edge("ask", END)
        return g.compile()

    def parent(saver: BaseCheckpointSaver[Any]) -> Any:
        g = StateGraph(Steps)
        g.add_node("first", lambda s: {"steps": [*s["steps"], "first"]})
        g.add_node("sub", child())
        g.add_edge(START, "first")
        g.add_edge("first", "sub")
        g.add_edge("sub", END)
        return g.compile(checkpointer=saver)

    config = {"configurable": {"thread_id": "nested"}}
    parent(JournalSaver(client, tenant=tenant)).invoke({"steps": []}, config)
    namespaces = {e.payload["ns"] for e in client.read(tenant, "nested") if e.type == CHECKPOINT}
    assert "" in namespaces and any(ns.startswith("sub:") for ns in namespaces)
    graph = parent(JournalSaver(client, tenant=tenant))
    assert graph.get_state(config, subgraphs=True).tasks[0].state.next == ("ask",)
    assert graph.invoke(Command(resume="yes"), config) == {"steps": ["first", "child:yes"]}


def test_async_graph_and_sync_calls_from_another_thread(settings: Settings, tenant: str) -> None:
    """AsyncJournalSaver runs ainvoke, and its sync get_state works from another thread (not from its loop)."""
    config = {"configurable": {"thread_id": "g2"}}

    async def run() -> Any:
        client = await AsyncJournalClient.from_settings(settings)
        try:
            saver = AsyncJournalSaver(client, tenant=tenant)
            graph = approval_graph(saver)
            await graph.ainvoke({"steps": []}, config)
            result: list[Any] = []
            t = threading.Thread(target=lambda: result.append(graph.get_state(config).next))
            t.start()
            while t.is_alive():
                await asyncio.sleep(0.01)
            with pytest.raises(Exception, match="deadlock"):
                saver.get_tuple(config)
            done = await graph.ainvoke(Command(resume="ok"), config)
            return result[0], done
        finally:
            await client.close()

    nxt, done = asyncio.run(run())
    assert nxt == ("approve",) and done == {"steps": ["plan", "approved:ok"]}


# -- the example script ------------------------------------------------------------------------------

def test_example_stops_resumes_in_a_new_process_and_audits(migrated: Settings, tmp_path: Any) -> None:
    """scripts/langgraph_example.py: interrupt in one process, resume in another, audit timeline and replay, on a
    database nothing migrated yet (as right after `agent-journal up` in a new folder: the audit failed there)."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    from urllib.parse import urlsplit

    import psycopg
    from psycopg import sql

    root = Path(__file__).resolve().parent.parent
    new_db = f"example_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(str(migrated.database_url), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(new_db)))
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOURNAL_")}
        env.update(line.removeprefix("export ").split("=", 1) for line in migrated.env_lines())
        env |= {"JOURNAL_DATA_DIR": str(tmp_path), "PYTHONPATH": str(root),
                "JOURNAL_DATABASE_URL": urlsplit(str(migrated.database_url))._replace(path=f"/{new_db}").geturl()}
        tenant = _tenant()
        done = subprocess.run([sys.executable, str(root / "scripts" / "langgraph_example.py"), "all", "--tenant",
                               tenant, "--thread", "refund-1234"], env=env, capture_output=True, text=True, timeout=240)
    finally:
        with psycopg.connect(str(migrated.database_url), autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(new_db)))
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert '"stopped_at": "approval"' in out and "Refund issued" in out and "r-1234" in out
    assert f"timeline of {tenant}/refund-1234" in out and "x.langgraph.checkpoint" in out
    replayed = json.loads(out.split("(the interrupt): ", 1)[1].splitlines()[0])
    assert replayed["langgraph_events"] and set(replayed["langgraph_events"]) <= {CHECKPOINT, WRITES}
    with JournalClient.from_settings(migrated) as client:
        tup = JournalSaver(client, tenant=tenant).get_tuple(_config("refund-1234"))
    assert tup is not None and tup.checkpoint["channel_values"]["messages"][-1].content.startswith("Refund issued")


def test_the_core_and_replayer_do_not_import_langgraph() -> None:
    """`import journal, projections, replayer` loads no LangGraph module; only replayer.langgraph does."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, journal, projections, replayer, replayer.cli\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('langgraph', 'langchain_core')], 'core'\n"
            "import replayer.langgraph\n"
            "assert 'langgraph.checkpoint.base' in sys.modules")
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
