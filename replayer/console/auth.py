"""Who is looking: sign-in with a tenant reader's login or an operator credential, and signed sessions.

A session lives on the server (its reader URL holds a password, which never goes into a cookie);
the browser holds only the session id, signed with itsdangerous and stamped, so a forged cookie
fails the signature and an old one fails ``max_age`` before the server looks it up. Each session
keeps one :class:`~replayer.replay.Replayer` (one PostgreSQL connection): a reader's reads run
as its own login, so row-level security decides what it sees, whatever URL it asks for.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import psycopg
from itsdangerous import BadSignature, URLSafeTimedSerializer

from journal import durable, logs
from journal.errors import AccessDenied, ConfigError, StoreUnavailable
from journal.keys import validate_id
from journal.settings import Settings, with_credentials
from replayer.replay import Replayer

READER = "reader"
OPERATOR = "operator"
#: The user name that goes with the token ``serve`` prints.
TOKEN_USER = "operator"
COOKIE = "aj_console"


log = logs.get_logger("replayer.console.auth")


def checks_passwords(database_url: str) -> bool:
    """Whether the PostgreSQL of ``database_url`` refuses its user with a wrong password (it may not: trust)."""
    user = unquote(urlsplit(database_url).username or "postgres")
    try:
        with psycopg.connect(with_credentials(database_url, user, secrets.token_urlsafe(12)), connect_timeout=5):
            return False
    except psycopg.OperationalError:
        return True


class SignInFailed(AccessDenied):
    """The credentials given at sign-in are not a tenant reader's login nor an operator's credential."""


@dataclass(slots=True)
class Session:
    """One signed-in auditor or operator: whom they read as, and until when."""

    sid: str
    kind: str
    user: str
    tenant: str | None
    expires: float
    reader_url: str | None = None
    _replayer: Replayer | None = None
    #: A psycopg connection serves one statement at a time; requests of one session may overlap.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        with self.lock:
            if self._replayer is not None:
                self._replayer.close()
                self._replayer = None


class Sessions:
    """Server-side sessions keyed by a random id, handed to the browser as a signed, timed cookie."""

    def __init__(self, settings: Settings, *, secret: bytes | None = None, ttl: float = 8 * 3600,
                 token: str | None = None) -> None:
        if not settings.database_url:
            raise ConfigError("the console needs PostgreSQL: set JOURNAL_DATABASE_URL or run `agent-journal up`")
        self.settings = settings
        self.ttl = ttl
        # A fresh secret per process: restarting the console signs everyone out, which is what a
        # read-only tool with no user database wants (no secret to store or rotate).
        self._signer = URLSafeTimedSerializer(secret or secrets.token_bytes(32), salt="agent-journal-console")
        self.token = token or secrets.token_urlsafe(24)
        self._sessions: dict[str, Session] = {}
        self._mutex = threading.Lock()
        parts = urlsplit(settings.database_url)
        self._admin_user = unquote(parts.username or "")
        self._admin_password = unquote(parts.password or "")

    # -- sign-in -----------------------------------------------------------------------------------

    def sign_in(self, user: str, password: str, tenant: str | None = None) -> Session:
        """A new session for a tenant reader (its tenant from ``tenant_roles``) or an operator (``tenant`` named)."""
        if not user or not password:
            raise SignInFailed("give a user name and a password")
        if self._is_operator(user, password):
            tenant = validate_id(tenant, "tenant") if tenant else None
            return self._new(OPERATOR, user, tenant, None)
        url = with_credentials(self.settings.database_url or "", user, password)
        try:
            with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
                if not conn.pgconn.used_password:
                    # trust (or ident, peer…) let the login in without the password: anyone who knows a reader
                    # role's name would be that reader. The same answer as a wrong password: no oracle.
                    log.error("console_sign_in_refused_password_not_checked", user=user,
                              fix="require scram-sha-256 for the journal's reader roles in pg_hba.conf")
                    raise SignInFailed("wrong user name or password")
                row = conn.execute(durable.BOUND_TENANT_SQL).fetchone()
        except psycopg.OperationalError as e:
            # The same answer for a wrong password and an unknown user: no oracle for role names.
            if "password authentication failed" in str(e) or "does not exist" in str(e):
                raise SignInFailed("wrong user name or password") from e
            raise StoreUnavailable(f"PostgreSQL unreachable: {e}") from e
        except psycopg.Error as e:
            raise SignInFailed(f"this login cannot read the journal: {e}") from e
        if row is None:
            raise SignInFailed(f"{user} is not a tenant reader (no row in journal.tenant_roles); operators sign in "
                               f"as {TOKEN_USER!r} with the token `agent-journal serve` printed")
        return self._new(READER, user, str(row[0]), url)

    def _is_operator(self, user: str, password: str) -> bool:
        token_ok = hmac.compare_digest(user.encode(), TOKEN_USER.encode()) & hmac.compare_digest(
            password.encode(), self.token.encode())
        admin_ok = bool(self._admin_password) and hmac.compare_digest(user.encode(), self._admin_user.encode()) \
            & hmac.compare_digest(password.encode(), self._admin_password.encode())
        return bool(token_ok or admin_ok)

    def _new(self, kind: str, user: str, tenant: str | None, reader_url: str | None) -> Session:
        s = Session(secrets.token_urlsafe(24), kind, user, tenant, time.time() + self.ttl, reader_url)
        with self._mutex:
            self._reap()
            self._sessions[s.sid] = s
        return s

    def _reap(self) -> None:
        now = time.time()
        for sid in [sid for sid, s in self._sessions.items() if s.expires <= now]:
            self._sessions.pop(sid).close()

    # -- cookies -----------------------------------------------------------------------------------

    def cookie_value(self, session: Session) -> str:
        return self._signer.dumps(session.sid)

    def from_cookie(self, value: str | None) -> Session | None:
        """The live session a cookie names; None if absent, forged, expired or signed out."""
        if not value:
            return None
        try:
            sid = self._signer.loads(value, max_age=max(1, int(self.ttl)))
        except BadSignature:  # SignatureExpired is a BadSignature too
            return None
        with self._mutex:
            s = self._sessions.get(sid) if isinstance(sid, str) else None
            if s is not None and s.expires <= time.time():
                self._sessions.pop(sid).close()
                return None
            return s

    def sign_out(self, session: Session) -> None:
        with self._mutex:
            self._sessions.pop(session.sid, None)
        session.close()

    def close(self) -> None:
        with self._mutex:
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.close()

    # -- reading as the session --------------------------------------------------------------------

    @contextmanager
    def replayer(self, session: Session) -> Iterator[Replayer]:
        """The session's replayer, one request at a time: as the reader's own login, or as ``journal_app``."""
        with session.lock:
            if session._replayer is None:
                session._replayer = Replayer.from_settings(self.settings, reader_url=session.reader_url,
                                                           use_redis=session.kind == OPERATOR)
            try:
                yield session._replayer
            except (StoreUnavailable, psycopg.OperationalError):
                # A dropped connection is not reused: the next request of the session connects again.
                session._replayer.close()
                session._replayer = None
                raise
