"""The LangGraph savers beyond conformance, on the real stack: what is stored, what is kept, what is final.

Storage grows with what changed (a message list is stored as deltas, rebuilt exactly); prune and
TTL never take what a pending interrupt needs; ``delete_thread`` stays final against puts racing
it; time travel and forks give what LangGraph's own ``InMemorySaver`` gives, and show in the
audit timeline; bytes are stored as bytes and their JSONB copy is ``{"$bytes": n}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import threading
import time
import tracemalloc
import uuid
from datetime import timedelta
from typing import Annotated, Any, TypedDict

import pytest

pytest.importorskip("langgraph.checkpoint.conformance")

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, RemoveMessage
from langgraph.checkpoint.base import BaseCheckpointSaver, empty_checkpoint
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import Command, interrupt

from journal import codec
from journal.aio import AsyncJournalClient
from journal.client import JournalClient
from journal.events import Draft
from journal.settings import Settings
from projections import db
from projections.worker import Projector, WorkerOptions
from replayer.audit import timeline
from replayer.langgraph import (
    CHECK_WINDOW,
    CHECKPOINT,
    DELETED,
    MAX_DELTA_DEPTH,
    PRUNED,
    WRITES,
    AsyncJournalSaver,
    CheckpointConfigError,
    JournalSaver,
    ThreadIndex,
    journal_thread,
    next_version,
    payload_fields,
)
from replayer.langgraph.savers import _durability
from replayer.replay import Replayer


class _Chat(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


def _chat(saver: BaseCheckpointSaver[Any], *, approve: bool = False) -> Any:
    """A deterministic agent: the model answers each human message; optionally a human approves each answer."""
    def model(state: _Chat) -> dict[str, Any]:
        n = len(state["messages"])
        return {"messages": [AIMessage(content=f"answer {n}: " + "lorem ipsum " * 20, id=f"ai-{n}")]}

    def review(state: _Chat) -> dict[str, Any]:
        verdict = interrupt({"approve": state["messages"][-1].id})
        return {"messages": [HumanMessage(content=f"review: {verdict}", id=f"rv-{len(state['messages'])}")]}

    g = StateGraph(_Chat)
    g.add_node("model", model)
    g.add_edge(START, "model")
    if approve:
        g.add_node("review", review)
        g.add_edge("model", "review")
        g.add_edge("review", END)
    else:
        g.add_edge("model", END)
    return g.compile(checkpointer=saver)


def _ask(i: int) -> dict[str, Any]:
    return {"messages": [HumanMessage(content=f"question {i}", id=f"q-{i}")]}


def _config(thread: str, **extra: Any) -> Any:
    return {"configurable": {"thread_id": thread, **extra}}


def _stored_blob(client: JournalClient, tenant: str, thread: str, channel: str) -> list[dict[str, Any]]:
    fields = [payload_fields(e.payload) for e in client.read(tenant, thread) if e.type == CHECKPOINT]
    return [f["blobs"][channel] for f in fields if channel in f["blobs"]]


# -- storage grows with what changed -----------------------------------------------------------------

def test_a_growing_message_list_is_stored_as_deltas_and_read_back_exactly(client: JournalClient,
                                                                          tenant: str) -> None:
    """Each checkpoint stores only the new messages; every checkpoint reads back as InMemorySaver's does."""
    saver, memory = JournalSaver(client, tenant=tenant), InMemorySaver()
    graph, reference = _chat(saver), _chat(memory)
    for i in range(40):
        graph.invoke(_ask(i), _config("grow"))
        reference.invoke(_ask(i), _config("grow"))
    blobs = _stored_blob(client, tenant, "grow", "messages")
    assert len(blobs) == 80
    deltas = [b for b in blobs if "base" in b]
    # One whole value, the first: a list that only grows is never stored whole again, past any chain length.
    assert len(blobs) - len(deltas) == 1 and len(blobs) > MAX_DELTA_DEPTH
    sizes = [len(codec.pack(b)) for b in deltas]
    assert max(sizes[-20:]) <= max(sizes[:20]) + 16, sizes  # the last deltas are as small as the first ones
    # A fresh saver (no cache) rebuilds every checkpoint from the log: the latest in one decode of the joined
    # chain (get_state), every one through list's memo (get_state_history).
    assert _chat(JournalSaver(client, tenant=tenant)).get_state(_config("grow")).values == \
        reference.get_state(_config("grow")).values
    ours = [s.values for s in _chat(JournalSaver(client, tenant=tenant)).get_state_history(_config("grow"))]
    theirs = [s.values for s in reference.get_state_history(_config("grow"))]
    assert ours == theirs and len(ours[0]["messages"]) == 80


def test_a_superstep_is_one_append_and_writes_before_an_interrupt_are_not_held(client: JournalClient, tenant: str,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A task's writes ride in the append of the checkpoint after them; writes no put follows go alone, at once."""
    appends: list[list[str]] = []
    inner = client.append_many

    def counted(tenant_: str, drafts: Any, **kw: Any) -> Any:
        drafts = list(drafts)
        appends.append([d.type.removeprefix("x.langgraph.") for d in drafts if d.thread == "one"])
        return inner(tenant_, drafts, **kw)

    monkeypatch.setattr(client, "append_many", counted)
    saver = JournalSaver(client, tenant=tenant)
    graph = _chat(saver, approve=True)
    t0 = time.monotonic()
    graph.invoke(_ask(0), _config("one"))  # input, model, then review's interrupt: its write has no put after it
    took = time.monotonic() - t0
    # Each append: a checkpoint alone or with writes, or writes alone (after the linger, 5 ms, when no put
    # follows: the interrupt's). Fewer appends than puts and put_writes: writes rode along.
    assert all(a.count("checkpoint") <= 1 for a in appends), appends
    assert any("checkpoint" in a and "writes" in a for a in appends), appends
    events = [e for e in client.read(tenant, "one") if e.type.startswith("x.langgraph.")]
    assert len(appends) < len(events), appends
    # The log reads in order: a task's writes come after the checkpoint they are against.
    at = {e.payload["id"]: e.seq for e in events if e.type == CHECKPOINT}
    assert all(at[e.payload["checkpoint_id"]] < e.seq for e in events if e.type == WRITES), \
        [(e.seq, e.type, e.payload.get("id") or e.payload.get("checkpoint_id")) for e in events]
    assert took < 2.0
    fresh = JournalSaver(client, tenant=tenant)  # what was appended is what a new process reads
    state = _chat(fresh, approve=True).get_state(_config("one"))
    assert state.next == ("review",) and state.tasks[0].interrupts
    done = _chat(fresh, approve=True).invoke(Command(resume="ok"), _config("one"))
    assert done["messages"][-1].content == "review: ok"


def _as_format_2(payload: dict[str, Any], thread_id: str) -> dict[str, Any]:
    """A format-3 payload as format 2 wrote it: fields unpacked, every value as {"t", "b"}, a dict delta's "del"."""
    p = {k: v for k, v in payload_fields(payload).items() if k not in ("data", "channels")}
    p.update(v=2, thread_id=thread_id)

    def wrap(v: Any) -> Any:
        return {"t": "msgpack", "b": v} if isinstance(v, bytes) else v

    if "blobs" in p:
        p["checkpoint"], p["metadata"] = wrap(p["checkpoint"]), wrap(p["metadata"])
        for blob in p["blobs"].values():
            for k in ("value", "tail", "set", "del"):
                if k in blob:
                    blob[k] = wrap(blob[k])
            if "set" in blob and "del" not in blob:
                blob["del"] = {"t": "msgpack", "b": b"\x90"}  # an empty list, as format 2 always wrote it
    if "writes" in p:
        p["writes"] = [[i, c, wrap(v)] for i, c, v in p["writes"]]
    return p


def test_a_format_2_thread_reads_and_continues_as_langgraph_would(client: JournalClient, tenant: str) -> None:
    """Events written by the previous format (values wrapped, fields unpacked) are read, and a run continues them."""
    saver = JournalSaver(client, tenant=tenant)
    graph, reference = _chat(saver), _chat(InMemorySaver())
    for i in range(3):
        graph.invoke(_ask(i), _config("new"))
        reference.invoke(_ask(i), _config("old"))
    events = client.read(tenant, "new")
    assert any("set" in b or "tail" in b for e in events if e.type == CHECKPOINT
               for b in payload_fields(e.payload)["blobs"].values())  # deltas among them
    client.append_many(tenant, [Draft(thread="old", type=e.type, payload=_as_format_2(e.payload, "old"), node=e.node)
                                for e in events])
    fresh = _chat(JournalSaver(client, tenant=tenant))
    assert _history(fresh, _config("old")) == _history(reference, _config("old"))
    for i in range(3, 5):  # a run continues the old thread: deltas on format-2 bases
        fresh.invoke(_ask(i), _config("old"))
        reference.invoke(_ask(i), _config("old"))
    assert _history(_chat(JournalSaver(client, tenant=tenant)), _config("old")) == \
        _history(reference, _config("old"))


def test_versions_after_a_format_2_version_compare_above_it() -> None:
    """Format 2 wrote 16 digits and 8 hex; a later version (10 digits, 6 hex) must still compare above it."""
    for n in (0, 1, 9, 10, 99, 12345, 10**9 - 1):
        old = f"{n:016}.{0xFFFFFFFF:08x}"
        new = next_version(old)
        assert new > old and new.startswith(f"{n + 1:010}."), (old, new)
        assert next_version(new) > new


def test_writes_wait_for_a_late_put_of_their_checkpoint(client: JournalClient, tenant: str) -> None:
    """LangGraph puts in the background: on a busy machine a checkpoint's put starts after its step's writes
    linger out. Those writes wait for it (``WRITES_AWAIT_PUT``) rather than land before it in the log."""
    saver = JournalSaver(client, tenant=tenant)
    inner = saver.put

    def late(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.03)  # six lingers
        return inner(*args, **kwargs)

    saver.put = late  # type: ignore[method-assign]
    for i in range(3):
        _chat(saver).invoke(_ask(i), _config("late"), durability="async")
    events = [e for e in client.read(tenant, "late") if e.type.startswith("x.langgraph.")]
    at = {e.payload["id"]: e.seq for e in events if e.type == CHECKPOINT}
    writes = [e for e in events if e.type == WRITES]
    assert writes and all(at[e.payload["checkpoint_id"]] < e.seq for e in writes), \
        [(e.seq, e.type, e.payload.get("id") or e.payload.get("checkpoint_id")) for e in events]
    fresh = _chat(JournalSaver(client, tenant=tenant))
    assert len(fresh.get_state(_config("late")).values["messages"]) == 6


def test_a_value_that_does_not_extend_the_last_one_is_stored_whole(client: JournalClient, tenant: str) -> None:
    """A removed or rewritten message (or a list that shrinks) is not a prefix extension: stored whole, read right."""
    saver = JournalSaver(client, tenant=tenant)
    graph, reference = _chat(saver), _chat(InMemorySaver())
    for g in (graph, reference):
        for i in range(3):
            g.invoke(_ask(i), _config("edit"))
        g.update_state(_config("edit"), {"messages": [RemoveMessage(id="q-1")]})
        # Same id as an earlier message: add_messages replaces it in place.
        g.update_state(_config("edit"), {"messages": [HumanMessage(content="question 0, edited", id="q-0")]})
        g.invoke(_ask(9), _config("edit"))
    kinds = ["delta" if "base" in b else "whole" for b in _stored_blob(client, tenant, "edit", "messages")]
    assert kinds == ["whole"] + ["delta"] * 5 + ["whole", "whole", "delta", "delta"], kinds
    assert graph.get_state(_config("edit")).values == reference.get_state(_config("edit")).values
    fresh = _chat(JournalSaver(client, tenant=tenant))
    assert [s.values for s in fresh.get_state_history(_config("edit"))] == \
        [s.values for s in reference.get_state_history(_config("edit"))]


def test_a_message_changed_in_place_after_it_was_stored_is_not_lost(client: JournalClient, tenant: str) -> None:
    """The delta check compares with what was stored, not with the live objects a node may have mutated."""
    saver = JournalSaver(client, tenant=tenant)
    first = HumanMessage(content="original", id="m-1")
    cp = empty_checkpoint()
    cp["id"] = str(uuid6(clock_seq=-1))
    cp["channel_values"] = {"messages": [first]}
    cp["channel_versions"] = {"messages": 1}
    stored = saver.put(_config("inplace", checkpoint_ns=""), cp, {"source": "loop", "step": 0}, {"messages": 1})
    first.content = "mutated"  # the same object, changed after it was checkpointed
    nxt = empty_checkpoint()
    nxt["id"] = str(uuid6(clock_seq=-1))
    nxt["channel_values"] = {"messages": [first, AIMessage(content="reply", id="m-2")]}
    nxt["channel_versions"] = {"messages": 2}
    saver.put(stored, nxt, {"source": "loop", "step": 1}, {"messages": 2})
    assert "base" not in _stored_blob(client, tenant, "inplace", "messages")[-1]
    tup = JournalSaver(client, tenant=tenant).get_tuple(_config("inplace", checkpoint_ns=""))
    assert tup is not None and [m.content for m in tup.checkpoint["channel_values"]["messages"]] == ["mutated", "reply"]


@pytest.mark.parametrize("change", ["assign", "nested"])
def test_a_message_stored_in_a_tail_then_changed_in_place_is_not_lost(client: JournalClient, tenant: str,
                                                                       change: str) -> None:
    """Messages a put stored as a delta's tail are kept as they were stored, not as the live objects: a field
    assigned, or a dict inside one changed in place, is seen at the next put, which stores the list whole."""
    saver = JournalSaver(client, tenant=tenant)
    thread = f"tail-{change}"
    first, second = HumanMessage(content="one", id="m-1"), AIMessage(content="two", id="m-2")
    config = _config(thread, checkpoint_ns="")
    for step, messages in enumerate([[first], [first, second]]):
        cp = empty_checkpoint()
        cp["id"] = str(uuid6(clock_seq=-1))
        cp["channel_values"] = {"messages": list(messages)}
        cp["channel_versions"] = {"messages": step + 1}
        config = saver.put(config, cp, {"source": "loop", "step": step}, {"messages": step + 1})
    assert "base" in _stored_blob(client, tenant, thread, "messages")[-1]  # the second one was a tail
    if change == "assign":
        second.content = "two, edited"
    else:
        second.additional_kwargs["note"] = {"edited": True}
    cp = empty_checkpoint()
    cp["id"] = str(uuid6(clock_seq=-1))
    cp["channel_values"] = {"messages": [first, second, AIMessage(content="three", id="m-3")]}
    cp["channel_versions"] = {"messages": 3}
    saver.put(config, cp, {"source": "loop", "step": 2}, {"messages": 3})
    assert "base" not in _stored_blob(client, tenant, thread, "messages")[-1]
    tup = JournalSaver(client, tenant=tenant).get_tuple(_config(thread, checkpoint_ns=""))
    assert tup is not None and tup.checkpoint["channel_values"]["messages"] == [first, second, cp[
        "channel_values"]["messages"][2]]


def _put_reply(saver: JournalSaver, config: Any, messages: list[Any], step: int) -> Any:
    """Append a reply to the graph's ``messages`` and put a checkpoint of them as step ``step`` (as a loop would)."""
    messages.append(AIMessage(content=f"reply {step}", id=f"r-{step}"))
    cp = empty_checkpoint()
    cp["id"] = str(uuid6(clock_seq=-1))
    cp["channel_values"] = {"messages": list(messages)}
    cp["channel_versions"] = {"messages": step + 1}
    return saver.put(config, cp, {"source": "loop", "step": step}, {"messages": step + 1})


def test_an_old_message_changed_in_place_is_stored_within_one_round_of_checks(client: JournalClient,
                                                                             tenant: str) -> None:
    """A put checks every stored message by identity and only CHECK_WINDOW newest and CHECK_WINDOW older ones field by
    field, so its cost stays flat: an old message changed in place (not through an update) is not seen by the next
    put, but within one round over the older messages, and from then on every read has it."""
    saver = JournalSaver(client, tenant=tenant)
    config = _config("round", checkpoint_ns="")
    messages: list[Any] = [HumanMessage(content=f"m{i}", id=f"m-{i}") for i in range(4 * CHECK_WINDOW)]

    def put(step: int) -> Any:
        return _put_reply(saver, config, messages, step)

    for step in range(3):  # whole, then deltas: the saver now holds the graph's own objects
        config = put(step)
    messages[1].content = "m1, edited in place"
    older = len(messages) - CHECK_WINDOW
    for step in range(3, 3 + older // CHECK_WINDOW + 2):
        config = put(step)
    kinds = ["delta" if "base" in b else "whole" for b in _stored_blob(client, tenant, "round", "messages")]
    assert kinds[:3] == ["whole", "delta", "delta"]
    first_whole = kinds.index("whole", 3)
    assert 3 < first_whole <= 3 + older // CHECK_WINDOW + 1, kinds  # not the next put; within one round
    assert kinds[first_whole + 1:] == ["delta"] * (len(kinds) - first_whole - 1)
    fresh = JournalSaver(client, tenant=tenant)
    history = list(fresh.list(_config("round", checkpoint_ns="")))
    contents = [t.checkpoint["channel_values"]["messages"][1].content for t in reversed(history)]
    assert contents == ["m1"] * first_whole + ["m1, edited in place"] * (len(kinds) - first_whole)


def test_a_growing_list_is_extended_in_place_not_copied_at_each_put(client: JournalClient, tenant: str) -> None:
    """A put's record of the message list (the graph's objects, their fields) grows by the new items: the lists
    are taken over from one version to the next, not copied, so a put costs the same at 50 or 10,000 messages.
    A saver that decoded the list (a new process) takes the graph's objects once, then extends those; every
    version reads back as put."""
    def record(saver: JournalSaver) -> Any:
        index = saver._cache.peek((tenant, journal_thread("grow")))
        assert index is not None
        return index.decoded[("", "messages")]

    messages: list[Any] = [HumanMessage(content=f"m{i}", id=f"m-{i}") for i in range(50)]
    saver = JournalSaver(client, tenant=tenant)
    config = _config("grow", checkpoint_ns="")
    for step in range(2):
        config = _put_reply(saver, config, messages, step)
    first = record(saver)
    for step in range(2, 6):
        config = _put_reply(saver, config, messages, step)
        now = record(saver)
        assert now.items is first.items and all(a is b for a, b in zip(now.items, messages, strict=True))
        assert all(mine is theirs for mine, theirs in zip(now.stored, first.stored, strict=True))
    fresh = JournalSaver(client, tenant=tenant)
    config = _put_reply(fresh, config, messages, 6)  # decodes the stored list, then the graph's objects take its place
    taken = record(fresh)
    assert all(a is b for a, b in zip(taken.items, messages, strict=True))
    config = _put_reply(fresh, config, messages, 7)
    assert record(fresh).items is taken.items
    history = list(JournalSaver(client, tenant=tenant).list(_config("grow", checkpoint_ns="")))
    assert [len(t.checkpoint["channel_values"]["messages"]) for t in reversed(history)] == list(range(51, 59))
    assert [m.content for m in history[0].checkpoint["channel_values"]["messages"]] == [m.content for m in messages]


def test_a_graph_on_langgraphs_delta_channel_reads_back_as_in_memory(client: JournalClient, tenant: str) -> None:
    """LangGraph's DeltaChannel (beta in 1.2) keeps a sentinel in the checkpoint and rebuilds the list from the
    pending writes of the ancestors (the base class's get_delta_channel_history, on get_tuple): every state of
    the history, and a new saver's, is InMemorySaver's."""
    delta = pytest.importorskip("langgraph.channels.delta")

    def add_all(state: list[Any] | None, writes: Any) -> list[Any]:
        out = list(state or [])
        for w in writes:
            out = add_messages(out, w)
        return out

    # The functional form: the module's postponed annotations could not see this function's names.
    Chat = TypedDict("Chat", {  # noqa: UP013
        "messages": Annotated[list[Any], delta.DeltaChannel(add_all, snapshot_frequency=5)], "n": int})

    def build(saver: BaseCheckpointSaver[Any]) -> Any:
        def model(state: Any) -> dict[str, Any]:
            return {"messages": [AIMessage(content=f"answer {state['n']}", id=f"a-{state['n']}")],
                    "n": state["n"] + 1}
        g = StateGraph(Chat)
        g.add_node("model", model)
        g.add_edge(START, "model")
        g.add_conditional_edges("model", lambda s: "model" if s["n"] % 6 else END, ["model", END])
        return g.compile(checkpointer=saver)

    def history(saver: BaseCheckpointSaver[Any]) -> list[Any]:
        return [(s.values, s.next, s.metadata and s.metadata.get("step"))
                for s in build(saver).get_state_history(_config("delta"))]

    savers: list[BaseCheckpointSaver[Any]] = [InMemorySaver(), JournalSaver(client, tenant=tenant)]
    for saver in savers:
        n = 0
        for i in range(3):
            out = build(saver).invoke({**_ask(i), "n": n}, _config("delta"))
            n = out["n"]
        assert len(out["messages"]) == 3 + 3 * 6
    expected = history(savers[0])
    assert len(expected) == 3 * 8  # steps -1 to 6 of each invoke
    assert history(savers[1]) == expected
    assert history(JournalSaver(client, tenant=tenant)) == expected


def test_a_dict_channel_stores_the_keys_that_changed(client: JournalClient, tenant: str) -> None:
    """A working-memory dict: one key set or removed per step is stored as that key; reads rebuild it exactly."""
    saver = JournalSaver(client, tenant=tenant)
    config = _config("memory", checkpoint_ns="")
    memory = {f"k{i}": {"note": "x" * 50, "i": i} for i in range(10)}
    expected = []
    version: str | None = None
    for step in range(8):
        if step == 5:
            memory = {k: v for k, v in memory.items() if k != "k3"}  # a key removed
        elif step == 7:
            memory = {f"new{i}": i for i in range(10)}  # everything changed: stored whole
        else:
            memory = {**memory, f"k{step}": {"note": f"step {step}", "i": -step}}
        version = saver.get_next_version(version, None)
        cp = empty_checkpoint()
        cp["id"] = str(uuid6(clock_seq=-1))
        cp["channel_values"] = {"memory": memory}
        cp["channel_versions"] = {"memory": version}
        config = saver.put(config, cp, {"source": "loop", "step": step}, {"memory": version})
        expected.append(dict(memory))
    kinds = ["set" if "set" in b else "whole" for b in _stored_blob(client, tenant, "memory", "memory")]
    assert kinds == ["whole"] + ["set"] * 6 + ["whole"], kinds
    fresh = JournalSaver(client, tenant=tenant)
    got = [t.checkpoint["channel_values"]["memory"] for t in fresh.list(_config("memory", checkpoint_ns=""))]
    assert got == expected[::-1]


# -- retention -----------------------------------------------------------------------------------------

def test_prune_and_ttl_keep_a_pending_interrupt_resumable(client: JournalClient, settings: Settings,
                                                          tenant: str) -> None:
    """An interrupt on a branch that is no longer the newest survives prune(keep_last=1) and the TTL, and resumes."""
    saver = JournalSaver(client, tenant=tenant, ttl=timedelta(milliseconds=1))
    graph = _chat(saver, approve=True)
    thread = _config("hitl")
    graph.invoke(_ask(0), thread)
    graph.invoke(Command(resume="ok"), thread)
    graph.invoke(_ask(1), thread)  # stops at the review interrupt
    waiting = graph.get_state(thread)
    assert waiting.next == ("review",) and waiting.interrupts
    # Someone forks from an older checkpoint: the newest checkpoint is now on another branch.
    older = [s for s in graph.get_state_history(thread) if s.next == ("model",)][-1]
    graph.update_state(older.config, {"messages": [HumanMessage(content="side note", id="side")]}, as_node="model")
    assert graph.get_state(thread).config != waiting.config
    before = len(list(saver.list(thread)))
    saver.prune(["hitl"], keep_last=1)
    time.sleep(0.01)
    saver.expire()  # every registered thread of the tenant, under the saver's TTL
    kept = [t.config["configurable"]["checkpoint_id"] for t in JournalSaver(client, tenant=tenant).list(thread)]
    assert waiting.config["configurable"]["checkpoint_id"] in kept and len(kept) == 2 < before, (kept, before)
    assert [e.type for e in client.read(tenant, "hitl")].count(PRUNED) == 1  # expire found nothing more to drop
    # The human answers in another process: the interrupt resumes from the kept checkpoint and its writes.
    with JournalClient.from_settings(settings) as other:
        resumed = _chat(JournalSaver(other, tenant=tenant), approve=True)
        out = resumed.invoke(Command(resume="approved"), waiting.config)
    assert out["messages"][-1].content == "review: approved"
    assert [m.id for m in out["messages"]] == ["q-0", "ai-1", "rv-2", "q-1", "ai-4", "rv-5"]


def test_prune_refuses_a_bad_strategy_and_expire_needs_a_ttl(client: JournalClient, tenant: str) -> None:
    saver = JournalSaver(client, tenant=tenant)
    with pytest.raises(CheckpointConfigError, match="strategy"):
        saver.prune(["x"], strategy="keep_oldest")
    with pytest.raises(CheckpointConfigError, match="keep_last"):
        saver.prune(["x"], keep_last=0)
    with pytest.raises(CheckpointConfigError, match="ttl"):
        saver.expire()
    with pytest.raises(CheckpointConfigError, match="positive"):
        JournalSaver(client, tenant=tenant, ttl=0)


def test_list_none_covers_every_thread_of_the_tenant_and_copy_thread_rebuilds_deltas(client: JournalClient,
                                                                                    tenant: str) -> None:
    """list(None) spans the tenant's threads; a copy after a prune is whole (no delta points at a pruned base)."""
    saver = JournalSaver(client, tenant=tenant)
    graph = _chat(saver)
    for i in range(4):
        graph.invoke(_ask(i), _config("a"))
    graph.invoke(_ask(0), _config("b"))
    assert {t.config["configurable"]["thread_id"] for t in saver.list(None)} == {"a", "b"}
    # Three checkpoints per invoke (input, start, model): 4 on "a", 1 on "b".
    assert len(list(saver.list(None))) == 3 * 5 and len(list(saver.list(None, limit=3))) == 3
    saver.prune(["a"], keep_last=1)
    saver.copy_thread("a", "c")
    fresh = JournalSaver(client, tenant=tenant)
    assert fresh.get_tuple(_config("c")).checkpoint["channel_values"] == \
        fresh.get_tuple(_config("a")).checkpoint["channel_values"]
    assert {t.config["configurable"]["thread_id"] for t in fresh.list(None)} == {"a", "b", "c"}


# -- delete_thread is final --------------------------------------------------------------------------

def _looping(saver: BaseCheckpointSaver[Any], steps: int) -> Any:
    """One invoke, ``steps`` supersteps: the model node loops on itself (a long agent run)."""
    def model(state: _Chat) -> dict[str, Any]:
        n = len(state["messages"])
        return {"messages": [AIMessage(content=f"thinking {n}", id=f"ai-{n}")]}

    g = StateGraph(_Chat)
    g.add_node("model", model)
    g.add_edge(START, "model")
    g.add_conditional_edges("model", lambda s: "model" if len(s["messages"]) < steps else END, ["model", END])
    return g.compile(checkpointer=saver)


def test_delete_thread_racing_a_running_graph_leaves_nothing(client: JournalClient, settings: Settings,
                                                              tenant: str) -> None:
    """A run putting checkpoints while another thread deletes: once both end, the thread is empty, every time.

    The run's puts and writes after the tombstone (whether they read it or not) are late: none brings the
    thread back. A new run started after the delete is a new thread, as in LangGraph's own savers.
    """
    def run(config: Any, started: threading.Event, errors: list[BaseException]) -> None:
        try:
            graph = _looping(JournalSaver(client, tenant=tenant), 150)
            started.set()
            graph.invoke(_ask(0), config)
        except BaseException as exc:
            errors.append(exc)
        finally:
            started.set()

    raced = 0
    for attempt in range(12):
        thread_id = f"race-{attempt}"
        config = {**_config(thread_id), "recursion_limit": 400}
        started = threading.Event()
        errors: list[BaseException] = []

        runner = threading.Thread(target=run, args=(config, started, errors))
        runner.start()
        started.wait(10)
        time.sleep(0.003 + 0.004 * attempt)  # the delete lands at a different step each time
        with JournalClient.from_settings(settings) as other:
            JournalSaver(other, tenant=tenant).delete_thread(thread_id)
        runner.join(60)
        assert not errors, errors
        types = [e.type for e in client.read(tenant, thread_id)]  # a valid journal id: used verbatim
        after = types[types.index(DELETED) + 1:]
        fresh = JournalSaver(client, tenant=tenant)
        assert fresh.get_tuple(config) is None, (attempt, len(after))
        assert list(fresh.list(config)) == []
        assert list(fresh.list(None)) == [] or all(
            t.config["configurable"]["thread_id"] != thread_id for t in fresh.list(None))
        raced += bool(after)
    # Most deletes land mid-run (the run wrote after the tombstone): the race was real, not a delete after the end.
    assert raced >= 8, raced


# -- time travel and forks -------------------------------------------------------------------------------

def _history(graph: Any, thread: Any) -> list[tuple[Any, ...]]:
    """The state history without ids and times: values, next, source, step, and the parent's position."""
    states = list(graph.get_state_history(thread))
    position = {s.config["configurable"]["checkpoint_id"]: i for i, s in enumerate(states)}
    return [(s.values, s.next, s.metadata.get("source"), s.metadata.get("step"),
             position.get(s.parent_config["configurable"]["checkpoint_id"]) if s.parent_config else None,
             [(t.name, t.interrupts) for t in s.tasks]) for s in states]


def _travel(graph: Any) -> None:
    thread = _config("travel")
    for i in range(3):
        graph.invoke(_ask(i), thread)
    states = list(graph.get_state_history(thread))
    # update_state on an old checkpoint forks; invoking from it continues the fork.
    fork = graph.update_state(states[4].config, {"messages": [HumanMessage(content="edited", id="edit")]})
    graph.invoke(_ask(7), fork)
    # Replay from a checkpoint that still had work to do: re-runs from there, on a new branch.
    replay_from = [s for s in states if s.next == ("model",)][-1]
    graph.invoke(None, replay_from.config)


def test_time_travel_and_forks_give_what_in_memory_saver_gives_and_show_in_the_timeline(
        migrated: Settings, tenant: str) -> None:
    with JournalClient.from_settings(migrated) as client:
        ours, theirs = _chat(JournalSaver(client, tenant=tenant)), _chat(InMemorySaver())
        _travel(ours)
        _travel(theirs)
        assert _history(ours, _config("travel")) == _history(theirs, _config("travel"))
        fresh = _chat(JournalSaver(client, tenant=tenant))
        assert _history(fresh, _config("travel")) == _history(theirs, _config("travel"))
        p = Projector(migrated, WorkerOptions())
        try:
            p.drain(tenants=[tenant])
        finally:
            p.close()
    with Replayer.from_settings(migrated) as r:
        steps = timeline(r, tenant, "travel")
        forks = [s for s in steps if s.type == CHECKPOINT and s.detail.startswith("FORK")]
        assert len(forks) == 2, [s.detail for s in steps if s.type == CHECKPOINT]
        # A task's writes are named by channel (format 3 keeps the channel names plain beside the packed writes).
        assert any(s.detail.startswith("writes messages on checkpoint") for s in steps if s.type == WRITES), \
            [s.detail for s in steps if s.type == WRITES]
        # A page starting after the first fork still shows the second one.
        page = timeline(r, tenant, "travel", after=forks[0].seq)
        assert [s.detail for s in page if s.detail.startswith("FORK")] == [forks[1].detail]


# -- bytes in the journal --------------------------------------------------------------------------------

def test_bytes_are_stored_as_bytes_and_their_jsonb_copy_is_their_length(migrated: Settings, tenant: str) -> None:
    """Serializer output is msgpack bin in the hashed body; the JSONB copy shows {"$bytes": n}; verify passes."""
    with JournalClient.from_settings(migrated) as client:
        graph = _chat(JournalSaver(client, tenant=tenant))
        graph.invoke(_ask(0), _config("bin"))
        ev = next(e for e in client.read(tenant, "bin") if e.type == CHECKPOINT)
        data = ev.payload["data"]  # the saver's fields, packed
        assert isinstance(payload_fields(ev.payload)["metadata"], bytes)  # the serializer's msgpack, as bytes
        assert isinstance(data, bytes)
        p = Projector(migrated, WorkerOptions())
        try:
            p.drain(tenants=[tenant])
        finally:
            p.close()
    with Replayer.from_settings(migrated) as r:
        rows, _ = r.stored_chain(tenant, "bin")
        first = next(row for row in rows if row.event.seq == ev.seq)
        assert first.json_payload["data"] == {"$bytes": len(data)}
        assert first.json_payload["id"] == ev.payload["id"] and first.json_payload["step"] == ev.payload["step"]
        assert first.event.payload["data"] == data
        [verdict] = r.verify(tenant, "bin")
        assert verdict.ok, verdict
        assert "x.langgraph.checkpoint" in {s.type for s in timeline(r, tenant, "bin")}


def test_the_langgraph_reducers_keep_a_summary_not_the_checkpoints_in_the_state(migrated: Settings,
                                                                               tenant: str) -> None:
    """JOURNAL_REDUCERS=replayer.langgraph_fold: the snapshots and replay hold a summary, no opaque payloads."""
    settings = dataclasses.replace(migrated, reducers="replayer.langgraph_fold", snapshot_every=10)
    with JournalClient.from_settings(settings) as client:
        graph = _chat(JournalSaver(client, tenant=tenant))
        for i in range(6):
            graph.invoke(_ask(i), _config("sum"))
        events = client.read(tenant, "sum")
        p = Projector(settings, WorkerOptions())
        try:
            p.drain(tenants=[tenant])
        finally:
            p.close()
    checkpoints = [e for e in events if e.type == CHECKPOINT]
    with Replayer.from_settings(settings) as r:
        state = r.replay(tenant, "sum")
        assert state.opaque == ()
        summary = state.custom["langgraph"]
        assert summary["checkpoints"] == len(checkpoints) and summary["writes"] == len(events) - len(checkpoints)
        assert summary["latest"]["id"] == checkpoints[-1].payload["id"]
        assert summary["latest"]["step"] == checkpoints[-1].payload["step"]
        # The same from the projector's snapshots as from a fold of every event.
        assert r.replay(tenant, "sum", use_snapshots=False) == state
        assert r.replay(tenant, "_lg.threads").custom["langgraph_threads"] == 1


# -- durability ------------------------------------------------------------------------------------------

def test_langgraph_durability_modes_map_onto_the_journal_levels(migrated: Settings, client: JournalClient,
                                                                tenant: str) -> None:
    """sync and exit appends wait for PostgreSQL's commit (projected), async ones for Redis; the saver's own
    level overrides. With a projector running, a sync run's checkpoints are in PostgreSQL when invoke returns."""
    seen: list[str | None] = []

    class Spy(JournalSaver):
        def _append(self, tenant: str, drafts: Any, config: Any = None) -> Any:
            seen.append(_durability(self.durability, config))
            return super()._append(tenant, drafts, config)

    graph = _chat(Spy(client, tenant=tenant))
    p = Projector(migrated, WorkerOptions(block_ms=20))
    t = threading.Thread(target=p.run, daemon=True)
    t.start()
    try:
        for mode, level in (("sync", "projected"), ("async", "memory"), ("exit", "projected")):
            seen.clear()
            thread = f"d-{mode}-{uuid.uuid4().hex[:6]}"
            graph.invoke(_ask(0), _config(thread), durability=mode)
            assert set(seen) - {None} == {level}, (mode, seen)  # None: the thread's registration (client default)
            if level == "projected":  # every checkpoint and write of the run is committed in PostgreSQL
                jthread = journal_thread(thread)
                with db.connect(migrated, role=None) as conn:
                    stored = conn.execute("SELECT max(seq) FROM journal.events WHERE tenant_id = %s AND thread_id = %s",
                                          (tenant, jthread)).fetchone()
                assert stored == (client.head(tenant, jthread),) and stored[0] > 0, (mode, stored)
    finally:
        p.stop()
        t.join(10)
    assert _durability("projected", {"configurable": {"__pregel_durability": "sync"}}) == "projected"


# -- the saver's memory ------------------------------------------------------------------------------

def test_thread_indexes_stay_within_the_memory_budget_and_a_dropped_one_is_folded_again(client: JournalClient,
                                                                                       tenant: str) -> None:
    """The estimate of an index's memory is within 25% of what tracemalloc counts for it; with a budget of
    about two threads, running a third drops the least recently used index (never the one in use), and a
    dropped thread reads back and continues exactly as before."""
    saver = JournalSaver(client, tenant=tenant)
    for i in range(30):
        _chat(saver).invoke(_ask(i), _config("measured"))
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        fresh = JournalSaver(client, tenant=tenant)
        index = fresh._index(tenant, "measured")
        gc.collect()
        held = sum(d.size_diff for d in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert 0.75 < index.weight / held < 1.25, (index.weight, held)

    budget = int(2.5 * index.weight)
    small = JournalSaver(client, tenant=tenant, cache_bytes=budget)
    want = {}
    for thread in ("a", "b", "c"):
        for i in range(30):
            _chat(small).invoke(_ask(i), _config(thread))
        want[thread] = [m.content for m in small.get_tuple(_config(thread)).checkpoint["channel_values"]["messages"]]
    cached = [key[1] for key in small._cache.entries]
    assert cached == ["b", "c"], cached  # "a" was least recently used
    assert small._cache.total == sum(ix.weight for ix in small._cache.entries.values()) <= budget
    got = small.get_tuple(_config("a"))  # folded again from the journal
    assert [m.content for m in got.checkpoint["channel_values"]["messages"]] == want["a"]
    _chat(small).invoke(_ask(99), _config("a"))  # and continues from it, as a delta of what it read
    assert len(small.get_tuple(_config("a")).checkpoint["channel_values"]["messages"]) == len(want["a"]) + 2
    tiny = JournalSaver(client, tenant=tenant, cache_bytes=1)  # below one index: the one in use stays
    assert tiny.get_tuple(_config("b")) is not None and [k[1] for k in tiny._cache.entries] == ["b"]


def test_events_the_index_already_folded_are_not_folded_again(client: JournalClient, tenant: str) -> None:
    """A read that raced the saver's own fold returns events the index has: folding them again changes nothing
    (a tombstone folded twice would count two deletes, and the thread's next puts would read as stale)."""
    saver = JournalSaver(client, tenant=tenant)
    _chat(saver).invoke(_ask(1), _config("twice"))
    saver.delete_thread("twice")
    _chat(saver).invoke(_ask(2), _config("twice"))
    events = client.read(tenant, "twice")
    assert DELETED in {e.type for e in events}
    once, twice = ThreadIndex(), ThreadIndex()
    once.apply(events)
    twice.apply(events[:len(events) // 2])
    twice.apply(events)  # the first half again, then the rest
    twice.apply(events[-3:])
    assert (twice.seq, twice.epoch, twice.checkpoints, twice.writes, twice.weight) == (
        once.seq, once.epoch, once.checkpoints, once.writes, once.weight)
    assert once.epoch == 1
    messages = saver.get_tuple(_config("twice")).checkpoint["channel_values"]["messages"]
    assert messages[0].content == "question 2"


def _long_and_short_threads(settings: Settings, tenant: str) -> None:
    """Thread "long": 600 supersteps, projected and gone from Redis (a cold read is PostgreSQL's); "short": one."""
    class Count(TypedDict):
        n: int
        log: Annotated[list[str], lambda a, b: a + b]

    g = StateGraph(Count)
    g.add_node("step", lambda s: {"n": s["n"] + 1, "log": [f"step {s['n']} " + "x" * 1000]})
    g.add_edge(START, "step")
    g.add_conditional_edges("step", lambda s: "step" if s["n"] < 600 else END, ["step", END])
    with JournalClient.from_settings(settings) as c:
        g.compile(checkpointer=JournalSaver(c, tenant=tenant)).invoke({"n": 0, "log": []},
                                                                      {**_config("long"), "recursion_limit": 1500})
        p = Projector(settings, WorkerOptions())
        p.drain(tenants=[tenant])
        p.close()
        c.redis.xtrim(f"agent:v1:{{{tenant}}}:stream", maxlen=0, approximate=False)
        _chat(JournalSaver(c, tenant=tenant)).invoke(_ask(0), _config("short"))


def test_the_saver_reads_other_threads_while_one_thread_is_read_cold(migrated: Settings, tenant: str) -> None:
    """Two threads of a server, one saver: while one reads a long thread cold from PostgreSQL, the other's read
    of a cached thread goes on and finishes first (one lock for every index made it wait for the cold read)."""
    _long_and_short_threads(migrated, tenant)
    with JournalClient.from_settings(migrated) as c:
        saver = JournalSaver(c, tenant=tenant)
        saver.get_tuple(_config("short"))  # cached
        done: list[str] = []

        def read(thread: str) -> None:
            saver.get_tuple(_config(thread))
            done.append(thread)

        cold = threading.Thread(target=read, args=("long",))
        cold.start()
        time.sleep(0.002)  # the cold read is under way
        read("short")
        cold.join()
    assert done == ["short", "long"]


def test_the_async_saver_reads_other_threads_while_one_thread_is_read_cold(migrated: Settings, tenant: str) -> None:
    """One event loop, one saver: while a thread of 600 supersteps is read cold from PostgreSQL (its history
    projected and gone from Redis), the read of another, cached thread goes on and finishes first."""
    _long_and_short_threads(migrated, tenant)

    async def race() -> list[str]:
        client = await AsyncJournalClient.from_settings(migrated)
        try:
            saver = AsyncJournalSaver(client, tenant=tenant)
            await saver.aget_tuple(_config("short"))  # cached
            done: list[str] = []

            async def read(thread: str) -> None:
                await saver.aget_tuple(_config(thread))
                done.append(thread)

            cold = asyncio.ensure_future(read("long"))
            await asyncio.sleep(0.001)  # the cold read is under way
            await asyncio.gather(read("short"), cold)
            return done
        finally:
            await client.close()

    assert asyncio.run(race()) == ["short", "long"]


def test_many_server_threads_on_one_saver_lose_nothing_and_never_deadlock(client: JournalClient, tenant: str) -> None:
    """8 threads share a saver: each runs 15 turns on one of 4 conversations (two threads per conversation,
    turns serialized per conversation as a server would) while reading and listing the others; every turn is
    in every conversation's final state, in order, and nothing waits forever."""
    saver = JournalSaver(client, tenant=tenant)
    turns = {f"conv-{i}": threading.Lock() for i in range(4)}
    errors: list[BaseException] = []

    def serve(n: int) -> None:
        conv = f"conv-{n % 4}"
        try:
            for i in range(15):
                with turns[conv]:
                    _chat(saver).invoke(_ask(100 * n + i), _config(conv))
                other = f"conv-{(n + 1) % 4}"
                saver.get_tuple(_config(other))
                list(saver.list(_config(other), limit=3))
                if i % 5 == 0:
                    list(saver.list(None, limit=10))
        except BaseException as e:  # reported below
            errors.append(e)

    workers = [threading.Thread(target=serve, args=(n,)) for n in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert not any(w.is_alive() for w in workers), "a saver call never returned"
    assert not errors, errors
    fresh = JournalSaver(client, tenant=tenant)
    for c in range(4):
        messages = fresh.get_tuple(_config(f"conv-{c}")).checkpoint["channel_values"]["messages"]
        asked = [m.content for m in messages if m.content.startswith("question")]
        assert sorted(asked) == sorted(f"question {100 * n + i}" for n in (c, c + 4) for i in range(15))
        assert len(messages) == 60
