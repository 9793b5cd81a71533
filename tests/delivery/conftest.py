"""Fixtures of the delivery tests: a real HTTP receiver on a loopback socket, bridge.yaml
files written into tmp_path, a SQLite store over a tmp file, workers that are always
stopped, and subprocesses that are always killed.

Nothing here uses the code under test to compute an expected value: signatures are made
with hmac/hashlib, headers and fields are written by hand.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import json
import os
import secrets as secrets_module
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from requests.structures import CaseInsensitiveDict

from bridge.app import RUNNING, create_app
from bridge.config import Settings, load_mappings, load_settings
from bridge.events import Attempt, Delivery, NewEvent
from bridge.mapping import Mappings
from bridge.store.sqlite import SqliteStore
from bridge.worker import Worker

REPO = Path(__file__).resolve().parents[2]
MAPPINGS = REPO / "mappings"
SAMPLES = REPO / "bridge" / "samples"
BRIDGE_SCRIPT = Path(sys.executable).parent / "bridge"

# Written by hand from the providers' documents, not read from the profiles under test.
SIGNATURE_HEADERS = {
    "ratioready": "X-RatioReady-Signature",
    "zupertry": "X-Zupertry-Signature",
}

# A compressed retry schedule: tries at about 0, 0.2, 0.6, 1.1, 1.6, 2.1, 2.6 s, then dead.
FAST_RETRY = {"schedule": ["0.2s", "0.4s"], "repeat": "0.5s", "max_age": "3s", "jitter": 0}


def hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def sample(profile: str, name: str) -> bytes:
    return (SAMPLES / profile / f"{name}.json").read_bytes()


def free_port() -> int:
    """A loopback port nothing listens on (as of now): connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.02,
             message: str | Callable[[], str] = "condition") -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            pytest.fail(f"not reached within {timeout} s: {text}")
        time.sleep(interval)


# -- the receiving server -------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    """One scripted answer of the receiver."""

    status: int = 200
    body: Any = b'{"message":"Workflow was started"}'
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0    # seconds before answering (past the client's timeout: a hang)
    close: bool = False   # close the connection without answering

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


def ok() -> Reply:
    return Reply(200)


def status(code: int, body: Any = b"", **headers: str) -> Reply:
    return Reply(code, body, {k.replace("_", "-"): v for k, v in headers.items()})


def too_many(retry_after: str) -> Reply:
    return Reply(429, b'{"error":"slow down"}', {"Retry-After": retry_after})


def n8n_not_registered(path: str = "abc") -> Reply:
    """What n8n answers on a production URL while its workflow is inactive."""
    return Reply(404, {"code": 404,
                       "message": f'The requested webhook "POST {path}" is not registered.',
                       "hint": "The workflow must be active for a production URL to run "
                               "successfully. You can activate the workflow using the toggle "
                               "in the top-right of the editor."})


def hang(seconds: float) -> Reply:
    return Reply(200, delay=seconds)


def close() -> Reply:
    return Reply(close=True)


@dataclass(frozen=True)
class Request:
    path: str
    method: str
    headers: CaseInsensitiveDict
    body: bytes
    time: float   # time.time() when the whole request had arrived

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_id(self) -> str | None:
        return self.headers.get("Idempotency-Key")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real webhook endpoints do
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(self.path, "POST", CaseInsensitiveDict(dict(self.headers.items())),
                          body, time.time())
        reply = receiver._arrived(request)
        try:
            if reply.delay:
                receiver._stopping.wait(reply.delay)
        finally:
            receiver._left(request.path)
        if reply.close:
            self.close_connection = True
            return
        payload = reply.payload()
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (its timeout): nothing to answer to
            self.close_connection = True

    do_PUT = do_POST  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    receiver: Receiver

    def process_request(self, request, client_address):
        with self.receiver._lock:
            self.receiver._sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.receiver._lock:
            self.receiver._sockets.discard(request)
        super().shutdown_request(request)


class Receiver:
    """A webhook endpoint on a real loopback socket that records every request and answers
    as scripted per path (the default answer is 200)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._scripts: dict[str, collections.deque[Reply]] = {}
        self._defaults: dict[str, Reply] = {}
        self.requests: list[Request] = []
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.max_in_flight: collections.Counter[str] = collections.Counter()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="receiver")
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to ``path`` with ``replies``, in order."""
        with self._lock:
            self._scripts.setdefault(path, collections.deque()).extend(replies)

    def default(self, path: str, reply: Reply) -> None:
        """Answer ``path`` with ``reply`` once its script is used up."""
        with self._lock:
            self._defaults[path] = reply

    def to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def ids(self, path: str | None = None) -> list[str | None]:
        with self._lock:
            return [r.event_id for r in self.requests if path is None or r.path == path]

    def count(self, path: str | None = None) -> int:
        return len(self.ids(path))

    def _arrived(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            self.in_flight[request.path] += 1
            self.max_in_flight[request.path] = max(self.max_in_flight[request.path],
                                                   self.in_flight[request.path])
            queue = self._scripts.get(request.path)
            if queue:
                return queue.popleft()
            return self._defaults.get(request.path, Reply())

    def _left(self, path: str) -> None:
        # before the answer is written: the client cannot see it still counted
        with self._lock:
            self.in_flight[path] -= 1

    def close(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)


@pytest.fixture
def receiver() -> Iterable[Receiver]:
    server = Receiver()
    yield server
    server.close()


# -- bridge.yaml, store, mappings, workers ------------------------------------------------

def destination(url: str, kind: str = "http", timeout: str = "2s", rate_limit: float = 1000,
                concurrency: int = 4, retry: dict | None = None, **extra: Any) -> dict:
    spec = {"kind": kind, "url": url, "timeout": timeout, "rate_limit": rate_limit,
            "concurrency": concurrency, "retry": dict(FAST_RETRY if retry is None else retry)}
    spec.update(extra)
    return spec


def write_bridge_yaml(folder: Path, destinations: dict[str, dict],
                      routes: list[dict] | None = None, delivery: dict | None = None,
                      sources: Iterable[str] = ("ratioready",),
                      mappings: dict[str, Path] | None = None,
                      database: Path | None = None) -> Path:
    """Write bridge.yaml into ``folder``: each source's secret read from the environment,
    its mapping the shipped one unless ``mappings`` names another file."""
    mappings = mappings or {}
    data: dict[str, Any] = {
        "database_url": f"sqlite:///{database or folder / 'bridge.db'}",
        "sources": {name: {"profile": name,
                           "secrets": [f"${{{name.upper()}_WEBHOOK_SECRET}}"],
                           "mapping": str(mappings.get(name, MAPPINGS / f"{name}.yaml"))}
                    for name in sources},
        "destinations": destinations,
        "routes": routes if routes is not None else [{"from": "all",
                                                      "to": list(destinations)}],
    }
    if delivery:
        data["delivery"] = delivery
    path = folder / "bridge.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Rig:
    """One bridge: its bridge.yaml, settings, store and mappings, and helpers to feed it
    events and drive its worker."""

    folder: Path
    config: Path
    environ: dict[str, str]
    secrets: dict[str, str]
    settings: Settings
    store: SqliteStore
    mappings: Mappings
    _workers: list[Worker]
    _stores: list[SqliteStore]

    def new_store(self) -> SqliteStore:
        """Another store on the same file (as another process would open it)."""
        store = SqliteStore(self.settings.database_url[len("sqlite:///"):])
        self._stores.append(store)
        return store

    def worker(self, store: SqliteStore | None = None) -> Worker:
        worker = Worker(self.settings, store or self.store, self.mappings)
        self._workers.append(worker)
        return worker

    def app(self, start_worker: bool = False):
        app = create_app(self.settings, self.store, self.mappings, start_worker=start_worker)
        worker = app.extensions["bridge"].worker
        if worker is not None:
            self._workers.append(worker)
        return app

    def post(self, client, source: str, body: bytes) -> str:
        """POST a callback signed as ``source`` signs (hmac computed here); its event id."""
        headers = {"Content-Type": "application/json",
                   SIGNATURE_HEADERS[source]: hmac_hex(self.secrets[source], body)}
        response = client.post(f"/hooks/{source}", data=body, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["status"] == "accepted"
        return response.get_json()["event_id"]

    def add(self, source: str = "ratioready", payload: dict | bytes | None = None,
            key: str | None = None, store: SqliteStore | None = None) -> str:
        """Store an event directly (the ingest path is not the point) with a delivery
        per routed destination; its event id."""
        if payload is None:
            payload = json.loads(sample("ratioready", "wall_art_completed"))
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        key = key or secrets_module.token_hex(8)
        stored = (store or self.store).add_event(
            NewEvent(source=source, event_type=None, dedup_key=key, body=body, headers={},
                     remote_addr="127.0.0.1", received_at=time.time()),
            self.settings.destinations_for(source))
        assert not stored.duplicate
        return stored.event_id

    def delivery(self, event_id: str, destination: str) -> Delivery:
        found = [d for d in self.store.deliveries_of(event_id) if d.destination == destination]
        assert len(found) == 1, found
        return found[0]

    def attempts(self, event_id: str, destination: str) -> list[Attempt]:
        return self.store.attempts_of(self.delivery(event_id, destination).id)

    def states(self) -> collections.Counter[str]:
        return collections.Counter(d.state for d in self.store.list_deliveries(limit=100000))

    def drain(self, until: Callable[[], Any], timeout: float = 10.0,
              worker: Worker | None = None) -> Any:
        """Run ``run_burst`` again and again (polling, no long sleeps) until ``until()``
        is true; fail with the deliveries' states after ``timeout`` s."""
        worker = worker or self.worker()
        deadline = time.monotonic() + timeout
        while True:
            worker.run_burst()
            value = until()
            if value:
                return value
            if time.monotonic() >= deadline:
                rows = self.store.list_deliveries(limit=20)
                pytest.fail(f"not reached within {timeout} s; deliveries: "
                            + "; ".join(f"{d.event_id}/{d.destination} {d.state} "
                                        f"tries={d.total_attempts} {d.last_error}"
                                        for d in rows))
            time.sleep(0.02)

    def done(self, event_id: str, destination: str) -> bool:
        return self.delivery(event_id, destination).state == "done"


@pytest.fixture
def make_rig(tmp_path) -> Iterable[Callable[..., Rig]]:
    workers: list[Worker] = []
    stores: list[SqliteStore] = []

    def make(destinations: dict[str, dict], routes: list[dict] | None = None,
             delivery: dict | None = None, sources: Iterable[str] = ("ratioready",),
             mappings: dict[str, Path] | None = None,
             mapping_interval: float | None = None) -> Rig:
        sources = tuple(sources)
        secrets = {name: secrets_module.token_hex(20) for name in sources}
        environ = {f"{name.upper()}_WEBHOOK_SECRET": s for name, s in secrets.items()}
        config = write_bridge_yaml(tmp_path, destinations, routes, delivery, sources, mappings)
        settings = load_settings(str(config), environ=environ)
        if mapping_interval is None:
            loaded = load_mappings(settings)
        else:
            loaded = Mappings({n: s.mapping for n, s in settings.sources.items() if s.mapping},
                              interval=mapping_interval)
            loaded.load_all()
        store = SqliteStore(str(tmp_path / "bridge.db"))
        store.migrate()
        stores.append(store)
        return Rig(tmp_path, config, environ, secrets, settings, store, loaded, workers, stores)

    yield make
    for worker in workers:
        worker.stop(timeout=5)
        if worker in RUNNING:
            RUNNING.remove(worker)
    for store in stores:
        store.close()


@pytest.fixture
def spawn(tmp_path) -> Iterable[Callable[..., subprocess.Popen]]:
    """Start processes in their own process group; every one is killed at the end."""
    processes: list[subprocess.Popen] = []

    def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        with open(log, "ab") as out:
            process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
