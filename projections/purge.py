"""Delete every trace of one tenant, in every tier, idempotently.

Order matters: the tenant's own credentials go first (its Redis ACL user, its PostgreSQL
reader login, its S3 key on the embedded SeaweedFS), so its agents cannot write while the rest
is deleted; then its Redis keys and registry entry, its PostgreSQL rows, and its objects in S3
(blobs and archive). Each step
deletes only what is still there, so a purge interrupted at any point is finished by running
it again. A neighbour whose id shares a prefix (``acme`` / ``acme2``) is untouched: Redis keys
are matched with the tenant's closing brace, rows by equality, objects under ``tenant/``.

A projector running meanwhile may commit a batch of the tenant it had read before the stream
was deleted; run the purge again once it has (the report says what the second run removed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
import sqlalchemy as sa

from journal import acl, keys, logs
from journal.errors import JournalError
from journal.redis_store import connect, translate
from journal.s3_tenants import SeaweedAdmin
from journal.settings import Settings
from projections import db, tables

log = logs.get_logger("projections.purge")

#: One DELETE per tenant table, built from the schema (``projections.tables``).
DELETES = {
    name: tables.compiled(tables.metadata.tables[f"journal.{name}"].delete()
                          .where(tables.metadata.tables[f"journal.{name}"].c.tenant_id == sa.bindparam("tenant")))
    for name in tables.TENANT_TABLES
}


@dataclass(slots=True)
class PurgeReport:
    """What a purge removed, by tier (zeros on a re-run after a complete purge)."""

    tenant: str
    redis_user: bool = False
    redis_keys: int = 0
    registry: bool = False
    reader_role: bool = False
    rows: dict[str, int] = field(default_factory=dict)
    objects: int = 0
    s3_identity: bool = False

    @property
    def removed_anything(self) -> bool:
        return bool(self.redis_user or self.redis_keys or self.registry or self.reader_role
                    or any(self.rows.values()) or self.objects or self.s3_identity)

    def to_dict(self) -> dict[str, object]:
        return {"tenant": self.tenant, "redis": {"acl_user": self.redis_user, "keys": self.redis_keys,
                                                 "registry": self.registry},
                "postgres": {"reader_role": self.reader_role, "rows": self.rows},
                "s3": {"objects": self.objects, "identity": self.s3_identity}}


def purge_tenant(settings: Settings, tenant: str) -> PurgeReport:
    """Remove ``tenant`` from Redis, PostgreSQL and S3; return what was removed."""
    keys.validate_id(tenant, "tenant")
    report = PurgeReport(tenant)
    if settings.redis_url:
        _purge_redis(settings.redis_url, tenant, report)
    if settings.database_url:
        report.reader_role = db.revoke_tenant_reader(settings, tenant)
        with db.connect(settings, role=db.WRITER) as conn:
            for name, statement in DELETES.items():
                report.rows[name] = conn.execute(statement, {"tenant": tenant}).rowcount
            conn.commit()
    if settings.s3_url:
        admin = SeaweedAdmin.for_settings(settings)  # the embedded S3 only: other stores manage their own keys
        report.s3_identity = admin.revoke_tenant(tenant) if admin is not None else False
        report.objects = _purge_objects(settings, tenant)
    log.info("tenant_purged", **report.to_dict())
    return report


def _purge_redis(url: str, tenant: str, report: PurgeReport) -> None:
    r = connect(url)
    try:
        report.redis_user = acl.revoke_tenant_user(r, tenant)
        # keys.stream(tenant) is "agent:v1:{T}:stream"; the pattern keeps the closing brace, so {T2} never matches.
        pattern = keys.stream(tenant).removesuffix("stream") + "*"
        batch: list[bytes] = []
        for key in r.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                report.redis_keys += int(r.unlink(*batch))
                batch.clear()
        if batch:
            report.redis_keys += int(r.unlink(*batch))
        report.registry = bool(r.srem(keys.TENANT_REGISTRY, tenant))
    except redis.RedisError as e:
        raise translate(e, f"purging tenant {tenant} from Redis") from e
    finally:
        r.close()


def _purge_objects(settings: Settings, tenant: str) -> int:
    from journal.blobs import s3_client

    s3 = s3_client(settings)
    removed = 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket, Prefix=f"{tenant}/"):
            found = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if found:
                s3.delete_objects(Bucket=settings.s3_bucket, Delete={"Objects": found, "Quiet": True})
                removed += len(found)
    except s3.exceptions.NoSuchBucket:
        return removed
    except Exception as e:  # botocore raises many types; all mean the objects are still there
        raise JournalError(f"purging tenant {tenant} from object storage failed: {e}; run the purge again") from e
    return removed
