"""The one fold: reducer rules, serialization, diff, and the fold properties of invariant 7 (pure, no servers)."""

from __future__ import annotations

import copy
import json
import pickle
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journal import codec, lifecycle
from journal import reducer as r
from journal import state as rs
from journal.errors import CodecError, ConfigError, InvalidEvent, JournalError
from journal.events import BlobRef, Event
from journal.reducer import ReducerError, apply, fold, register
from journal.settings import Settings
from journal.state import ThreadState, diff, empty

TENANT, THREAD = "acme", "run-1"


def ev(seq: int, type_: str, payload: Any = None, node: str | None = None, ts_ms: int | None = None) -> Event:
    return Event(tenant=TENANT, thread=THREAD, seq=seq, type=type_, payload=payload,
                 ts_ms=1_700_000_000_000 + seq if ts_ms is None else ts_ms, node=node)


def counter(state: ThreadState, event: Event) -> ThreadState:
    """A custom reducer for ``x.test.counter``: adds payload n to custom['counter']."""
    n = event.payload.get("n", 1) if isinstance(event.payload, dict) else 1
    return state.with_custom("counter", (state.custom.get("counter") or 0) + n)


REG: dict[str, r.Reducer] = {}
register("x.test.counter", counter, REG)


def strict(state: ThreadState) -> bytes:
    """Order- and type-sensitive bytes of a state (== on mappings ignores order and True == 1)."""
    return codec.pack(codec.normalize(state.to_dict(), "state"))


def via_snapshot(state: ThreadState) -> ThreadState:
    """A state after the same trip a snapshot takes: normalize → pack → frame → unframe → from_dict."""
    return ThreadState.from_dict(codec.unframe(codec.frame(codec.pack(codec.normalize(state.to_dict(), "state")))))


# -- generated agent histories ---------------------------------------------------------------------

KEYS = st.sampled_from(["customer", "order", "plan", "step", "a.b", "notes"])
NODES = st.sampled_from(["planner", "tools", "approval", "writer"])
SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12).filter(lambda s: "\x00" not in s))
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6).filter(
    lambda s: "\x00" not in s), c, max_size=3), max_leaves=8)


@st.composite
def histories(draw: st.DrawFn, max_events: int = 30) -> list[Event]:
    """A realistic thread: messages, tool calls and results, nodes, memory, pauses, custom and odd events."""
    n = draw(st.integers(0, max_events))
    out: list[Event] = []
    open_calls: list[str] = []
    entered: list[str] = []
    ts = draw(st.integers(1_600_000_000_000, 1_800_000_000_000))
    kinds = st.sampled_from([
        "user", "assistant", "tool_call", "tool_result", "tool_result", "enter", "exit", "set", "set", "delete",
        "pause", "resume", "complete", "fail", "counter", "note", "odd",
    ])
    for seq in range(1, n + 1):
        ts += draw(st.integers(0, 5000))
        kind = draw(kinds)
        node = draw(st.none() | NODES)
        if kind == "user":
            e = ev(seq, "message", {"role": "user", "content": draw(st.text(max_size=20))}, node, ts)
        elif kind == "assistant":
            calls = [f"c{seq}"] if draw(st.booleans()) else []
            e = ev(seq, "message", {"role": "assistant", "content": draw(VALUES), "tool_calls": calls}, node, ts)
        elif kind == "tool_call":
            cid = draw(st.sampled_from([f"c{seq}", f"c{seq}", "dup"]))
            open_calls.append(cid)
            e = ev(seq, "tool_call", {"call_id": cid, "tool": draw(st.sampled_from(["search", "refund"])),
                                      "args": draw(VALUES)}, "tools", ts)
        elif kind == "tool_result":
            cid = draw(st.sampled_from(open_calls)) if open_calls and draw(st.booleans()) else f"orphan{seq}"
            body: dict[str, Any] = {"call_id": cid, "tool": "search"}
            body["error" if draw(st.booleans()) else "output"] = draw(VALUES)
            e = ev(seq, "tool_result", body, "tools", ts)
        elif kind == "enter":
            name = draw(NODES)
            entered.append(name)
            e = ev(seq, "node_enter", {"node": name} if draw(st.booleans()) else {}, name, ts)
        elif kind == "exit":
            name = draw(st.sampled_from(entered)) if entered and draw(st.booleans()) else draw(NODES)
            e = ev(seq, "node_exit", {"node": name}, name, ts)
        elif kind == "set":
            path = draw(st.lists(KEYS, min_size=1, max_size=3))
            e = ev(seq, "memory_set", {"path": ".".join(path) if draw(st.booleans()) else path,
                                       "value": draw(VALUES)}, node, ts)
        elif kind == "delete":
            e = ev(seq, "memory_delete", {"path": draw(st.lists(KEYS, min_size=1, max_size=3))}, node, ts)
        elif kind == "pause":
            e = ev(seq, "pause", {"reason": draw(st.text(max_size=10))}, node, ts)
        elif kind == "resume":
            e = ev(seq, "resume", {"by": "human:alice", "decision": draw(st.sampled_from(["ok", "no"]))}, node, ts)
        elif kind == "complete":
            e = ev(seq, "complete", {"summary": draw(st.text(max_size=10))}, node, ts)
        elif kind == "fail":
            e = ev(seq, "fail", {"error": draw(VALUES)}, node, ts)
        elif kind == "counter":
            e = ev(seq, "x.test.counter", {"n": draw(st.integers(-5, 5))}, node, ts)
        elif kind == "note":
            e = ev(seq, "x.test.note", draw(VALUES), node, ts)
        else:
            e = ev(seq, draw(st.sampled_from(["message", "tool_call", "tool_result", "memory_set", "node_exit"])),
                   draw(st.none() | st.integers() | st.just({}) | st.just({"path": 5})), None, ts)
        out.append(e)
    return out


def steps(events: list[Event]) -> list[ThreadState]:
    """The states after 0..n events, applied one at a time."""
    states = [empty(TENANT, THREAD)]
    for e in events:
        states.append(apply(states[-1], e, REG))
    return states


PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(histories())
def test_fold_of_every_prefix_equals_step_by_step(events: list[Event]) -> None:
    """fold(events[:n]) equals applying the first n events one at a time, for every n."""
    states = steps(events)
    for n in range(len(events) + 1):
        folded = fold(events[:n], empty(TENANT, THREAD), REG)
        assert folded == states[n]
        assert strict(folded) == strict(states[n])
        if n:
            assert fold(events[:n], registry=REG) == states[n]


@PROPS
@given(histories())
def test_status_and_node_are_the_lifecycle_rules(events: list[Event]) -> None:
    """The fold's status, node and open nodes are journal.lifecycle.step applied event by event, as in the projector."""
    pos = lifecycle.Position()
    for e in events:
        pos = lifecycle.step(pos, e.type, e.payload, e.node)
    s = steps(events)[-1]
    assert (s.status, s.node, s.pending_branches) == (pos.status, pos.node, pos.branches)


@PROPS
@given(histories())
def test_to_dict_round_trips_exactly(events: list[Event]) -> None:
    """from_dict(to_dict(s)) == s, directly, through the snapshot codec and through JSON."""
    for s in steps(events):
        assert ThreadState.from_dict(s.to_dict()) == s
        back = via_snapshot(s)
        assert back == s
        assert strict(back) == strict(s)
        assert back.pending_calls == s.pending_calls
        assert ThreadState.from_dict(json.loads(json.dumps(s.to_dict(), allow_nan=False))) == s


@PROPS
@given(histories())
def test_snapshot_plus_tail_equals_full_fold(events: list[Event]) -> None:
    """The snapshot at k plus the fold of k+1..n equals the fold of 1..n, for every k (invariant 7)."""
    states = steps(events)
    full = states[-1]
    for k in range(len(events) + 1):
        resumed = fold(events[k:], via_snapshot(states[k]), REG)
        assert resumed == full
        assert strict(resumed) == strict(full)


@PROPS
@given(histories())
def test_fold_is_deterministic_and_never_mutates_earlier_states(events: list[Event]) -> None:
    """Folding twice gives equal states, and applying later events leaves every earlier state unchanged."""
    before: list[bytes] = []
    states = [empty(TENANT, THREAD)]
    for e in events:
        before.append(strict(states[-1]))
        states.append(apply(states[-1], e, REG))
    for i, s in enumerate(states[:-1]):
        assert strict(s) == before[i]
    again = fold(events, empty(TENANT, THREAD), REG)
    assert again == states[-1] and strict(again) == strict(states[-1])


@PROPS
@given(histories(), st.integers(0, 30))
def test_redelivered_events_are_ignored(events: list[Event], k: int) -> None:
    """Re-applying events already folded in (seq <= last_seq) leaves the state as it is."""
    state = fold(events, empty(TENANT, THREAD), REG)
    assert fold(events[: k % (len(events) + 1)], state, REG) is state


# -- rules -----------------------------------------------------------------------------------------


def test_empty_state() -> None:
    """An empty state is active, at seq 0, with nothing in it."""
    s = empty(TENANT, THREAD)
    assert (s.last_seq, s.event_count, s.status, s.node, s.created_ms) == (0, 0, "active", None, None)
    assert s.messages == () and dict(s.memory) == {} and s.pending_calls == ()


def test_bookkeeping_tracks_seq_count_and_times() -> None:
    """last_seq, event_count, created_ms and updated_ms follow the events."""
    s = fold([ev(1, "message", {"role": "user", "content": "hi"}, ts_ms=10),
              ev(2, "message", {"role": "user", "content": "again"}, ts_ms=25)])
    assert (s.last_seq, s.event_count, s.created_ms, s.updated_ms) == (2, 2, 10, 25)


def test_message_rule() -> None:
    """A message records role, content, tool-call ids, node and seq."""
    s = fold([ev(1, "message", {"role": "assistant", "content": "use a tool", "tool_calls": ["c1"]}, "planner")])
    assert s.messages == (rs.Message(1, "assistant", "use a tool", ("c1",), "planner"),)
    assert s.anomalies == ()


def test_message_content_is_frozen() -> None:
    """Structured content is copied into immutable containers; the caller's dict cannot reach into the state."""
    content = {"parts": [{"text": "hi"}]}
    s = fold([ev(1, "message", {"role": "user", "content": content})])
    content["parts"].append({"text": "sneaky"})
    assert len(s.messages[0].content["parts"]) == 1
    with pytest.raises(TypeError):
        s.messages[0].content["parts"] = ()  # type: ignore[index]


def test_tool_call_then_result_resolves_pending() -> None:
    """A tool call is pending until its result arrives; the result is attached to the call."""
    s1 = fold([ev(1, "tool_call", {"call_id": "c1", "tool": "search", "args": {"q": "x"}}, "tools")])
    assert s1.pending_calls == ("c1",)
    assert s1.tool_calls["c1"].args == {"q": "x"}
    s2 = apply(s1, ev(2, "tool_result", {"call_id": "c1", "tool": "search", "output": {"rows": 3}}, "tools"))
    assert s2.pending_calls == ()
    res = s2.tool_calls["c1"].result
    assert res is not None and res.seq == 2 and res.output == {"rows": 3} and not res.failed
    assert s1.pending_calls == ("c1",)


def test_tool_result_with_error() -> None:
    """A result with an error resolves the call and is marked failed."""
    s = fold([ev(1, "tool_call", {"call_id": "c1", "tool": "t", "args": {}}),
              ev(2, "tool_result", {"call_id": "c1", "error": "timeout"})])
    res = s.tool_calls["c1"].result
    assert res is not None and res.failed and res.error == "timeout" and s.pending_calls == ()


def test_orphan_result_is_recorded_and_later_call_fills_it_in() -> None:
    """A result for an unknown call is kept with an anomaly; a later call with that id keeps the result."""
    s = fold([ev(1, "tool_result", {"call_id": "c9", "output": 1})])
    assert s.tool_calls["c9"].seq is None and s.tool_calls["c9"].result is not None
    assert "unknown tool call" in s.anomalies[0].message
    s = apply(s, ev(2, "tool_call", {"call_id": "c9", "tool": "t", "args": None}))
    assert s.tool_calls["c9"].seq == 2 and s.tool_calls["c9"].result is not None and s.pending_calls == ()


def test_duplicate_call_and_second_result_keep_the_first() -> None:
    """A reused call id or a second result is an anomaly; the first one stands."""
    s = fold([ev(1, "tool_call", {"call_id": "c1", "tool": "a", "args": 1}),
              ev(2, "tool_call", {"call_id": "c1", "tool": "b", "args": 2}),
              ev(3, "tool_result", {"call_id": "c1", "output": "x"}),
              ev(4, "tool_result", {"call_id": "c1", "output": "y"})])
    call = s.tool_calls["c1"]
    assert call.tool == "a" and call.result is not None and call.result.output == "x"
    assert [a.seq for a in s.anomalies] == [2, 4]


def test_tool_call_without_id_is_still_tracked() -> None:
    """A tool call with no call_id is kept under a synthetic id and flagged."""
    s = fold([ev(1, "tool_call", {"tool": "t"})])
    assert s.pending_calls == ("#seq-1",)
    assert any("call_id" in a.message for a in s.anomalies)


def test_node_enter_exit_and_pending_branches() -> None:
    """Entering and exiting nodes moves the position, records history, and tracks open branches."""
    s = fold([ev(1, "node_enter", {"node": "planner"}), ev(2, "node_enter", {}, node="tools"),
              ev(3, "node_exit", {"node": "tools"})])
    assert s.node == "planner"
    assert s.node_history == ((1, "planner", "enter"), (2, "tools", "enter"), (3, "tools", "exit"))
    assert s.pending_branches == ("planner",)
    s = apply(s, ev(4, "node_exit", {"node": "planner"}))
    assert s.node is None and s.pending_branches == ()


def test_exit_of_unentered_node_is_an_anomaly() -> None:
    """Exiting a node that was never entered is recorded, not a crash."""
    s = fold([ev(1, "node_exit", {"node": "ghost"})])
    assert s.node_history == ((1, "ghost", "exit"),) and "not entered" in s.anomalies[0].message


def test_memory_set_and_delete_on_nested_paths() -> None:
    """memory_set creates nested maps along list or dotted paths; memory_delete removes a key."""
    s = fold([ev(1, "memory_set", {"path": ["customer", "last_tool"], "value": "search"}),
              ev(2, "memory_set", {"path": "customer.tier", "value": {"level": 2}}),
              ev(3, "memory_set", {"path": ["plan"], "value": [1, 2]})])
    assert rs.thaw(s.memory) == {"customer": {"last_tool": "search", "tier": {"level": 2}}, "plan": [1, 2]}
    s2 = apply(s, ev(4, "memory_delete", {"path": ["customer", "last_tool"]}))
    assert rs.thaw(s2.memory) == {"customer": {"tier": {"level": 2}}, "plan": [1, 2]}
    assert rs.thaw(s.memory)["customer"]["last_tool"] == "search"
    s3 = apply(s2, ev(5, "memory_delete", {"path": "nothing.here"}))
    assert s3.memory == s2.memory and s3.anomalies == ()


def test_memory_set_through_a_scalar_replaces_it() -> None:
    """Setting below a key that holds a scalar turns it into a map, with an anomaly."""
    s = fold([ev(1, "memory_set", {"path": "a", "value": 5}), ev(2, "memory_set", {"path": "a.b", "value": 6})])
    assert rs.thaw(s.memory) == {"a": {"b": 6}} and s.anomalies[0].seq == 2


def test_memory_bad_path_is_an_anomaly() -> None:
    """A missing or malformed memory path leaves memory alone and is recorded."""
    s = fold([ev(1, "memory_set", {"value": 1}), ev(2, "memory_set", {"path": [1, "x"], "value": 1}),
              ev(3, "memory_delete", {"path": ""})])
    assert dict(s.memory) == {} and [a.seq for a in s.anomalies] == [1, 2, 3]


def test_pause_resume_complete() -> None:
    """pause/resume/complete move the status and record reason, resumer and summary."""
    s = fold([ev(1, "pause", {"reason": "needs a human"})])
    assert (s.status, s.pause_reason) == ("paused", "needs a human")
    s = apply(s, ev(2, "resume", {"by": "human:alice", "decision": "approved"}))
    assert (s.status, s.pause_reason, s.resumed_by) == ("active", None, "human:alice")
    assert dict(s.resume_detail) == {"decision": "approved"}
    s = apply(s, ev(3, "complete", {"summary": "refund issued"}))
    assert (s.status, s.summary) == ("completed", "refund issued") and s.anomalies == ()


def test_fail_and_events_after_terminal_status() -> None:
    """fail records the error; an event after a terminal status is applied and flagged."""
    s = fold([ev(1, "fail", {"error": {"kind": "timeout"}}), ev(2, "message", {"role": "user", "content": "?"})])
    assert s.status == "failed" and rs.thaw(s.error) == {"kind": "timeout"}
    assert "after the thread was failed" in s.anomalies[0].message


def test_resume_when_not_paused_is_an_anomaly() -> None:
    """Resuming an active thread is recorded."""
    s = fold([ev(1, "resume", {})])
    assert s.status == "active" and "not paused" in s.anomalies[0].message


@pytest.mark.parametrize("payload", [None, 7, "text", [1, 2], {}])
@pytest.mark.parametrize("type_", sorted(r._BUILTIN))
def test_builtin_types_never_raise_on_odd_payloads(type_: str, payload: Any) -> None:
    """Every built-in rule accepts any payload shape; problems become anomalies."""
    s = fold([ev(1, type_, payload)])
    assert s.last_seq == 1 and s.event_count == 1


def test_unresolved_blob_payload_is_named() -> None:
    """A built-in event whose payload is still in object storage is flagged with its digest."""
    e = replace(ev(1, "tool_result", None), blob=BlobRef("ab" * 32, 10))
    s = fold([e])
    assert "ab" * 32 in s.anomalies[0].message


def test_non_plain_payload_value_is_dropped_with_anomaly() -> None:
    """A payload value the codec refuses (here a set) is dropped with an anomaly instead of crashing."""
    s = fold([ev(1, "memory_set", {"path": "a", "value": {1, 2}})])
    assert dict(s.memory) == {"a": None} and "not plain data" in s.anomalies[0].message


def test_seq_gap_is_applied_and_flagged() -> None:
    """An event that skips seqs is applied; the gap is an anomaly."""
    s = fold([ev(1, "message", {"role": "user", "content": "a"}), ev(3, "message", {"role": "user", "content": "b"})])
    assert s.last_seq == 3 and len(s.messages) == 2 and "seq gap: expected 2, got 3" in s.anomalies[0].message


def test_event_from_another_thread_is_refused() -> None:
    """Folding an event of a different thread raises ReducerError (a caller bug, dead-lettered)."""
    with pytest.raises(ReducerError, match="run-2"):
        apply(empty(TENANT, THREAD), replace(ev(1, "message", {}), thread="run-2"))


def test_fold_of_nothing_needs_a_state() -> None:
    """fold([]) without a starting state is a clear error; with one it returns it."""
    with pytest.raises(InvalidEvent):
        fold([])
    s = empty(TENANT, THREAD)
    assert fold([], s) is s


# -- custom types ----------------------------------------------------------------------------------


def test_custom_type_with_registered_reducer() -> None:
    """A registered custom reducer updates custom state; it is not kept as opaque."""
    s = fold([ev(1, "x.test.counter", {"n": 2}), ev(2, "x.test.counter", {"n": 3})], registry=REG)
    assert s.custom["counter"] == 5 and s.opaque == () and s.last_seq == 2


def test_custom_type_without_reducer_is_opaque() -> None:
    """An unregistered custom type is recorded verbatim in opaque, never a crash."""
    s = fold([ev(1, "x.acme.refund_issued", {"amount": 12})], registry={})
    assert s.opaque == (rs.OpaqueEntry(1, "x.acme.refund_issued", rs.freeze({"amount": 12})),)


def test_failing_custom_reducer_raises_reducer_error() -> None:
    """A custom reducer that raises is wrapped in ReducerError naming seq and type."""
    def boom(state: ThreadState, event: Event) -> ThreadState:
        raise ValueError("bad refund")

    reg: dict[str, r.Reducer] = {}
    register("x.acme.refund_issued", boom, reg)
    with pytest.raises(ReducerError, match=r"x\.acme\.refund_issued.*seq 4") as info:
        apply(replace(empty(TENANT, THREAD), last_seq=3), ev(4, "x.acme.refund_issued", {}), reg)
    assert isinstance(info.value, JournalError) and info.value.seq == 4


def test_custom_reducer_returning_garbage_raises_reducer_error() -> None:
    """A custom reducer must return a ThreadState of the same thread."""
    reg: dict[str, r.Reducer] = {}
    register("x.acme.bad", lambda s, e: None, reg)  # type: ignore[arg-type,return-value]
    with pytest.raises(ReducerError, match="not a ThreadState"):
        apply(empty(TENANT, THREAD), ev(1, "x.acme.bad", {}), reg)


def test_custom_reducer_plain_dict_is_refrozen() -> None:
    """A custom reducer that stores a plain dict via replace() still yields an immutable state."""
    reg: dict[str, r.Reducer] = {}
    register("x.acme.raw", lambda s, e: replace(s, custom={"k": [1]}), reg)
    s = apply(empty(TENANT, THREAD), ev(1, "x.acme.raw", {}), reg)
    assert s.custom["k"] == (1,) and via_snapshot(s) == s


def test_register_refuses_builtin_types() -> None:
    """Built-in types cannot get a second reducer."""
    with pytest.raises(InvalidEvent, match="built-in"):
        register("message", counter, {})


def test_without_a_registry_custom_events_are_opaque() -> None:
    """There is no process-global registry: fold without one applies no custom reducer."""
    s = fold([ev(1, "x.test.counter", {"n": 4})])
    assert s.custom == {} and [o.type for o in s.opaque] == ["x.test.counter"]


def reducer_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> str:
    """A fresh importable module with ``body``; returns its name."""
    name = f"jr_reducers_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


COUNTER_MODULE = """
def counter(state, event):
    return state.with_custom("counter", (state.custom.get("counter") or 0) + event.payload["n"])

REDUCERS = {"x.test.counter": counter}
"""


def test_registry_loads_from_the_reducers_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """JOURNAL_REDUCERS names modules whose REDUCERS mapping load_registry turns into the registry fold uses."""
    name = reducer_module(tmp_path, monkeypatch, COUNTER_MODULE)
    registry = r.load_registry(Settings.from_env({"JOURNAL_REDUCERS": f" {name} ,"}).reducers)
    assert set(registry) == {"x.test.counter"}
    assert fold([ev(1, "x.test.counter", {"n": 4})], registry=registry).custom["counter"] == 4
    assert r.load_registry("") is r.NO_CUSTOM


@pytest.mark.parametrize(("body", "match"), [
    (None, "cannot be imported"),
    ("X = 1", "must define REDUCERS"),
    ("REDUCERS = {'message': print}", "built-in"),
    ("REDUCERS = {'x.test.a': 5}", "callable"),
])
def test_bad_reducers_setting_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str | None,
                                                match: str) -> None:
    """A module that is missing, has no REDUCERS, or registers a built-in or non-callable is a ConfigError naming it."""
    name = "jr_reducers_missing_module" if body is None else reducer_module(tmp_path, monkeypatch, body)
    with pytest.raises(ConfigError, match=match) as info:
        r.load_registry(name)
    assert name in str(info.value)


def test_two_reducers_for_one_type_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two modules registering the same custom type is a ConfigError, not a silent override."""
    a = reducer_module(tmp_path, monkeypatch, COUNTER_MODULE)
    b = reducer_module(tmp_path, monkeypatch, COUNTER_MODULE)
    with pytest.raises(ConfigError, match="two reducers"):
        r.load_registry([a, b])


# -- serialization ---------------------------------------------------------------------------------


def test_from_dict_refuses_unknown_format() -> None:
    """A snapshot state of another format version is refused with a typed error."""
    d = empty(TENANT, THREAD).to_dict()
    d["format"] = 99
    with pytest.raises(CodecError, match="format 99"):
        ThreadState.from_dict(d)


def test_from_dict_refuses_malformed() -> None:
    """A snapshot state missing a field is refused with a typed error."""
    d = empty(TENANT, THREAD).to_dict()
    del d["messages"]
    with pytest.raises(CodecError, match="malformed"):
        ThreadState.from_dict(d)


def test_state_pickles_and_deep_copies() -> None:
    """A state survives pickle and deepcopy unchanged (immutable mappings are rebuilt via to_dict)."""
    s = fold([ev(1, "memory_set", {"path": "a.b", "value": [1, {"c": 2}]}),
              ev(2, "tool_call", {"call_id": "c1", "tool": "t", "args": {"x": 1}})])
    assert pickle.loads(pickle.dumps(s)) == s
    assert copy.deepcopy(s) == s


# -- diff ------------------------------------------------------------------------------------------


def test_diff_reports_every_kind_of_change() -> None:
    """diff names added messages, added/resolved calls, memory set/removed with old→new, node and status."""
    a = fold([ev(1, "node_enter", {"node": "planner"}), ev(2, "tool_call", {"call_id": "c1", "tool": "t", "args": 1}),
              ev(3, "memory_set", {"path": "x.y", "value": 1}), ev(4, "memory_set", {"path": "gone", "value": True})])
    b = fold([ev(5, "tool_result", {"call_id": "c1", "output": "ok"}),
              ev(6, "tool_call", {"call_id": "c2", "tool": "t", "args": 2}),
              ev(7, "message", {"role": "assistant", "content": "done"}),
              ev(8, "memory_set", {"path": "x.y", "value": 2}), ev(9, "memory_delete", {"path": "gone"}),
              ev(10, "node_exit", {"node": "planner"}), ev(11, "pause", {"reason": "human"})], a)
    d = diff(a, b)
    assert (d["from_seq"], d["to_seq"]) == (4, 11)
    assert [m["seq"] for m in d["messages_added"]] == [7]
    assert [c["call_id"] for c in d["tool_calls_added"]] == ["c2"]
    assert [c["call_id"] for c in d["tool_calls_resolved"]] == ["c1"]
    assert d["memory_set"] == [{"path": ["x", "y"], "old": 1, "new": 2}]
    assert d["memory_removed"] == [{"path": ["gone"], "old": True}]
    assert d["node"] == {"old": "planner", "new": None}
    assert d["status"] == {"old": "active", "new": "paused"}
    assert d["node_steps_added"] == [[10, "planner", "exit"]]
    json.dumps(d)


def test_diff_of_equal_states_is_empty() -> None:
    """Two equal states differ in nothing but the seq markers."""
    s = fold([ev(1, "memory_set", {"path": "a", "value": 1})])
    assert diff(s, s) == {"from_seq": 1, "to_seq": 1}


def test_diff_sees_type_changes() -> None:
    """A memory value changing from True to 1 is a change, though True == 1 in Python."""
    a = fold([ev(1, "memory_set", {"path": "a", "value": True})])
    b = apply(a, ev(2, "memory_set", {"path": "a", "value": 1}))
    assert diff(a, b)["memory_set"] == [{"path": ["a"], "old": True, "new": 1}]


def test_diff_custom_and_opaque() -> None:
    """Custom-state changes and new opaque events show in the diff."""
    a = empty(TENANT, THREAD)
    b = fold([ev(1, "x.test.counter", {"n": 2}), ev(2, "x.test.other", {"k": 1})], a, REG)
    d = diff(a, b)
    assert d["custom_changed"] == {"counter": {"old": None, "new": 2}}
    assert d["opaque_added"] == [{"seq": 2, "type": "x.test.other", "payload": {"k": 1}}]
