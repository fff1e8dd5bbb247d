"""Abuse suite: hostile tenant, thread and type names never reach Redis, S3 or the key schema."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry

from journal import keys
from journal.blobs import BlobStore, s3_client
from journal.client import JournalClient
from journal.embedded import free_port
from journal.errors import InvalidEvent, InvalidIdentifier, StoreUnavailable
from journal.events import Draft
from journal.settings import Settings

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}

HOSTILE_NAMES: list[Any] = [
    # key-schema characters
    "{acme}", "acme}", "{", "}", "a:b", ":", "agent:v1:{x}:stream", "a*", "*",
    # glob patterns
    "?", "a?c", "[ab]", "[a-z]*", "\\*", "a]",
    # SQL fragments
    "acme'; DROP TABLE events;--", "' OR '1'='1", "a\"b", "1; SELECT pg_sleep(10)", "a--b;",
    # path traversal for object keys
    "../etc", "..", "a/../b", "a/b", "/etc/passwd", "%2e%2e/", "%2e%2e%2f", "..%2f", "a\\..\\b", "\\\\server\\share",
    "C:\\x", ".", ".hidden", "-rf", "a..b", "~root",
    # Unicode look-alikes and invisible characters
    "ａｃｍｅ", "асме", "acmе", "\u202eacme", "ac\u200dme", "ac\u200bme", "\ufeffacme", "acme\u00a0", "café", "a\u0301",
    "🙂", "ǅ", "İ",
    # sizes, emptiness, whitespace, control characters
    "x" * 129, "x" * 10_240, "", " ", "\t", "\n", "a b", " acme", "acme\n", "a\x00b", "\x00", "a\rb", "\x7f",
    # non-str
    None, 0, 1.5, b"acme", ["acme"], ("acme",), {"acme": 1},
]


def ids(values: list[Any]) -> list[str]:
    """Short, printable test ids."""
    return [f"{i}-{repr(v)[:24]}" for i, v in enumerate(values)]


@pytest.fixture(scope="module")
def offline_client(settings: Settings) -> Iterator[JournalClient]:
    """A real client whose Redis and S3 endpoints are closed ports: any I/O would fail with StoreUnavailable."""
    dead = free_port()
    r = redis.Redis(host="127.0.0.1", port=dead, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    blobs = BlobStore(s3_client(settings.with_(s3_url=f"http://127.0.0.1:{dead}")), "nowhere")
    with JournalClient(r, settings=settings, blobs=blobs) as c:
        yield c


CALLS: dict[str, Callable[[JournalClient, Any], object]] = {
    "append_tenant": lambda c, bad: c.append(bad, "th", "message", {**MSG, "big": "x" * 200_000}),
    "append_thread": lambda c, bad: c.append("acme", bad, "message", {**MSG, "big": "x" * 200_000}),
    "append_many_tenant": lambda c, bad: c.append_many(bad, [Draft("th", "message", MSG)]),
    "append_many_thread": lambda c, bad: c.append_many("acme", [{"thread": "ok", "type": "message"},
                                                                {"thread": bad, "type": "message"}]),
    "head_tenant": lambda c, bad: c.head(bad, "th"),
    "head_thread": lambda c, bad: c.head("acme", bad),
    "read_tenant": lambda c, bad: c.read(bad, "th"),
    "read_thread": lambda c, bad: c.read("acme", bad),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("bad", HOSTILE_NAMES, ids=ids(HOSTILE_NAMES))
def test_hostile_name_is_refused_before_any_io(offline_client: JournalClient, call: str, bad: Any) -> None:
    """Every hostile tenant/thread name raises InvalidIdentifier before the client touches Redis or S3."""
    with pytest.raises(InvalidIdentifier):
        CALLS[call](offline_client, bad)


def test_offline_client_fails_on_any_io(offline_client: JournalClient) -> None:
    """Control: a valid call on the offline client does reach for the network and fails with StoreUnavailable."""
    with pytest.raises(StoreUnavailable):
        offline_client.head("acme", "th")


HOSTILE_TYPES: list[Any] = [
    "{message}", "message:x", "message*", "mess?ge", "[a]", "x.acme.*", "x.acme.a:b", "x.{acme}.a", "x..a.b",
    "x.acme.../b", "x.acme.a/b", "x.acme.%2e%2e", "message'; DROP TABLE events;--", "ｍessage", "mеssage",
    "message\u200d", "\u202emessage", "x" * 10_240, "", " ", "message ", "mes\x00sage", "Message", "x.ACME.a",
    None, 1, b"message",
]


@pytest.mark.parametrize("bad", HOSTILE_TYPES, ids=ids(HOSTILE_TYPES))
def test_hostile_event_type_is_refused_before_any_io(offline_client: JournalClient, bad: Any) -> None:
    """Hostile event type names raise InvalidIdentifier before any I/O."""
    with pytest.raises(InvalidIdentifier):
        offline_client.append("acme", "th", bad, {})
    with pytest.raises(InvalidIdentifier):
        offline_client.append_many("acme", [{"thread": "th", "type": "message"}, {"thread": "th", "type": bad}])


def test_unknown_plain_type_is_invalid_event(offline_client: JournalClient) -> None:
    """A well-formed but unknown, unnamespaced type is InvalidEvent (not a store error)."""
    with pytest.raises(InvalidEvent):
        offline_client.append("acme", "th", "refund_issued", {})


def test_hostile_names_leave_the_real_stores_untouched(client: JournalClient, settings: Settings,
                                                       tenant: str) -> None:
    """Against the real servers, a hostile thread or type for a real tenant writes no key and no object."""
    for bad in HOSTILE_NAMES:
        with pytest.raises(InvalidIdentifier):
            client.append(tenant, bad, "message", {**MSG, "big": "x" * 200_000})
    for bad in HOSTILE_TYPES:
        with pytest.raises(InvalidIdentifier):
            client.append(tenant, "th", bad, {"big": "x" * 200_000})
    assert list(client.redis.scan_iter(match=f"agent:v1:{{{tenant}}}:*")) == []
    listed = s3_client(settings).list_objects_v2(Bucket=settings.s3_bucket, Prefix=f"{tenant}/")
    assert listed.get("KeyCount", 0) == 0


def test_hostile_names_are_not_valid_ids() -> None:
    """validate_id refuses every hostile name and the list is broad (at least 60 names)."""
    assert len(HOSTILE_NAMES) >= 60
    for bad in HOSTILE_NAMES:
        with pytest.raises(InvalidIdentifier):
            keys.validate_id(bad, "tenant")


_specials = st.sampled_from([*"{}:*?[]\\/.%\x00 ", "\ud800", "\u202e", "\u200d"])
_any_text = st.text(st.characters(codec="utf-8") | _specials, max_size=40)
_near_ids = st.from_regex(r"[A-Za-z0-9_./\\%{}:*-]{0,20}", fullmatch=True)
_names = _any_text | _near_ids
_digests = _any_text | st.from_regex(r"[0-9a-fA-F]{60,68}", fullmatch=True) | st.just("0" * 64)


def _segments_ok(key: str, tenant: str) -> None:
    assert key.startswith(tenant + "/")
    assert key.split("/")[0] == tenant
    parts = key.split("/")
    assert ".." not in parts and "." not in parts
    assert not any(".." in p for p in parts)
    assert "\\" not in key and "%" not in key and "\x00" not in key
    assert posixpath.normpath(key).startswith(tenant + "/") or posixpath.normpath(key) == tenant
    assert not key.startswith("/")


@given(_names, _digests)
def test_blob_key_never_escapes_the_tenant_prefix(tenant: str, digest: str) -> None:
    """blob_key either refuses (InvalidIdentifier) or yields '{tenant}/blobs/<64 hex>' with no '..' segment."""
    try:
        key = keys.blob_key(tenant, digest)
    except InvalidIdentifier:
        return
    _segments_ok(key, tenant)
    assert key == f"{tenant}/blobs/{digest}" and len(digest) == 64


@given(_names, _names)
def test_archive_prefix_never_escapes_the_tenant_prefix(tenant: str, thread: str) -> None:
    """archive_prefix either refuses or yields '{tenant}/archive/{thread}/' with no '..' segment."""
    try:
        prefix = keys.archive_prefix(tenant, thread)
    except InvalidIdentifier:
        return
    _segments_ok(prefix, tenant)
    assert prefix == f"{tenant}/archive/{thread}/" and "/" not in thread


@given(_names)
def test_redis_keys_carry_exactly_the_tenant_hash_tag(tenant: str) -> None:
    """Any accepted tenant yields keys with one hash tag equal to the tenant and no glob characters."""
    try:
        key = keys.stream(tenant)
    except InvalidIdentifier:
        return
    assert key == f"agent:v1:{{{tenant}}}:stream"
    assert key.count("{") == 1 and key.count("}") == 1 and keys.tenant_of_stream(key) == tenant
    assert not set(tenant) & set("{}:*?[]\\ \x00")


@given(_names, _names)
def test_distinct_tenants_never_share_a_prefix(a: str, b: str) -> None:
    """Two different accepted tenants never have one's object prefix or key tag inside the other's."""
    try:
        pa, pb = keys.archive_prefix(a, "th"), keys.archive_prefix(b, "th")
        ka, kb = keys.heads(a), keys.heads(b)
    except InvalidIdentifier:
        return
    if a != b:
        assert not pa.startswith(a + "/") or not pb.startswith(a + "/")
        assert f"{{{a}}}" not in kb and f"{{{b}}}" not in ka
