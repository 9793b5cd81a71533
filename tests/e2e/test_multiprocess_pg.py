"""Several real processes on one PostgreSQL queue: a ``bridge serve --workers 2`` (two
gunicorn web processes) takes 2,000 signed callbacks from 16 concurrent senders, three
``bridge worker`` processes deliver them to a loopback receiver.

Normal case: every event arrives exactly once and every delivery ends done. Crash case:
one worker is SIGKILLed at ~30 % (and a fresh one started); the others take over its
claims when their lease ends, so nothing is lost (duplicates are allowed, and only for
the claims the killed worker held).

Signatures are computed here with hmac; what "received" and "done" mean is read from the
receiver's own record and from the database with plain SQL, never through the bridge.
Skipped, saying why, when no PostgreSQL server answers (the ``pg_url`` fixture).
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import requests
import yaml

from ..delivery.conftest import (
    BRIDGE_SCRIPT,
    MAPPINGS,
    Reply,
    free_port,
    hmac_hex,
    sample,
    wait_for,
)

pytestmark = pytest.mark.skipif(not BRIDGE_SCRIPT.exists(),
                                reason="the bridge console script is missing")

EVENTS = 2000
SENDERS = 16
WORKERS = 3
SIGNATURE_HEADER = "X-RatioReady-Signature"  # written by hand from the provider's document
DELIVERED = re.compile(r"delivered evt_\w+ to tool: HTTP 200")  # a worker's INFO line


def write_config(folder: Path, url: str, timeout: str, batch: int) -> Path:
    """bridge.yaml: the database from ${DATABASE_URL}, ratioready's secret from the
    environment, one http destination with a high rate limit, no delivery in the web."""
    data = {
        "database_url": "${DATABASE_URL}",
        "sources": {"ratioready": {"profile": "ratioready",
                                   "secrets": ["${RATIOREADY_WEBHOOK_SECRET}"],
                                   "mapping": str(MAPPINGS / "ratioready.yaml")}},
        "destinations": {"tool": {"kind": "http", "url": url, "timeout": timeout,
                                  "rate_limit": 100000, "concurrency": 8}},
        "routes": [{"from": "all", "to": "tool"}],
        "delivery": {"in_web": False, "batch": batch, "poll_interval": "0.2s"},
    }
    path = folder / "bridge.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


class Cluster:
    """One `bridge serve --workers 2` and several `bridge worker` processes on pg_url."""

    def __init__(self, folder: Path, pg_url: str, receiver_url: str, start, timeout: str,
                 batch: int):
        self.folder, self.pg_url, self.spawn = folder, pg_url, start
        self.secret = "mp-" + os.urandom(12).hex()
        config = write_config(folder, receiver_url, timeout, batch)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BRIDGE_") and k not in ("DATABASE_URL", "PORT",
                                                            "WEB_CONCURRENCY")}
        self.env = {**env, "BRIDGE_CONFIG": str(config), "DATABASE_URL": pg_url,
                    "RATIOREADY_WEBHOOK_SECRET": self.secret, "BRIDGE_LOG_LEVEL": "INFO"}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.serve_log = folder / "serve.log"
        self.server = start([str(BRIDGE_SCRIPT), "serve", "--host", "127.0.0.1", "--port",
                             str(self.port), "--workers", "2", "--threads", "4"],
                            self.env, self.serve_log)
        self.workers: list[tuple[subprocess.Popen, Path]] = []
        for _ in range(WORKERS):
            self.start_worker()
        self.local = threading.local()

    def start_worker(self) -> subprocess.Popen:
        log = self.folder / f"worker{len(self.workers) + 1}.log"
        process = self.spawn([str(BRIDGE_SCRIPT), "worker"], self.env, log)
        self.workers.append((process, log))
        return process

    def logs(self) -> str:
        parts = [f"--- serve.log\n{tail(self.serve_log)}"]
        parts += [f"--- {log.name}\n{tail(log)}" for _, log in self.workers]
        return "\n".join(parts)

    def wait_until_healthy(self, timeout: float = 30) -> None:
        def healthy() -> bool:
            if self.server.poll() is not None:
                pytest.fail(f"bridge serve exited ({self.server.returncode}):\n{self.logs()}")
            try:
                return requests.get(f"{self.url}/healthz", timeout=5).status_code == 200
            except requests.RequestException:  # not up yet, or slow on a loaded machine
                return False

        wait_for(healthy, timeout, interval=0.1, message=self.logs)
        # two web processes under the gunicorn master (its children, read from /proc)
        children = Path(f"/proc/{self.server.pid}/task/{self.server.pid}/children")
        if children.exists():
            wait_for(lambda: len(children.read_text().split()) == 2, 20, interval=0.1,
                     message=lambda: f"web processes: {children.read_text()!r}")
        for process, log in self.workers:
            assert process.poll() is None, tail(log)

    def body(self, n: int) -> bytes:
        payload = json.loads(sample("ratioready", "wall_art_completed"))
        payload.update(job_id=f"rr_job_mp_{n:05d}", status="completed")
        return json.dumps(payload).encode()

    def post(self, n: int) -> tuple[int, int, dict | str]:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        body = self.body(n)
        response = session.post(f"{self.url}/hooks/ratioready", data=body, timeout=30,
                                headers={"Content-Type": "application/json",
                                         SIGNATURE_HEADER: hmac_hex(self.secret, body)})
        try:
            answer = response.json()
        except ValueError:
            answer = response.text
        return n, response.status_code, answer

    def post_all(self, count: int) -> dict[str, str]:
        """POST ``count`` distinct callbacks from SENDERS threads; every answer must be
        200 accepted. Returns event_id → the job_id that was sent."""
        with ThreadPoolExecutor(SENDERS, thread_name_prefix="sender") as pool:
            answers = list(pool.map(self.post, range(count)))
        bad = [(n, code, answer) for n, code, answer in answers
               if code != 200 or not isinstance(answer, dict)
               or answer.get("status") != "accepted"]
        assert not bad, f"{len(bad)} callbacks not accepted, e.g. {bad[:5]}"
        jobs = {answer["event_id"]: f"rr_job_mp_{n:05d}" for n, _, answer in answers}
        assert len(jobs) == count, "two callbacks got the same event_id"
        return jobs

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.pg_url, connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()

    def states(self) -> dict[str, int]:
        return dict(self.sql("SELECT state, COUNT(*) FROM deliveries GROUP BY state"))

    def delivered_by(self) -> list[int]:
        """How many 'delivered …' lines each worker logged (INFO, one per delivery)."""
        return [len(DELIVERED.findall(log.read_text(errors="replace")))
                for _, log in self.workers]

    def stop_workers(self) -> None:
        """SIGTERM every live worker: each must exit 0 within its graceful shutdown."""
        live = [(p, log) for p, log in self.workers if p.poll() is None]
        for process, _ in live:
            process.send_signal(signal.SIGTERM)
        for process, log in live:
            assert process.wait(30) == 0, tail(log)


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def check_payloads(requests_seen, jobs: dict[str, str]) -> None:
    """Every delivered body is the flat event of the job that was sent under that id."""
    for request in requests_seen:
        event = request.json
        assert event["event_id"] == request.event_id
        assert event["job_id"] == jobs[request.event_id]
        assert event["source"] == "ratioready" and event["event_type"] == "job.completed"


def test_two_web_processes_and_three_workers_deliver_each_event_exactly_once(
        tmp_path, pg_url, receiver, spawn):
    cluster = Cluster(tmp_path, pg_url, receiver.url("/tool"), spawn, timeout="5s", batch=20)
    cluster.wait_until_healthy()

    started = time.monotonic()
    jobs = cluster.post_all(EVENTS)
    ingest_seconds = time.monotonic() - started

    wait_for(lambda: set(receiver.ids("/tool")) >= set(jobs), timeout=45, interval=0.1,
             message=lambda: f"{len(set(jobs) - set(receiver.ids('/tool')))} of {EVENTS} "
                             f"never received (ingest took {ingest_seconds:.1f} s); "
                             f"states {cluster.states()}\n{cluster.logs()}")
    wait_for(lambda: cluster.states() == {"done": EVENTS}, timeout=15, interval=0.1,
             message=lambda: f"deliveries: {cluster.states()}")

    counts = collections.Counter(receiver.ids("/tool"))
    assert set(counts) == set(jobs)  # nothing foreign
    twice = {event_id: n for event_id, n in counts.items() if n != 1}
    assert not twice, f"{len(twice)} events received more than once: {list(twice.items())[:5]}"
    assert sum(counts.values()) == EVENTS
    check_payloads(receiver.to("/tool"), jobs)

    # the database agrees, read with plain SQL: 2,000 events, one delivery each, all done
    # after one try, no lease left behind
    assert cluster.sql("SELECT COUNT(*), COUNT(DISTINCT id) FROM events") == [(EVENTS, EVENTS)]
    assert cluster.sql("SELECT state, COUNT(*), MIN(total_attempts), MAX(total_attempts), "
                       "COUNT(leased_by) FROM deliveries GROUP BY state") == [
        ("done", EVENTS, 1, 1, 0)]
    assert cluster.sql("SELECT COUNT(*) FROM attempts WHERE http_status = 200") == [(EVENTS,)]
    assert sorted(cluster.sql("SELECT id FROM events")) == sorted((i,) for i in jobs)

    # every process took part: each worker delivered some, together exactly 2,000
    per_worker = cluster.delivered_by()
    assert all(n > 0 for n in per_worker), per_worker
    assert sum(per_worker) == EVENTS, per_worker
    assert cluster.server.poll() is None, cluster.logs()
    cluster.stop_workers()
    print(f"ingest {EVENTS} in {ingest_seconds:.1f} s; delivered per worker {per_worker}")


def test_a_sigkilled_worker_among_three_loses_no_event(tmp_path, pg_url, receiver, spawn):
    # timeout 1 s, batch 16, concurrency 8: a claim's lease is 16/100000 + 1 * 2 + 5 ≈ 7 s,
    # so the killed worker's claims come back quickly; each answer takes 100 ms so that a
    # worker holds a batch for about 200 ms: still holding it when it is killed
    receiver.default("/tool", Reply(200, delay=0.1))
    cluster = Cluster(tmp_path, pg_url, receiver.url("/tool"), spawn, timeout="1s", batch=16)
    cluster.wait_until_healthy()

    posted: dict[str, str] = {}
    failure: list[BaseException] = []

    def send() -> None:
        try:
            posted.update(cluster.post_all(EVENTS))
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
            failure.append(err)

    sender = threading.Thread(target=send, name="senders", daemon=True)
    sender.start()
    wait_for(lambda: receiver.count("/tool") >= EVENTS * 3 // 10 or not sender.is_alive(),
             timeout=40, interval=0.01, message=cluster.logs)
    assert receiver.count("/tool") < EVENTS, "all delivered before the kill: proves nothing"

    # the victim: a worker holding claims right now (its id is host:pid:random)
    holders = {row[0].split(":")[-2] for row in cluster.sql(
        "SELECT DISTINCT leased_by FROM deliveries WHERE state = 'pending' "
        "AND leased_by IS NOT NULL")}
    candidates = [p for p, _ in cluster.workers if str(p.pid) in holders] or \
        [cluster.workers[0][0]]
    victim = candidates[0]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    killed_at = receiver.count("/tool")
    orphans = {row[0] for row in cluster.sql(
        "SELECT event_id FROM deliveries WHERE state = 'pending' AND leased_by LIKE %s",
        (f"%:{victim.pid}:%",))}
    assert orphans, "the killed worker held no claim: the test proves nothing"
    cluster.start_worker()  # a fresh worker joins mid-run

    sender.join(60)
    assert not sender.is_alive(), "the senders did not finish"
    if failure:
        raise failure[0]
    assert len(posted) == EVENTS

    wait_for(lambda: set(receiver.ids("/tool")) >= set(posted), timeout=45, interval=0.1,
             message=lambda: f"{len(set(posted) - set(receiver.ids('/tool')))} never "
                             f"received; states {cluster.states()}\n{cluster.logs()}")
    wait_for(lambda: cluster.states() == {"done": EVENTS}, timeout=20, interval=0.1,
             message=lambda: f"deliveries: {cluster.states()}\n{cluster.logs()}")

    counts = collections.Counter(receiver.ids("/tool"))
    assert set(counts) == set(posted)  # none lost, nothing foreign
    check_payloads(receiver.to("/tool"), posted)
    # at-least-once: only the killed worker's unrecorded claims may arrive twice
    duplicated = {event_id for event_id, n in counts.items() if n > 1}
    assert duplicated <= orphans, sorted(duplicated - orphans)[:5]
    assert all(n <= 2 for n in counts.values()), counts.most_common(3)
    # its orphaned claims were taken over: done, by one of the others
    assert cluster.sql("SELECT COUNT(*) FROM deliveries WHERE state = 'done' "
                       "AND event_id = ANY(%s)", (list(orphans),)) == [(len(orphans),)]
    assert cluster.sql("SELECT COUNT(*), COUNT(leased_by) FROM deliveries") == [(EVENTS, 0)]
    assert 0 < killed_at < EVENTS
    survivors = [p for p, _ in cluster.workers if p is not victim]
    assert all(p.poll() is None for p in survivors), cluster.logs()
    assert cluster.server.poll() is None, cluster.logs()
    cluster.stop_workers()
    print(f"killed at {killed_at} received, holding {len(orphans)} claims; "
          f"{len(duplicated)} received twice; delivered per worker {cluster.delivered_by()}")
