"""Codec: plain data only, canonical bytes, refusal of unknown formats."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from journal import codec
from journal.errors import CodecError, PayloadTooLarge, UnserializableValue
from journal.events import Event

#: Map keys as PostgreSQL JSONB can store them: the codec refuses NUL in keys as in values.
jsonb_keys = st.text(max_size=8).filter(lambda s: "\x00" not in s)
plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text().filter(lambda s: "\x00" not in s) | st.binary(max_size=64),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(jsonb_keys, children, max_size=4),
    max_leaves=20,
)


@given(plain)
def test_round_trip_of_plain_data(value: object) -> None:
    """Any plain value survives normalize → frame → unframe unchanged."""
    norm = codec.normalize(value)
    assert codec.unframe(codec.frame(codec.pack(norm))) == norm


@given(st.dictionaries(jsonb_keys, st.integers(-(2**63), 2**63), max_size=8))
def test_canonical_bytes_ignore_key_order(d: dict[str, int]) -> None:
    """Equal events give equal canonical bytes whatever the map insertion order."""
    rev = dict(reversed(list(d.items())))
    a = Event("t", "th", 1, "message", d, 5)
    b = Event("t", "th", 1, "message", rev, 5)
    assert codec.canonical_bytes(a) == codec.canonical_bytes(b)


@given(st.dictionaries(jsonb_keys, st.binary(max_size=32), max_size=6), st.binary(max_size=32))
def test_bytes_are_plain_data_with_deterministic_canonical_bytes(d: dict[str, bytes], extra: bytes) -> None:
    """bytes (and bytearray/memoryview, stored as bytes) round-trip as msgpack bin; equal events hash equally."""
    payload = {**d, "ba": bytearray(extra), "mv": memoryview(extra)}
    norm = codec.normalize(payload)
    assert norm["ba"] == norm["mv"] == extra and type(norm["ba"]) is bytes and type(norm["mv"]) is bytes
    back = codec.unframe(codec.frame(codec.pack(norm)))
    assert back == norm and all(type(v) is bytes for v in back.values())
    a = Event("t", "th", 1, "x.acme.blob", norm, 5)
    b = Event("t", "th", 1, "x.acme.blob", {**dict(reversed(list(d.items()))), "ba": extra, "mv": bytes(extra)}, 5)
    assert codec.canonical_bytes(a) == codec.canonical_bytes(b) == codec.canonical_bytes(
        Event("t", "th", 1, "x.acme.blob", back, 5))
    # bytes are not str: the same characters as text hash differently.
    if d:
        k = next(iter(d))
        texty = {**norm, k: d[k].decode("latin-1")}
        assert codec.canonical_bytes(Event("t", "th", 1, "x.acme.blob", texty, 5)) != codec.canonical_bytes(a)


def test_bytes_count_against_the_payload_limit_and_render_as_their_length_in_json() -> None:
    """A big bytes value is refused by the size limit like a big string; JSON shows {"$bytes": n}."""
    with pytest.raises(PayloadTooLarge):
        codec.normalize({"b": b"x" * 2000}, limit=1000)
    assert codec.normalize({"b": b"x" * 900}, limit=1000) == {"b": b"x" * 900}
    import orjson
    assert orjson.loads(orjson.dumps({"b": b"abc"}, default=codec.json_default)) == {"b": {"$bytes": 3}}


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"a": [1, {"b": float("nan")}]}, "payload.a[1].b"),
        ({"x": math.inf}, "payload.x"),
        ({"big": 2**70}, "payload.big"),
        ({"s": "\ud800"}, "payload.s"),
        ({"s": "a\x00b"}, "payload.s"),
        ({1: "non-str key"}, "payload[1]"),
        ({"set": {1, 2}}, "payload.set"),
        ({"obj": object()}, "payload.obj"),
    ],
)
def test_refuses_non_plain_values_naming_the_path(payload: object, path: str) -> None:
    """Each non-plain value is refused with UnserializableValue naming its field path."""
    with pytest.raises(UnserializableValue) as info:
        codec.normalize(payload)
    assert info.value.path == path


def test_refuses_cycles_and_deep_nesting() -> None:
    """A self-referencing payload and 10,000-deep nesting are refused, not overflowed."""
    cyc: dict[str, object] = {}
    cyc["me"] = cyc
    with pytest.raises(UnserializableValue, match="cycle"):
        codec.normalize(cyc)
    deep: list[object] = []
    cur = deep
    for _ in range(10_000):
        nxt: list[object] = []
        cur.append(nxt)
        cur = nxt
    with pytest.raises(UnserializableValue, match="deeper"):
        codec.normalize(deep)


def test_string_budget_stops_huge_payloads_early() -> None:
    """A payload whose strings exceed the limit raises PayloadTooLarge while walking."""
    with pytest.raises(PayloadTooLarge):
        codec.normalize({"a": "x" * 100, "b": "y" * 100}, limit=150)


def test_unknown_format_tag_is_refused() -> None:
    """Bytes without the journal's format tag raise CodecError, never a guess."""
    with pytest.raises(CodecError):
        codec.unframe(b"\x00\x00garbage")
    with pytest.raises(CodecError):
        codec.unframe(bytes((codec.MAGIC, 0x80)) + b"x")


def test_large_bodies_are_compressed() -> None:
    """Bodies over the compression threshold are zstd-framed and smaller."""
    raw = codec.pack({"text": "agent step " * 500})
    framed = codec.frame(raw)
    assert framed[1] & codec.FLAG_ZSTD and len(framed) < len(raw)

