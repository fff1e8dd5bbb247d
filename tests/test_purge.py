"""purge_tenant removes a tenant from Redis, PostgreSQL and S3, and leaves a prefix-sharing neighbour byte-identical."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from journal import acl, keys
from journal.client import JournalClient
from journal.events import Draft
from journal.redis_store import connect
from journal.settings import Settings
from projections import db, tables
from projections.purge import purge_tenant
from projections.worker import Projector, WorkerOptions

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}


def populate(settings: Settings, tenant: str) -> None:
    with JournalClient.from_settings(settings) as c:
        c.append_many(tenant, [Draft(f"th-{i % 3}", "message", {**MSG, "i": i}, idempotency_key=f"k{i}")
                               for i in range(30)])
        c.append(tenant, "th-0", "tool_result", {"call_id": "c1", "output": "x" * 5000})  # over the threshold: S3
    p = Projector(settings, WorkerOptions())
    p.drain(tenants=[tenant])
    p.close()


def fingerprint(settings: Settings, tenant: str) -> dict[str, Any]:
    """Every byte the tenant has in the three tiers."""
    r = connect(settings.redis_url or "")
    pattern = keys.stream(tenant).removesuffix("stream") + "*"
    red = {k: r.dump(k) for k in sorted(r.scan_iter(match=pattern))}
    red["registry"] = r.sismember(keys.TENANT_REGISTRY, tenant)
    red["acl"] = r.execute_command("ACL", "GETUSER", acl.username(tenant)) is not None
    r.close()
    with db.connect(settings, role=None) as conn:
        rows = {t: conn.execute(f"SELECT * FROM journal.{t} WHERE tenant_id = %s ORDER BY 2, 3",
                                (tenant,)).fetchall() for t in tables.TENANT_TABLES}
        rows["role"] = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                    (db.reader_role_name(tenant),)).fetchall()
    from journal.blobs import s3_client

    listed = s3_client(settings).list_objects_v2(Bucket=settings.s3_bucket, Prefix=f"{tenant}/")
    objects = sorted((o["Key"], o["ETag"], o["Size"]) for o in listed.get("Contents", []))
    return {"redis": red, "postgres": rows, "s3": objects}


def test_purge_removes_every_trace_and_spares_the_neighbour(migrated: Settings) -> None:
    """After a purge of T: no Redis key, row, role, ACL user or object of T; T2 (sharing T's prefix) is unchanged."""
    settings = migrated.with_(blob_threshold=2000, snapshot_every=5)
    tenant = f"acme{uuid.uuid4().hex[:6]}"
    neighbour = tenant + "2"
    admin = connect(settings.redis_url or "")
    for t in (tenant, neighbour):
        populate(settings, t)
        acl.create_tenant_user(admin, t)
        db.create_tenant_reader(settings, t)
    admin.close()
    before = fingerprint(settings, neighbour)
    assert before["s3"] and before["postgres"]["snapshots"] and len(before["redis"]) > 3

    report = purge_tenant(settings, tenant)
    assert report.redis_user and report.reader_role and report.registry
    assert report.rows["events"] == 31 and report.objects == 1 and report.redis_keys > 3

    gone = fingerprint(settings, tenant)
    assert gone["redis"] == {"registry": False, "acl": False}
    assert all(not rows for rows in gone["postgres"].values()) and gone["s3"] == []
    assert fingerprint(settings, neighbour) == before
    assert not purge_tenant(settings, tenant).removed_anything  # re-runnable: nothing left to remove
    purge_tenant(settings, neighbour)


def test_purge_command_needs_the_tenant_twice_and_reports_by_tier(migrated: Settings,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`purge-tenant T` without `--confirm T` deletes nothing; with it, a JSON report names what went, by tier."""
    import json

    from journal.cli import main

    for name in ("redis_url", "database_url", "s3_url", "s3_access_key", "s3_secret_key"):
        monkeypatch.setenv(f"JOURNAL_{name.upper()}", str(getattr(migrated, name)))
    tenant = f"purge{uuid.uuid4().hex[:6]}"
    populate(migrated, tenant)
    assert main(["purge-tenant", tenant, "--confirm", tenant + "x"]) == 2
    assert fingerprint(migrated, tenant)["postgres"]["events"]
    capsys.readouterr()
    assert main(["purge-tenant", tenant, "--confirm", tenant, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["postgres"]["rows"]["events"] == 31 and report["redis"]["keys"] > 0
    assert not fingerprint(migrated, tenant)["postgres"]["events"]
