"""Payloads of the built-in types: checked at append (real Redis), documented in the README, in step with the fold."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from journal import codec, keys, payloads
from journal.client import JournalClient
from journal.errors import InvalidEvent
from journal.events import BUILTIN_TYPES, Draft, Event
from journal.payloads import InvalidPayload
from journal.reducer import fold

README = Path(__file__).resolve().parents[1] / "README.md"

#: (type, payload, event node=, the field the error must name)
BAD: list[tuple[str, Any, str | None, str]] = [
    ("message", {"content": "hi"}, None, "role"),
    ("message", {"role": 5, "content": "hi"}, None, "role"),
    ("message", {"role": "user"}, None, "content"),
    ("message", {"role": "user", "content": "hi", "tool_calls": "c1"}, None, "tool_calls"),
    ("message", {"role": "user", "content": "hi", "tool_calls": [1]}, None, "tool_calls"),
    ("message", None, None, ""),
    ("message", "hi", None, ""),
    ("tool_call", {"tool": "search"}, None, "call_id"),
    ("tool_call", {"call_id": 7, "tool": "search"}, None, "call_id"),
    ("tool_call", {"call_id": "c1", "args": {}}, None, "tool"),
    ("tool_result", {"tool": "search", "output": 1}, None, "call_id"),
    ("tool_result", {"call_id": "c1", "tool": "search"}, None, "output"),
    ("tool_result", {"call_id": "c1", "output": 1, "tool": 5}, None, "tool"),
    ("node_enter", {}, None, "node"),
    ("node_enter", {"node": 5}, "planner", "node"),
    ("node_enter", {"node": ""}, None, "node"),
    ("node_exit", {}, None, "node"),
    ("node_exit", [], "planner", ""),
    ("memory_set", {"value": 1}, None, "path"),
    ("memory_set", {"path": "customer.tier"}, None, "value"),
    ("memory_set", {"path": [1, "x"], "value": 1}, None, "path"),
    ("memory_set", {"path": "", "value": 1}, None, "path"),
    ("memory_set", {"path": "a..b", "value": 1}, None, "path"),
    ("memory_set", {"path": [], "value": 1}, None, "path"),
    ("memory_delete", {}, None, "path"),
    ("memory_delete", {"path": 5}, None, "path"),
    ("pause", None, None, ""),
    ("resume", "approved", None, ""),
    ("complete", None, None, ""),
    ("fail", 5, None, ""),
]


@pytest.mark.parametrize(("type_", "payload", "node", "field"), BAD,
                         ids=[f"{t}-{f or 'payload'}-{i}" for i, (t, _, _, f) in enumerate(BAD)])
def test_bad_payload_is_refused_naming_type_and_field(client: JournalClient, tenant: str, type_: str, payload: Any,
                                                       node: str | None, field: str) -> None:
    """A built-in payload lacking a field the fold needs raises InvalidPayload naming type and field; no write."""
    with pytest.raises(InvalidEvent) as info:
        client.append(tenant, "th", type_, payload, node=node)
    err = info.value
    assert isinstance(err, InvalidPayload) and (err.type, err.field) == (type_, field)
    assert f"{'payload.' + field if field else 'payload'} of a {type_!r} event must be " in str(err)
    assert client.head(tenant, "th") == 0 and client.redis.exists(keys.stream(tenant)) == 0


@pytest.mark.parametrize(("type_", "payload", "node", "field"), BAD)
def test_what_append_refuses_the_fold_would_flag(type_: str, payload: Any, node: str | None, field: str) -> None:
    """Every refused payload is one the fold would have folded with an anomaly: the check replaces silence, not data."""
    state = fold([Event("acme", "th", 1, type_, payload, 1, node=node)])
    assert state.anomalies


def test_bad_event_in_a_batch_refuses_the_batch_naming_it(client: JournalClient, tenant: str) -> None:
    """In append_many, one bad payload refuses the whole batch and the error names its index."""
    batch = [Draft("a", "message", {"role": "user", "content": "hi"}),
             Draft("b", "tool_result", {"call_id": "c1", "output": 1}),
             Draft("a", "memory_set", {"value": 1})]
    with pytest.raises(InvalidPayload, match=r"event\[2\]\.payload\.path of a 'memory_set' event"):
        client.append_many(tenant, batch)
    assert client.redis.exists(keys.stream(tenant), keys.heads(tenant)) == 0


def test_extra_fields_and_custom_types_pass(client: JournalClient, tenant: str) -> None:
    """Fields beyond the required ones are kept as written; custom types are not checked at all."""
    extra = {"role": "assistant", "content": None, "tokens": 812, "model": {"name": "gpt-x"}}
    rec = client.append(tenant, "th", "message", extra)
    client.append(tenant, "th", "x.acme.refund_issued", ["anything", 1])
    client.append(tenant, "th", "node_enter", {}, node="planner")  # the event's node= stands in for payload.node
    assert [e.payload for e in client.read(tenant, "th")] == [extra, ["anything", 1], {}] and rec.seq == 1


def readme_table() -> dict[str, tuple[str, str, Any]]:
    """type -> (required cell, optional cell, example payload) from the README's table of built-in payloads."""
    text = README.read_text()
    start = text.index("| type | required | optional | what the fold does with it | example payload |")
    rows: dict[str, tuple[str, str, Any]] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("| `"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0].strip("`")] = (cells[1], cells[2], json.loads(cells[4].strip("`")))
    return rows


def test_readme_documents_every_builtin_type_as_checked() -> None:
    """The README's table has one row per built-in type, naming the fields payloads.SPECS requires and allows."""
    rows = readme_table()
    assert set(rows) == BUILTIN_TYPES
    for type_, (required, optional, _) in rows.items():
        spec = payloads.SPECS[type_]
        assert all(f"`{name.split()[0]}`" in required for name in spec.required), type_
        assert all(name.split()[0] in optional for name in spec.optional), type_


def test_readme_examples_append_and_fold_cleanly(client: JournalClient, tenant: str) -> None:
    """Every example payload of the README appends through the real client and folds without a payload anomaly."""
    rows = readme_table()
    for type_, (_, _, example) in rows.items():
        client.append(tenant, "th", type_, example)
    events = client.read(tenant, "th")
    assert [e.type for e in events] == list(rows)
    state = fold(events)
    # The table ends with complete, fail, abandon: only the notes of events after a terminal status are expected.
    assert [a.message for a in state.anomalies] == ["event after the thread was completed",
                                                   "event after the thread was failed"]


# -- the check and the fold agree ----------------------------------------------------------------

_TEXT = st.text(max_size=4).filter(lambda s: "\x00" not in s)
_VALUES = st.none() | st.booleans() | st.integers(-5, 5) | _TEXT | st.lists(_TEXT, max_size=3)
_FIELDS = ("role", "content", "tool_calls", "call_id", "tool", "args", "output", "error", "node", "path", "value",
           "reason", "by", "summary")


@st.composite
def candidates(draw: st.DrawFn) -> tuple[str, Any, str | None]:
    """A built-in type with a payload of random fields, often close to valid, and maybe an event node."""
    type_ = draw(st.sampled_from(sorted(BUILTIN_TYPES)))
    spec = payloads.SPECS[type_]
    payload: dict[str, Any] = {k: v for k, v in spec.example.items() if draw(st.integers(0, 3))}
    for k in draw(st.lists(st.sampled_from(_FIELDS), max_size=3)):
        payload[k] = draw(_VALUES)
    node = draw(st.none() | st.sampled_from(["planner", "tools"]))
    return type_, payload, node


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(candidates())
def test_accepted_payloads_fold_without_anomalies(case: tuple[str, Any, str | None]) -> None:
    """Whatever payloads.check accepts, the fold applies without a single anomaly (given the state it expects)."""
    type_, payload, node = case
    payload = codec.normalize(payload)
    try:
        payloads.check(type_, payload, node)
    except InvalidPayload:
        return
    # The state the event assumes: a call before its result, an entry before its exit, a pause before a resume.
    before: list[tuple[str, Any, str | None]] = []
    if type_ == "tool_result":
        before.append(("tool_call", {"call_id": payload["call_id"], "tool": payload.get("tool") or "t"}, None))
    elif type_ == "node_exit":
        before.append(("node_enter", {"node": payload.get("node") or node}, None))
    elif type_ == "resume":
        before.append(("pause", {}, None))
    history = [*before, (type_, payload, node)]
    state = fold([Event("acme", "th", i, t, p, i, node=n) for i, (t, p, n) in enumerate(history, 1)])
    assert state.anomalies == (), [a.message for a in state.anomalies]


def test_error_message_says_what_to_do() -> None:
    """The message names the field path, the type, what was expected, what came, and the way out."""
    with pytest.raises(InvalidPayload) as info:
        payloads.check("memory_set", {"value": 1}, where="event[3].payload")
    text = str(info.value)
    assert re.search(r"event\[3\]\.payload\.path of a 'memory_set' event must be a non-empty list", text)
    assert "got nothing (the field is missing)" in text and "nothing was written" in text and "x.<org>" in text


def test_tool_result_naming_an_empty_tool_is_refused() -> None:
    """A tool_result whose optional tool is the empty string is refused (hypothesis found the fold flags it)."""
    with pytest.raises(InvalidPayload, match="tool"):
        payloads.check("tool_result", {"call_id": "c1", "tool": "", "output": 1}, None)
