"""Abuse suite: hostile payloads get a typed error at the client and nothing partial reaches a store."""

from __future__ import annotations

import datetime as dt
import math
import os
import types
import uuid
from collections.abc import Iterator, Mapping
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from journal import keys
from journal.blobs import s3_client
from journal.client import JournalClient
from journal.errors import (
    ConflictError,
    InvalidEvent,
    InvalidIdentifier,
    JournalError,
    PayloadTooLarge,
    UnserializableValue,
)
from journal.events import Draft
from journal.settings import Settings

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}


def _deep_list(depth: int) -> list[Any]:
    root: list[Any] = []
    cur = root
    for _ in range(depth):
        nxt: list[Any] = []
        cur.append(nxt)
        cur = nxt
    return root


def _deep_dict(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    cur = root
    for _ in range(depth):
        nxt: dict[str, Any] = {}
        cur["k"] = nxt
        cur = nxt
    return root


def _self_list() -> list[Any]:
    a: list[Any] = [1]
    a.append(a)
    return a


def _self_dict() -> dict[str, Any]:
    d: dict[str, Any] = {"a": 1}
    d["me"] = d
    return d


def _mutual() -> dict[str, Any]:
    a: dict[str, Any] = {}
    b: list[Any] = [a]
    a["b"] = b
    return {"root": a}


class Custom:
    """A plain user object."""


class WithDict:
    """An object whose state lives in __dict__."""

    def __init__(self) -> None:
        self.x = 1


class BadRepr:
    """A key whose repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class BrokenMapping(Mapping[str, Any]):
    """A Mapping that fails when read."""

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        return iter(["a"])

    def __len__(self) -> int:
        return 1


#: (payload, the exception type, the field path the error must name or None)
HOSTILE: list[tuple[str, Any, type[JournalError], str | None]] = [
    ("deep_list_10k", _deep_list(10_000), UnserializableValue, None),
    ("deep_dict_10k", _deep_dict(10_000), UnserializableValue, None),
    ("int_2_64", {"n": 2**64}, UnserializableValue, "payload.n"),
    ("int_minus_2_64", {"n": -(2**64)}, UnserializableValue, "payload.n"),
    ("int_minus_2_63_minus_1", {"n": -(2**63) - 1}, UnserializableValue, "payload.n"),
    ("int_2_1000", [0, 2**1000], UnserializableValue, "payload[1]"),
    ("nan", {"f": math.nan}, UnserializableValue, "payload.f"),
    ("inf", {"f": math.inf}, UnserializableValue, "payload.f"),
    ("minus_inf", {"f": -math.inf}, UnserializableValue, "payload.f"),
    ("nested_nan", {"a": [{"b": [1, {"c": math.nan}]}]}, UnserializableValue, "payload.a[0].b[1].c"),
    ("key_int", {1: "x"}, UnserializableValue, "payload[1]"),
    ("key_tuple", {"a": {("t", 1): "x"}}, UnserializableValue, "payload.a[('t', 1)]"),
    ("key_none", {None: "x"}, UnserializableValue, "payload[None]"),
    ("key_bytes", {b"k": "x"}, UnserializableValue, "payload[b'k']"),
    ("key_bad_repr", {BadRepr(): 1}, UnserializableValue, "payload[<BadRepr>]"),
    ("key_nul", {"a\x00b": 1}, UnserializableValue, "payload['a\\x00b']"),
    ("key_lone_surrogate", {"\ud800": 1}, UnserializableValue, "payload['\\ud800']"),
    ("lone_high_surrogate", {"s": "\ud800"}, UnserializableValue, "payload.s"),
    ("lone_low_surrogate", {"s": "ok\udfff"}, UnserializableValue, "payload.s"),
    ("split_pair_high", ["\ud83d"], UnserializableValue, "payload[0]"),
    ("split_pair_low", ["\ude00"], UnserializableValue, "payload[0]"),
    ("pair_as_code_units", {"s": "\ud83d\ude00"}, UnserializableValue, "payload.s"),
    ("nul", {"s": "a\x00b"}, UnserializableValue, "payload.s"),
    ("set", {"s": {1, 2}}, UnserializableValue, "payload.s"),
    ("frozenset", {"s": frozenset({1})}, UnserializableValue, "payload.s"),
    ("datetime", {"t": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}, UnserializableValue, "payload.t"),
    ("date", {"t": dt.date(2024, 1, 1)}, UnserializableValue, "payload.t"),
    ("decimal", {"d": Decimal("1.1")}, UnserializableValue, "payload.d"),
    ("complex", {"c": 1j}, UnserializableValue, "payload.c"),
    ("custom_object", {"o": Custom()}, UnserializableValue, "payload.o"),
    ("object_with_dict", {"o": WithDict()}, UnserializableValue, "payload.o"),
    ("namespace", {"o": types.SimpleNamespace(a=1)}, UnserializableValue, "payload.o"),
    ("function", {"f": len}, UnserializableValue, "payload.f"),
    ("type", {"t": int}, UnserializableValue, "payload.t"),
    ("generator", {"g": (i for i in range(3))}, UnserializableValue, "payload.g"),
    ("broken_mapping", {"m": BrokenMapping()}, UnserializableValue, "payload.m"),
    ("self_list", _self_list(), UnserializableValue, None),
    ("self_dict", _self_dict(), UnserializableValue, None),
    ("mutual_cycle", _mutual(), UnserializableValue, None),
]


@pytest.fixture(scope="module")
def s3(settings: Settings) -> Any:
    """One boto3 client for listing the bucket."""
    return s3_client(settings)


def objects_under(s3: Any, settings: Settings, tenant: str) -> list[str]:
    """Every object key under ``{tenant}/`` in the journal's bucket."""
    reply = s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=f"{tenant}/")
    return [o["Key"] for o in reply.get("Contents", [])]


def assert_nothing_stored(client: JournalClient, s3: Any, settings: Settings, tenant: str) -> None:
    """No key of the tenant in Redis and no object under its prefix in S3."""
    assert list(client.redis.scan_iter(match=f"agent:v1:{{{tenant}}}:*")) == []
    assert objects_under(s3, settings, tenant) == []


@pytest.fixture
def seeded(client: JournalClient, tenant: str) -> str:
    """A tenant whose thread 'th' already holds one event (so 'unchanged' is checkable)."""
    client.append(tenant, "th", "message", {**MSG, "ok": 1})
    return tenant


def assert_unchanged(client: JournalClient, s3: Any, settings: Settings, tenant: str) -> None:
    """The seeded tenant still has exactly its one event, head 1, no idempotency keys, no blobs."""
    r = client.redis
    assert r.xlen(keys.stream(tenant)) == 1
    assert r.hgetall(keys.heads(tenant)) == {b"th": b"1"}
    assert list(r.scan_iter(match=f"agent:v1:{{{tenant}}}:idem:*")) == []
    assert objects_under(s3, settings, tenant) == []


@pytest.mark.parametrize(("name", "payload", "error", "path"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_payload_is_refused_with_typed_error(
    client: JournalClient, s3: Any, settings: Settings, seeded: str, name: str, payload: Any,
    error: type[JournalError], path: str | None,
) -> None:
    """Each hostile payload raises its typed error naming the field path, and nothing is written."""
    with pytest.raises(error) as info:
        client.append(seeded, "th", "message", payload, idempotency_key=f"k-{name}")
    assert isinstance(info.value, InvalidEvent)
    if path is not None:
        assert isinstance(info.value, UnserializableValue) and info.value.path == path
    assert_unchanged(client, s3, settings, seeded)


@pytest.mark.parametrize(("name", "payload", "error", "path"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_value_inside_actor_is_refused(
    client: JournalClient, s3: Any, settings: Settings, tenant: str, name: str, payload: Any,
    error: type[JournalError], path: str | None,
) -> None:
    """The same hostile values inside ``actor`` are refused, naming an actor path, and nothing is written."""
    with pytest.raises(error) as info:
        client.append(tenant, "th", "message", {**MSG, "fine": True}, actor={"agent_id": "a1", "meta": payload})
    if isinstance(info.value, UnserializableValue):
        assert info.value.path.startswith("actor")
    assert_nothing_stored(client, s3, settings, tenant)


@pytest.mark.parametrize("actor", [["agent"], "agent", 42, (("a", 1),), {1: "x"}, {"a": {"b": {2, 3}}}],
                         ids=["list", "str", "int", "pairs", "int_key", "nested_set"])
def test_hostile_actor_shapes_are_refused(client: JournalClient, s3: Any, settings: Settings, tenant: str,
                                          actor: Any) -> None:
    """An actor that is not a mapping of plain data raises InvalidEvent and writes nothing."""
    with pytest.raises(InvalidEvent):
        client.append(tenant, "th", "message", MSG, actor=actor)
    assert_nothing_stored(client, s3, settings, tenant)


def test_oversized_actor_is_refused(client: JournalClient, s3: Any, settings: Settings, tenant: str) -> None:
    """An actor whose strings exceed its 64 KB limit is refused as PayloadTooLarge and writes nothing."""
    actor = {"agent_id": "x" * (settings.max_payload_bytes + 1)}
    with pytest.raises(PayloadTooLarge):
        client.append(tenant, "th", "message", MSG, actor=actor)
    assert_nothing_stored(client, s3, settings, tenant)


@pytest.mark.parametrize(
    ("field", "value"),
    [("node", 42), ("node", b"node"), ("node", ["n"]), ("node", ""), ("node", "n" * 10_240),
     ("node", "a\x00b"), ("node", "\ud800"), ("idempotency_key", 42), ("idempotency_key", b"k"),
     ("idempotency_key", {"k": 1}), ("idempotency_key", ""), ("idempotency_key", "k" * 10_240),
     ("idempotency_key", "a\x00b"), ("idempotency_key", "k\udfff"),
     ("expected_seq", -1), ("expected_seq", True), ("expected_seq", "1"), ("expected_seq", 1.0)],
    ids=lambda v: repr(v)[:20],
)
def test_hostile_node_idempotency_key_and_expected_seq(client: JournalClient, s3: Any, settings: Settings,
                                                       seeded: str, field: str, value: Any) -> None:
    """Non-str, empty, 10 KB, NUL and lone-surrogate node/idempotency_key values are refused; nothing is written."""
    with pytest.raises(InvalidEvent):
        client.append(seeded, "th", "message", MSG, **{field: value})
    assert_unchanged(client, s3, settings, seeded)


def test_expected_seq_beyond_64_bits_conflicts_without_writing(client: JournalClient, s3: Any,
                                                                settings: Settings, seeded: str) -> None:
    """An absurd expected_seq (2**64) is a ConflictError and nothing is written."""
    with pytest.raises(ConflictError):
        client.append(seeded, "th", "message", MSG, expected_seq=2**64)
    assert_unchanged(client, s3, settings, seeded)


@pytest.mark.parametrize("item", [None, 42, "event", ["th", "message"], {"thread": "th"},
                                  {"thread": "th", "type": "message", "evil": 1}],
                         ids=["none", "int", "str", "list", "missing_type", "unknown_field"])
def test_malformed_batch_items_are_refused(client: JournalClient, s3: Any, settings: Settings, seeded: str,
                                           item: Any) -> None:
    """append_many refuses items that are not Drafts or well-formed mappings, and writes nothing."""
    with pytest.raises(InvalidEvent):
        client.append_many(seeded, [{"thread": "th", "type": "message", "payload": {}}, item])
    assert_unchanged(client, s3, settings, seeded)


def test_bad_durability_is_refused_before_writing(client: JournalClient, s3: Any, settings: Settings,
                                                  seeded: str) -> None:
    """An unknown durability level raises InvalidEvent and writes nothing."""
    with pytest.raises(InvalidEvent):
        client.append(seeded, "th", "message", MSG, durability="please")
    assert_unchanged(client, s3, settings, seeded)


def test_200_mb_payload_is_refused_as_too_large(client: JournalClient, s3: Any, settings: Settings,
                                                seeded: str) -> None:
    """A 200 MB string payload is PayloadTooLarge (refused while walking, before msgpack) and writes nothing."""
    big = "x" * 200_000_000
    with pytest.raises(PayloadTooLarge) as info:
        client.append(seeded, "th", "message", {**MSG, "doc": big})
    assert info.value.limit == settings.max_payload_bytes
    # The size reported is the walker's lower bound, not a packed size: msgpack never ran on 200 MB.
    assert info.value.size <= settings.max_payload_bytes + len(big) + 8
    del big
    assert_unchanged(client, s3, settings, seeded)


def test_many_small_values_over_the_limit_are_refused(client: JournalClient, s3: Any, settings: Settings,
                                                      seeded: str) -> None:
    """A payload of millions of floats over the limit is PayloadTooLarge from the size lower bound."""
    count = settings.max_payload_bytes // 9 + 1
    with pytest.raises(PayloadTooLarge):
        client.append(seeded, "th", "message", [0.5] * count)
    assert_unchanged(client, s3, settings, seeded)


def test_huge_map_key_is_refused_as_too_large(client: JournalClient, s3: Any, settings: Settings,
                                              seeded: str) -> None:
    """Map keys count toward the size limit too: one 40 MB key is PayloadTooLarge."""
    with pytest.raises(PayloadTooLarge):
        client.append(seeded, "th", "message", {**MSG, "k" * (settings.max_payload_bytes + 1): 1})
    assert_unchanged(client, s3, settings, seeded)


def test_shared_references_are_not_cycles(client: JournalClient, tenant: str) -> None:
    """The same list referenced twice (a DAG, not a cycle) is accepted and stored twice."""
    shared = [1, 2]
    rec = client.append(tenant, "th", "message", {**MSG, "a": shared, "b": shared, "c": (shared, shared)})
    assert client.read(tenant, "th")[0].payload == {**MSG, "a": [1, 2], "b": [1, 2], "c": [[1, 2], [1, 2]]}
    assert rec.seq == 1


class Level(IntEnum):
    """An IntEnum payload value."""

    HIGH = 3


class Colour(StrEnum):
    """A StrEnum payload value."""

    RED = "red"


class EvilInt(int):
    """An int subclass lying about its value through __int__/__index__."""

    def __int__(self) -> int:
        return 2**100

    def __index__(self) -> int:
        return 2**100


class EvilStr(str):
    """A str subclass whose __str__ raises."""

    __slots__ = ()

    def __str__(self) -> str:
        raise RuntimeError("no")


def test_scalar_subclasses_are_stored_as_their_plain_value(client: JournalClient, tenant: str) -> None:
    """IntEnum/StrEnum and int/str subclasses with hostile dunders are stored as their exact base value."""
    client.append(tenant, "th", "message",
                  {**MSG, "lvl": Level.HIGH, "c": Colour.RED, "e": EvilInt(5), "s": EvilStr("v")})
    assert client.read(tenant, "th")[0].payload == {**MSG, "lvl": 3, "c": "red", "e": 5, "s": "v"}


def test_bytes_are_plain_data_stored_as_bytes(client: JournalClient, tenant: str) -> None:
    """bytes (msgpack bin) are accepted, bytearray/memoryview stored as bytes; as a map key they stay refused."""
    client.append(tenant, "th", "message", {**MSG, "b": b"\x00\xff", "ba": bytearray(b"ab"), "mv": memoryview(b"cd")})
    client.append(tenant, "th", "x.acme.raw", b"raw")
    first, second = client.read(tenant, "th")
    assert (first.payload["b"], first.payload["ba"], first.payload["mv"]) == (b"\x00\xff", b"ab", b"cd")
    assert all(type(first.payload[k]) is bytes for k in ("b", "ba", "mv")) and second.payload == b"raw"


def test_batch_with_hostile_last_event_writes_nothing_and_uploads_no_blob(
    client: JournalClient, s3: Any, settings: Settings, tenant: str
) -> None:
    """In append_many, a hostile LAST event refuses the whole batch: no entry, no head, no blob of event 0."""
    big = {**MSG, "blob": os.urandom(settings.blob_threshold).hex()}  # over the threshold: would go to S3
    for hostile in ({"x": math.nan}, {"x": {1, 2}}, {"x": "x" * (settings.max_payload_bytes + 1)}):
        batch = [Draft("th", "message", big), Draft("th2", "message", {**MSG, "ok": 1}),
                 Draft("th", "message", hostile)]
        with pytest.raises(InvalidEvent) as info:
            client.append_many(tenant, batch)
        if isinstance(info.value, UnserializableValue):
            assert info.value.path == "event[2].payload.x"
        assert_nothing_stored(client, s3, settings, tenant)
    with pytest.raises(InvalidIdentifier):  # a hostile thread in the last mapping: refused while building drafts
        client.append_many(tenant, [{"thread": "th", "type": "message", "payload": big},
                                    {"thread": "../b", "type": "message"}])
    assert_nothing_stored(client, s3, settings, tenant)


def test_big_event_alone_does_upload_its_blob(client: JournalClient, s3: Any, settings: Settings,
                                              tenant: str) -> None:
    """Control for the batch test: the same big event, valid, does reach S3 under the tenant prefix."""
    big = {**MSG, "blob": os.urandom(settings.blob_threshold).hex()}
    rec = client.append(tenant, "th", "message", big)
    assert rec.blob is not None
    assert objects_under(s3, settings, tenant) == [f"{tenant}/blobs/{rec.blob.sha256}"]


# -- generated ----------------------------------------------------------------------------------------

_plain_leaf = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=8)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(blacklist_categories=("Cs",),
                                                                                         blacklist_characters="\x00"),
                                                                       max_size=8))
_plain = st.recursive(_plain_leaf, lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(st.text("abcxyz", min_size=1, max_size=4), c, max_size=3), max_leaves=8)
_hostile_leaf = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, Decimal("1"), 1j, Custom(),
                     dt.datetime(2020, 1, 1), frozenset(), len]),
    st.integers(min_value=2**64),
    st.integers(max_value=-(2**63) - 1),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=3), st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00"]),
              st.text(max_size=3)),
    st.sets(st.integers(), max_size=2),
)
_step = st.tuples(st.sampled_from(["list", "dict"]), st.integers(0, 3), st.text("klmn", min_size=1, max_size=4))


@st.composite
def planted(draw: st.DrawFn) -> tuple[Any, str]:
    """Plain data with one hostile leaf planted at a random path; returns (payload, path of the leaf)."""
    value = draw(_hostile_leaf)
    steps = draw(st.lists(_step, max_size=6))
    suffix = ""
    for kind, index, key in reversed(steps):
        if kind == "list":
            siblings = draw(st.lists(_plain, max_size=3))
            index = min(index, len(siblings))
            value = [*siblings[:index], value, *siblings[index:]]
            suffix = f"[{index}]{suffix}"
        else:
            siblings = draw(st.dictionaries(st.text("abc", min_size=1, max_size=3), _plain, max_size=3))
            value = {**siblings, key: value}
            suffix = f".{key}{suffix}"
    return value, "payload" + suffix


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(planted())
def test_generated_hostile_leaf_is_refused_naming_its_path(client: JournalClient, case: tuple[Any, str]) -> None:
    """Any plain tree with one hostile leaf is refused with UnserializableValue naming exactly that leaf."""
    payload, path = case
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    with pytest.raises(UnserializableValue) as info:
        client.append(tenant, "th", "message", payload)
    assert info.value.path == path
    assert client.redis.exists(keys.stream(tenant), keys.heads(tenant)) == 0


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_plain, min_size=1, max_size=4), planted())
def test_generated_batch_with_hostile_last_event_writes_nothing(client: JournalClient, fine: list[Any],
                                                                case: tuple[Any, str]) -> None:
    """A generated batch whose last event is hostile is refused whole, naming the last event."""
    payload, path = case
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    drafts = [Draft(f"th{i % 2}", "message", {**MSG, "v": p}) for i, p in enumerate(fine)]
    drafts.append(Draft("th0", "message", payload))
    with pytest.raises(UnserializableValue) as info:
        client.append_many(tenant, drafts)
    assert info.value.path == path.replace("payload", f"event[{len(fine)}].payload", 1)
    assert client.redis.exists(keys.stream(tenant), keys.heads(tenant)) == 0
