"""Demo stage: project what `agent-journal demo` appended and show it landed in PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from journal.settings import Settings
from projections import db
from projections.worker import Projector


def stage(settings: Settings, summary: Any, console: Console) -> None:
    db.migrate(settings)
    worker = Projector(settings)
    t0 = time.perf_counter()
    with console.status("projecting into PostgreSQL …"):
        worker.drain(tenants=summary.tenants, timeout=120)
    elapsed = time.perf_counter() - t0
    worker.close()
    table = Table(title="projection: Redis streams → PostgreSQL")
    for col in ("tenant", "appended", "in PG", "threads", "statuses", "snapshots"):
        table.add_column(col, justify="left" if col in ("tenant", "statuses") else "right")
    with db.connect(settings, role=None) as conn:
        for tenant in summary.tenants:
            events = conn.execute("SELECT count(*) FROM journal.events WHERE tenant_id = %s", (tenant,)).fetchone()
            statuses = conn.execute("SELECT status, count(*) FROM journal.threads WHERE tenant_id = %s GROUP BY 1 "
                                    "ORDER BY 1", (tenant,)).fetchall()
            snaps = conn.execute("SELECT count(*) FROM journal.snapshots WHERE tenant_id = %s", (tenant,)).fetchone()
            table.add_row(tenant, str(summary.per_tenant[tenant]), str(events[0] if events else 0),
                          str(sum(n for _, n in statuses)), ", ".join(f"{s} {n}" for s, n in statuses),
                          str(snaps[0] if snaps else 0))
    console.print(table)
    lag = measure_lag_after(settings, summary.tenants)
    console.print(f"projector drained the demo's backlog in {elapsed:.2f}s; every appended event is in PostgreSQL "
                  f"with its hash chain; lag now {lag} entries.")


def measure_lag_after(settings: Settings, tenants: list[str]) -> int:
    from journal.redis_store import connect
    from projections.metrics import measure_lag

    assert settings.redis_url
    return sum(lag.undelivered + lag.pending for lag in measure_lag(connect(settings.redis_url), tenants))
