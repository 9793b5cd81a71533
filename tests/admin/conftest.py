"""Fixtures of the admin tests: a bridge (bridge.yaml in tmp_path, a real SQLite file, the
shipped mappings) whose destinations are a real HTTP receiver on a loopback socket, and
helpers to feed it signed callbacks, run its worker and sign in to its dashboard.

Signatures are computed here with hmac/hashlib, never with the code under test."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import secrets as secrets_module
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.app import RUNNING, create_app
from bridge.config import Settings, load_mappings, load_settings
from bridge.mapping import Mappings
from bridge.store.sqlite import SqliteStore
from bridge.worker import Worker

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "bridge" / "samples"
SIGNATURE_HEADERS = {"ratioready": "X-RatioReady-Signature",
                     "zupertry": "X-Zupertry-Signature"}
FAST_RETRY = {"schedule": ["0.2s"], "repeat": "0.2s", "max_age": "60s", "jitter": 0}


def hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def ratioready_job(number: int, status: str = "completed", credits: Any = 10) -> dict:
    """A Ratio Ready callback for job ``rr_job_<number>``."""
    payload = json.loads((SAMPLES / "ratioready" / "wall_art_completed.json").read_text())
    payload = copy.deepcopy(payload)
    payload.update(job_id=f"rr_job_{number}", status=status, credit_cost=credits)
    return payload


def zupertry_job(number: int, credits: Any = 1) -> dict:
    payload = json.loads((SAMPLES / "zupertry" / "job_completed.json").read_text())
    payload["data"].update(job_id=f"zt_job_{number}", credits_consumed=credits)
    return payload


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"not reached within {timeout} s: {message}")
        time.sleep(interval)


# -- a webhook endpoint ---------------------------------------------------------------------

@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Answers each path with a status that a test can change (default 200) and records
    every request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answers: dict[str, int] = {}
        self.requests: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.requests.append(Received(self.path, dict(self.headers), body))
                    status = receiver.answers.get(self.path, 200)
                reply = json.dumps({"answer": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, status: int) -> None:
        with self.lock:
            self.answers[path] = status

    def to(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


# -- a bridge -------------------------------------------------------------------------------

@dataclass
class Rig:
    folder: Path
    config: Path
    environ: dict[str, str]       # what bridge.yaml reads (secrets) and the admin settings
    secrets: dict[str, str]       # every configured secret, by name
    token: str | None
    settings: Settings
    store: SqliteStore
    mappings: Mappings
    receiver: Receiver
    _workers: list[Worker] = field(default_factory=list)

    def app(self, start_worker: bool = False, **environ: str):
        env = dict(self.environ, **environ)
        app = create_app(self.settings, self.store, self.mappings, start_worker=start_worker,
                         environ=env)
        if app.extensions["bridge"].worker is not None:
            self._workers.append(app.extensions["bridge"].worker)
        return app

    def signed(self, source: str, payload: dict | bytes) -> tuple[bytes, dict[str, str]]:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        secret = self.secrets[f"{source.upper()}_WEBHOOK_SECRET"]
        return body, {"Content-Type": "application/json",
                      SIGNATURE_HEADERS[source]: hmac_hex(secret, body)}

    def post(self, client, source: str, payload: dict | bytes) -> str:
        """POST a signed callback through the app; its event id."""
        body, headers = self.signed(source, payload)
        response = client.post(f"/hooks/{source}", data=body, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.get_json()["event_id"]

    def burst(self) -> int:
        """Deliver everything due now (one worker run)."""
        worker = Worker(self.settings, self.store, self.mappings)
        self._workers.append(worker)
        return worker.run_burst()

    def drain(self, until: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.burst()
            value = until()
            if value:
                return value
            if time.monotonic() >= deadline:
                pytest.fail(f"not reached within {timeout} s")
            time.sleep(0.05)

    def status(self, event_id: str) -> str:
        [row] = [e for e in self.store.search_events(text=event_id) if e.id == event_id]
        return row.status


def write_bridge_yaml(folder: Path, receiver: Receiver, destinations: Iterable[str],
                      sources: Iterable[str]) -> Path:
    specs = {}
    for name in destinations:
        specs[name] = {"kind": "http", "url": receiver.url(f"/{name}"), "timeout": "2s",
                       "rate_limit": 1000, "concurrency": 4, "retry": dict(FAST_RETRY),
                       "headers": {"X-Api-Key": f"${{{name.upper()}_API_KEY}}"},
                       "signing_secret": f"${{{name.upper()}_SIGNING_SECRET}}"}
    data = {
        "database_url": f"sqlite:///{folder / 'bridge.db'}",
        "sources": {name: {"profile": name, "secrets": [f"${{{name.upper()}_WEBHOOK_SECRET}}"],
                           "mapping": str(REPO / "mappings" / f"{name}.yaml")}
                    for name in sources},
        "destinations": specs,
        "routes": [{"from": "all", "to": list(destinations)}],
        "delivery": {"poll_interval": "0.2s"},
    }
    path = folder / "bridge.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def make_rig(tmp_path, receiver) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(destinations: Iterable[str] = ("hook",),
             sources: Iterable[str] = ("ratioready", "zupertry"),
             token: str | None = "generate") -> Rig:
        destinations, sources = tuple(destinations), tuple(sources)
        secrets = {f"{s.upper()}_WEBHOOK_SECRET": "whsec-" + secrets_module.token_hex(16)
                   for s in sources}
        for name in destinations:
            secrets[f"{name.upper()}_API_KEY"] = "apikey-" + secrets_module.token_hex(16)
            secrets[f"{name.upper()}_SIGNING_SECRET"] = "signkey-" + secrets_module.token_hex(16)
        if token == "generate":
            token = "admintoken-" + secrets_module.token_urlsafe(24)
        environ = dict(secrets)
        if token:
            environ["BRIDGE_ADMIN_TOKEN"] = token
        config = write_bridge_yaml(tmp_path, receiver, destinations, sources)
        settings = load_settings(str(config), environ=environ)
        store = SqliteStore(str(tmp_path / "bridge.db"))
        store.migrate()
        rig = Rig(tmp_path, config, environ, secrets, token, settings, store,
                  load_mappings(settings), receiver)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        for worker in rig._workers:
            worker.stop(timeout=5)
            if worker in RUNNING:
                RUNNING.remove(worker)
        rig.store.close()


@pytest.fixture
def rig(make_rig) -> Rig:
    return make_rig()


# -- the dashboard's session ------------------------------------------------------------------

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]*)"')


def csrf_of(response) -> str:
    found = CSRF_FIELD.search(response.get_data(as_text=True))
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in(client, token: str) -> str:
    """Sign in through the form; the CSRF token of the new session."""
    form = client.get("/admin/login")
    response = client.post("/admin/login", data={"csrf": csrf_of(form), "token": token,
                                                 "next": "/admin/events"})
    assert response.status_code == 302, response.get_data(as_text=True)
    return csrf_of(client.get("/admin/events"))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
