"""A real ``bridge serve`` (gunicorn) on a free loopback port, fed by a real
``bridge send-test``: the whole path over HTTP, processes and a SQLite file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest
import requests

from ..conftest import SHIPPED_CONFIG, bridge_command, free_port, sign


class Server:
    def __init__(self, folder, env: dict[str, str]):
        self.folder, self.env = folder, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "serve.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [*bridge_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1", "--threads", "2"],
                cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group: gunicorn and its worker

    def wait_until_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"bridge serve exited ({self.process.returncode}):\n{self.output()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        pytest.fail(f"no healthy /healthz after {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def bridge(self, *args: str) -> subprocess.CompletedProcess:
        """Run another ``bridge`` command beside the server, with the same environment."""
        return subprocess.run([*bridge_command(), *args], cwd=self.folder, env=self.env,
                              capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    shutil.copy(SHIPPED_CONFIG, folder / "bridge.yaml")
    shutil.copytree(SHIPPED_CONFIG.parent / "mappings", folder / "mappings")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(folder),
           "DATABASE_URL": f"sqlite:///{folder / 'bridge.db'}",
           "RATIOREADY_WEBHOOK_SECRET": "rr-e2e-" + os.urandom(8).hex(),
           "ZUPERTRY_WEBHOOK_SECRET": "zt-e2e-" + os.urandom(8).hex()}
    server = Server(folder, env)
    try:
        server.wait_until_healthy()
        yield server
    finally:
        server.stop()


def stored_rows(server) -> list[tuple]:
    with sqlite3.connect(server.folder / "bridge.db") as conn:
        return conn.execute("SELECT id, source, duplicates FROM events "
                            "WHERE source = 'ratioready'").fetchall()


def test_healthz_answers_ok(server):
    response = requests.get(f"{server.url}/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def send_test(server, source: str) -> dict:
    """Run ``bridge send-test SOURCE`` against the server; the answer it prints."""
    url = f"{server.url}/hooks/{source}"
    done = server.bridge("send-test", source, "--url", url)
    assert done.returncode == 0, done.stdout + done.stderr
    printed, _, answer = done.stdout.strip().partition(" -> 200 ")
    assert printed == f"POST {url}"
    return json.loads(answer)


def test_send_test_is_accepted_then_a_duplicate(server):
    first = send_test(server, "ratioready")
    assert first["status"] == "accepted"
    again = send_test(server, "ratioready")
    assert again == {"status": "duplicate", "event_id": first["event_id"]}
    assert stored_rows(server) == [(first["event_id"], "ratioready", 1)]


def test_a_bad_signature_is_401_over_http_and_the_log_keeps_no_secret(server):
    body = b'{"type": "job.completed", "data": {"job_id": "job_e2e"}}'
    secret = server.env["ZUPERTRY_WEBHOOK_SECRET"]
    response = requests.post(f"{server.url}/hooks/zupertry", data=body, timeout=5,
                             headers={"X-Zupertry-Signature": sign("wrong", body)})
    assert response.status_code == 401
    assert set(response.json()) == {"error"}
    assert secret not in response.text and sign(secret, body) not in response.text
    log = server.output()
    assert secret not in log and sign("wrong", body) not in log


def test_a_source_without_secret_is_503_over_http(server):
    response = requests.post(f"{server.url}/hooks/upscale", data=b"{}", timeout=5)
    assert response.status_code == 503
    assert "UPSCALE_WEBHOOK_SECRET" in response.json()["error"]
