"""``agent-journal serve``: the audit console on loopback (``replayer.cli`` registers it through :func:`configure`)."""

from __future__ import annotations

import argparse
import ipaddress
import sys

DEFAULT_PORT = 8765


def configure(p: argparse.ArgumentParser) -> None:
    """Arguments and handler of the ``serve`` subcommand (kept here so that the CLI imports no web code)."""
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: loopback only; the console speaks plain HTTP)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--session-hours", type=float, default=8.0, help="sign-in lifetime in hours (default 8)")
    p.set_defaults(func=serve)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from journal.embedded import resolve
    from journal.settings import Settings
    from replayer.console.app import create_app
    from replayer.console.auth import TOKEN_USER, Sessions, checks_passwords

    settings = resolve(Settings.from_env(data_dir=args.data_dir))
    sessions = Sessions(settings, ttl=args.session_hours * 3600)
    app = create_app(settings, sessions=sessions)
    if not _loopback(args.host):
        print(f"warning: binding {args.host}, not loopback: sessions and passwords travel in plain HTTP; "
              "put a TLS proxy in front", file=sys.stderr)
    if not checks_passwords(settings.database_url or ""):
        print("warning: PostgreSQL let a login in with a wrong password (trust authentication?): tenant readers "
              "cannot sign in until pg_hba.conf requires scram-sha-256 for them; operators still can",
              file=sys.stderr)
    # The operator token goes to stderr, once: it is a credential, not output to pipe somewhere.
    print(f"audit console on http://{args.host}:{args.port}/ — tenant readers sign in with their reader login; "
          f"operators as {TOKEN_USER!r} with token {sessions.token}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", server_header=False)
    return 0
