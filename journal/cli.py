"""The ``agent-journal`` command.

The write-path commands live here (``up``, ``down``, ``status``, ``env``, ``demo``). The
projector and the replayer add theirs through the ``agent_journal.commands`` entry point
group, so ``journal`` never imports the packages built on top of it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from rich.console import Console
from rich.table import Table

from journal import logs
from journal.embedded import EmbeddedStack, resolve
from journal.errors import JournalError
from journal.settings import Settings

console = Console()

#: Hooks that add lines to `agent-journal status` (e.g. projector lag): f(settings) -> Table | None.
STATUS_HOOKS = "agent_journal.status"


def settings_from(args: argparse.Namespace, *, start: bool = False) -> Settings:
    """Settings from the environment and ``--data-dir``, with embedded servers filled in."""
    base = Settings.from_env(data_dir=args.data_dir)
    return resolve(base, start=start)


def _cmd_up(args: argparse.Namespace) -> int:
    base = Settings.from_env(data_dir=args.data_dir)
    if not base.missing_urls:
        console.print("All of JOURNAL_REDIS_URL, JOURNAL_DATABASE_URL and JOURNAL_S3_URL are set; nothing to start.")
        return 0
    with console.status(f"starting {', '.join(base.missing_urls)} in {base.data_dir} …"):
        settings = resolve(base, start=True)
    _print_services(EmbeddedStack(settings.data_dir))
    console.print("\nUse them from another shell with:")
    print("\n".join(settings.env_lines()))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    stack = EmbeddedStack(Settings.from_env(data_dir=args.data_dir).data_dir)
    with console.status("stopping embedded servers …"):
        stack.down()
    console.print(f"stopped; data kept in {stack.data_dir} (`agent-journal up` starts them again)")
    return 0


def _print_services(stack: EmbeddedStack) -> None:
    table = Table(title=f"embedded servers in {stack.data_dir}")
    for col in ("service", "state", "pid", "url"):
        table.add_column(col)
    for s in stack.status():
        table.add_row(s.name, "[green]running[/]" if s.running else "[red]stopped[/]", str(s.pid or "-"), s.url or "-")
    console.print(table)


def _cmd_status(args: argparse.Namespace) -> int:
    base = Settings.from_env(data_dir=args.data_dir)
    _print_services(EmbeddedStack(base.data_dir))
    try:
        settings = resolve(base)
    except JournalError as e:
        console.print(f"[yellow]{e}[/]")
        return 0
    for hook in entry_points(group=STATUS_HOOKS):
        table = hook.load()(settings)
        if table is not None:
            console.print(table)
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    print("\n".join(settings_from(args).env_lines()))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from journal.demo import run_demo

    settings = settings_from(args, start=True)
    return run_demo(settings, tenants=args.tenants, threads=args.threads, steps=args.steps, console=console)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-journal",
        description="Durable, resumable, provable state for long-running multi-tenant AI agents.")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="embedded servers' data folder (default $JOURNAL_DATA_DIR or ./.agent-journal)")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning (default), error")
    parser.add_argument("--log-json", action="store_true", help="JSON log lines even on a terminal")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("up", help="start (or reuse) the embedded Valkey, PostgreSQL and S3 servers").set_defaults(
        func=_cmd_up)
    sub.add_parser("down", help="stop the embedded servers (data is kept)").set_defaults(func=_cmd_down)
    sub.add_parser("status", help="embedded servers, and projector lag per tenant").set_defaults(func=_cmd_status)
    sub.add_parser("env", help="print JOURNAL_* export lines for the configured servers").set_defaults(
        func=_cmd_env)
    demo = sub.add_parser("demo", help="run a simulated multi-tenant agent workload and summarize it")
    demo.add_argument("--tenants", type=int, default=3)
    demo.add_argument("--threads", type=int, default=4, help="agent threads per tenant")
    demo.add_argument("--steps", type=int, default=110, help="agent steps per thread (roughly)")
    demo.set_defaults(func=_cmd_demo)

    for ep in entry_points(group="agent_journal.commands"):
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None] = ep.load()
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level, json=True if args.log_json else None)
    try:
        return int(args.func(args) or 0)
    except JournalError as e:
        console.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
