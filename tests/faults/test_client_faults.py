"""The client through server faults: a wait that outlives a Valkey restart, fsync on a server that cannot.

Runs on the module's private stack (``private_stack``): it kills and reconfigures Valkey.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from conftest import make_client

from journal.embedded import EmbeddedStack
from journal.errors import DurabilityUnsupported
from journal.settings import Settings

#: A valid message payload (the fold needs role and content); tests add fields of their own.
MSG = {"role": "user", "content": "hi"}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_wait_across_a_valkey_restart_returns_the_event_appended_after_it(
        kind: str, private_stack: EmbeddedStack, fault_settings: Settings) -> None:
    """A wait blocked when Valkey is SIGKILLed reconnects after the restart and returns the resume appended then."""
    tenant = f"restart-{kind}"
    found: list[Any] = []
    with make_client(kind, fault_settings) as waiter:
        paused = waiter.append(tenant, "run", "pause", {"reason": "approval"}, durability="fsync")

        def wait() -> None:
            found.append(waiter.wait(tenant, "run", after_seq=paused.seq, timeout=60))

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(1.0)
        private_stack.kill("redis")
        time.sleep(3.0)  # longer than one XREAD chunk: the wait sees the server gone and retries
        private_stack.start("redis")
        with make_client("sync", fault_settings) as approver:
            approver.append(tenant, "run", "resume", {"by": "human:alice"})
        t.join(60)
    assert not t.is_alive()
    assert found and found[0] is not None and found[0].payload == {"by": "human:alice"}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_fsync_on_a_server_without_aof_is_refused_before_writing(
        kind: str, private_stack: EmbeddedStack, fault_settings: Settings) -> None:
    """With appendonly off, durability='fsync' raises DurabilityUnsupported saying nothing was written; head stays 0."""
    tenant = f"no-aof-{kind}"
    admin = redis.Redis.from_url(fault_settings.redis_url or "")
    admin.config_set("appendonly", "no")
    try:
        with pytest.warns(UserWarning, match="AOF off"), make_client(kind, fault_settings) as c:
            for _ in range(2):  # asked once per client; the answer is kept
                with pytest.raises(DurabilityUnsupported, match="Nothing was written"):
                    c.append(tenant, "th", "message", {**MSG, "n": 1}, durability="fsync")
            assert c.head(tenant, "th") == 0
            assert c.append(tenant, "th", "message", {**MSG, "n": 1}).seq == 1
    finally:
        admin.config_set("appendonly", "yes")
        admin.close()
