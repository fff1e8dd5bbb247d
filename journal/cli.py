"""The ``agent-journal`` command.

The write-path commands live here (``up``, ``down``, ``status``, ``env``, ``demo``). The
projector and the replayer add theirs through the ``agent_journal.commands`` entry point
group, so ``journal`` never imports the packages built on top of it; they share what is here:
``load_settings`` (only the servers a command needs, URLs checked first), the argument types,
and ``main``'s promise that any failure is one line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

from journal import local_stack, logs
from journal.errors import ConfigError, JournalError, StoreUnavailable
from journal.local_stack import SERVICES, resolve
from journal.settings import Settings

console = Console()

#: Hooks that add lines to `agent-journal status` (e.g. projector lag): f(settings) -> Table | None.
STATUS_HOOKS = "agent_journal.status"

#: The settings field and environment variable of each service's URL, and the schemes it accepts.
_URLS = {
    "redis": ("redis_url", "JOURNAL_REDIS_URL", ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"),
              "redis://[user:password@]host:port/db (or redis+cluster://[user:password@]host:port for a cluster)"),
    "postgres": ("database_url", "JOURNAL_DATABASE_URL", ("postgresql", "postgres"),
                 "postgresql://user:password@host:port/database"),
    "s3": ("s3_url", "JOURNAL_S3_URL", ("http", "https"), "http://host:port"),
}
_NAMES = {"redis": "a Redis", "postgres": "a PostgreSQL", "s3": "an S3"}
#: Modules whose exceptions are failures of a server or of its answer, not of agent-journal.
_DRIVERS = ("redis", "psycopg", "sqlalchemy", "alembic", "botocore", "boto3")
#: Exit codes: 2 for anything the user or the environment can fix, 70 (EX_SOFTWARE) for a bug.
EXIT_ERROR, EXIT_BUG = 2, 70
#: SQLSTATEs of a database the journal's schema was never migrated into: undefined table, object, schema.
_NO_SCHEMA = {"42P01", "42704", "3F000"}
#: What a server says when the credentials are wrong (PostgreSQL; Redis/Valkey WRONGPASS; missing password).
_AUTH_FAILURE = re.compile(r"authentication failed|no password supplied|WRONGPASS|invalid username-password|NOAUTH",
                           re.IGNORECASE)


class CliParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line (what is wrong, where to look) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}. See `{self.prog} --help`.\n")


# -- argument types: a wrong number is refused by the parser, before anything connects ----------------


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive integer (1 or more)")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer ≥ 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1..65535, or 0 for "off"."""
    value = _int(text)
    check_port(value, "the port")
    return value


def check_port(value: int, what: str) -> int:
    """``value`` if it is 0 (off) or a TCP port; otherwise a one-line refusal naming ``what``."""
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{what} {value} is out of range: give 1..65535 (or 0 for off)")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


# -- settings: only the services a command needs, URLs checked before any driver sees them -------------


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``, for error messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}"))


def check_url(url: str, service: str, source: str) -> str:
    """``url`` if it is a well-formed URL for ``service``; otherwise ConfigError naming ``source``."""
    _, _, schemes, example = _URLS[service]
    problem = None
    try:
        parts = urlsplit(url)
        if parts.scheme not in schemes:
            problem = f"its scheme is {parts.scheme!r}" if parts.scheme else "it has no scheme"
        elif parts.scheme != "unix" and not parts.hostname:
            problem = "it names no host"
        else:
            parts.port  # noqa: B018 -- urlsplit checks the port only when asked
    except ValueError as e:
        problem = str(e)
    if problem:
        raise ConfigError(f"{source}={redact(url)!r} is not {_NAMES[service]} URL ({problem}); expected {example}")
    return url


def check_urls(settings: Settings) -> Settings:
    """Every URL the environment configured, checked; ``settings`` unchanged."""
    for service, (field, env, _, _) in _URLS.items():
        value = getattr(settings, field)
        if value:
            check_url(value, service, env)
    return settings


def load_settings(args: argparse.Namespace, *, need: Iterable[str] = SERVICES, start: bool = False) -> Settings:
    """Settings from the environment and ``--data-dir``; the services in ``need`` must be there.

    A needed service without a ``JOURNAL_*_URL`` comes from the embedded stack (started with
    ``start``, else it must run). Services not needed are filled in only when they happen to
    run, so e.g. ``migrate`` against an external PostgreSQL demands neither Redis nor S3.
    """
    base = check_urls(Settings.from_env(data_dir=args.data_dir))
    missing = base.missing_urls
    if not missing:
        return base
    needed = [m for m in missing if m in set(need)]
    if start and needed:
        return resolve(base, start=True)
    data_dir = Path(base.data_dir).absolute()
    running = local_stack.running(data_dir)
    absent = [m for m in needed if m not in running]
    if absent:
        envs = " / ".join(_URLS[m][1] for m in absent)
        raise ConfigError(f"no URL configured for {', '.join(absent)} and no embedded server running in "
                          f"{data_dir}; set {envs} or run `agent-journal up`")
    embedded = local_stack.settings_of(data_dir, local_stack.read_state(data_dir))
    fill = {_URLS[m][0]: getattr(embedded, _URLS[m][0]) for m in missing if m in running}
    return base.with_(**fill)


def settings_from(args: argparse.Namespace, *, start: bool = False) -> Settings:
    """Settings from the environment and ``--data-dir``, with embedded servers filled in."""
    return load_settings(args, start=start)


def _cmd_up(args: argparse.Namespace) -> int:
    base = check_urls(Settings.from_env(data_dir=args.data_dir))
    if args.cluster and base.redis_url:
        raise ConfigError("--cluster starts an embedded Valkey Cluster, but JOURNAL_REDIS_URL is set; unset it "
                          "to start one, or point it at your cluster (redis+cluster://host:port)")
    if not base.missing_urls:
        console.print("All of JOURNAL_REDIS_URL, JOURNAL_DATABASE_URL and JOURNAL_S3_URL are set; nothing to start.")
        return 0
    from journal.embedded import EmbeddedStack  # the process manager: only for commands that start or stop

    stack = EmbeddedStack(Path(base.data_dir))
    what = ", ".join(base.missing_urls) + (f" (Valkey Cluster: {args.cluster} primaries + replicas)"
                                           if args.cluster else "")
    with console.status(f"starting {what} in {base.data_dir} …"):
        settings = local_stack.fill_from(base, stack.up(tuple(base.missing_urls), cluster=args.cluster))

    _print_services(stack)
    nodes = cluster_table(settings)
    if nodes is not None:
        console.print(nodes)
    console.print("\nUse them from another shell with:")
    print("\n".join(settings.env_lines()))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from journal.embedded import EmbeddedStack

    stack = EmbeddedStack(Settings.from_env(data_dir=args.data_dir).data_dir)
    with console.status("stopping embedded servers …"):
        stack.down()
    console.print(f"stopped; data kept in {stack.data_dir} (`agent-journal up` starts them again)")
    return 0


def _print_services(stack: Any) -> None:
    table = Table(title=f"embedded servers in {stack.data_dir}")
    for col in ("service", "state", "pid", "url"):
        table.add_column(col)
    for s in stack.status():
        table.add_row(s.name, "[green]running[/]" if s.running else "[red]stopped[/]", str(s.pid or "-"), s.url or "-")
    console.print(table)


@dataclass(frozen=True, slots=True)
class ServiceCheck:
    """One service as `status` sees it: where its URL comes from and whether it answers."""

    service: str
    #: The environment variable that configured it, or "embedded".
    source: str
    up: bool
    url: str | None
    pid: int | None
    detail: str


def probe(service: str, url: str) -> str | None:
    """None if the server at ``url`` answers, else why not (one line)."""
    try:
        if service == "redis":
            from journal.redis_store import connect

            client = connect(url)
            try:
                client.ping()
            finally:
                client.close()
        elif service == "postgres":
            import psycopg

            psycopg.connect(url, connect_timeout=3).close()
        else:
            # Any HTTP answer (403 without credentials) means the server is there.
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(url, timeout=3).close()
    except Exception as e:  # a probe reports, whatever the driver raises
        return one_line(explain(e, what=f"{service} at {redact(url)}"))
    return None


def check_services(settings: Settings) -> list[ServiceCheck]:
    """Each service: the configured external server, or the embedded one (and whether it runs)."""
    env = Settings.from_env(data_dir=settings.data_dir)
    data_dir = Path(settings.data_dir).absolute()
    state = local_stack.read_state(data_dir)
    embedded = local_stack.settings_of(data_dir, state)
    out = []
    for service, (field, var, _, _) in _URLS.items():
        url = getattr(env, field)
        if url:
            why = probe(service, url)
            out.append(ServiceCheck(service, var, why is None, redact(url), None, why or "answers"))
            continue
        pid = state.get(service, {}).get("pid")
        url = getattr(embedded, field)
        if not local_stack.alive(pid):
            why, pid = ("stopped (`agent-journal up` starts it)" if url else "never started (`agent-journal up`)"), None
        else:
            why = probe(service, url)
        out.append(ServiceCheck(service, "embedded", why is None, redact(url) if url else None, pid,
                                why or "answers"))
    return out


def _table_data(table: Table) -> dict[str, Any]:
    columns = [str(c.header) for c in table.columns]
    cells = [[str(cell) for cell in c.cells] for c in table.columns]
    return {"title": str(table.title or ""), "rows": [dict(zip(columns, row, strict=True)) for row in zip(*cells,
                                                                                                        strict=True)]}


def _cmd_status(args: argparse.Namespace) -> int:
    settings = load_settings(args, need=())
    checks = check_services(settings)
    tables: list[Table] = []
    if all(c.up for c in checks if c.service == "redis"):
        nodes = cluster_table(settings)
        if nodes is not None:
            tables.append(nodes)
        for hook in entry_points(group=STATUS_HOOKS):
            table = hook.load()(settings)
            if table is not None:
                tables.append(table)
    ok = all(c.up for c in checks)
    if args.format == "json":
        print(json.dumps({"ok": ok, "services": [asdict(c) for c in checks],
                          "tables": [_table_data(t) for t in tables]}, indent=2))
    else:
        table = Table(title=f"servers (embedded ones in {settings.data_dir})")
        for col in ("service", "from", "state", "pid", "url", "detail"):
            table.add_column(col, overflow="fold")
        for c in checks:
            table.add_row(c.service, c.source, "[green]up[/]" if c.up else "[red]down[/]", str(c.pid or "-"),
                          c.url or "-", c.detail)
        console.print(table)
        for t in tables:
            console.print(t)
    return 0 if ok else 1


def cluster_table(settings: Settings) -> Table | None:
    """Each node of a Valkey Cluster (role, slots, memory, replication lag); None for a single server."""
    from journal.redis_store import cluster_report, is_cluster_url

    if not is_cluster_url(settings.redis_url):
        return None
    table = Table(title="Valkey Cluster nodes")
    for col in ("node", "role", "primary", "slots", "memory", "lag (bytes)", "link", "state"):
        table.add_column(col)
    for n in cluster_report(settings.redis_url or ""):
        table.add_row(n.address, n.role, n.primary or "-", str(n.slots), n.memory, "-" if n.lag is None else
                      str(n.lag), n.link, n.state)
    return table


def _cmd_env(args: argparse.Namespace) -> int:
    print("\n".join(settings_from(args).env_lines()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from journal.demo import run_demo

    settings = settings_from(args, start=True)
    return run_demo(settings, tenants=args.tenants, threads=args.threads, steps=args.steps, console=console)


def build_parser() -> argparse.ArgumentParser:
    parser = CliParser(
        prog="agent-journal",
        description="Durable, resumable, provable state for long-running multi-tenant AI agents.")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="embedded servers' data folder (default $JOURNAL_DATA_DIR or ./.agent-journal)")
    parser.add_argument("--log-level", default="warning", type=str.lower,
                        choices=("debug", "info", "warning", "error"),
                        help="debug (also shows tracebacks), info, warning (default), error")
    parser.add_argument("--log-json", action="store_true", help="JSON log lines even on a terminal")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start (or reuse) the embedded Valkey, PostgreSQL and S3 servers")
    up.add_argument("--cluster", type=positive_int, default=0, metavar="N",
                    help="Valkey as a cluster of N primaries, each with a replica (ports P..P+2N-1 and +10000 "
                         "for the cluster bus); the URL becomes redis+cluster://")
    up.set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop the embedded servers (data is kept)").set_defaults(func=_cmd_down)
    status = sub.add_parser("status", help="each server (configured or embedded) and projector lag per tenant; "
                                           "exit 1 if any is down")
    status.add_argument("--format", choices=("table", "json"), default="table", help="table (default) or json")
    status.set_defaults(func=_cmd_status)
    sub.add_parser("env", help="print JOURNAL_* export lines for the configured servers").set_defaults(
        func=_cmd_env)
    demo = sub.add_parser("demo", help="run a simulated multi-tenant agent workload and summarize it")
    demo.add_argument("--tenants", type=positive_int, default=3)
    demo.add_argument("--threads", type=positive_int, default=4, help="agent threads per tenant")
    demo.add_argument("--steps", type=positive_int, default=110, help="agent steps per thread (roughly)")
    demo.set_defaults(func=_cmd_demo)

    for ep in entry_points(group="agent_journal.commands"):
        register: Callable[[argparse._SubParsersAction[CliParser]], None] = ep.load()
        register(sub)
    return parser


def one_line(text: str) -> str:
    """``text`` on one line: drivers' messages carry newlines and hints of their own."""
    return " ".join(text.split())


def _causes(e: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        orig = getattr(cur, "orig", None)  # SQLAlchemy keeps the driver's error there
        cur = cur.__cause__ or (orig if isinstance(orig, BaseException) else None)


def explain(e: BaseException, what: str = "the command") -> str:
    """What went wrong and what to do, for any exception a command lets out."""
    for cause in _causes(e):
        module = type(cause).__module__
        if _AUTH_FAILURE.search(str(cause)) and module.startswith(("psycopg", "redis", "sqlalchemy")):
            if module.startswith("redis"):
                return (f"Redis authentication failed ({one_line(str(cause))}): check the user and password in "
                        "JOURNAL_REDIS_URL; a tenant's are reissued by `agent-journal tenant rotate TENANT`.")
            return (f"PostgreSQL authentication failed ({one_line(str(cause))}): check the user and password in "
                    "JOURNAL_DATABASE_URL (or --reader-url); a tenant reader's are reissued by "
                    "`agent-journal tenant rotate TENANT`.")
    if isinstance(e, JournalError):
        return str(e)
    if type(e).__module__.startswith("redis"):
        from journal.redis_store import translate

        return str(translate(e, what))  # type: ignore[arg-type]
    if getattr(e, "sqlstate", None) in _NO_SCHEMA:
        return (f"PostgreSQL has no journal schema here ({one_line(str(e))}): run `agent-journal migrate` "
                "against this JOURNAL_DATABASE_URL first.")
    if type(e).__module__.startswith("psycopg"):
        return str(StoreUnavailable(f"PostgreSQL failed during {what}: {e}. Check JOURNAL_DATABASE_URL and "
                                    "that the server runs (`agent-journal status`)."))
    if isinstance(e, OSError):
        where = f" on {e.filename}" if e.filename else f" during {what}"
        return (f"{e.strerror or e}{where}: check that path (--data-dir / JOURNAL_DATA_DIR, --out, --bundle, "
                "--env-file) or resource, and try again.")
    return (f"unexpected {type(e).__name__}: {e}. This is a bug in agent-journal: rerun with --log-level debug "
            "for the traceback and report it.")


def is_bug(e: BaseException) -> bool:
    """Whether ``e`` is none of the failures a command expects (ours, a driver's, the operating system's)."""
    return not isinstance(e, JournalError | OSError) and not type(e).__module__.startswith(_DRIVERS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, json=True if args.log_json else None)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except Exception as e:  # every failure is one line and an exit code, never a traceback
        if args.log_level == "debug" and not isinstance(e, JournalError):
            raise
        # markup=False: messages quote user input and server text, where [brackets] are not styles.
        console.print(f"error: {one_line(explain(e, args.command))}", soft_wrap=True, markup=False,
                      highlight=False)
        return EXIT_BUG if is_bug(e) else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
