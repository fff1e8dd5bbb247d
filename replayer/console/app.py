"""The audit console: a read-only, server-rendered web view of a tenant's threads.

threads → a thread's timeline (keyset pages by seq) → the state at a step, the diff between two
steps → the chain verdict → the audit bundle. Every read goes through the session's
:class:`~replayer.replay.Replayer`, so row-level security decides what is shown: a tenant reader
reads as its own PostgreSQL login. Payloads are untrusted agent output: Jinja2 autoescapes every
value, and the Content-Security-Policy allows no script at all (the pages need none), so markup
in a payload is text even if an escape were ever missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from journal import codec
from journal.errors import (
    AccessDenied,
    BlobError,
    ConfigError,
    InvalidIdentifier,
    InvalidQuery,
    JournalError,
    NotFound,
    StoreUnavailable,
)
from journal.keys import validate_id
from journal.settings import Settings
from journal.state import STATUSES, thaw
from journal.timespec import parse_since, parse_span, parse_time
from replayer.audit import export_bundle, state_diff, timeline, tool_usage
from replayer.console.auth import COOKIE, OPERATOR, Session, Sessions, SignInFailed
from replayer.replay import Replayer
from replayer.sources import THREAD_LIST_SQL

HERE = Path(__file__).parent
PAGE = 100
MAX_PAGE = 500
#: Inline payloads longer than this are clipped in the timeline; the payload page shows them whole.
INLINE_CHARS = 2000
#: The payload and state pages show at most this much text (a blob, or a long conversation's state,
#: may be many megabytes); the state's JSON link gives it whole.
PAYLOAD_CHARS = 1_000_000
THREAD_LIMIT = 500
FAILED_SIGN_IN_DELAY = 0.5

#: No script, no frames, no plugins, no foreign origins: the pages are plain HTML and one stylesheet.
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    # Audit data stays out of shared and back-button caches.
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Scope], Awaitable[None]]], Awaitable[None]]


def pretty(value: Any) -> str:
    """A payload or state as indented JSON text (escaped by the template, never interpreted)."""
    return json.dumps(thaw(value), indent=2, sort_keys=True, ensure_ascii=False, default=codec.show_default)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width] + f"\n… ({len(text) - width:,} more characters)"


def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["pretty"] = pretty
    env.filters["clip"] = _clip
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if d else "-"
    return env


class SecurityHeaders:
    """Adds the CSP and friends to every response, and ``Server-Timing`` (time until the response started)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Scope], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def wrapped(message: Scope) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - t0) * 1000
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS,
                                      (b"server-timing", f"app;dur={ms:.2f}".encode())]
            await send(message)

        await self.app(scope, receive, wrapped)


class Console:
    """The console's routes over one :class:`Sessions` (and so one set of settings)."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions
        self.env = _templates()

    # -- plumbing ----------------------------------------------------------------------------------

    def render(self, request: Request, name: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        session = self.sessions.from_cookie(request.cookies.get(COOKIE))
        html = self.env.get_template(name).render(request=request, session=session, **ctx)
        return HTMLResponse(html, status_code=status_code)

    def session(self, request: Request) -> Session:
        s = self.sessions.from_cookie(request.cookies.get(COOKIE))
        if s is None:
            raise HTTPException(303, headers={"location": "/login"})
        return s

    def scoped(self, request: Request) -> tuple[Session, str]:
        """The session and the tenant of the URL, which must be the session's: another tenant's URL shows nothing."""
        s = self.session(request)
        tenant = request.path_params["tenant"]
        if s.tenant is None:
            raise HTTPException(303, headers={"location": "/tenant"})
        if tenant != s.tenant:
            # The same answer as a thread that does not exist: nothing to learn about other tenants.
            raise NotFound("nothing here for this session")
        return s, tenant

    def thread_of(self, request: Request) -> str:
        return validate_id(request.path_params["thread"], "thread")

    @staticmethod
    def _int(request: Request, name: str, default: int | None = None, low: int = 0) -> int | None:
        raw = request.query_params.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError as e:
            raise InvalidQuery(f"{name} must be a whole number, got {raw!r}") from e
        if value < low:
            raise InvalidQuery(f"{name} must be at least {low}, got {value}")
        return value

    @staticmethod
    def same_origin(request: Request) -> None:
        """Refuse a form posted from another site (the SameSite=Strict cookie is the first guard, this the second)."""
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
            raise AccessDenied(f"a form posted from {origin} is refused: sign in from the console's own pages")

    # -- sign-in -----------------------------------------------------------------------------------

    def login_page(self, request: Request) -> Response:
        return self.render(request, "login.html", error=None)

    async def login(self, request: Request) -> Response:
        self.same_origin(request)
        form = await request.form()
        user, password = str(form.get("user", "")), str(form.get("password", ""))
        tenant = str(form.get("tenant", "")).strip() or None
        try:
            s = await run_in_threadpool(self.sessions.sign_in, user, password, tenant)
        except (SignInFailed, InvalidIdentifier) as e:
            # A pause per failure slows password guessing (each guess is also a PostgreSQL SCRAM login).
            await asyncio.sleep(FAILED_SIGN_IN_DELAY)
            return self.render(request, "login.html", status_code=401, error=str(e), user=user)
        # A new sign-in replaces the browser's previous session rather than leaving it alive.
        old = self.sessions.from_cookie(request.cookies.get(COOKIE))
        if old is not None:
            self.sessions.sign_out(old)
        target = f"/t/{s.tenant}/threads" if s.tenant else "/tenant"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, self.sessions.cookie_value(s), max_age=int(self.sessions.ttl), httponly=True,
                            samesite="strict", path="/")
        return response

    def logout(self, request: Request) -> Response:
        self.same_origin(request)
        s = self.sessions.from_cookie(request.cookies.get(COOKIE))
        if s is not None:
            self.sessions.sign_out(s)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    def home(self, request: Request) -> Response:
        s = self.session(request)
        return RedirectResponse(f"/t/{s.tenant}/threads" if s.tenant else "/tenant", status_code=303)

    async def tenant(self, request: Request) -> Response:
        """An operator picks the tenant to read as (journal_app with the tenant set per transaction)."""
        s = self.session(request)
        if s.kind != OPERATOR:
            raise AccessDenied("a tenant reader reads its own tenant only")
        if request.method == "POST":
            self.same_origin(request)
            form = await request.form()
            try:
                s.tenant = validate_id(str(form.get("tenant", "")).strip(), "tenant")
            except InvalidIdentifier as e:
                return self.render(request, "tenant.html", status_code=400, error=str(e))
            return RedirectResponse(f"/t/{s.tenant}/threads", status_code=303)
        return self.render(request, "tenant.html", error=None, tenants=await run_in_threadpool(self._tenants))

    def _tenants(self) -> list[Any]:
        """Every tenant PostgreSQL holds threads of (operators only; read as journal_writer, which sees all)."""
        from projections.inspect import tenants

        try:
            return list(tenants(self.sessions.settings))
        except JournalError:
            return []  # the picker still takes a typed id

    # -- pages -------------------------------------------------------------------------------------

    def threads(self, request: Request) -> Response:
        s, tenant = self.scoped(request)
        q = request.query_params
        status = q.get("status") or None
        if status is not None and status not in STATUSES:
            raise InvalidQuery(f"status must be one of {', '.join(STATUSES)}")
        idle = q.get("idle", "").strip() or None
        idle_for = parse_span(idle) if idle else None
        tool = q.get("tool", "").strip() or None
        days = self._int(request, "days", 30, low=1) or 30
        usage = {}
        with self.sessions.replayer(s) as r:
            if tool:
                usage = {u.thread: u for u in tool_usage(r, tenant, tool, parse_since(f"{days}d"))}
            idle_since = datetime.now(UTC) - idle_for if idle_for else None
            params = {"tenant": tenant, "status": status, "idle_since": idle_since,
                      "only": list(usage) if tool else None, "limit": THREAD_LIMIT}
            pg = _pg(r)
            with pg.scope(tenant):
                rows = pg.conn.execute(THREAD_LIST_SQL, params).fetchall()
        now = datetime.now(UTC)
        threads = [dict(thread=t, status=st, last_seq=ls, max_seq=ms, events=n, node=node, created=c, updated=u,
                        fenced=f, idle=_ago(now - u), usage=usage.get(t))
                   for t, st, ls, ms, n, node, c, u, f in rows]
        return self.render(request, "threads.html", tenant=tenant, threads=threads, status=status, idle=idle,
                           tool=tool, days=days, statuses=STATUSES, limit=THREAD_LIMIT)

    def thread(self, request: Request) -> Response:
        """The timeline, one keyset page (seq > after) at a time: a 100,000-event thread reads only its page."""
        s, tenant = self.scoped(request)
        thread = self.thread_of(request)
        size = min(self._int(request, "size", PAGE, low=1) or PAGE, MAX_PAGE)
        jump = self._int(request, "seq", None, low=1)
        after = self._int(request, "after", 0) or 0
        if jump is not None:
            # Show the asked-for step near the top of its page, with a few before it for context.
            after = max(0, jump - 1 - 5)
        mark = jump or self._int(request, "mark", None, low=1)
        with self.sessions.replayer(s) as r:
            pg = _pg(r)
            head = pg.thread_head(tenant, thread)
            latest = r.latest_seq(tenant, thread)
            if latest == 0:
                raise NotFound(f"thread {tenant}/{thread} has no events (or this reader may not see them)")
            after = min(after, max(0, latest - 1))
            steps = timeline(r, tenant, thread, after, after + size)
            events = {e.seq: e for e in r.history(tenant, thread, after, after + size, resolve_blobs=False)}
        rows = []
        for st in steps:
            e = events.get(st.seq)
            text = None if e is None or e.blob is not None else pretty(e.payload)
            actor = pretty(e.actor) if e is not None and e.actor else None
            rows.append(dict(step=st, event=e, payload=text, actor=actor))
        return self.render(request, "timeline.html", tenant=tenant, thread=thread, head=head, latest=latest,
                           rows=rows, after=after, size=size, mark=mark, inline=INLINE_CHARS,
                           prev_after=max(0, after - size) if after else None,
                           next_after=after + size if after + size < latest else None,
                           last_after=max(0, latest - size))

    def _replay(self, request: Request) -> tuple[str, str, Any, int, str]:
        s, tenant = self.scoped(request)
        thread = self.thread_of(request)
        seq = self._int(request, "seq", None)
        at_raw = request.query_params.get("at", "").strip()
        at = parse_time(at_raw) if at_raw and seq is None else None
        with self.sessions.replayer(s) as r:
            st = r.replay(tenant, thread, at_seq=seq, at_time=at)
            latest = r.latest_seq(tenant, thread)
        return tenant, thread, st, latest, at_raw

    def state(self, request: Request) -> Response:
        """The state after a seq (a clicked step, or a typed seq) or after the last event at a typed time."""
        tenant, thread, st, latest, at_raw = self._replay(request)
        text = pretty(st.to_dict())
        return self.render(request, "state.html", tenant=tenant, thread=thread, state=st, latest=latest, at=at_raw,
                           state_json=text[:PAYLOAD_CHARS], clipped=max(0, len(text) - PAYLOAD_CHARS))

    def state_json(self, request: Request) -> Response:
        """The same state as JSON (``agent-journal replay --format json``), whole however large."""
        _, _, st, _, _ = self._replay(request)
        return Response(json.dumps(st.to_dict(), ensure_ascii=False, default=codec.show_default),
                        media_type="application/json")

    def diff(self, request: Request) -> Response:
        s, tenant = self.scoped(request)
        thread = self.thread_of(request)
        a = self._int(request, "from", 0)
        b = self._int(request, "to", None)
        with self.sessions.replayer(s) as r:
            b = r.latest_seq(tenant, thread) if b is None else b
            d = state_diff(r, tenant, thread, a or 0, b)
        sections = {k: (v if isinstance(v, list) else [v]) for k, v in d.items() if k not in ("from_seq", "to_seq")}
        return self.render(request, "diff.html", tenant=tenant, thread=thread, a=a, b=b, sections=sections)

    def verify(self, request: Request) -> Response:
        s, tenant = self.scoped(request)
        thread = self.thread_of(request)
        with self.sessions.replayer(s) as r:
            (verdict,) = r.verify(tenant, thread)
        return self.render(request, "verify.html", tenant=tenant, thread=thread, v=verdict,
                           head_hex=verdict.head_hash.hex() if verdict.head_hash else None)

    def payload(self, request: Request) -> Response:
        """One event's payload, fetched from S3 when it was offloaded (on demand: the timeline never fetches blobs)."""
        s, tenant = self.scoped(request)
        thread = self.thread_of(request)
        seq = int(request.path_params["seq"])
        with self.sessions.replayer(s) as r:
            found = r.history(tenant, thread, seq - 1, seq, resolve_blobs=False) if seq > 0 else []
            if not found:
                raise NotFound(f"thread {tenant}/{thread} has no seq {seq} (or this reader may not see it)")
            event = found[0]
            resolved = r.resolve_blobs([event])[0] if event.blob is not None else event
        return self.render(request, "payload.html", tenant=tenant, thread=thread, event=event,
                           text=_clip(pretty(resolved.payload), PAYLOAD_CHARS))

    def bundle(self, request: Request) -> Response:
        """The thread's audit bundle (``agent-journal verify --bundle`` checks it offline), built per download."""
        s, tenant = self.scoped(request)
        thread = self.thread_of(request)
        folder = Path(tempfile.mkdtemp(prefix="aj-console-"))
        try:
            with self.sessions.replayer(s) as r:
                done = export_bundle(r, tenant, thread, folder / f"{tenant}-{thread}.ajb")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        # Exported even when the chain is broken (the bundle is then the evidence); the header says so.
        verdict = "ok" if done.chain.ok else f"broken at seq {done.chain.first_bad_seq} ({done.chain.reason})"
        return FileResponse(done.path, media_type="application/octet-stream", filename=done.path.name,
                            headers={"x-chain-verdict": verdict},
                            background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))

    # -- errors ------------------------------------------------------------------------------------

    def journal_error(self, request: Request, exc: Exception) -> Response:
        code = 500
        if isinstance(exc, NotFound):
            code = 404
        elif isinstance(exc, InvalidQuery | InvalidIdentifier):
            code = 400
        elif isinstance(exc, AccessDenied):
            code = 403
        elif isinstance(exc, StoreUnavailable | BlobError | ConfigError):
            code = 503
        title = {404: "Not found", 400: "Bad request", 403: "Not allowed", 503: "Unavailable"}.get(code, "Error")
        return self.render(request, "error.html", status_code=code, title=title, message=str(exc))


def _pg(r: Replayer) -> Any:
    if r.pg is None:
        raise ConfigError("the console needs PostgreSQL: set JOURNAL_DATABASE_URL or run `agent-journal up`")
    return r.pg


def _ago(delta: Any) -> str:
    secs = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def create_app(settings: Settings, *, sessions: Sessions | None = None) -> Starlette:
    """The console as an ASGI app (serve it with uvicorn, or drive it with Starlette's TestClient)."""
    sessions = sessions or Sessions(settings)
    c = Console(sessions)
    t = "/t/{tenant}/threads/{thread}"
    routes = [
        Route("/", c.home),
        Route("/login", c.login_page, methods=["GET"]),
        Route("/login", c.login, methods=["POST"]),
        Route("/logout", c.logout, methods=["POST"]),
        Route("/tenant", c.tenant, methods=["GET", "POST"]),
        Route("/t/{tenant}/threads", c.threads),
        Route(t, c.thread),
        Route(t + "/state", c.state),
        Route(t + "/state.json", c.state_json),
        Route(t + "/diff", c.diff),
        Route(t + "/verify", c.verify),
        Route(t + "/bundle", c.bundle),
        Route(t + "/events/{seq:int}/payload", c.payload),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    async def on_journal_error(request: Request, exc: Exception) -> Response:
        return c.journal_error(request, exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        sessions.close()  # every session's PostgreSQL connection

    app = Starlette(routes=routes, exception_handlers={JournalError: on_journal_error}, lifespan=lifespan)
    app.state.sessions = sessions
    app.add_middleware(SecurityHeaders)
    return app
