"""Configuration: one dataclass, read from the environment or given as arguments.

Nothing below this module reads ``os.environ``. A URL left unset means "use the embedded
server": :func:`journal.embedded.EmbeddedStack` fills it in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from journal.errors import ConfigError

DURABILITY_LEVELS = ("memory", "fsync", "replicated", "projected")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything agent-journal can be told. Environment names are ``JOURNAL_`` + the upper-case field."""

    redis_url: str | None = None
    database_url: str | None = None
    s3_url: str | None = None
    s3_bucket: str = "agent-journal"
    s3_access_key: str = "agent-journal"
    s3_secret_key: str = "agent-journal-secret"
    s3_region: str = "us-east-1"
    #: Encoded payloads above this many bytes go to object storage; the event keeps a reference.
    blob_threshold: int = 100_000
    #: Largest payload accepted at all (encoded bytes), blob or not.
    max_payload_bytes: int = 32 * 1024 * 1024
    #: How long Redis remembers an idempotency key (seconds).
    idempotency_ttl: int = 7 * 24 * 3600
    durability: str = "memory"
    #: Seconds to wait for ``fsync`` / ``replicated`` / ``projected`` durability before raising.
    durability_timeout: float = 5.0
    data_dir: Path = Path(".agent-journal")
    #: Fold a snapshot every this many events of a thread.
    snapshot_every: int = 100
    #: Stream entries kept in Redis below the projected position, for fast resume.
    hot_window: int = 1000
    #: Optional HMAC key for the hash chain (hex or text).
    hash_key: str | None = None
    #: Port for the projector's Prometheus metrics (0 = off).
    metrics_port: int = 0
    #: Comma-separated modules whose ``REDUCERS`` (custom type -> reducer) every process folds with
    #: (``journal.reducer.load_registry``); empty = no custom reducers.
    reducers: str = ""
    #: Per-tenant retention (abandon, archive, delete after idle spans), a TOML file applied by
    #: ``agent-journal maintain`` (``projections.retention``); unset: abandon after 7 days, nothing more.
    retention_file: Path | None = None

    def __post_init__(self) -> None:
        if self.durability not in DURABILITY_LEVELS:
            raise ConfigError(f"durability {self.durability!r} is not one of {DURABILITY_LEVELS}")
        for name in ("blob_threshold", "max_payload_bytes", "idempotency_ttl", "snapshot_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if self.blob_threshold > self.max_payload_bytes:
            raise ConfigError("blob_threshold must not exceed max_payload_bytes")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``JOURNAL_*`` variables (e.g. ``JOURNAL_REDIS_URL``); ``overrides`` win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"JOURNAL_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            try:
                if "int" in kind:
                    values[f.name] = int(raw)
                elif "float" in kind:
                    values[f.name] = float(raw)
                elif "Path" in kind:
                    values[f.name] = Path(raw)
                else:
                    values[f.name] = raw
            except ValueError as e:
                raise ConfigError(f"JOURNAL_{f.name.upper()}={raw!r} is not a valid {kind}") from e
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def missing_urls(self) -> list[str]:
        """Which services have no URL (and so would come from the embedded stack)."""
        names = {"redis": self.redis_url, "postgres": self.database_url, "s3": self.s3_url}
        return [name for name, url in names.items() if not url]

    def env_lines(self) -> list[str]:
        """``export`` lines that point another shell at the same services."""
        out = []
        s3 = (("S3_URL", self.s3_url), ("S3_BUCKET", self.s3_bucket), ("S3_ACCESS_KEY", self.s3_access_key),
              ("S3_SECRET_KEY", self.s3_secret_key)) if self.s3_url else ()
        for name, value in (("REDIS_URL", self.redis_url), ("DATABASE_URL", self.database_url), *s3):
            if value:
                out.append(f"export JOURNAL_{name}={value}")
        return out


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` (host, port, path, options kept) with ``user:password`` in place of any credentials."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
