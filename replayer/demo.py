"""Demo stage: replay a demo thread now and in the middle, verify every demo chain, export and check a bundle."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from journal.settings import Settings
from replayer.audit import export_bundle
from replayer.bundle import verify_bundle
from replayer.cli import state_table
from replayer.replay import Replayer


def stage(settings: Settings, summary: Any, console: Console) -> None:
    """Runs after the projection stage (entry point ``20_replay``); ``summary`` is the demo's ``DemoSummary``."""
    tenant = summary.tenants[0]
    # The first thread of each tenant is the one with an offloaded (S3) tool result.
    thread = summary.threads[tenant][0]
    with Replayer.from_settings(settings) as r:
        head = r.latest_seq(tenant, thread)
        t0 = time.perf_counter()
        latest = r.replay(tenant, thread)
        t_latest = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        middle = r.replay(tenant, thread, at_seq=head // 2)
        t_middle = (time.perf_counter() - t0) * 1000
        console.print(state_table(latest, f"replay {tenant}/{thread}: latest (seq {head}), {t_latest:.1f} ms"))
        console.print(state_table(middle, f"replay {tenant}/{thread}: middle (seq {head // 2}), {t_middle:.1f} ms"))

        table = Table(title="hash-chain verification (PostgreSQL, as journal_app under row-level security)")
        for col in ("tenant", "threads", "events checked", "verdict"):
            table.add_column(col, justify="left" if col in ("tenant", "verdict") else "right")
        all_ok = True
        with console.status("verifying every demo chain …"):
            for t in summary.tenants:
                verdicts = r.verify(t)
                broken = [v for v in verdicts if not v.ok]
                all_ok = all_ok and not broken
                table.add_row(t, str(len(verdicts)), str(sum(v.checked for v in verdicts)),
                              "[green]ok[/]" if not broken else
                              f"[red]{len(broken)} broken (first: {broken[0].thread} seq {broken[0].first_bad_seq})[/]")
        console.print(table)

        path = settings.data_dir / f"audit-{tenant}-{thread}.ajb"
        done = export_bundle(r, tenant, thread, path)
        report = verify_bundle(path, r.key)
    console.print(
        f"replayed {tenant}/{thread} at seq {head} and {head // 2}; all demo chains "
        f"{'verify' if all_ok else '[red]do NOT verify[/]'}; audit bundle {path} ({done.events} events, "
        f"{done.blobs} blob(s), {path.stat().st_size // 1024} KiB) verified offline: "
        + ("[green]ok[/]" if report.ok else f"[red]FAILED: {report.reason}[/]"))
