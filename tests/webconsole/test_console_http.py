"""The audit console over raw HTTP (Starlette's TestClient) against the real PostgreSQL, Valkey and S3.

Who may see what: unauthenticated requests, forged and expired cookies, and URLs naming another
tenant's threads get nothing of the tenant's data; a reader sees its own tenant, through RLS.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from itsdangerous import URLSafeTimedSerializer

with warnings.catch_warnings():
    # Starlette 1.x nudges towards httpx2 for its TestClient; httpx works and is what the project pins.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from journal.chain import key_bytes
from journal.settings import Settings
from replayer.bundle import verify_bundle
from replayer.console import Sessions, create_app
from replayer.console.app import CSP
from replayer.console.auth import COOKIE
from replayer.replay import Replayer

from .conftest import HOSTILE, SECRET, World  # noqa: F401

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def sessions(world: World) -> Iterator[Sessions]:
    s = Sessions(world.settings)
    yield s
    s.close()


@pytest.fixture
def http(world: World, sessions: Sessions) -> Iterator[TestClient]:
    with TestClient(create_app(world.settings, sessions=sessions), follow_redirects=False) as c:
        yield c


def sign_in(http: TestClient, user: str, password: str, tenant: str = "") -> None:
    r = http.post("/login", data={"user": user, "password": password, "tenant": tenant})
    assert r.status_code == 303, r.text
    assert COOKIE in r.cookies


def as_reader(http: TestClient, world: World) -> TestClient:
    sign_in(http, world.reader_a.role, world.reader_a.password)
    return http


def urls(tenant: str, thread: str) -> list[str]:
    base = f"/t/{tenant}/threads/{thread}"
    return [f"/t/{tenant}/threads", base, base + "?after=1", base + "/state?seq=1", base + "/state",
            base + "/diff?from=0&to=2", base + "/verify", base + "/bundle", base + "/events/1/payload"]


def test_unauthenticated_requests_are_sent_to_sign_in(http: TestClient, world: World) -> None:
    """Every data URL answers an anonymous request with a redirect to /login and none of the data."""
    for url in urls(world.a, "run-1"):
        r = http.get(url)
        assert r.status_code == 303 and r.headers["location"] == "/login", url
        assert "run-1" not in r.text and "refund" not in r.text


def test_wrong_password_and_non_reader_logins_are_refused(http: TestClient, world: World) -> None:
    """A wrong password, an unknown user and the operator name with a wrong token get 401 and no cookie."""
    for user, password in [(world.reader_a.role, "wrong"), ("nobody", "x"), ("operator", "not-the-token")]:
        r = http.post("/login", data={"user": user, "password": password})
        assert r.status_code == 401, (user, r.text)
        assert COOKIE not in r.cookies
    assert http.get(f"/t/{world.a}/threads").status_code == 303


def test_reader_sees_its_threads_and_nothing_of_another_tenant(http: TestClient, world: World) -> None:
    """A tenant reader lands on its own threads; tenant B's ids and content never show."""
    r = http.post("/login", data={"user": world.reader_a.role, "password": world.reader_a.password,
                                  "tenant": world.b})  # a reader cannot choose: its login is bound to A
    assert r.headers["location"] == f"/t/{world.a}/threads"
    assert http.get("/tenant").status_code == 403  # nor pick another one afterwards
    assert http.post("/tenant", data={"tenant": world.b}).status_code == 403
    page = http.get(f"/t/{world.a}/threads")
    assert page.status_code == 200
    assert all(t in page.text for t in ("run-1", "run-2", "tampered"))
    assert "secret-1" not in page.text and SECRET not in page.text


@pytest.mark.parametrize("which", ["b-tenant-url", "b-thread-under-a"])
def test_urls_naming_another_tenants_thread_show_nothing(http: TestClient, world: World, which: str) -> None:
    """Tenant B's thread under B's URL or under A's (RLS) is a 404 on every page, with none of its content."""
    as_reader(http, world)
    tenant = world.b if which == "b-tenant-url" else world.a
    for url in urls(tenant, "secret-1"):
        r = http.get(url)
        own_list = url == f"/t/{world.a}/threads"
        assert r.status_code == (200 if own_list else 404), (url, r.status_code)
        assert "secret-1" not in r.text or not own_list
        assert SECRET not in r.text and "search_orders" not in r.text, url


def test_forged_cookies_get_nothing(http: TestClient, world: World, sessions: Sessions) -> None:
    """A cookie that is garbage, re-signed with another secret, or an altered valid one is treated as none."""
    as_reader(http, world)
    good = http.cookies[COOKIE]
    sid = next(iter(sessions._sessions))  # the live session id, as a thief who guessed it would have it
    forged = [
        "garbage",
        URLSafeTimedSerializer(b"another secret", salt="agent-journal-console").dumps(sid),
        good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        sid,
    ]
    for value in forged:
        http.cookies.clear()
        http.cookies.set(COOKIE, value)
        r = http.get(f"/t/{world.a}/threads/run-1")
        assert r.status_code == 303 and r.headers["location"] == "/login", value
        assert "refund" not in r.text


def test_expired_cookie_gets_nothing(world: World) -> None:
    """A session past its lifetime is refused (the signed timestamp and the server-side expiry both)."""
    short = Sessions(world.settings, ttl=1)
    try:
        with TestClient(create_app(world.settings, sessions=short), follow_redirects=False) as http:
            as_reader(http, world)
            assert http.get(f"/t/{world.a}/threads").status_code == 200
            time.sleep(2.1)
            r = http.get(f"/t/{world.a}/threads/run-1")
            assert r.status_code == 303 and r.headers["location"] == "/login"
            assert "refund" not in r.text
    finally:
        short.close()


def test_signed_out_cookie_gets_nothing(http: TestClient, world: World) -> None:
    """After sign-out, the old cookie (replayed by a thief) no longer opens anything."""
    as_reader(http, world)
    old = http.cookies[COOKIE]
    assert http.post("/logout").status_code == 303
    http.cookies.set(COOKIE, old)
    assert http.get(f"/t/{world.a}/threads").status_code == 303


def test_operator_token_picks_a_tenant(http: TestClient, world: World, sessions: Sessions) -> None:
    """The operator token signs in without a tenant, then picks one and reads it as journal_app."""
    sign_in(http, "operator", sessions.token)
    assert http.get("/").headers["location"] == "/tenant"
    picker = http.get("/tenant").text
    assert world.a in picker and world.b in picker  # operators see every tenant to pick from
    assert "<title>Pick a tenant · agent-journal</title>" in picker and picker.count('id="tenants"') == 1
    r = http.post("/tenant", data={"tenant": world.b})
    assert r.headers["location"] == f"/t/{world.b}/threads"
    page = http.get(f"/t/{world.b}/threads/secret-1")
    assert page.status_code == 200 and SECRET in page.text
    # the picked tenant is the only one its URLs open
    assert http.get(f"/t/{world.a}/threads/run-1").status_code == 404


def test_admin_database_password_signs_in_as_operator(http: TestClient, world: World) -> None:
    """The admin user of JOURNAL_DATABASE_URL is an operator credential; a tenant named at sign-in opens."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(world.settings.database_url or "")
    if not parts.password:
        pytest.skip("the database URL carries no password")
    sign_in(http, unquote(parts.username or ""), unquote(parts.password), world.a)
    assert http.get(f"/t/{world.a}/threads").status_code == 200


def test_every_response_carries_a_strict_csp(http: TestClient, world: World) -> None:
    """Sign-in, data pages and errors all send a CSP that allows no script and no framing."""
    assert "script-src" not in CSP and "default-src 'none'" in CSP and "frame-ancestors 'none'" in CSP
    pages = [http.get("/login"), http.get("/t/x/threads")]
    as_reader(http, world)
    pages += [http.get(f"/t/{world.a}/threads/run-1"), http.get(f"/t/{world.a}/threads/nope")]
    for r in pages:
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["cache-control"] == "no-store"


def test_hostile_payload_is_escaped_text(http: TestClient, world: World) -> None:
    """A payload carrying <script> and onerror= appears only HTML-escaped, in the timeline and the state."""
    as_reader(http, world)
    for url in (f"/t/{world.a}/threads/run-1", f"/t/{world.a}/threads/run-1/state?seq=5",
                f"/t/{world.a}/threads/run-1/events/5/payload"):
        text = http.get(url).text
        assert "<script>" not in text and "<img src=x" not in text and "<svg" not in text and "<iframe" not in text
        assert "&lt;script&gt;alert(" in text, url


def test_state_page_equals_replay(http: TestClient, world: World) -> None:
    """The state shown at a seq is exactly Replayer.replay(at_seq=) of the same reader."""
    as_reader(http, world)
    with Replayer.from_settings(world.settings, reader_url=world.reader_a.database_url(
            world.settings.database_url or "")) as r:
        for seq in (1, 4, 8, 12):
            page = http.get(f"/t/{world.a}/threads/run-1/state?seq={seq}")
            assert page.status_code == 200
            shown = _state_json(page.text)
            assert shown == json.loads(json.dumps(r.replay(world.a, "run-1", at_seq=seq).to_dict(), default=str))


def _state_json(html: str) -> object:
    import html as h
    import re

    m = re.search(r'<pre class="state" id="state-json">(.*?)</pre>', html, re.S)
    assert m, html[:500]
    return json.loads(h.unescape(m.group(1)))


def test_timeline_pages_by_seq(http: TestClient, world: World) -> None:
    """?after=N&size=K shows exactly seqs N+1..N+K, with links to the next page."""
    as_reader(http, world)
    import re

    text = http.get(f"/t/{world.a}/threads/run-1?after=2&size=3").text
    assert re.findall(r'<tr id="seq-(\d+)"', text) == ["3", "4", "5"]
    assert "?after=5&size=3" in text


def test_blob_payload_is_fetched_on_demand(http: TestClient, world: World) -> None:
    """The timeline links the S3 payload without fetching it; the payload page fetches and shows it."""
    as_reader(http, world)
    timeline = http.get(f"/t/{world.a}/threads/run-1").text
    assert "fetch payload from S3" in timeline and "x" * 1000 not in timeline
    page = http.get(f"/t/{world.a}/threads/run-1/events/8/payload")
    assert page.status_code == 200 and "x" * 1000 in page.text and "issue_refund" in page.text


def test_verify_page_names_the_first_bad_seq(http: TestClient, world: World) -> None:
    """The tampered thread's verdict names seq 3 and says seqs 1-2 verified; an untouched one verifies."""
    as_reader(http, world)
    text = http.get(f"/t/{world.a}/threads/tampered/verify").text
    assert 'id="first-bad-seq"' in text and ">3</a>" in text and 'id="verified-upto">2<' in text
    assert "Verified: seq 1–12" in http.get(f"/t/{world.a}/threads/run-1/verify").text


def test_bundle_download_verifies_offline(http: TestClient, world: World, tmp_path: Path) -> None:
    """The downloaded bundle is accepted by replayer.bundle.verify_bundle."""
    as_reader(http, world)
    r = http.get(f"/t/{world.a}/threads/run-1/bundle")
    assert r.status_code == 200 and r.headers["x-chain-verdict"] == "ok"
    assert "attachment" in r.headers["content-disposition"]
    path = tmp_path / "b.ajb"
    path.write_bytes(r.content)
    report = verify_bundle(path, key_bytes(world.settings.hash_key))
    assert report.ok, report.problems
    assert (report.tenant, report.thread, report.events, report.blobs) == (world.a, "run-1", 12, 1)


def test_bad_input_is_a_clear_400(http: TestClient, world: World) -> None:
    """Malformed numbers, times, spans and statuses are a 400 naming the problem, not a 500."""
    as_reader(http, world)
    base = f"/t/{world.a}/threads"
    for url, words in [(base + "/run-1?after=abc", "whole number"), (base + "/run-1/state?at=yesterday", "ISO"),
                       (base + "?idle=forever", "span"), (base + "?status=weird", "status"),
                       (base + "/run-1/state?seq=-1", "at least")]:
        r = http.get(url)
        assert r.status_code == 400 and words in r.text, (url, r.status_code, r.text[-300:])
    assert http.get(base + "/run-1/state?seq=999").status_code == 404


def test_thread_filters(http: TestClient, world: World) -> None:
    """Status, idle time and "called tool Y in the last N days" narrow the thread list."""
    as_reader(http, world)
    base = f"/t/{world.a}/threads"
    done = http.get(base + "?status=completed").text
    assert "run-1" in done and "run-2" not in done
    tool = http.get(base + "?tool=issue_refund&days=7").text
    assert "run-1" in tool and "run-2" not in tool and "tampered" not in tool
    assert "run-1" not in http.get(base + "?idle=30d").text


def test_state_json_equals_replay(http: TestClient, world: World) -> None:
    """/state.json is the replayed state's to_dict, for a seq and for a time."""
    as_reader(http, world)
    with Replayer.from_settings(world.settings, reader_url=world.reader_a.database_url(
            world.settings.database_url or "")) as r:
        want = json.loads(json.dumps(r.replay(world.a, "run-1", at_seq=6).to_dict(), default=str))
        at = r.history(world.a, "run-1", 5, 6)[0].at.isoformat()
    assert http.get(f"/t/{world.a}/threads/run-1/state.json?seq=6").json() == want
    shown = http.get(f"/t/{world.a}/threads/run-1/state.json", params={"at": at}).json()
    assert shown["last_seq"] >= 6  # every event of the fixture shares a millisecond or follows it
    assert http.get(f"/t/{world.b}/threads/secret-1/state.json").status_code == 404


def test_cross_site_form_posts_are_refused(http: TestClient, world: World) -> None:
    """A sign-in posted from another origin is refused with 403 and sets no cookie."""
    r = http.post("/login", data={"user": world.reader_a.role, "password": world.reader_a.password},
                  headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and COOKIE not in r.cookies


SYSTEM_TRUST_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def test_a_postgresql_that_does_not_check_passwords_lets_no_reader_sign_in(migrated: Settings) -> None:
    """Against a PostgreSQL with trust authentication (the machine's own, if it has one) any password would open
    any reader's login: sign-in is refused, with the right password or not, as a wrong password is; `serve`'s
    check says so. (The embedded PostgreSQL checks passwords: the other tests' readers sign in.)"""
    from replayer.console.auth import SignInFailed, checks_passwords

    try:
        with psycopg.connect(SYSTEM_TRUST_PG, connect_timeout=2) as conn:
            trusting = not conn.pgconn.used_password
    except psycopg.OperationalError:
        trusting = False
    if not trusting:
        pytest.skip("no PostgreSQL with trust authentication on 127.0.0.1:5432 to try")
    assert not checks_passwords(SYSTEM_TRUST_PG)
    sessions = Sessions(migrated.with_(database_url=SYSTEM_TRUST_PG))
    try:
        for password in ("wrong", "anything at all"):
            with pytest.raises(SignInFailed, match="wrong user name or password"):
                sessions.sign_in("postgres", password)
    finally:
        sessions.close()
