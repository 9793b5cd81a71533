#!/usr/bin/env python3
"""End to end against a real n8n (not part of `make test`: it installs n8n, ~1.8 GB).

    .venv/bin/python scripts/n8n_e2e.py [--keep] [--json RESULT.json]

1. Installs n8n 1.123.81 from the npm registry once into .cache/n8n (the package.json of
   TOOLS.md: overrides xlsx 0.18.5 and isolated-vm 5.0.4, so it runs on Node 20).
2. Imports each shipped n8n workflow (blueprints/n8n/*.workflow.json, from the manifest)
   with `n8n import:workflow`, activates it with `n8n update:workflow --active=true`,
   and starts `n8n start` on 127.0.0.1 with its own user folder in a temp directory.
   Each is imported from a copy with the one thing a user sets changed: the job log's
   Google Sheets node gets a Google credential (imported with `n8n import:credentials`,
   never connected: no OAuth token) and a spreadsheet id, because n8n refuses to run a
   workflow whose nodes lack required settings ("The workflow has issues"); the failure
   alert's "Post to Slack / Discord" URL points at a loopback receiver run by this script.
3. Runs `bridge serve` on 127.0.0.1 with a temp bridge.yaml and SQLite database: source
   ratioready, destinations = the two workflows' production URLs (N8N_WEBHOOK_URL and
   N8N_ALERT_WEBHOOK_URL), and posts signed callbacks with `bridge send-test`:
   wall_art_completed, job_failed, and job_queued (which the mapping filters).
4. Reads n8n's SQLite database (<dir>/.n8n/database.sqlite: execution_entity and
   execution_data) and checks that each workflow ran once per forwarded event and that
   its nodes received the job event's values: Webhook (the flat body, every schema key),
   IF (the right branch), Edit Fields (every column / the message, equal to the body's
   fields and non-empty where the event has a value), and for the alert the HTTP Request
   that reached the loopback receiver. The Google Sheets node receives the row and then
   fails without calling Google (its credential has no token; there is no network here):
   that it ran is checked, its error is recorded. The bridge's delivery log must show
   every forwarded delivery done (HTTP 200) and the queued job filtered.

Only loopback addresses are used, apart from npm's registry for the one-time install.
Exit status 0 when every check passes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "n8n"
N8N_VERSION = "1.123.81"
PACKAGE_JSON = {"private": True, "dependencies": {"n8n": N8N_VERSION},
                "overrides": {"xlsx": "0.18.5", "isolated-vm": "5.0.4"}}
BRIDGE = REPO / ".venv" / "bin" / "bridge"
SAMPLES = REPO / "bridge" / "samples" / "ratioready"
SCHEMA_FILE = REPO / "blueprints" / "schema" / "job-event.v1.schema.json"
SECRET = "e2e-" + os.urandom(12).hex()
# A Google Sheets credential that is never connected (no OAuth token): the Sheets node
# fails at once, locally, instead of calling Google.
DUMMY_SHEETS_CREDENTIAL = {"id": "e2eSheetsNoToken", "name": "E2E Google Sheets (not connected)",
                           "type": "googleSheetsOAuth2Api",
                           "data": {"grantType": "authorizationCode", "clientId": "e2e",
                                    "clientSecret": "e2e"}}


class Failed(Exception):
    pass


# -- helpers ---------------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, timeout: float = 5
         ) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError as err:  # refused, reset: not up yet
            result, last = None, err
        if result:
            return result
        time.sleep(every)
    raise Failed(f"timed out after {timeout:.0f} s waiting for {what} ({last or 'no answer'})")


def unflatten(text: str) -> Any:
    """Parse n8n's execution data, stored with the `flatted` format: a JSON list whose
    first item is the root; inside objects and lists, every string is the index of the
    item holding the value (so shared and circular references survive)."""
    items = json.loads(text)
    done: dict[int, Any] = {}

    def revive(index: int) -> Any:
        if index in done:
            return done[index]
        value = items[index]
        if isinstance(value, list):
            out: Any = []
            done[index] = out
            out.extend(revive(int(v)) if isinstance(v, str) else v for v in value)
        elif isinstance(value, dict):
            out = {}
            done[index] = out
            for key, v in value.items():
                out[key] = revive(int(v)) if isinstance(v, str) else v
        else:
            out = value
            done[index] = out
        return out

    return revive(0)


# -- n8n -------------------------------------------------------------------------------------

def install_n8n() -> None:
    package = CACHE / "package.json"
    installed = CACHE / "node_modules" / "n8n" / "package.json"
    wanted = json.dumps(PACKAGE_JSON, indent=2) + "\n"
    if (package.exists() and json.loads(package.read_text()) == PACKAGE_JSON
            and installed.exists()
            and json.loads(installed.read_text()).get("version") == N8N_VERSION):
        log(f"n8n {N8N_VERSION} already installed in {CACHE.relative_to(REPO)}")
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    package.write_text(wanted)
    log(f"installing n8n {N8N_VERSION} into {CACHE.relative_to(REPO)} (a few minutes)…")
    started = time.monotonic()
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
                   cwd=CACHE, check=True, timeout=3600)
    log(f"installed in {time.monotonic() - started:.0f} s")


def n8n_env(user_folder: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("N8N_", "DB_"))}
    env.update(N8N_USER_FOLDER=str(user_folder), N8N_DIAGNOSTICS_ENABLED="false",
               N8N_PERSONALIZATION_ENABLED="false", N8N_LISTEN_ADDRESS="127.0.0.1",
               N8N_PORT=str(port), N8N_HOST="127.0.0.1",
               N8N_VERSION_NOTIFICATIONS_ENABLED="false", N8N_TEMPLATES_ENABLED="false",
               N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS="false", N8N_RUNNERS_ENABLED="false",
               EXECUTIONS_DATA_SAVE_ON_SUCCESS="all", EXECUTIONS_DATA_SAVE_ON_ERROR="all",
               NO_COLOR="1")
    return env


def n8n_cli(args: list[str], env: dict[str, str], out: Path) -> str:
    command = ["npx", "--no-install", "n8n", *args]
    log("$ " + " ".join(command))
    result = subprocess.run(command, cwd=CACHE, env=env, capture_output=True, text=True,
                            timeout=300)
    with out.open("a") as fh:
        fh.write(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}\n")
    if result.returncode != 0:
        raise Failed(f"n8n {args[0]} failed ({result.returncode}):\n"
                     f"{result.stdout[-1500:]}{result.stderr[-1500:]}")
    return result.stdout + result.stderr


# -- the loopback receiver for the alert -------------------------------------------------------

class Receiver:
    """Stands in for the Slack / Discord incoming webhook: keeps what it is sent."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append({"path": self.path, "headers": dict(self.headers),
                                 "body": body.decode("utf-8", "replace")})
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the run ---------------------------------------------------------------------------------

def shipped_workflows() -> dict[str, dict]:
    manifest = json.loads((REPO / "blueprints" / "manifest.json").read_text())
    found = {}
    for entry in manifest["blueprints"]:
        if entry["tool"] == "n8n":
            path = REPO / "blueprints" / entry["file"]
            found[entry["flow"]] = {"entry": entry, "path": path,
                                    "workflow": json.loads(path.read_text())}
    for flow in ("job-log", "failure-alert"):
        if flow not in found:
            raise Failed(f"the manifest lists no n8n '{flow}' workflow")
    return found


def webhook_path(workflow: dict) -> str:
    node = next(n for n in workflow["nodes"] if n["type"] == "n8n-nodes-base.webhook")
    return node["parameters"]["path"]


def node_named(workflow: dict, node_type: str) -> dict:
    return next(n for n in workflow["nodes"] if n["type"] == node_type)


def start(command: list[str], env: dict[str, str], logfile: Path, cwd: Path
          ) -> subprocess.Popen:
    log("$ " + " ".join(command) + f"  (log: {logfile})")
    handle = logfile.open("ab")
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # the group of the process this script started
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def run(work: Path, results: dict) -> None:
    install_n8n()
    flows = shipped_workflows()
    receiver = Receiver()
    n8n_port, bridge_port = free_port(), free_port()
    user_folder = work / "n8n"
    user_folder.mkdir()
    env = n8n_env(user_folder, n8n_port)
    cli_log = work / "n8n-cli.log"
    n8n = bridge = None
    try:
        # import + activate each workflow (the alert one with its URL on the receiver)
        credentials = work / "credentials.json"
        credentials.write_text(json.dumps([DUMMY_SHEETS_CREDENTIAL]))
        n8n_cli(["import:credentials", f"--input={credentials}"], env, cli_log)
        for flow, item in flows.items():
            workflow = json.loads(json.dumps(item["workflow"]))
            if flow == "job-log":
                # What a user sets before activating (without it n8n refuses to run the
                # workflow at all: "The workflow has issues"). The credential is never
                # connected, so the node fails locally ("OAuth credentials not connected")
                # without calling Google.
                sheets = node_named(workflow, "n8n-nodes-base.googleSheets")
                sheets["credentials"] = {DUMMY_SHEETS_CREDENTIAL["type"]: {
                    "id": DUMMY_SHEETS_CREDENTIAL["id"], "name": DUMMY_SHEETS_CREDENTIAL["name"]}}
                sheets["parameters"]["documentId"] = {"__rl": True, "mode": "id",
                                                      "value": "e2e-no-such-spreadsheet"}
                sheets["parameters"]["sheetName"] = {"__rl": True, "mode": "name",
                                                     "value": "Jobs"}
            if flow == "failure-alert":
                http_node = node_named(workflow, "n8n-nodes-base.httpRequest")
                results["alert_url_in_file"] = http_node["parameters"]["url"]
                http_node["parameters"]["url"] = receiver.url
            copy = work / item["path"].name
            copy.write_text(json.dumps(workflow, indent=2))
            n8n_cli(["import:workflow", f"--input={copy}"], env, cli_log)
            n8n_cli(["update:workflow", f"--id={workflow['id']}", "--active=true"], env,
                    cli_log)
        n8n = start(["npx", "--no-install", "n8n", "start"], env, work / "n8n.log", CACHE)
        base = f"http://127.0.0.1:{n8n_port}"
        started = time.monotonic()
        wait_for("n8n /healthz", lambda: http("GET", base + "/healthz")[0] == 200, 180)
        for item in flows.values():
            path = webhook_path(item["workflow"])
            # GET on a POST-only webhook: 404 "…Did you mean to make a POST request?" once
            # it is registered, 404 "…is not registered" before; neither starts a run.
            wait_for(f"webhook {path} to be registered",
                     lambda p=path: "POST request" in http("GET", f"{base}/webhook/{p}")[1],
                     180)
        results["n8n_webhooks_ready_after_s"] = round(time.monotonic() - started, 1)
        log(f"n8n {N8N_VERSION} up on {base}, webhooks registered "
            f"({results['n8n_webhooks_ready_after_s']} s after start)")

        # the bridge, delivering to both workflows' production URLs
        bridge_dir = work / "bridge"
        bridge_dir.mkdir()
        (bridge_dir / "bridge.yaml").write_text(textwrap.dedent(f"""\
            database_url: sqlite:///{bridge_dir / 'bridge.db'}
            sources:
              ratioready:
                profile: ratioready
                mapping: {REPO / 'mappings' / 'ratioready.yaml'}
                secrets: ['${{RATIOREADY_WEBHOOK_SECRET}}']
            destinations:
              n8n-job-log:
                kind: n8n
                url: ${{N8N_WEBHOOK_URL}}
                retry: {{schedule: [2s, 5s, 10s]}}
              n8n-failure-alert:
                kind: n8n
                url: ${{N8N_ALERT_WEBHOOK_URL}}
                retry: {{schedule: [2s, 5s, 10s]}}
            routes:
              - from: ratioready
                to: [n8n-job-log, n8n-failure-alert]
            """))
        bridge_env = {k: v for k, v in os.environ.items()
                      if not k.startswith("BRIDGE_") and "_WEBHOOK_" not in k}
        bridge_env.update(
            BRIDGE_CONFIG=str(bridge_dir / "bridge.yaml"), RATIOREADY_WEBHOOK_SECRET=SECRET,
            N8N_WEBHOOK_URL=f"{base}/webhook/{webhook_path(flows['job-log']['workflow'])}",
            N8N_ALERT_WEBHOOK_URL=(f"{base}/webhook/"
                                   f"{webhook_path(flows['failure-alert']['workflow'])}"),
            PORT=str(bridge_port), BRIDGE_LOG_LEVEL="INFO")
        results["bridge_destinations"] = {"N8N_WEBHOOK_URL": bridge_env["N8N_WEBHOOK_URL"],
                                          "N8N_ALERT_WEBHOOK_URL":
                                              bridge_env["N8N_ALERT_WEBHOOK_URL"]}
        check = subprocess.run([str(BRIDGE), "check"], cwd=bridge_dir, env=bridge_env,
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise Failed(f"bridge check failed:\n{check.stdout}{check.stderr}")
        bridge = start([str(BRIDGE), "serve", "--host", "127.0.0.1", "--port",
                        str(bridge_port), "--workers", "1"], bridge_env,
                       work / "bridge.log", bridge_dir)
        wait_for("bridge /healthz",
                 lambda: http("GET", f"http://127.0.0.1:{bridge_port}/healthz")[0] == 200, 60)
        log(f"bridge up on http://127.0.0.1:{bridge_port}")

        sent = {}
        for sample in ("wall_art_completed", "job_failed", "job_queued"):
            out = subprocess.run([str(BRIDGE), "send-test", "ratioready", "--sample", sample],
                                 cwd=bridge_dir, env=bridge_env, capture_output=True,
                                 text=True, timeout=60)
            log(f"bridge send-test ratioready --sample {sample}: {out.stdout.strip()}")
            if out.returncode != 0 or "accepted" not in out.stdout:
                raise Failed(f"send-test {sample} failed: {out.stdout}{out.stderr}")
            sent[sample] = json.loads(out.stdout.split(" -> 200 ", 1)[1])["event_id"]
        results["sent"] = sent

        database = user_folder / ".n8n" / "database.sqlite"
        ids = {flow: item["workflow"]["id"] for flow, item in flows.items()}
        wait_for("2 finished executions of each workflow",
                 lambda: all(len(executions(database, wid)) >= 2 for wid in ids.values())
                 and all(e["finished_at"] for wid in ids.values()
                         for e in executions(database, wid)), 120)
        time.sleep(3)  # anything late (e.g. the filtered event, if it were sent) shows up
        deliveries = subprocess.run([str(BRIDGE), "deliveries"], cwd=bridge_dir,
                                    env=bridge_env, capture_output=True, text=True)
        results["bridge_deliveries"] = deliveries.stdout.strip().splitlines()
        verify(database, flows, receiver, sent, results)
        verify_deliveries(results["bridge_deliveries"], sent, results["checks"])
    finally:
        stop(bridge)
        stop(n8n)
        receiver.close()


def executions(database: Path, workflow_id: str) -> list[dict]:
    if not database.exists():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT e.id, e.status, e.mode, e.finished, e.stoppedAt AS finished_at, d.data "
            "FROM execution_entity e LEFT JOIN execution_data d ON d.executionId = e.id "
            "WHERE e.workflowId = ? ORDER BY e.id", (workflow_id,)).fetchall()
    return [dict(row) for row in rows]


def outputs(run_data: dict, node: str) -> list[list[dict]] | None:
    """Each output of the node's (first) run, as lists of item json; None if it did not run."""
    runs = run_data.get(node)
    if not runs:
        return None
    main = (runs[0].get("data") or {}).get("main") or []
    return [[item["json"] for item in (branch or [])] for branch in main]


def node_error(run_data: dict, node: str) -> str | None:
    runs = run_data.get(node) or [{}]
    error = runs[0].get("error")
    return (error.get("message") or json.dumps(error)[:200]) if error else None


# -- the checks ------------------------------------------------------------------------------

def expect(condition: bool, what: str, checks: list[str]) -> None:
    if not condition:
        raise Failed(what)
    checks.append(what)


def expected_events() -> dict[str, dict]:
    """What the flat events must carry, read from the providers' sample files (not from the
    bridge's mapping)."""
    done = json.loads((SAMPLES / "wall_art_completed.json").read_text())
    failed = json.loads((SAMPLES / "job_failed.json").read_text())
    return {
        "wall_art_completed": {
            "source": "ratioready", "event_type": "job.completed", "status": "completed",
            "job_id": done["job_id"], "job_type": done["job_type"],
            "credits": done["credit_cost"], "asset_count": len(done["assets"]["download_urls"]),
            "asset_urls": "\n".join(done["assets"]["download_urls"]),
            "folder_url": done["assets"]["drive_share_link"],
            "submitted_at": done["submitted_at"], "completed_at": done["completed_at"],
            "error": None},
        "job_failed": {
            "source": "ratioready", "event_type": "job.failed", "status": "failed",
            "job_id": failed["job_id"], "job_type": failed["job_type"],
            "credits": failed["credit_cost"], "error": failed["error"],
            "submitted_at": failed["submitted_at"], "completed_at": failed["completed_at"]},
    }


def verify(database: Path, flows: dict, receiver: Receiver, sent: dict, results: dict) -> None:
    schema_keys = json.loads(SCHEMA_FILE.read_text())["required"]
    wanted = expected_events()
    by_event: dict[str, str] = {v: k for k, v in sent.items()}
    checks: list[str] = []
    results["checks"] = checks
    results["executions"] = {}

    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        for flow, item in flows.items():
            row = db.execute("SELECT name, active, meta FROM workflow_entity WHERE id = ?",
                             (item["workflow"]["id"],)).fetchone()
            expect(row is not None and row[0] == item["workflow"]["name"],
                   f"{flow}: imported under its id {item['workflow']['id']} with its versioned "
                   f"name '{item['workflow']['name']}'", checks)
            results.setdefault("imported_meta", {})[flow] = row[2]

    for flow, item in flows.items():
        workflow = item["workflow"]
        runs = executions(database, workflow["id"])
        results["executions"][flow] = [{k: r[k] for k in ("id", "status", "mode")}
                                       for r in runs]
        expect(len(runs) == 2, f"{flow}: exactly 2 executions (completed + failed job; the "
               f"queued job is filtered by the mapping and never sent) - got {len(runs)}",
               checks)
        for execution in runs:
            data = unflatten(execution["data"])
            run_data = data["resultData"]["runData"]
            body = outputs(run_data, "Webhook")[0][0]["body"]
            sample = by_event.get(body.get("event_id"))
            expect(sample in wanted, f"{flow} #{execution['id']}: Webhook body is the event "
                   f"the bridge stored for {sample}", checks)
            expect(list(body) == schema_keys, f"{flow} #{execution['id']} ({sample}): Webhook "
                   f"body has exactly the schema's {len(schema_keys)} keys, in order", checks)
            for key, value in wanted[sample].items():
                expect(body[key] == value, f"{flow} #{execution['id']} ({sample}): "
                       f"body.{key} == {json.dumps(value)[:60]}", checks)
            expect(execution["mode"] == "webhook", f"{flow} #{execution['id']}: started by the "
                   "production webhook", checks)
            if flow == "job-log":
                verify_job_log(workflow, run_data, body, execution, sample, checks, results)
            else:
                verify_alert(workflow, run_data, body, execution, sample, receiver, checks,
                             results)
    expect(len(receiver.received) == 1, "failure-alert: the loopback Slack/Discord stand-in "
           f"received exactly 1 message - got {len(receiver.received)}", checks)


def verify_job_log(workflow: dict, run_data: dict, body: dict, execution: dict, sample: str,
                   checks: list[str], results: dict) -> None:
    tag = f"job-log #{execution['id']} ({sample})"
    gate = outputs(run_data, "Completed or failed?")
    expect(gate is not None and len(gate[0]) == 1 and not (gate[1:] and gate[1]),
           f"{tag}: IF 'Completed or failed?' passed the event on its true branch", checks)
    row_node = node_named(workflow, "n8n-nodes-base.set")
    row = outputs(run_data, row_node["name"])
    expect(row is not None and len(row[0]) == 1, f"{tag}: Edit Fields '{row_node['name']}' "
           "produced one row", checks)
    row = row[0][0]
    for assignment in row_node["parameters"]["assignments"]["assignments"]:
        field = assignment["value"].removeprefix("={{ $json.body.").removesuffix(" }}")
        column, value = assignment["name"], row.get(assignment["name"])
        expect(value == body[field], f"{tag}: column '{column}' == body.{field}", checks)
        if body[field] is not None:
            expect(value not in (None, ""), f"{tag}: column '{column}' is not empty", checks)
    must = ["Job", "Source", "Type", "Status", "Credits", "Received", "Event ID", "Summary"]
    must += ["Assets", "Asset links", "Folder"] if sample == "wall_art_completed" else ["Error"]
    for column in must:
        expect(row.get(column) not in (None, ""), f"{tag}: '{column}' has a value "
               f"({json.dumps(row.get(column))[:50]})", checks)
    sheets = node_named(workflow, "n8n-nodes-base.googleSheets")["name"]
    expect(sheets in run_data, f"{tag}: the row reached Google Sheets node '{sheets}' (it "
           f"then fails without a connected account: {node_error(run_data, sheets)})", checks)
    results.setdefault("google_sheets_node", []).append(
        {"execution": execution["id"], "ran": sheets in run_data,
         "error": node_error(run_data, sheets), "execution_status": execution["status"]})


def verify_alert(workflow: dict, run_data: dict, body: dict, execution: dict, sample: str,
                 receiver: Receiver, checks: list[str], results: dict) -> None:
    tag = f"failure-alert #{execution['id']} ({sample})"
    gate = outputs(run_data, "Job failed?")
    message_node = node_named(workflow, "n8n-nodes-base.set")["name"]
    http_node = node_named(workflow, "n8n-nodes-base.httpRequest")["name"]
    if sample == "job_failed":
        expect(gate is not None and len(gate[0]) == 1, f"{tag}: IF 'Job failed?' passed it on "
               "its true branch", checks)
        message = outputs(run_data, message_node)
        expect(message is not None and len(message[0]) == 1,
               f"{tag}: Edit Fields '{message_node}' ran", checks)
        text = message[0][0]["message"]
        for field in ("summary", "job_id", "source", "job_type", "error", "event_id",
                      "received_at"):
            expect(str(body[field]) in text, f"{tag}: the message carries body.{field}", checks)
        expect(message[0][0]["job_id"] == body["job_id"]
               and message[0][0]["event_id"] == body["event_id"],
               f"{tag}: job_id and event_id passed on", checks)
        expect(node_error(run_data, http_node) is None and outputs(run_data, http_node),
               f"{tag}: HTTP Request '{http_node}' succeeded", checks)
        expect(execution["status"] == "success", f"{tag}: execution status success", checks)
        posted = next((r for r in receiver.received if body["event_id"] in r["body"]), None)
        expect(posted is not None, f"{tag}: the receiver got the message", checks)
        payload = json.loads(posted["body"])
        expect(payload == {"text": text, "content": text},
               f"{tag}: it posted JSON {{text, content}} = the message", checks)
        expect(posted["headers"].get("Content-Type", "").startswith("application/json"),
               f"{tag}: posted as application/json", checks)
        results["alert_message"] = text
    else:
        expect(gate is not None and not gate[0] and len(gate[1]) == 1,
               f"{tag}: IF 'Job failed?' sent it to the false branch", checks)
        expect(message_node not in run_data and http_node not in run_data,
               f"{tag}: no message and no HTTP request for a completed job", checks)
        expect(execution["status"] == "success", f"{tag}: execution status success", checks)


def verify_deliveries(lines: list[str], sent: dict, checks: list[str]) -> None:
    """`bridge deliveries`: one row per event and destination, STATE in the 4th column."""
    rows = [line.split() for line in lines[1:]]
    states = {(row[0], row[2]): (row[3], row[5] if len(row) > 5 else "") for row in rows}
    for sample, event_id in sent.items():
        for destination in ("n8n-job-log", "n8n-failure-alert"):
            state = states.get((event_id, destination))
            wanted = ("filtered", "filtered:") if sample == "job_queued" else ("done", "200")
            expect(state == wanted, f"bridge deliveries: {sample} to {destination} is "
                   f"{' '.join(wanted)} - got {state}", checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, DBs)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if not BRIDGE.exists():
        print(f"{BRIDGE} not found: run 'make test' (or make .venv/bin/bridge) first")
        return 2
    if not shutil.which("npx"):
        print("npx not found: install Node.js 20")
        return 2
    work = Path(tempfile.mkdtemp(prefix="n8n-e2e-"))
    node_version = subprocess.run(["node", "--version"], capture_output=True, text=True)
    results: dict[str, Any] = {"n8n_version": N8N_VERSION,
                               "node_version": node_version.stdout.strip(),
                               "date": datetime.now(UTC).isoformat(timespec="seconds"),
                               "work_dir": str(work)}
    started = time.monotonic()
    try:
        run(work, results)
        results["result"] = "pass"
    except (Failed, subprocess.SubprocessError, OSError) as err:
        results["result"] = "FAIL"
        results["failure"] = str(err)
    results["seconds"] = round(time.monotonic() - started, 1)
    for check in results.get("checks", []):
        print(f"  ok  {check}")
    print(json.dumps({k: v for k, v in results.items() if k != "checks"}, indent=2,
                     ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"{results['result']}: {len(results.get('checks', []))} checks, "
          f"{results['seconds']} s; logs in {work}")
    if not args.keep and results["result"] == "pass":
        shutil.rmtree(work, ignore_errors=True)
    return 0 if results["result"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
