"""Where `agent-journal up` left the embedded servers: URLs read from ``state.json``, nothing started.

The clients call :func:`resolve` to fill the URLs the environment leaves unset. Reading the
state file is all they need, so the process manager (:mod:`journal.embedded`, which spawns
servers, creates system users and imports psutil) stays off the library's import path; it
is loaded only when asked to start servers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from journal.errors import ConfigError
from journal.settings import Settings

SERVICES = ("redis", "postgres", "s3")
DATABASE = "journal"


def read_state(data_dir: Path) -> dict[str, dict[str, int]]:
    try:
        state = json.loads((data_dir / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def secret(data_dir: Path, service: str) -> str:
    try:
        return (data_dir / f"{service}.password").read_text().strip()
    except OSError:
        return ""


def alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user (PostgreSQL runs as a system user under root)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def settings_of(data_dir: Path, state: dict[str, dict[str, int]]) -> Settings:
    """Settings pointing at the services recorded in ``state`` (running or not)."""
    urls: dict[str, str] = {}
    if "redis" in state:
        password = secret(data_dir, "redis")
        auth = f":{password}@" if password else ""
        if state["redis"].get("cluster"):
            # Any node serves as the entry point; the client learns the others from CLUSTER SLOTS.
            urls["redis_url"] = f"redis+cluster://{auth}127.0.0.1:{state['redis']['port']}"
        else:
            urls["redis_url"] = f"redis://{auth}127.0.0.1:{state['redis']['port']}/0"
    if "postgres" in state:
        password = secret(data_dir, "postgres")
        auth = f"postgres:{password}" if password else "postgres"
        urls["database_url"] = f"postgresql://{auth}@127.0.0.1:{state['postgres']['port']}/{DATABASE}"
    if "s3" in state:
        urls["s3_url"] = f"http://127.0.0.1:{state['s3']['port']}"
        if secret(data_dir, "s3"):  # stacks made before per-stack S3 keys keep the public default pair
            urls["s3_secret_key"] = secret(data_dir, "s3")
    return Settings(data_dir=data_dir, **urls)  # type: ignore[arg-type]


def running(data_dir: Path) -> list[str]:
    state = read_state(data_dir)
    return [name for name in SERVICES if alive(state.get(name, {}).get("pid"))]


def resolve(settings: Settings, *, start: bool = False) -> Settings:
    """Fill the URLs ``settings`` lacks from the embedded stack in ``settings.data_dir``.

    With ``start`` the missing servers are started (or reused); without it they must already
    run (``agent-journal up``), else ``ConfigError`` says what to do.
    """
    missing = settings.missing_urls
    if not missing:
        return settings
    data_dir = Path(settings.data_dir).absolute()
    if start:
        from journal.embedded import EmbeddedStack  # the process manager, only when servers must start

        embedded = EmbeddedStack(data_dir).up(tuple(missing))
    else:
        not_running = [m for m in missing if m not in running(data_dir)]
        if not_running:
            raise ConfigError(
                f"no URL configured for {', '.join(not_running)} and no embedded server running in "
                f"{data_dir}; run `agent-journal up` or set JOURNAL_REDIS_URL / JOURNAL_DATABASE_URL / "
                "JOURNAL_S3_URL"
            )
        embedded = settings_of(data_dir, read_state(data_dir))
    return fill_from(settings, embedded)


def fill_from(settings: Settings, embedded: Settings) -> Settings:
    """``settings`` with the services it does not configure taken from ``embedded`` (S3 with its keys)."""
    s3 = {} if settings.s3_url else {"s3_url": embedded.s3_url, "s3_access_key": embedded.s3_access_key,
                                     "s3_secret_key": embedded.s3_secret_key}
    return settings.with_(redis_url=settings.redis_url or embedded.redis_url,
                          database_url=settings.database_url or embedded.database_url, **s3)
