"""A `bridge worker` process killed (SIGKILL) in the middle of a run loses nothing: a new
worker process delivers every event, taking over the dead one's claims when their lease
ends (at-least-once: duplicates are allowed, losses are not)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from bridge.events import NewEvent
from bridge.store.sqlite import SqliteStore

from .conftest import (
    BRIDGE_SCRIPT,
    Reply,
    destination,
    sample,
    wait_for,
    write_bridge_yaml,
)

EVENTS = 300


@pytest.mark.skipif(not BRIDGE_SCRIPT.exists(), reason="the bridge console script is missing")
def test_sigkilled_worker_loses_no_event(tmp_path, receiver, spawn):
    # batch 8, concurrency 4, timeout 1 s: a claim's lease is 8/200 + 1 * 2 + 5 ≈ 7 s;
    # more claims than sending threads, so some are held but not sent when it dies
    config = write_bridge_yaml(
        tmp_path,
        {"tool": destination(receiver.url("/crash"), timeout="1s", rate_limit=200,
                             concurrency=4)},
        delivery={"batch": 8, "poll_interval": "0.2s", "in_web": False})
    receiver.default("/crash", Reply(200, delay=0.05))  # slow enough to be in flight
    env = {**os.environ, "BRIDGE_CONFIG": str(config), "BRIDGE_LOG_LEVEL": "WARNING",
           "RATIOREADY_WEBHOOK_SECRET": "crash-test-secret"}
    env.pop("DATABASE_URL", None)

    store = SqliteStore(str(tmp_path / "bridge.db"))
    store.migrate()
    base = json.loads(sample("ratioready", "wall_art_completed"))
    ids = set()
    for n in range(EVENTS):
        body = json.dumps({**base, "job_id": f"rr_job_crash_{n:04d}"}).encode()
        stored = store.add_event(NewEvent("ratioready", "completed", f"crash-{n}", body, {},
                                          "127.0.0.1", time.time()), ["tool"])
        ids.add(stored.event_id)
    assert len(ids) == EVENTS

    log = tmp_path / "worker.log"
    first = spawn([str(BRIDGE_SCRIPT), "worker"], env, log)
    wait_for(lambda: receiver.count("/crash") >= 42 or first.poll() is not None, timeout=20,
             message=lambda: log.read_text(errors="replace"))
    assert first.poll() is None, log.read_text(errors="replace")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    received_before = receiver.count("/crash")
    assert 0 < received_before < EVENTS
    in_flight = [d for d in store.list_deliveries(state="pending", limit=1000)
                 if d.leased_by is not None]
    assert in_flight, "the killed worker held no claim: the test proves nothing"

    second = spawn([str(BRIDGE_SCRIPT), "worker"], env, log)
    wait_for(lambda: set(receiver.ids("/crash")) >= ids or second.poll() is not None,
             timeout=60, message=lambda: f"{len(ids - set(receiver.ids('/crash')))} never "
                                         f"received\n{log.read_text(errors='replace')}")
    assert second.poll() is None, log.read_text(errors="replace")
    wait_for(lambda: len(store.list_deliveries(state="done", limit=1000)) == EVENTS,
             timeout=15, message=lambda: str(collections_of(store)))

    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0, log.read_text(errors="replace")
    assert set(receiver.ids("/crash")) == ids  # nothing lost, nothing foreign
    assert store.list_deliveries(state="pending", limit=1000) == []
    assert all(d.leased_by is None for d in store.list_deliveries(limit=1000))
    store.close()


def collections_of(store: SqliteStore) -> dict[str, int]:
    counts: dict[str, int] = {}
    for delivery in store.list_deliveries(limit=1000):
        counts[delivery.state] = counts.get(delivery.state, 0) + 1
    return counts
