"""Losing PostgreSQL for a while is survived: a small TCP proxy sits between the bridge and
the server and can cut every live connection and refuse new ones, then come back.

- ingest answers 200 while the database is up, 503 with a JSON error while it is down
  (and /healthz 503), and 200 again once it is back, without restarting anything;
- a ``bridge worker`` process keeps running through the outage (its lane logs the
  database error and backs off), then delivers everything: events stored before, during
  (by another path to the server) and after the outage; nothing is lost.

Signatures are computed here with hmac; the database is read with plain SQL on a direct
connection. Skipped, saying why, when no PostgreSQL server answers (``pg_url``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import yaml

from bridge.app import create_app
from bridge.config import load_settings
from bridge.events import NewEvent
from bridge.store.postgres import CONNECT_TIMEOUT, PostgresStore

from ..conftest import assert_error
from ..delivery.conftest import (
    BRIDGE_SCRIPT,
    MAPPINGS,
    Reply,
    hmac_hex,
    sample,
    wait_for,
)

SIGNATURE_HEADER = "X-RatioReady-Signature"  # written by hand from the provider's document


# -- the proxy ------------------------------------------------------------------------------

class Proxy:
    """Forwards bytes between a loopback port and the PostgreSQL server. ``down()`` cuts
    every live connection and closes the port (new connections are refused at once);
    ``up()`` listens on the same port again."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.port = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.up()

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True,
                                          name="proxy-accept")
        self._acceptor.start()

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = list(self._sockets), set()
        if listener is not None:
            self._acceptor.join(5)  # it polls every 50 ms: the port is free once it is out
            listener.close()  # from now on: connection refused
        for sock in sockets:  # every live connection, both ends: cut
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def live(self) -> int:
        with self._lock:
            return len(self._sockets) // 2

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    client.close()
                    server.close()
                    return
                self._sockets |= {client, server}
                self.accepted += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True,
                                 name="proxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets -= {src, dst}
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


def through(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's (user, database and the
    search_path option kept)."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def proxy(pg_url):
    parts = urlsplit(pg_url)
    if not parts.hostname:
        pytest.skip("the PostgreSQL URL names no TCP host (a Unix socket cannot be proxied)")
    proxy = Proxy((parts.hostname, parts.port or 5432))
    yield proxy
    proxy.down()


@pytest.fixture
def proxied_url(pg_url, proxy) -> str:
    url = through(pg_url, proxy.port)
    # the proxy works and keeps the search_path option (the test's own schema)
    assert sql(url, "SHOW search_path") == sql(pg_url, "SHOW search_path")
    return url


def sql(url: str, query: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute(query, params).fetchall()


def body(n: int) -> bytes:
    payload = json.loads(sample("ratioready", "wall_art_completed"))
    payload.update(job_id=f"rr_job_outage_{n:04d}", status="completed")
    return json.dumps(payload).encode()


def write_config(folder, database_url: str, destination_url: str) -> str:
    data = {
        "database_url": database_url,  # literally, not through ${DATABASE_URL}
        "sources": {"ratioready": {"profile": "ratioready",
                                   "secrets": ["${RATIOREADY_WEBHOOK_SECRET}"],
                                   "mapping": str(MAPPINGS / "ratioready.yaml")}},
        "destinations": {"tool": {"kind": "http", "url": destination_url, "timeout": "1s",
                                  "rate_limit": 1000, "concurrency": 4}},
        "routes": [{"from": "all", "to": "tool"}],
        "delivery": {"in_web": False, "batch": 4, "poll_interval": "0.2s"},
    }
    path = folder / "bridge.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return str(path)


# -- ingest and /healthz ----------------------------------------------------------------------

@pytest.fixture
def app_client(tmp_path, proxied_url):
    secret = "outage-" + os.urandom(8).hex()
    config = write_config(tmp_path, proxied_url, "http://127.0.0.1:9/never-called")
    settings = load_settings(config, environ={"RATIOREADY_WEBHOOK_SECRET": secret})
    assert settings.database_url == proxied_url
    store = PostgresStore(settings.database_url)
    app = create_app(settings, store, start_worker=False)
    client = app.test_client()
    client.secret = secret
    yield client
    store.close()


def post(client, n: int):
    data = body(n)
    started = time.monotonic()
    response = client.post("/hooks/ratioready", data=data,
                           headers={"Content-Type": "application/json",
                                    SIGNATURE_HEADER: hmac_hex(client.secret, data)})
    response.elapsed = time.monotonic() - started
    return response


def accepted(response) -> str:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] == "accepted"
    return response.get_json()["event_id"]


def test_ingest_answers_503_while_the_database_is_away_and_recovers_by_itself(
        app_client, proxy, pg_url):
    first = accepted(post(app_client, 1))
    assert app_client.get("/healthz").status_code == 200
    assert proxy.live() >= 1

    proxy.down()
    for _ in range(3):  # the cut connection, then refused connections
        response = post(app_client, 2)
        error = assert_error(response, 503, forbidden=[app_client.secret])
        assert "unavailable" in error and "send it again" in error
        assert response.elapsed < CONNECT_TIMEOUT + 2, "503 only after a long wait"
    health = app_client.get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["status"] == "unavailable"
    # nothing of the refused callback reached the database (read on a direct connection)
    assert sql(pg_url, "SELECT id FROM events") == [(first,)]

    proxy.up()
    second = accepted(post(app_client, 2))  # the same callback again: stored now, once
    third = accepted(post(app_client, 3))
    health = app_client.get("/healthz")
    assert health.status_code == 200 and health.get_json()["status"] == "ok"
    assert len({first, second, third}) == 3
    assert sorted(sql(pg_url, "SELECT id FROM events")) == sorted(
        [(first,), (second,), (third,)])
    assert sorted(sql(pg_url, "SELECT event_id, state FROM deliveries")) == sorted(
        (event_id, "pending") for event_id in (first, second, third))


def test_a_database_restart_between_callbacks_costs_no_callback(app_client, proxy, pg_url):
    """The server goes away and comes back while the bridge is idle (a restart, a
    failover): the connection kept from before is dead, and the next callback must
    still be stored, not answered 503 (a provider that never retries would lose it)."""
    first = accepted(post(app_client, 1))
    proxy.down()
    proxy.up()
    time.sleep(0.2)  # the cut has reached the client's socket
    second = accepted(post(app_client, 2))
    assert app_client.get("/healthz").status_code == 200
    assert sorted(sql(pg_url, "SELECT id FROM events")) == sorted([(first,), (second,)])


# -- a worker process -------------------------------------------------------------------------

@pytest.mark.skipif(not BRIDGE_SCRIPT.exists(), reason="the bridge console script is missing")
def test_a_worker_process_rides_out_an_outage_and_delivers_everything(
        tmp_path, pg_url, proxy, proxied_url, receiver, spawn):
    receiver.default("/tool", Reply(200, delay=0.05))  # deliveries are in flight at the cut
    config = write_config(tmp_path, proxied_url, receiver.url("/tool"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BRIDGE_") and k != "DATABASE_URL"}
    env.update(BRIDGE_CONFIG=config, RATIOREADY_WEBHOOK_SECRET="outage-worker",
               BRIDGE_LOG_LEVEL="INFO")
    direct = PostgresStore(pg_url)  # another path to the server: the proxy never cuts it
    direct.migrate()
    base = json.loads(sample("ratioready", "wall_art_completed"))

    def store_events(first: int, count: int) -> set[str]:
        ids = set()
        for n in range(first, first + count):
            data = json.dumps({**base, "job_id": f"rr_job_outage_{n:04d}"}).encode()
            stored = direct.add_event(NewEvent("ratioready", "completed", f"outage-{n}", data,
                                               {}, "127.0.0.1", time.time()), ["tool"])
            assert not stored.duplicate
            ids.add(stored.event_id)
        return ids

    log = tmp_path / "worker.log"
    worker = spawn([str(BRIDGE_SCRIPT), "worker"], env, log)
    try:
        before = store_events(0, 60)
        wait_for(lambda: receiver.count("/tool") >= 12 or worker.poll() is not None,
                 timeout=20, message=lambda: log.read_text(errors="replace"))
        assert worker.poll() is None, log.read_text(errors="replace")

        proxy.down()
        cut_at = time.monotonic()
        during = store_events(100, 20)  # stored while the worker cannot see the database
        time.sleep(1.0)  # what was in flight at the cut has been answered by now
        settled = receiver.count("/tool")
        time.sleep(2.5)
        # no claim without the database: nothing is sent while it is away
        assert receiver.count("/tool") == settled
        assert worker.poll() is None, log.read_text(errors="replace")
        assert "database unavailable, retrying in" in log.read_text(errors="replace")
        pending_at_cut = sql(pg_url, "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'")
        assert pending_at_cut[0][0] > 0, "everything delivered before the cut: proves nothing"

        proxy.up()
        outage = time.monotonic() - cut_at
        after = store_events(200, 20)
        everything = before | during | after
        wait_for(lambda: set(receiver.ids("/tool")) >= everything or worker.poll() is not None,
                 timeout=45, interval=0.1,
                 message=lambda: f"{len(everything - set(receiver.ids('/tool')))} never "
                                 f"received\n{log.read_text(errors='replace')[-3000:]}")
        assert worker.poll() is None, log.read_text(errors="replace")
        wait_for(lambda: sql(pg_url, "SELECT state, COUNT(*) FROM deliveries GROUP BY state")
                 == [("done", len(everything))], timeout=20, interval=0.1,
                 message=lambda: str(sql(pg_url, "SELECT state, COUNT(*) FROM deliveries "
                                                 "GROUP BY state")))
        counts = collections.Counter(receiver.ids("/tool"))
        assert set(counts) == everything  # none lost, nothing foreign
        # at-least-once: only the batch in flight at the cut (its record failed) may come
        # twice, so at most one batch (4) per lane
        assert sum(n - 1 for n in counts.values()) <= 4, counts.most_common(5)
        assert sql(pg_url, "SELECT COUNT(leased_by) FROM deliveries") == [(0,)]

        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text(errors="replace")
        print(f"outage {outage:.1f} s; {sum(counts.values())} received for "
              f"{len(everything)} events; proxy accepted {proxy.accepted} connections")
    finally:
        direct.close()
