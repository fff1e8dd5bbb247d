"""Identifier and type validation keeps hostile names out of the key schema."""

from __future__ import annotations

import pytest

from journal import keys
from journal.client import JournalClient
from journal.errors import InvalidEvent, InvalidIdentifier

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}

HOSTILE_IDS = [
    "", " ", "a b", "a\tb", "a\nb", "{acme}", "acme}", "{", "a:b", "a*", "*", "?", "[ab]", "a/b", "../etc",
    "..", ".hidden", "-rf", "a\\b", "acme'; DROP TABLE events;--", "x" * 129, "x" * 10_000, "ａcme",
    "acmе", "a\x00b", "café", "\u202eevil", "a|b", "$(whoami)", "a%00", "ten ant", "🙂",
]


@pytest.mark.parametrize("bad", HOSTILE_IDS)
def test_hostile_tenant_and_thread_ids_are_refused(bad: str) -> None:
    """Every hostile id is refused as a tenant and as a thread with InvalidIdentifier."""
    with pytest.raises(InvalidIdentifier):
        keys.validate_id(bad, "tenant")
    with pytest.raises(InvalidIdentifier):
        keys.stream(bad)


def test_at_least_twenty_hostile_ids() -> None:
    """The hostile list covers at least 20 distinct ids."""
    assert len(set(HOSTILE_IDS)) >= 20


@pytest.mark.parametrize("good", ["acme", "t-1", "tenant_42", "a.b.c", "_tenant", "X" * 128])
def test_ordinary_ids_are_accepted(good: str) -> None:
    """Ordinary ids pass unchanged."""
    assert keys.validate_id(good) == good


@pytest.mark.parametrize("bad", ["Message", "x.acme", "x..a.b", "tool-call", "x.acme.Refund", "", "a" * 100, "x.a b.c"])
def test_bad_event_types_are_refused(bad: str) -> None:
    """Type names must be lower_snake built-ins or namespaced x.org.name."""
    with pytest.raises(InvalidIdentifier):
        keys.validate_type(bad)


def test_unknown_unnamespaced_type_is_refused() -> None:
    """A lower_snake name that is not built-in must be namespaced."""
    from journal.events import check_type

    with pytest.raises(InvalidEvent):
        check_type("refund_issued")
    assert check_type("x.acme.refund_issued") == "x.acme.refund_issued"


def test_client_refuses_hostile_ids_before_touching_redis(client: JournalClient, tenant: str) -> None:
    """append with a hostile tenant or thread raises before anything is written."""
    for bad in HOSTILE_IDS:
        with pytest.raises(InvalidIdentifier):
            client.append(bad, "thread", "message", MSG)
        with pytest.raises(InvalidIdentifier):
            client.append(tenant, bad, "message", MSG)
    assert client.redis.exists(keys.stream(tenant)) == 0


def test_keys_share_one_hash_tag() -> None:
    """Every key of a tenant carries the same {tenant} hash tag (one cluster slot)."""
    tag = "{acme}"
    for k in (keys.stream("acme"), keys.heads("acme"), keys.fences("acme"), keys.projected("acme"),
              keys.idempotency("acme", "th", "any key: with {braces}*")):
        assert k.count("{") == 1 and tag in k
