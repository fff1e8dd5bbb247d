"""The audit console in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

An auditor signs in with the tenant's reader login, opens a thread, clicks a step and sees the
state ``Replayer.replay(at_seq=)`` gives; sees a tampered thread's first bad seq; downloads a
bundle that ``verify_bundle`` accepts; and a payload full of ``<script>``/``onerror=`` fires
nothing. Skipped, with the install step, where no Chromium is installed. With
``JOURNAL_CONSOLE_SCREENSHOTS=docs/console`` the main pages are saved there for the README.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from journal.chain import key_bytes
from journal.embedded import free_port
from replayer.bundle import verify_bundle
from replayer.console import Sessions, create_app
from replayer.replay import Replayer

from .conftest import World

CHROMIUM = os.environ.get("JOURNAL_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HOW = "apt-get install -y chromium && pip install playwright (Playwright's own browser download is not used)"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium from the system package, or a skip that says how to get it."""
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        pytest.skip(f"no Chromium at {CHROMIUM}: {HOW}; or set JOURNAL_CHROMIUM to a Chromium binary")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"playwright is not installed: {HOW}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def base_url(world: World) -> Iterator[str]:
    """The console served by uvicorn on a free loopback port, in a thread of the test process."""
    import uvicorn

    sessions = Sessions(world.settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(world.settings, sessions=sessions), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sessions.close()


class Watch:
    """Everything a page does that would betray executed markup: dialogs, console errors, page errors."""

    def __init__(self, page: Any) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))


@pytest.fixture
def page(browser: Any, base_url: str, world: World) -> Iterator[tuple[Any, Watch]]:
    """A fresh browser context signed in as tenant A's reader, on the threads page."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1400, "height": 900}, accept_downloads=True)
    p = context.new_page()
    watch = Watch(p)
    p.goto("/login")
    shot(p, "login")
    p.fill("#user", world.reader_a.role)
    p.fill("#password", world.reader_a.password)
    p.click("#sign-in")
    p.wait_for_url(f"**/t/{world.a}/threads")
    yield p, watch
    context.close()


def shot(page: Any, name: str) -> None:
    folder = os.environ.get("JOURNAL_CONSOLE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def replayed(world: World, thread: str, seq: int) -> Any:
    url = world.reader_a.database_url(world.settings.database_url or "")
    with Replayer.from_settings(world.settings, reader_url=url) as r:
        return json.loads(json.dumps(r.replay(world.a, thread, at_seq=seq).to_dict(), default=str))


def test_click_a_step_shows_the_replayed_state(page: tuple[Any, Watch], world: World) -> None:
    """Sign in, open a thread, click a step: the state shown equals Replayer.replay(at_seq=) (and for a typed seq)."""
    p, watch = page
    assert p.locator("#threads a.thread", has_text="run-1").count() == 1
    assert p.locator("text=secret-1").count() == 0
    shot(p, "threads")
    p.click("#threads a.thread >> text=run-1")
    p.wait_for_selector("#timeline")
    assert p.locator("#timeline tr.step").count() == 12
    shot(p, "timeline")
    p.click("#seq-8 a.seq")
    p.wait_for_selector("#state-json")
    assert p.inner_text("#state-seq") == "8"
    assert json.loads(p.inner_text("#state-json")) == replayed(world, "run-1", 8)
    shot(p, "state")
    p.fill("#state-seq-input", "4")
    p.press("#state-seq-input", "Enter")
    p.wait_for_url("**/state?seq=4")
    assert json.loads(p.inner_text("#state-json")) == replayed(world, "run-1", 4)
    p.click("#diff-button")
    p.wait_for_selector("#diff")
    assert p.locator("#diff section").count() >= 1  # seq 4 resolved call c1: something changed
    shot(p, "diff")
    assert watch.dialogs == [] and watch.errors == []


def test_tampered_thread_shows_its_first_bad_seq(page: tuple[Any, Watch], world: World) -> None:
    """The chain page of a thread tampered at seq 3 names seq 3 and says seqs up to 2 verified."""
    p, watch = page
    p.click("#threads a.thread >> text=tampered")
    p.click("#verify-link")
    p.wait_for_selector("#verdict")
    assert p.inner_text("#first-bad-seq") == "3"
    assert p.inner_text("#verified-upto") == "2"
    assert p.inner_text("#bad-reason") == "changed"
    shot(p, "verify")
    p.click("#first-bad-seq")
    p.wait_for_selector("#seq-3.marked")
    assert watch.dialogs == [] and watch.errors == []


def test_downloaded_bundle_verifies(page: tuple[Any, Watch], world: World, tmp_path: Path) -> None:
    """The bundle the browser downloads is accepted by replayer.bundle.verify_bundle."""
    p, _ = page
    p.click("#threads a.thread >> text=run-1")
    with p.expect_download() as d:
        p.click("#bundle-link")
    path = tmp_path / d.value.suggested_filename
    d.value.save_as(str(path))
    report = verify_bundle(path, key_bytes(world.settings.hash_key))
    assert report.ok, report.problems
    assert (report.thread, report.events, report.blobs) == ("run-1", 12, 1)


def test_hostile_payload_fires_nothing(page: tuple[Any, Watch], world: World) -> None:
    """A payload with <script>, onerror= and javascript: is shown as text on every page and runs nothing."""
    p, watch = page
    base = f"/t/{world.a}/threads/run-1"
    p.goto(base)
    p.click("#seq-5 summary")
    assert "<script>alert('xss')</script>" in p.inner_text("#seq-5 pre.payload")
    shot(p, "hostile-payload")
    for url in (base + "/events/5/payload", base + "/state?seq=5", base + "/diff?from=4&to=5"):
        p.goto(url)
        assert "<script>alert('xss')</script>" in p.inner_text("main")
    for url in (base, base + "/events/5/payload", base + "/state?seq=5"):
        p.goto(url)
        assert p.evaluate("document.scripts.length") == 0
        assert p.evaluate("document.querySelectorAll('img, svg, iframe').length") == 0
    p.wait_for_timeout(300)  # an onerror would fire asynchronously, after the image failed to load
    assert watch.dialogs == []
    assert watch.errors == []
