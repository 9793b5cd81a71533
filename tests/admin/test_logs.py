"""Logs: one JSON object per line with BRIDGE_LOG_FORMAT=json (readable text otherwise),
structured fields on the ingest and attempt lines, and no secret, signature or token in
any line: checked on a real ``bridge serve`` (gunicorn) run through a full flow, and on
the redaction filter itself."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from bridge import logs
from bridge.config import load_settings

from ..conftest import bridge_command, free_port
from .conftest import (
    CSRF_FIELD,
    bearer,
    hmac_hex,
    ratioready_job,
    wait_for,
    write_bridge_yaml,
)

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|"
                       r"CRITICAL) [\w.]+: ")


@pytest.fixture
def root_logging():
    """Put the root logger back as it was after a test that sets logging up."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logs._handler = None


# -- a real server, a full flow -------------------------------------------------------------------
class Serve:
    def __init__(self, folder: Path, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = folder / "stdout.log", folder / "stderr.log"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(
                [*bridge_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "1", "--threads", "4"],
                cwd=folder, env=env, stdout=out, stderr=err, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"bridge serve did not start:\n{self.output()}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")


def full_flow(folder: Path, receiver, log_format: str) -> tuple[str, str, set[str], dict]:
    """Run ``bridge serve`` through ingest (signed, duplicate, forged), deliveries (with an
    API key and a signing secret; one destination failing), the dashboard's sign-in and
    the API; return its stdout+stderr, its stderr, every value that must not be logged and
    the event id."""
    secrets = {
        "RATIOREADY_WEBHOOK_SECRET": "whsec-rr-" + os.urandom(12).hex(),
        "ZUPERTRY_WEBHOOK_SECRET": "whsec-zt-" + os.urandom(12).hex(),
        "HOOK_API_KEY": "apikey-hook-" + os.urandom(12).hex(),
        "HOOK_SIGNING_SECRET": "signkey-hook-" + os.urandom(12).hex(),
        "BACKUP_API_KEY": "apikey-backup-" + os.urandom(12).hex(),
        "BACKUP_SIGNING_SECRET": "signkey-backup-" + os.urandom(12).hex(),
        "BRIDGE_ADMIN_TOKEN": "admintoken-" + os.urandom(16).hex(),
    }
    write_bridge_yaml(folder, receiver, ("hook", "backup"), ("ratioready", "zupertry"))
    receiver.answer("/backup", 503)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(folder), "BRIDGE_LOG_FORMAT":
           log_format, "BRIDGE_LOG_LEVEL": "DEBUG", **secrets}
    server = Serve(folder, env)
    forbidden = set(secrets.values())
    try:
        body = json.dumps(ratioready_job(1)).encode()
        signature = hmac_hex(secrets["RATIOREADY_WEBHOOK_SECRET"], body)
        forged = hmac_hex("not-the-secret", body)
        forbidden |= {signature, forged}
        for header in (signature, f"sha256={signature}", forged):
            requests.post(f"{server.url}/hooks/ratioready", data=body, timeout=5, headers={
                "Content-Type": "application/json", "X-RatioReady-Signature": header})
        answer = requests.post(f"{server.url}/hooks/ratioready", data=body, timeout=5,
                               headers={"X-RatioReady-Signature": signature}).json()
        assert answer["status"] == "duplicate"
        event_id = answer["event_id"]
        wait_for(lambda: receiver.to("/hook") and len(receiver.to("/backup")) >= 2,
                 timeout=15, message="deliveries to hook and tries to backup")
        session = requests.Session()
        form = session.get(f"{server.url}/admin/login", timeout=5)
        csrf = CSRF_FIELD.search(form.text).group(1)
        signed_in = session.post(f"{server.url}/admin/login", timeout=5, data={
            "csrf": csrf, "token": secrets["BRIDGE_ADMIN_TOKEN"]}, allow_redirects=False)
        assert signed_in.status_code == 302
        forbidden |= {csrf, session.cookies["bridge_admin"]}
        assert session.get(f"{server.url}/admin/events/{event_id}", timeout=5).ok
        token = bearer(secrets["BRIDGE_ADMIN_TOKEN"])
        assert requests.get(f"{server.url}/admin/api/events/{event_id}", headers=token,
                            timeout=5).ok
        assert requests.post(f"{server.url}/admin/api/events/{event_id}/replay",
                             headers=token, timeout=5).ok
        assert requests.get(f"{server.url}/metrics", headers=token, timeout=5).ok
        assert requests.get(f"{server.url}/admin/api/events", timeout=5,
                            headers=bearer("wrong-" + secrets["BRIDGE_ADMIN_TOKEN"])
                            ).status_code == 401
        wait_for(lambda: len(receiver.to("/hook")) >= 2, timeout=15, message="replayed")
    finally:
        server.stop()
    for request in receiver.requests:
        forbidden |= {request.headers["X-Api-Key"], request.headers["X-Bridge-Signature"],
                      request.headers["X-Bridge-Signature"].split("=", 1)[1]}
    return server.output(), server.err.read_text(errors="replace"), forbidden, {
        "event_id": event_id}


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_full_flow_logs_no_secret_signature_or_token(tmp_path, receiver, log_format):
    output, stderr, forbidden, found = full_flow(tmp_path, receiver, log_format)
    assert len(forbidden) >= 14
    leaked = [value for value in forbidden if value.lower() in output.lower()]
    assert leaked == [], f"leaked into the log: {leaked}\n{output}"
    event_id = found["event_id"]
    # the lines that tell the story are there
    for expected in (f"accepted ratioready event {event_id}",
                     f"duplicate ratioready event {event_id}",
                     "rejected ratioready callback", "signature does not match",
                     f"delivered {event_id} to hook", f"retry {event_id} to backup",
                     f"admin: replayed event {event_id}"):
        assert expected in output, f"{expected!r} not in the log:\n{output}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        for record in records:
            assert {"time", "level", "logger", "message"} <= set(record), record
        accepted = next(r for r in records if r["message"].startswith("accepted "))
        assert (accepted["source"], accepted["event_id"], accepted["status"]) == (
            "ratioready", event_id, "accepted")
        rejected = next(r for r in records if r["message"].startswith("rejected "))
        assert (rejected["status"], rejected["http_status"]) == ("rejected_401", 401)
        delivered = next(r for r in records if r["message"].startswith("delivered "))
        assert (delivered["destination"], delivered["status"], delivered["http_status"],
                delivered["event_id"]) == ("hook", "done", 200, event_id)
        assert delivered["duration_ms"] >= 0 and delivered["attempt"] == 1
        retry = next(r for r in records if r["message"].startswith("retry "))
        assert (retry["destination"], retry["status"], retry["http_status"]) == (
            "backup", "retry", 503)
        assert any(r["logger"] == "gunicorn.access" for r in records)
        assert any(r["logger"] == "gunicorn.error" for r in records)
    else:
        assert not [line for line in lines if line.startswith("{")]
        story = [line for line in lines if "ratioready event" in line or " to hook" in line]
        assert story and all(TEXT_LINE.match(line) for line in story), story


# -- the filter and the formatters -----------------------------------------------------------
def test_the_redaction_filter_hides_secrets_anywhere_in_a_record(root_logging):
    stream = io.StringIO()
    logs.setup_logging(environ={"BRIDGE_LOG_FORMAT": "json"}, stream=stream)
    logs.protect("s3cret-value-1", "s3cret-value-12", "tiny", None, "")
    log = logging.getLogger("bridge.test")
    log.warning("value %s and %s", "s3cret-value-1", "s3cret-value-12",
                extra={"destination": "x s3cret-value-1 y", "count": 3})
    try:
        raise ValueError("boom s3cret-value-12")
    except ValueError:
        log.exception("failed with %r", {"key": "s3cret-value-1"})
    log.info("tiny stays: tiny")
    text = stream.getvalue()
    assert "s3cret-value" not in text
    first, second, third = (json.loads(line) for line in text.splitlines())
    assert first["message"] == "value *** and ***"
    assert (first["destination"], first["count"]) == ("x *** y", 3)
    assert "boom ***" in second["exception"] and "'***'" in second["message"]
    assert third["message"] == "tiny stays: tiny"  # shorter than any real secret


def test_json_lines_carry_time_level_logger_message_and_extra_fields(root_logging):
    stream = io.StringIO()
    logs.setup_logging(environ={"BRIDGE_LOG_FORMAT": "JSON"}, stream=stream)
    logging.getLogger("bridge.worker").info("delivered %s", "evt_1", extra={
        "event_id": "evt_1", "destination": "make", "status": "done", "duration_ms": 12.5})
    [record] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert record == {"time": record["time"], "level": "INFO", "logger": "bridge.worker",
                      "message": "delivered evt_1", "event_id": "evt_1",
                      "destination": "make", "status": "done", "duration_ms": 12.5}
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", record["time"])


def test_text_is_the_default_and_setting_up_again_replaces_the_handler(root_logging):
    first, second = io.StringIO(), io.StringIO()
    logs.setup_logging(environ={}, stream=first)
    logs.setup_logging(environ={"BRIDGE_LOG_LEVEL": "warning"}, stream=second)
    log = logging.getLogger("bridge.test")
    log.info("not shown")
    log.warning("shown %d", 1)
    assert first.getvalue() == ""
    assert TEXT_LINE.match(second.getvalue()) and "bridge.test: shown 1" in second.getvalue()
    assert logging.getLogger().handlers.count(logs.handler()) == 1


def test_setup_protects_every_secret_of_bridge_yaml_and_the_admin_token(
        root_logging, make_rig):
    rig = make_rig(destinations=("hook",), token="generate")
    stream = io.StringIO()
    settings = load_settings(str(rig.config), environ={
        **rig.environ, "DATABASE_URL": "postgresql://bridge:db-pass-123456@db/bridge"})
    settings.database_url = "postgresql://bridge:db-pass-123456@db/bridge"
    logs.setup_logging(settings, environ=rig.environ, stream=stream)
    values = [*rig.secrets.values(), rig.token, "db-pass-123456"]
    assert set(values) <= set(logs.secrets_of(settings)) | {rig.token}
    logging.getLogger("bridge").error("all of them: %s", " ".join(values))
    assert stream.getvalue().count("***") == len(values)
    assert not [v for v in values if v in stream.getvalue()]
