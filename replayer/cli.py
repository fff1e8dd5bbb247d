"""Replayer commands for `agent-journal`: replay, verify, audit (timeline, tools, diff, export).

Every command reads through a role that row-level security applies to, read-only: a tenant
reader's own login when ``JOURNAL_DATABASE_URL`` (or ``--reader-url``) is one — what
``agent-journal tenant create`` exports — else ``journal_app`` with the tenant set per transaction.
Tables for people (rich), ``--format json`` for machines; progress goes to stderr so that
stdout stays clean. ``verify`` exits 1 when any chain or bundle fails; typed errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from journal import codec
from journal.chain import key_bytes
from journal.cli import check_url, load_settings, non_negative_int
from journal.errors import AccessDenied, ConfigError, NotFound
from journal.reducer import load_registry
from journal.settings import Settings
from journal.state import ThreadState, thaw

FORMATS = ("table", "json")


def _out() -> Console:
    # Created per command (not at import) so that redirected or captured stdout is honoured.
    return Console(width=None if sys.stdout.isatty() else 200)


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=codec.show_default, ensure_ascii=False))


def reader_url(args: argparse.Namespace, settings: Settings) -> str | None:
    """The tenant reader login to read as (None: ``journal_app``); refuses one bound to another tenant."""
    from projections.db import bound_tenant

    if os.environ.get("JOURNAL_READER_URL"):
        raise ConfigError("JOURNAL_READER_URL is not read any more: export the tenant reader's URL as "
                          "JOURNAL_DATABASE_URL (as `agent-journal tenant create` prints it), or pass --reader-url")
    url = check_url(args.reader_url, "postgres", "--reader-url") if args.reader_url else settings.database_url
    if url is None:
        return None
    tenant = bound_tenant(url)
    if tenant is None:
        if args.reader_url:
            raise ConfigError("--reader-url must be a tenant reader's login (from `agent-journal tenant create`); "
                              "this one is bound to no tenant. Leave it out to read as journal_app.")
        return None
    if args.tenant and args.tenant != tenant:
        raise AccessDenied(f"this login reads tenant {tenant} only; it cannot read tenant {args.tenant}. Use "
                           f"{args.tenant}'s credentials (`agent-journal tenant create {args.tenant}`).")
    return url


@contextmanager
def _replayer(args: argparse.Namespace) -> Iterator[Any]:
    from replayer.replay import Replayer

    settings = load_settings(args, need=("postgres",))
    with Replayer.from_settings(settings, reader_url=reader_url(args, settings)) as r:
        yield r


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)


# -- replay ----------------------------------------------------------------------------------------


def state_table(state: ThreadState, title: str | None = None) -> Table:
    """A one-screen summary of a state: position, status, messages, calls, memory, anomalies."""
    table = Table(title=title or f"{state.tenant}/{state.thread} at seq {state.last_seq}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    pending = state.pending_calls
    last = state.messages[-1] if state.messages else None
    rows: list[tuple[str, Any]] = [
        ("seq", state.last_seq), ("events", state.event_count), ("status", state.status),
        ("node", state.node or "-"), ("pending branches", ", ".join(state.pending_branches) or "-"),
        ("messages", len(state.messages)),
        ("last message", f"{last.role}: {_clip(thaw(last.content))}" if last else "-"),
        ("tool calls", len(state.tool_calls)),
        ("pending calls", ", ".join(pending) if pending else "none"),
        ("memory", _clip(json.dumps(thaw(state.memory), default=codec.show_default), 160)),
    ]
    for name in ("pause_reason", "resumed_by", "summary", "error"):
        value = getattr(state, name)
        if value is not None:
            rows.append((name.replace("_", " "), _clip(thaw(value))))
    rows.append(("anomalies", len(state.anomalies)))
    for k, v in rows:
        table.add_row(k, str(v))
    return table


def _clip(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=codec.show_default, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def _cmd_replay(args: argparse.Namespace) -> int:
    from journal.timespec import parse_time

    at_time = parse_time(args.at_time) if args.at_time else None
    with _replayer(args) as r:
        state = r.replay(args.tenant, args.thread, at_seq=args.at_seq, at_time=at_time)
    if args.format == "json":
        _json(state.to_dict())
    else:
        _out().print(state_table(state))
    return 0


# -- verify ----------------------------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace) -> int:
    if args.bundle:
        return _verify_bundle(args)
    if not args.tenant:
        raise ConfigError("verify needs TENANT [THREAD], or --bundle FILE")
    from replayer.replay import ThreadVerdict

    results: list[ThreadVerdict] = []
    with _replayer(args) as r:
        if args.key:
            r.key = key_bytes(args.key)
        pg = r._pg()
        with pg.scope(args.tenant):
            threads = [args.thread] if args.thread else pg.threads(args.tenant)
        if not threads:
            raise NotFound(f"tenant {args.tenant} has no threads in PostgreSQL: unknown tenant, nothing projected "
                           "yet, or this login may not see it. Check the name (`agent-journal status` lists "
                           "tenants with streams).")
        with _progress() as progress:
            task = progress.add_task(f"verifying {args.tenant}", total=len(threads))
            for thread in threads:
                results += r.verify(args.tenant, thread)
                progress.advance(task)
    failed = [v for v in results if not v.ok]
    if args.format == "json":
        hint = {"hint": broken_hint(failed[0].first_bad_seq, failed[0].reason)} if failed else {}
        _json({"tenant": args.tenant, "ok": not failed, "threads": [v.to_dict() for v in results], **hint})
    else:
        table = Table(title=f"hash chains of tenant {args.tenant}")
        for col in ("thread", "verdict", "events checked", "first bad seq", "reason", "detail"):
            table.add_column(col, justify="right" if col in ("events checked", "first bad seq") else "left",
                             overflow="fold")
        for v in results:
            table.add_row(v.thread, "[green]ok[/]" if v.ok else "[bold red]BROKEN[/]", str(v.checked),
                          str(v.first_bad_seq or "-"), v.reason or "-", v.detail or "")
        out = _out()
        out.print(table)
        out.print(f"{len(results) - len(failed)} of {len(results)} thread(s) verified"
                  + (f"; [bold red]{len(failed)} broken[/]" if failed else ""))
        if failed:
            out.print(broken_hint(failed[0].first_bad_seq, failed[0].reason), highlight=False)
    return 1 if failed else 0


def broken_hint(first_bad_seq: int | None, reason: str | None) -> str:
    """What a broken chain means, for people: tampering, or (when seq 1 already fails) maybe the wrong key."""
    from replayer.verify import CHANGED

    if first_bad_seq == 1 and reason == CHANGED:
        return ("tampered, or key mismatch? A chain checked with another HMAC key than it was written with fails "
                "at seq 1 exactly like this: verify with the writer's key (--key or JOURNAL_HASH_KEY) before "
                "concluding it was altered.")
    return (f"tampered: the stored history was altered at seq {first_bad_seq} ({reason}); compare with an exported "
            "bundle or the archive.")


def _verify_bundle(args: argparse.Namespace) -> int:
    from replayer.bundle import verify_bundle

    path: Path = args.bundle
    if not path.exists():
        raise ConfigError(f"--bundle {path} does not exist; give the file `agent-journal audit export` wrote")
    if not path.is_file():
        raise ConfigError(f"--bundle {path} is not a file (a directory?); give the bundle file itself")
    # Offline: the environment may give the HMAC key, but no server is started or contacted.
    settings = Settings.from_env(data_dir=args.data_dir)
    key = key_bytes(args.key) if args.key else key_bytes(settings.hash_key)
    report = verify_bundle(path, key, registry=load_registry(settings.reducers))
    hint = None if report.ok else _bundle_hint(report, key)
    if args.format == "json":
        _json(report.to_dict() | ({"hint": hint} if hint else {}))
    else:
        out = _out()
        verdict = "[green]ok[/]" if report.ok else "[bold red]FAILED[/]"
        out.print(f"bundle {path}: {verdict} — {report.tenant}/{report.thread}, {report.events} event(s), "
                  f"{report.blobs} blob(s), head {report.head_hash.hex()[:16] if report.head_hash else '-'}…")
        for p in report.problems:
            out.print(f"  [red]✗[/] {p}", highlight=False)
        if hint:
            out.print(hint, highlight=False)
    return 0 if report.ok else 1


def _bundle_hint(report: Any, key: bytes | None) -> str | None:
    from replayer.replay import key_id

    chain = report.chain
    if chain is None or chain.ok:
        return None
    if report.key_id and key and report.key_id != key_id(key):
        return (f"tampered, or key mismatch? The bundle was written with HMAC key {report.key_id} and this key is "
                f"{key_id(key)}: verify with the writer's key (--key or JOURNAL_HASH_KEY).")
    return broken_hint(chain.first_bad_seq, chain.reason)


# -- audit -----------------------------------------------------------------------------------------


def _cmd_timeline(args: argparse.Namespace) -> int:
    from replayer.audit import timeline

    with _replayer(args) as r, Console(stderr=True).status(f"reading {args.tenant}/{args.thread} …"):
        steps = timeline(r, args.tenant, args.thread)
    if args.format == "json":
        _json([s.to_dict() for s in steps])
        return 0
    table = Table(title=f"timeline of {args.tenant}/{args.thread} ({len(steps)} steps)")
    for col in ("seq", "time (UTC)", "type", "node", "tool", "agent", "status", "detail"):
        table.add_column(col, justify="right" if col == "seq" else "left", overflow="fold")
    for s in steps:
        table.add_row(str(s.seq), s.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], s.type, s.node or "", s.tool or "",
                      s.agent_id or "", s.status, s.detail)
    _out().print(table)
    return 0


def _cmd_tools(args: argparse.Namespace) -> int:
    from journal.timespec import parse_since, parse_time
    from replayer.audit import tool_usage

    since = parse_since(args.since)
    until = parse_time(args.until) if args.until else None
    if until is not None and until < since:
        raise ConfigError(f"--until {until.isoformat()} is before --since {since.isoformat()}: the window is empty; "
                          "swap them or widen it")
    with _replayer(args) as r:
        usage = tool_usage(r, args.tenant, args.tool, since, until)
    if args.format == "json":
        _json({"tenant": args.tenant, "tool": args.tool, "since": since.isoformat(),
               "threads": [u.to_dict() for u in usage]})
        return 0
    table = Table(title=f"threads of {args.tenant} that used {args.tool} since {since:%Y-%m-%d %H:%M} UTC")
    for col in ("thread", "calls", "results", "errors", "first", "last"):
        table.add_column(col, justify="left" if col == "thread" else "right")
    for u in usage:
        table.add_row(u.thread, str(u.calls), str(u.results), str(u.errors), f"{u.first_at:%Y-%m-%d %H:%M:%S}",
                      f"{u.last_at:%Y-%m-%d %H:%M:%S}")
    out = _out()
    out.print(table)
    out.print(f"{len(usage)} thread(s), {sum(u.calls for u in usage)} call(s)")
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from replayer.audit import state_diff

    if args.from_seq > args.to_seq:
        raise ConfigError(f"--from {args.from_seq} is after --to {args.to_seq}; give the earlier seq as --from")
    with _replayer(args) as r:
        d = state_diff(r, args.tenant, args.thread, args.from_seq, args.to_seq)
    if args.format == "json":
        _json(d)
        return 0
    out = _out()
    out.print(f"[bold]{args.tenant}/{args.thread}: seq {d['from_seq']} → {d['to_seq']}[/]")
    for section, value in d.items():
        if section in ("from_seq", "to_seq"):
            continue
        items = value if isinstance(value, list) else [value]
        out.print(f"[cyan]{section}[/] ({len(items)})")
        for item in items:
            out.print(f"  {_clip(item, 180)}", highlight=False)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from replayer.audit import export_bundle

    _check_out(args.out, args.force)
    with _replayer(args) as r, Console(stderr=True).status(f"exporting {args.tenant}/{args.thread} …"):
        done = export_bundle(r, args.tenant, args.thread, args.out)
    if args.format == "json":
        _json(done.to_dict())
    else:
        chain = "chain ok" if done.chain.ok else (f"[bold red]chain BROKEN at seq {done.chain.first_bad_seq} "
                                                  f"({done.chain.reason})[/]")
        _out().print(f"wrote {done.path}: {done.events} event(s), {done.blobs} blob(s), head "
                     f"{done.head_hash.hex()[:16]}…, {chain}. Check it offline with "
                     f"`agent-journal verify --bundle {done.path}`.")
    return 0 if done.chain.ok else 1


def _check_out(out: Path, force: bool) -> None:
    """Refuse a bundle target that would fail late (no folder) or destroy a file unasked."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file path such as {out / 'thread.ajb'}")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist; create it or choose another path")
    if out.exists() and not force:
        raise ConfigError(f"--out {out} exists; pass --force to replace it, or choose another path")


# -- registration ----------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="table", help="table (default) or json")
    p.add_argument("--reader-url", default=None,
                   help="read as this tenant reader's PostgreSQL login (default: JOURNAL_DATABASE_URL, used as is "
                        "when it is a tenant reader's login, else through the journal_app role)")


def register(sub: Any) -> None:
    p = sub.add_parser("replay", help="a thread's state at a seq or a time (default: latest), from all tiers")
    p.add_argument("tenant")
    p.add_argument("thread")
    at = p.add_mutually_exclusive_group()
    at.add_argument("--at-seq", type=non_negative_int, default=None, help="state after this seq")
    at.add_argument("--at-time", default=None, help="state after the last event at or before this ISO time")
    _common(p)
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("verify", help="recompute hash chains (exit 1 if any is broken), or check a bundle offline")
    p.add_argument("tenant", nargs="?")
    p.add_argument("thread", nargs="?")
    p.add_argument("--bundle", type=Path, default=None, help="verify an audit bundle file offline (no database)")
    p.add_argument("--key", default=None, help="HMAC key of the chain (default $JOURNAL_HASH_KEY)")
    _common(p)
    p.set_defaults(func=_cmd_verify)

    audit = sub.add_parser("audit", help="audit queries: timeline, tools, diff, export")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="QUERY")

    p = asub.add_parser("timeline", help="who did what, when: every step of a thread")
    p.add_argument("tenant")
    p.add_argument("thread")
    _common(p)
    p.set_defaults(func=_cmd_timeline)

    p = asub.add_parser("tools", help="every thread that called a tool in a window, with counts")
    p.add_argument("tenant")
    p.add_argument("--tool", required=True)
    p.add_argument("--since", default="30d", help="a span (30d, 12h, 90m, 2w) or an ISO time (default 30d)")
    p.add_argument("--until", default=None, help="end of the window, ISO time (default: now)")
    _common(p)
    p.set_defaults(func=_cmd_tools)

    p = asub.add_parser("diff", help="what changed in a thread's state between two seqs")
    p.add_argument("tenant")
    p.add_argument("thread")
    p.add_argument("--from", dest="from_seq", type=non_negative_int, required=True)
    p.add_argument("--to", dest="to_seq", type=non_negative_int, required=True)
    _common(p)
    p.set_defaults(func=_cmd_diff)

    p = asub.add_parser("export", help="write a self-contained audit bundle (events, blobs, chain, state)")
    p.add_argument("tenant")
    p.add_argument("thread")
    p.add_argument("--out", type=Path, required=True, help="bundle file to write (.ajb); its folder must exist")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    _common(p)
    p.set_defaults(func=_cmd_export)

    from replayer.console.cli import configure as configure_console

    configure_console(sub.add_parser("serve", help="the read-only audit console (web), on 127.0.0.1 by default"))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m replayer.cli …` runs the same as `agent-journal …`."""
    from journal.cli import main as journal_main

    return journal_main(argv)


if __name__ == "__main__":
    sys.exit(main())
