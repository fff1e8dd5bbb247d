"""An embedded Valkey Cluster: N primaries and N replicas on loopback, for `agent-journal up --cluster N`.

Each node is the embedded valkey-server (the single node's settings: AOF everysec, ACL file,
the stack's password) plus cluster mode, in ``<data_dir>/redis-cluster/node-I``. The cluster
is formed once with ``valkey-cli --cluster create … --cluster-replicas 1``; afterwards each
node's ``nodes.conf`` remembers it, so ``up`` after ``down`` restarts the same nodes on the
same ports and the cluster reforms by itself.

``state.json`` keeps node 0 as the ``redis`` service (with ``cluster`` = N, so the URL becomes
``redis+cluster://``) and every node as ``redis-node-I``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from journal.errors import ConfigError, StoreUnavailable
from journal.local_stack import alive

if TYPE_CHECKING:
    from journal.embedded import EmbeddedStack

#: A cluster node also listens on its port + this (the cluster bus).
BUS_OFFSET = 10_000
#: Milliseconds without an answer before the others count a node failed and promote its replica.
#: Valkey's default (15 s) is for real networks; on loopback 2 s makes a failover quick to test.
NODE_TIMEOUT_MS = 2000
FORM_TIMEOUT = 60.0


def node_key(i: int) -> str:
    return f"redis-node-{i}"


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int) -> list[int]:
    """``count`` consecutive free ports whose bus ports (+10,000) are free as well."""
    for _ in range(200):
        base = random.randrange(20_000, 30_000 - count)
        ports = list(range(base, base + count))
        if all(_bindable(p) and _bindable(p + BUS_OFFSET) for p in ports):
            return ports
    raise StoreUnavailable(f"found no {count} free ports (and their +{BUS_OFFSET} bus ports) on 127.0.0.1")


class ClusterNodes:
    """Start, form, stop and kill the nodes of the embedded cluster recorded in ``state``."""

    def __init__(self, stack: EmbeddedStack, state: dict[str, dict[str, int]]) -> None:
        self.stack = stack
        self.state = state
        self.root = stack.data_dir / "redis-cluster"

    @property
    def size(self) -> int:
        """Primaries of the recorded cluster (0: none)."""
        return int(self.state.get("redis", {}).get("cluster", 0))

    def nodes(self) -> list[dict[str, int]]:
        return [self.state[node_key(i)] for i in range(2 * self.size) if node_key(i) in self.state]

    def up(self, primaries: int) -> None:
        redis_entry = self.state.get("redis", {})
        if primaries < 1:
            raise ConfigError(f"--cluster needs at least 1 primary, got {primaries}")
        if not redis_entry.get("cluster") and alive(redis_entry.get("pid")):
            raise ConfigError("a single-node Valkey of this stack is running; stop it first (`agent-journal down`), "
                              "or use another --data-dir for the cluster")
        if self.size and self.size != primaries:
            raise ConfigError(f"this stack's cluster has {self.size} primaries, not {primaries}; use --cluster "
                              f"{self.size}, or another --data-dir (its data is in {self.root})")
        count = 2 * primaries
        ports = [self.state[node_key(i)]["port"] for i in range(count) if node_key(i) in self.state]
        if len(ports) != count:
            ports = pick_ports(count)
        password = self.stack._secret("redis")
        for i, port in enumerate(ports):
            entry = self.state.get(node_key(i), {})
            if alive(entry.get("pid")):
                continue
            if not _bindable(port):
                raise StoreUnavailable(f"cluster node {i} must restart on its port {port} (its nodes.conf names it), "
                                       "but that port is taken; free it and run `agent-journal up --cluster` again")
            data = self.root / f"node-{i}"
            data.mkdir(parents=True, exist_ok=True)
            started = self.stack.start_valkey(data, port, self.root / f"node-{i}.log", self._config(data), (
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                # A replica may always take over: on loopback a lagging replica is still the best there is.
                "--cluster-replica-validity-factor", "0"))
            self.state[node_key(i)] = started
            password = password or self.stack._secret("redis")
        self.state["redis"] = {**self.state[node_key(0)], "cluster": primaries}
        if not self._formed(ports[0], password):
            self._create(ports, password)
        self._wait_healthy(ports, password)

    def _config(self, data: Path) -> Path:
        """A config file holding the replicas' password for their primary (kept out of the process list)."""
        path = data / "node.conf"
        password = self.stack._secret("redis")
        if not password:
            return path if path.exists() else self._touch(path)
        path.write_text(f"masterauth {password}\n")
        path.chmod(0o600)
        return path

    @staticmethod
    def _touch(path: Path) -> Path:
        path.write_text("")
        return path

    def _client(self, port: int, password: str) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=port, password=password or None, socket_timeout=5,
                           decode_responses=True)

    def _formed(self, port: int, password: str) -> bool:
        client = self._client(port, password)
        try:
            return int(client.execute_command("CLUSTER INFO").get("cluster_slots_assigned", 0)) > 0
        finally:
            client.close()

    def _create(self, ports: list[int], password: str) -> None:
        cli = _cli()
        argv = [str(cli), "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                "--cluster-replicas", "1", "--cluster-yes"]
        # REDISCLI_AUTH keeps the password out of argv (and silences valkey-cli's warning about -a).
        env = {**os.environ, "REDISCLI_AUTH": password} if password else None
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=FORM_TIMEOUT)
        if done.returncode:
            raise StoreUnavailable(f"valkey-cli --cluster create failed (exit {done.returncode}):\n"
                                   f"{done.stdout[-2000:]}{done.stderr[-2000:]}")

    def _wait_healthy(self, ports: list[int], password: str) -> None:
        """Until every node says cluster_state:ok and every replica's link to its primary is up."""
        deadline = time.monotonic() + FORM_TIMEOUT
        why = "not yet asked"
        while time.monotonic() < deadline:
            why = ""
            for port in ports:
                client = self._client(port, password)
                try:
                    info = client.execute_command("CLUSTER INFO")
                    repl = client.info("replication")
                except Exception as e:  # a node still loading or joining: ask again
                    why = f"node {port}: {e}"
                finally:
                    client.close()
                if why:
                    break
                if info.get("cluster_state") != "ok":
                    why = f"node {port}: cluster_state {info.get('cluster_state')}"
                elif repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                    why = f"replica {port}: link to its primary {repl.get('master_link_status')}"
                if why:
                    break
            if not why:
                return
            time.sleep(0.2)
        raise StoreUnavailable(f"the embedded cluster did not become healthy within {FORM_TIMEOUT:.0f}s ({why}); "
                               f"see the node logs in {self.root}")

    def down(self) -> None:
        for i in range(2 * self.size):
            entry = self.state.get(node_key(i))
            if entry and alive(entry.get("pid")):
                self.stack._terminate(entry["pid"], "redis")
            if entry:
                entry["pid"] = 0
        if self.size:
            self.state["redis"]["pid"] = 0

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``, as a crash would (fault tests); its replica takes over after NODE_TIMEOUT_MS."""
        entry = self.state.get(node_key(i), {})
        pid = entry.get("pid")
        if alive(pid):
            assert pid
            os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).wait(10)
        if entry:
            entry["pid"] = 0
        self._repoint()

    def _repoint(self) -> None:
        """Let the ``redis`` entry (what clients and `status` look at) name a live node, if any is."""
        live = [e for e in self.nodes() if alive(e.get("pid"))]
        if live and self.size:
            self.state["redis"] = {**live[0], "cluster": self.size}


def _cli() -> Path:
    from journal.embedded import valkey_binary

    return valkey_binary("valkey-cli")


def migrate_slot(url: str, slot: int, target: str, *, batch: int = 100) -> int:
    """Move ``slot`` to the primary ``target`` (host:port) the way ``valkey-cli --cluster reshard`` does.

    IMPORTING on the target, MIGRATING on the source, its keys moved ``batch`` at a time with
    MIGRATE, then the slot assigned to the target on every primary. Clients are told ``ASK``
    (keys already moved), ``TRYAGAIN`` (a command's keys split between the two) and finally
    ``MOVED``. Returns the keys moved. For fault tests and the benchmark; an operator can use
    ``valkey-cli --cluster reshard``.
    """
    import redis
    import redis.cluster

    from journal.redis_store import connect

    cluster: Any = connect(url)
    try:
        source = cluster.nodes_manager.get_node_from_slot(slot)
        if source.name == target:
            return 0
        kw = cluster.get_redis_connection(source).connection_pool.connection_kwargs
        host, _, port = target.rpartition(":")

        def plain(h: str, p: int) -> redis.Redis:
            return redis.Redis(host=h, port=p, username=kw.get("username"), password=kw.get("password"),
                               decode_responses=True)

        src, dst = plain(source.host, int(source.port)), plain(host, int(port))
        src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        auth = (("AUTH2", kw["username"], kw["password"]) if kw.get("username") else
                ("AUTH", kw["password"]) if kw.get("password") else ())
        moved = 0
        while True:
            names = src.execute_command("CLUSTER GETKEYSINSLOT", slot, batch)
            if not names:
                break
            src.execute_command("MIGRATE", host, int(port), "", 0, 10_000, *auth, "KEYS", *names)
            moved += len(names)
        # The target first: once the source hands over, clients must find the target owning the slot.
        for node in [dst, src, *(plain(n.host, int(n.port)) for n in cluster.get_primaries()
                                 if n.name not in (source.name, target))]:
            node.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
            node.close()
        return moved
    finally:
        cluster.close()
