"""The fault suite: events posted with real signatures by several senders that retry as
providers do, through a real `bridge serve` (gunicorn) and two `bridge worker` processes
over one SQLite file, to a destination that fails 30% of the time with a 5xx, answers
429 + Retry-After in bursts and drops connections; meanwhile the web process and the
workers are SIGKILLed and restarted at random moments (seeded).

At the end, after a final drain: every event the bridge acknowledged (answered 200)
reached the destination at least once (no loss), every delivery in the store is done (none
stuck, none dead), the store holds each event once. The figures (events, acks, faults of
each kind, duplicates delivered, losses) are printed (pytest -s) and written to
artifacts/faults.json.

    BRIDGE_FAULT_EVENTS   events to send (default 2000; 10000 is the long run)
    BRIDGE_FAULT_SEED     the seed of every random choice (default 1)
    BRIDGE_FAULT_SENDERS  concurrent senders (default 8)
    BRIDGE_FAULT_DATABASES  sqlite (default) and/or postgres, comma-separated
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
BRIDGE = Path(sys.executable).with_name("bridge")
RECEIVER = Path(__file__).with_name("chaos_receiver.py")
SAMPLES = REPO / "bridge" / "samples"

EVENTS = int(os.environ.get("BRIDGE_FAULT_EVENTS") or 2000)
SEED = int(os.environ.get("BRIDGE_FAULT_SEED") or 1)
SENDERS = int(os.environ.get("BRIDGE_FAULT_SENDERS") or 8)
# sqlite (a tmp file), and with BRIDGE_FAULT_DATABASES=sqlite,postgres also PostgreSQL
# (tests/conftest.py pg_url: BRIDGE_TEST_DATABASE_URL or the local default)
DATABASES = (os.environ.get("BRIDGE_FAULT_DATABASES") or "sqlite").replace(" ", "").split(",")
KILL_EVERY = (2.0, 6.0)       # seconds between two kills
KILL_AFTER_SENDING = 15.0     # the kills go on this long while deliveries are left
FAIL, DROP, BURST_EVERY = 0.30, 0.05, 6.0  # the destination's misbehaviour (chaos_receiver)

# Written by hand from the providers' documents (not read from the profiles under test).
PROVIDERS = {
    "ratioready": ("X-RatioReady-Signature", "wall_art_completed"),
    "zupertry": ("X-Zupertry-Signature", "job_completed"),
    "listingrva": ("X-Webhook-Signature", "image_generated"),
}


def hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload(provider: str, job: str) -> bytes:
    """The provider's sample with this job's id (each job is one new event)."""
    data = json.loads((SAMPLES / provider / f"{PROVIDERS[provider][1]}.json").read_text("utf-8"))
    if provider == "ratioready":
        data["job_id"] = job
    elif provider == "zupertry":
        data["data"]["job_id"] = job
    else:
        data["payload"]["jobId"] = job
    return json.dumps(data).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Could gunicorn bind it now (it sets SO_REUSEADDR, so TIME_WAIT does not count)?"""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# -- the processes ---------------------------------------------------------------------------

@dataclass
class Cluster:
    """The bridge's processes; every one in its own process group, killed as a group."""

    folder: Path
    env: dict[str, str]
    port: int
    web: subprocess.Popen | None = None
    workers: list[subprocess.Popen | None] = field(default_factory=lambda: [None, None])
    lock: threading.Lock = field(default_factory=threading.Lock)
    kills: collections.Counter = field(default_factory=collections.Counter)
    port_changes: int = 0
    everything: list[subprocess.Popen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen:
        with open(self.folder / log, "ab") as out:
            process = subprocess.Popen(args, cwd=self.folder, env=self.env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.everything.append(process)
        return process

    def start_web(self) -> None:
        deadline = time.monotonic() + 5
        while not port_is_free(self.port):
            if time.monotonic() > deadline:  # still held: another port, the senders follow
                self.port = free_port()
                self.port_changes += 1
                break
            time.sleep(0.05)
        self.web = self._spawn([str(BRIDGE), "serve", "--host", "127.0.0.1", "--port",
                                str(self.port), "--workers", "2", "--threads", "4"], "web.log")

    def start_worker(self, index: int) -> None:
        self.workers[index] = self._spawn([str(BRIDGE), "worker"], f"worker{index}.log")

    @staticmethod
    def _kill(process: subprocess.Popen | None) -> None:
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def kill_and_restart(self, target: str) -> None:
        with self.lock:
            if target in ("web", "all"):
                self._kill(self.web)
                self.kills["web"] += 1
            if target == "all" or target.startswith("worker"):
                indexes = range(len(self.workers)) if target == "all" else [int(target[-1])]
                for index in indexes:
                    self._kill(self.workers[index])
                    self.kills["worker"] += 1
            if target == "all":
                self.kills["all_at_once"] += 1
            if target in ("web", "all"):
                self.start_web()
            for index, process in enumerate(self.workers):
                if process is None or process.poll() is not None:
                    self.start_worker(index)

    def ensure_running(self) -> None:
        with self.lock:
            if self.web is None or self.web.poll() is not None:
                self.start_web()
            for index, process in enumerate(self.workers):
                if process is None or process.poll() is not None:
                    self.start_worker(index)

    def stop(self) -> None:
        for process in self.everything:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.everything:
            try:
                process.wait(25)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


# -- the senders -----------------------------------------------------------------------------

@dataclass
class Senders:
    """Providers: each job is posted until the bridge answers 200 (connection errors,
    timeouts and 5xx are retried with a short backoff, as providers retry)."""

    cluster: Cluster
    secrets: dict[str, str]
    run: str
    acks: dict[int, str] = field(default_factory=dict)      # job number -> event id
    answers: collections.Counter = field(default_factory=collections.Counter)
    refused: list[str] = field(default_factory=list)         # any 4xx: a bug
    lock: threading.Lock = field(default_factory=threading.Lock)

    def job(self, number: int) -> tuple[str, str]:
        provider = list(PROVIDERS)[number % len(PROVIDERS)]
        return provider, f"chaos-{self.run}-{number:05d}"

    def send_all(self, numbers: list[int], seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        for number in numbers:
            provider, job = self.job(number)
            body = payload(provider, job)
            tries = 0
            while True:
                tries += 1
                headers = {"Content-Type": "application/json",
                           PROVIDERS[provider][0]: hmac_hex(self.secrets[provider], body)}
                if provider == "ratioready":
                    headers["X-RatioReady-Timestamp"] = str(int(time.time()))
                try:
                    response = session.post(f"{self.cluster.url}/hooks/{provider}", data=body,
                                            headers=headers, timeout=(2, 10))
                except requests.RequestException as err:
                    kind = type(err).__name__
                    with self.lock:
                        self.answers[f"error:{kind}"] += 1
                    session.close()
                    session = requests.Session()
                else:
                    status = response.status_code
                    with self.lock:
                        self.answers[str(status)] += 1
                    if status == 200:
                        answer = response.json()
                        with self.lock:
                            self.acks[number] = answer["event_id"]
                            self.answers[answer["status"]] += 1
                        break
                    if 400 <= status < 500:
                        with self.lock:
                            self.refused.append(f"{job}: {status} {response.text[:200]}")
                        break
                time.sleep(min(1.0, 0.05 * 2 ** min(tries, 5)) * rng.uniform(0.5, 1.5))
            with self.lock:
                self.answers["posts"] += tries


# -- the database, read directly -------------------------------------------------------------

def query(url: str, sql: str) -> list[tuple]:
    """Read the bridge's database directly (SQLite file or PostgreSQL)."""
    for _ in range(50):
        try:
            if url.startswith("sqlite:///"):
                with contextlib.closing(sqlite3.connect(url[len("sqlite:///"):],
                                                        timeout=10)) as conn:
                    return conn.execute(sql).fetchall()
            import psycopg

            with psycopg.connect(url, connect_timeout=5) as conn:
                return conn.execute(sql).fetchall()
        except Exception:  # noqa: BLE001 - locked, or the server is busy: try again
            time.sleep(0.2)
    raise AssertionError(f"the database could not be read: {sql}")


def read_log(path: Path) -> list[dict]:
    lines = []
    with open(path, encoding="utf-8") as log:
        for line in log:
            if line.endswith("\n"):
                lines.append(json.loads(line))
    return lines


# -- the test --------------------------------------------------------------------------------

@pytest.mark.skipif(not BRIDGE.exists(), reason="the bridge console script is missing")
@pytest.mark.parametrize("database", DATABASES)
def test_no_acknowledged_event_is_lost_under_chaos(tmp_path, request, database):
    if database == "postgres":
        database_url = request.getfixturevalue("pg_url")  # skipped if no server answers
    else:
        database_url = f"sqlite:///{tmp_path / 'bridge.db'}"
    started = time.monotonic()
    rng = random.Random(SEED)
    run = f"{SEED}-{os.getpid()}"
    log_path = tmp_path / "receiver.jsonl"
    receiver = subprocess.Popen([sys.executable, str(RECEIVER), str(log_path), str(SEED),
                                 "--fail", str(FAIL), "--drop", str(DROP),
                                 "--burst-every", str(BURST_EVERY)],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
    cluster = None
    try:
        line = receiver.stdout.readline()
        assert line.startswith("PORT "), line
        hook = f"http://127.0.0.1:{int(line.split()[1])}/hook"

        secrets = {name: hashlib.sha256(f"{SEED}-{name}".encode()).hexdigest()
                   for name in PROVIDERS}
        config = tmp_path / "bridge.yaml"
        config.write_text(yaml.safe_dump({
            "database_url": database_url,
            "sources": {name: {"profile": name, "secrets": [f"${{{name.upper()}_SECRET}}"],
                               "mapping": str(REPO / "mappings" / f"{name}.yaml")}
                        for name in PROVIDERS},
            "destinations": {"hook": {
                "kind": "http", "url": hook, "timeout": "2s", "rate_limit": 2000,
                "concurrency": 8,
                # compressed: about 0.3, 0.6, 1 s, then every second; never dead in a run
                "retry": {"schedule": ["0.3s", "0.6s", "1s"], "repeat": "1s", "max_age": "1h",
                          "jitter": 0.2}}},
            "routes": [{"from": "all", "to": "hook"}],
            "delivery": {"in_web": False, "poll_interval": "0.2s", "batch": 20},
        }, sort_keys=False), encoding="utf-8")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BRIDGE_", "DATABASE_URL", "WEB_CONCURRENCY", "PORT"))}
        env.update({f"{name.upper()}_SECRET": secret for name, secret in secrets.items()})
        env.update({"BRIDGE_CONFIG": str(config), "BRIDGE_LOG_LEVEL": "ERROR"})

        cluster = Cluster(tmp_path, env, free_port())
        cluster.ensure_running()
        senders = Senders(cluster, secrets, run)

        # the killer: one kill every 2-6 s (seeded), web or a worker, now and then all
        stop_killing = threading.Event()

        def killer() -> None:
            while not stop_killing.wait(rng.uniform(*KILL_EVERY)):
                roll = rng.random()
                target = ("all" if roll < 0.1 else "web" if roll < 0.5
                          else f"worker{rng.randrange(2)}")
                cluster.kill_and_restart(target)

        killing = threading.Thread(target=killer, name="killer", daemon=True)
        killing.start()

        numbers = list(range(EVENTS))
        threads = [threading.Thread(target=senders.send_all,
                                    args=(numbers[i::SENDERS], SEED + i), name=f"sender-{i}",
                                    daemon=True) for i in range(SENDERS)]
        for thread in threads:
            thread.start()
        send_deadline = time.monotonic() + max(120, EVENTS / 10)
        for thread in threads:
            thread.join(max(0.0, send_deadline - time.monotonic()))
        sending = time.monotonic() - started
        assert not any(t.is_alive() for t in threads), (
            f"senders not done in {sending:.0f} s: {len(senders.acks)}/{EVENTS} acknowledged, "
            f"answers {dict(senders.answers)}")

        # the kills go on while deliveries are under way (at most KILL_AFTER_SENDING s more),
        # then stop for the final drain
        db = database_url
        kill_deadline = time.monotonic() + KILL_AFTER_SENDING
        while time.monotonic() < kill_deadline and query(
                db, "SELECT COUNT(*) FROM deliveries WHERE state != 'done'")[0][0]:
            time.sleep(0.5)
        stop_killing.set()
        killing.join(30)
        cluster.ensure_running()

        # the final drain: the workers deliver what is left (a killed worker's claims come
        # back when their lease ends, about 11 s)
        drain_deadline = time.monotonic() + max(120, EVENTS / 20)
        while True:
            left = query(db, "SELECT COUNT(*) FROM deliveries WHERE state != 'done'")[0][0]
            if left == 0 or time.monotonic() > drain_deadline:
                break
            time.sleep(0.5)
        total = time.monotonic() - started
        cluster.stop()
        receiver.send_signal(signal.SIGTERM)
        receiver.wait(10)

        # -- what happened --------------------------------------------------------------
        events = dict(query(db, "SELECT dedup_key, id FROM events"))
        states = collections.Counter(dict(query(
            db, "SELECT state, COUNT(*) FROM deliveries GROUP BY state")))
        attempts = query(db, "SELECT COUNT(*) FROM attempts")[0][0]
        received = read_log(log_path)
        outcomes = collections.Counter(r["outcome"] for r in received)
        delivered = collections.Counter(r["id"] for r in received if r["outcome"] == "200")
        job_of = {r["id"]: r["job"] for r in received if r["outcome"] == "200"}
        acked = {senders.job(n)[1]: event_id for n, event_id in senders.acks.items()}
        lost = sorted(job for job, event_id in acked.items() if event_id not in delivered)
        wrong_job = sorted(job for job, event_id in acked.items()
                           if event_id in job_of and job_of[event_id] != job)
        stuck = sum(count for state, count in states.items() if state != "done")
        figures = {
            "database": database, "events": EVENTS, "senders": SENDERS, "seed": SEED,
            "acknowledged": len(acked),
            "stored_events": len(events),
            "bridge_answers": dict(sorted(senders.answers.items())),
            "faults_injected": {
                "web_kills": cluster.kills["web"], "worker_kills": cluster.kills["worker"],
                "all_at_once_kills": cluster.kills["all_at_once"],
                "destination_5xx": outcomes["5xx"], "destination_429": outcomes["429"],
                "destination_drops": outcomes["drop"],
                "port_changes": cluster.port_changes},
            "destination_requests": len(received),
            "delivered_unique": len(delivered),
            "duplicates_delivered": sum(delivered.values()) - len(delivered),
            "delivery_attempts_recorded": attempts,
            "deliveries_by_state": dict(states),
            "losses": len(lost), "stuck": stuck, "wrong_job": len(wrong_job),
            "refused_by_bridge": len(senders.refused),
            "seconds": {"sending": round(sending, 1), "total": round(total, 1)},
        }
        print("\nfault suite figures:\n" + json.dumps(figures, indent=2))
        artifacts = REPO / "artifacts"
        with contextlib.suppress(OSError):
            artifacts.mkdir(exist_ok=True)
            name = "faults.json" if database == "sqlite" else f"faults-{database}.json"
            (artifacts / name).write_text(json.dumps(figures, indent=2) + "\n",
                                          encoding="utf-8")

        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                         for p in sorted(tmp_path.glob("*.log")))
        assert not senders.refused, senders.refused[:5]
        assert len(acked) == EVENTS
        assert senders.answers["500"] == 0, "the bridge answered 500"
        assert lost == [], f"{len(lost)} acknowledged but never delivered: {lost[:10]}\n{logs}"
        assert wrong_job == [], wrong_job[:10]
        assert stuck == 0, f"deliveries not done after the drain: {dict(states)}\n{logs}"
        assert states["done"] == EVENTS
        # each event stored once, under the id the bridge acknowledged
        assert len(events) == EVENTS
        assert set(events.values()) == set(acked.values())
        assert outcomes["5xx"] > 0 and outcomes["429"] > 0 and outcomes["drop"] > 0
        assert cluster.kills["web"] > 0 and cluster.kills["worker"] > 0
    finally:
        if cluster is not None:
            cluster.stop()
        if receiver.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(receiver.pid, signal.SIGKILL)
            receiver.wait(5)
