"""Demo stage: project what `agent-journal demo` appended and show it landed in PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from journal.settings import Settings
from projections import db, tables
from projections.worker import Projector

_e, _t, _s = tables.events, tables.threads, tables.snapshots
_TENANT: sa.BindParameter[str] = sa.bindparam("tenant")
EVENT_COUNT_SQL = tables.compiled(sa.select(sa.func.count()).select_from(_e).where(_e.c.tenant_id == _TENANT))
STATUS_COUNTS_SQL = tables.compiled(sa.select(_t.c.status, sa.func.count()).where(_t.c.tenant_id == _TENANT)
                                    .group_by(_t.c.status).order_by(_t.c.status))
SNAPSHOT_COUNT_SQL = tables.compiled(sa.select(sa.func.count()).select_from(_s).where(_s.c.tenant_id == _TENANT))


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
            params = {"tenant": tenant}
            events = conn.execute(EVENT_COUNT_SQL, params).fetchone()
            statuses = conn.execute(STATUS_COUNTS_SQL, params).fetchall()
            snaps = conn.execute(SNAPSHOT_COUNT_SQL, params).fetchone()
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
