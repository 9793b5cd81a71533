"""The no-code blueprints (blueprints/): every shipped one passes the checker; renamed fields,
malformed files and manifest mistakes are reported with file and line; `bridge check`
includes them; `bridge send-sample` posts a flat event to a real loopback HTTP server; the
Zapier sample validates against the published JSON Schema.

Expected values come from the files themselves (the JSON Schema, the providers' sample
payloads, lines found in the text), not from the code under test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from bridge import blueprints
from bridge.blueprints import problems
from bridge.cli import cli

from .conftest import REPO, SHIPPED_CONFIG, line_with, secret_var

BLUEPRINTS = REPO / "blueprints"
SCHEMA_FILE = BLUEPRINTS / "schema" / "job-event.v1.schema.json"
RATIOREADY = REPO / "bridge" / "samples" / "ratioready"
MAKE_LOG = "make/job-log.v1.blueprint.json"
MAKE_ALERT = "make/failure-alert.v1.blueprint.json"
N8N_LOG = "n8n/job-log.v1.workflow.json"
N8N_ALERT = "n8n/failure-alert.v1.workflow.json"
ZAPIER_SAMPLE = "zapier/sample-event.v1.json"
EVENT_ID = re.compile(r"^evt_[0-9A-HJKMNP-TV-Z]{26}$")


def schema_keys() -> list[str]:
    return json.loads(SCHEMA_FILE.read_text())["required"]


def manifest() -> dict:
    return json.loads((BLUEPRINTS / "manifest.json").read_text())


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the shipped blueprints folder to break."""
    return Path(shutil.copytree(BLUEPRINTS, tmp_path / "blueprints"))


def edit(tree: Path, file: str, old: str, new: str, count: int = 1) -> str:
    """Replace the first ``count`` occurrence(s) of ``old`` in a copied file; returns the
    new text."""
    path = tree / file
    text = path.read_text()
    assert old in text, f"{old!r} not in {file}"
    text = text.replace(old, new, count)
    path.write_text(text)
    return text


def where(errors) -> list[tuple[str | None, int | None, str]]:
    return [(e.file, e.line, e.message) for e in errors]


# -- the shipped blueprints ---------------------------------------------------------------------

def test_every_shipped_blueprint_passes_the_checker():
    assert [str(e) for e in problems(BLUEPRINTS)] == []


def test_the_manifest_lists_both_flows_for_each_tool_with_versions_in_file_names():
    entries = manifest()["blueprints"]
    pairs = {(e["tool"], e["flow"]) for e in entries}
    assert {("make", "job-log"), ("make", "failure-alert"), ("n8n", "job-log"),
            ("n8n", "failure-alert")} <= pairs
    assert {e["tool"] for e in entries} == {"make", "n8n", "zapier"}
    for entry in entries:
        assert (BLUEPRINTS / entry["file"]).is_file(), entry
        assert f".v{entry['version']}." in entry["file"], entry
        assert entry["schema_version"] == 1
    listed = {e["file"] for e in entries}
    on_disk = {p.relative_to(BLUEPRINTS).as_posix()
               for tool in ("make", "n8n", "zapier") for p in (BLUEPRINTS / tool).glob("*.json")}
    assert on_disk <= listed


def test_make_blueprints_have_the_import_shape_and_say_their_version_inside():
    for file, flow in ((MAKE_LOG, "job-log"), (MAKE_ALERT, "failure-alert")):
        data = json.loads((BLUEPRINTS / file).read_text())
        assert set(data) == {"name", "flow", "metadata"}
        assert f"[blueprint {flow} v1, job event schema v1]" in data["name"]
        assert data["metadata"]["instant"] is True
        assert data["metadata"]["scenario"]["maxErrors"] == 3
        notes = data["metadata"]["notes"]
        assert notes[0]["moduleIds"] == [1] and "job event schema v1" in notes[0]["content"]
        hook = data["flow"][0]
        assert (hook["id"], hook["module"], hook["version"]) == (1, "gateway:CustomWebHook", 1)
        assert hook["parameters"] == {"hook": None, "maxResults": 1}


def test_make_job_log_writes_one_column_per_field_only_for_completed_or_failed_jobs():
    data = json.loads((BLUEPRINTS / MAKE_LOG).read_text())
    row = data["flow"][1]
    assert (row["module"], row["version"]) == ("google-sheets:addRow", 2)
    assert row["parameters"] == {"__IMTCONN__": None}
    values = row["mapper"]["values"]
    assert list(values) == [str(i) for i in range(len(values))]
    assert values["0"] == "{{1.job_id}}"
    for field in ("source", "job_type", "status", "credits", "asset_urls", "folder_url",
                  "error", "submitted_at", "completed_at", "received_at", "event_id"):
        assert f"{{{{1.{field}}}}}" in values.values()
    conditions = row["filter"]["conditions"]
    assert [c[0]["b"] for c in conditions] == ["job.completed", "job.failed"]
    assert all(c[0]["a"] == "{{1.event_type}}" and c[0]["o"] == "text:equal"
               for c in conditions)


def test_make_failure_alert_routes_only_failed_jobs_to_an_http_post():
    data = json.loads((BLUEPRINTS / MAKE_ALERT).read_text())
    router = data["flow"][1]
    assert (router["module"], router["version"]) == ("builtin:BasicRouter", 1)
    head = router["routes"][0]["flow"][0]
    assert (head["module"], head["version"]) == ("http:ActionSendData", 3)
    assert head["filter"]["conditions"] == [[{"a": "{{1.event_type}}", "o": "text:equal",
                                              "b": "job.failed"}]]
    assert head["mapper"]["method"] == "post" and head["mapper"]["url"] == ""
    for field in ("summary", "error", "job_id", "event_id"):
        assert f"1.{field}" in head["mapper"]["data"]


def test_n8n_workflows_have_the_import_shape_and_say_their_version_inside():
    for file, flow, path in ((N8N_LOG, "job-log", "bridge-job-log"),
                             (N8N_ALERT, "failure-alert", "bridge-failure-alert")):
        data = json.loads((BLUEPRINTS / file).read_text())
        assert data["id"] and data["active"] is False and data["pinData"] == {}
        assert data["settings"] == {"executionOrder": "v1"}
        assert f"[blueprint {flow} v1, job event schema v1]" in data["name"]
        assert data["meta"]["bridgeBlueprintVersion"] == 1
        assert data["meta"]["jobEventSchemaVersion"] == 1
        hook = data["nodes"][0]
        assert (hook["type"], hook["typeVersion"]) == ("n8n-nodes-base.webhook", 2)
        assert hook["parameters"]["httpMethod"] == "POST"
        assert hook["parameters"]["path"] == path
        assert hook["parameters"]["responseMode"] == "onReceived"
        assert hook["webhookId"]
        names = {n["name"] for n in data["nodes"]}
        for source, outputs in data["connections"].items():
            assert source in names
            assert all(link["node"] in names for branch in outputs["main"] for link in branch)
        assert not any("credentials" in n for n in data["nodes"])


def test_n8n_job_log_maps_the_body_into_sheet_columns():
    data = json.loads((BLUEPRINTS / N8N_LOG).read_text())
    sheets = next(n for n in data["nodes"] if n["type"] == "n8n-nodes-base.googleSheets")
    assert sheets["typeVersion"] == 4.5 and sheets["parameters"]["operation"] == "append"
    assert sheets["parameters"]["columns"]["mappingMode"] == "autoMapInputData"
    row = next(n for n in data["nodes"] if n["type"] == "n8n-nodes-base.set")
    assert row["typeVersion"] == 3.4
    values = [a["value"] for a in row["parameters"]["assignments"]["assignments"]]
    assert "={{ $json.body.job_id }}" in values and "={{ $json.body.error }}" in values


# -- the checker finds what is wrong ------------------------------------------------------------

@pytest.mark.parametrize(("file", "old", "new"), [
    (MAKE_LOG, '"{{1.job_id}}"', '"{{1.job_identifier}}"'),
    (MAKE_ALERT, "{{1.job_id}}", "{{1.job_identifier}}"),
    (N8N_LOG, "$json.body.job_id }}", "$json.body.job_identifier }}"),
    (N8N_ALERT, "$json.body.job_id }}", "$json.body.job_identifier }}"),
])
def test_a_reference_to_a_renamed_field_is_reported_with_file_and_line(tree, file, old, new):
    text = edit(tree, file, old, new)
    errors = problems(tree)
    assert len(errors) == 1, [str(e) for e in errors]
    error = errors[0]
    assert error.file == f"blueprints/{file}"
    assert error.line == line_with(text, "job_identifier")
    assert "job_identifier" in error.message and "not a field" in error.message
    assert "job_id" in (error.hint or "")


def test_a_field_renamed_in_the_schema_is_reported_in_every_blueprint_using_it(monkeypatch):
    fields = {("folder_link" if k == "folder_url" else k): v
              for k, v in blueprints.SCHEMAS[1][0].items()}
    monkeypatch.setitem(blueprints.SCHEMAS, 1, (fields, blueprints.SCHEMAS[1][1]))
    errors = problems(BLUEPRINTS)
    files = {e.file for e in errors}
    assert {f"blueprints/{MAKE_LOG}", f"blueprints/{N8N_LOG}",
            f"blueprints/{ZAPIER_SAMPLE}"} <= files
    make = next(e for e in errors if e.file == f"blueprints/{MAKE_LOG}")
    assert make.line == line_with((BLUEPRINTS / MAKE_LOG).read_text(), "{{1.folder_url}}")
    assert "folder_url" in make.message


def test_references_count_only_fields_of_the_webhook_module_in_any_expression(tree):
    edit(tree, MAKE_LOG, '"{{1.job_id}}"',
         '"{{ifempty(1.job_ref; 1.job_id)}} {{21.whatever}} {{2.rowNumber}}"')
    text = edit(tree, N8N_LOG, "$json.body.job_id }}", '$json.body[\\"jobb_id\\"] }}')
    errors = problems(tree)
    assert sorted(where(errors)) == sorted([
        (f"blueprints/{MAKE_LOG}", line_with((tree / MAKE_LOG).read_text(), "job_ref"),
         "{{1.job_ref}} is not a field of the job event schema"),
        (f"blueprints/{N8N_LOG}", line_with(text, "jobb_id"),
         "$json.body.jobb_id is not a field of the job event schema"),
    ])


def test_a_zapier_sample_with_a_renamed_or_missing_key_is_reported(tree):
    text = edit(tree, ZAPIER_SAMPLE, '"folder_url":', '"folder_link":')
    errors = problems(tree)
    messages = [(e.file, e.line, e.message) for e in errors]
    assert (f"blueprints/{ZAPIER_SAMPLE}", line_with(text, "folder_link"),
            "'folder_link' is not a field of the job event schema") in messages
    assert any("lacks 1 field(s)" in m and "folder_url" in m for _, _, m in messages)


def test_invalid_json_is_reported_with_its_line(tree):
    path = tree / N8N_ALERT
    lines = path.read_text().splitlines()
    lines[4] = lines[4] + ","  # a trailing comma after a value: invalid JSON
    path.write_text("\n".join(lines[:6]) + "\n")
    errors = problems(tree)
    assert len(errors) == 1
    assert errors[0].file == f"blueprints/{N8N_ALERT}"
    assert errors[0].message.startswith("not valid JSON")
    assert errors[0].line is not None


@pytest.mark.parametrize(("file", "key", "message"), [
    (MAKE_LOG, "flow", "'flow' is missing or not a list of modules"),
    (MAKE_ALERT, "metadata", "'metadata' is missing or not an object"),
    (N8N_LOG, "nodes", "'nodes' is missing or not a list of nodes"),
    (N8N_ALERT, "connections", "'connections' is missing or not an object keyed by node name"),
])
def test_a_blueprint_without_its_main_parts_is_reported(tree, file, key, message):
    path = tree / file
    data = json.loads(path.read_text())
    del data[key]
    path.write_text(json.dumps(data, indent=2))
    errors = problems(tree)
    assert (f"blueprints/{file}", message) in [(e.file, e.message) for e in errors]


def test_a_connection_to_a_missing_node_is_reported(tree):
    text = edit(tree, N8N_LOG, '"node": "Row"', '"node": "Rows"')
    errors = problems(tree)
    assert where(errors) == [(f"blueprints/{N8N_LOG}", line_with(text, '"node": "Rows"'),
                              "'Completed or failed?' connects to 'Rows', which is not a node")]
    assert errors[0].hint == "did you mean 'Row'?"


def test_a_connection_from_a_missing_node_is_reported(tree):
    edit(tree, N8N_ALERT, '"Alert message": {', '"Alert mesage": {')
    messages = [e.message for e in problems(tree)]
    assert "a connection starts at 'Alert mesage', which is not a node" in messages


def test_a_webhook_node_that_does_not_take_post_is_reported(tree):
    text = edit(tree, N8N_LOG, '"httpMethod": "POST"', '"httpMethod": "GET"')
    assert where(problems(tree)) == [(f"blueprints/{N8N_LOG}", line_with(text, "httpMethod"),
                                      "Webhook node 'Webhook' must take POST (httpMethod: "
                                      "POST)")]


def test_make_modules_unknown_or_with_account_connections_are_reported(tree):
    edit(tree, MAKE_LOG, '"module": "google-sheets:addRow",\n      "version": 2',
         '"module": "google-sheets:addRow",\n      "version": 4')
    edit(tree, MAKE_LOG, '"__IMTCONN__": null', '"__IMTCONN__": 5032701')
    edit(tree, MAKE_ALERT, '"module": "http:ActionSendData"', '"module": "http:ActionSendDta"')
    messages = {(e.file, e.message) for e in problems(tree)}
    assert (f"blueprints/{MAKE_LOG}", "module 2: google-sheets:addRow has version 4; real "
            "exports have version 2") in messages
    assert (f"blueprints/{MAKE_LOG}", "module 2: a connection of one Make account is saved "
            "in the blueprint") in messages
    assert (f"blueprints/{MAKE_ALERT}", "module 3: 'http:ActionSendDta' is not a module seen "
            "in real Make exports") in messages


def test_a_module_without_id_module_or_version_is_reported(tree):
    path = tree / MAKE_ALERT
    data = json.loads(path.read_text())
    del data["flow"][1]["routes"][0]["flow"][0]["version"]
    path.write_text(json.dumps(data, indent=2))
    messages = [e.message for e in problems(tree)]
    assert "a module has no valid version" in messages


def test_an_unknown_schema_version_is_reported(tree):
    text = edit(tree, "manifest.json", '"schema_version": 1', '"schema_version": 2')
    errors = problems(tree)
    assert where(errors) == [("blueprints/manifest.json",
                              line_with(text, f'"file": "{MAKE_LOG}"'),
                              f"{MAKE_LOG}: unknown job event schema version 2")]


def test_a_version_that_disagrees_with_the_file_is_reported(tree):
    text = edit(tree, N8N_ALERT, "blueprint failure-alert v1", "blueprint failure-alert v2")
    errors = problems(tree)
    assert where(errors) == [(f"blueprints/{N8N_ALERT}", line_with(text, "failure-alert v2"),
                              "the file says 'blueprint failure-alert v2, job event schema v1' "
                              "but the manifest says 'blueprint failure-alert v1, job event "
                              "schema v1'")]


def test_missing_unlisted_and_misnamed_files_are_reported(tree):
    (tree / MAKE_LOG).unlink()
    shutil.copy(BLUEPRINTS / N8N_LOG, tree / "n8n" / "job-log.v2.workflow.json")
    (tree / MAKE_ALERT).rename(tree / "make" / "failure-alert.blueprint.json")
    edit(tree, "manifest.json", f'"file": "{MAKE_ALERT}"',
         '"file": "make/failure-alert.blueprint.json"')
    messages = [e.message for e in problems(tree)]
    assert f"{MAKE_LOG}: file not found" in messages
    assert "n8n/job-log.v2.workflow.json is not listed in the manifest" in messages
    assert ("make/failure-alert.blueprint.json: the file name must carry its version (.v1.)"
            in messages)


def test_a_missing_manifest_is_reported(tree):
    (tree / "manifest.json").unlink()
    assert where(problems(tree)) == [("blueprints/manifest.json", None,
                                      "the blueprint manifest is missing")]


# -- bridge check --------------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """bridge.yaml, mappings/ and blueprints/ copied into tmp_path (the working folder)."""
    shutil.copy(SHIPPED_CONFIG, tmp_path / "bridge.yaml")
    shutil.copytree(REPO / "mappings", tmp_path / "mappings")
    shutil.copytree(BLUEPRINTS, tmp_path / "blueprints")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(*args: str, **env: str):
    outer = {name: None for name in os.environ
             if name.startswith("BRIDGE_") or "_WEBHOOK_" in name or name == "MAKE_API_KEY"}
    secrets = {secret_var(p): "s" * 20 for p in ("ratioready", "zupertry", "posternity",
                                                  "upscale", "listingrva")}
    return CliRunner().invoke(cli, list(args), env={**outer, **secrets, **env},
                              auto_envvar_prefix="BRIDGE")


def test_bridge_check_reports_a_broken_blueprint_as_file_and_line(project):
    text = edit(project / "blueprints", MAKE_ALERT, "{{1.job_type}}", "{{1.job_typ}}")
    result = run_cli("check")
    assert result.exit_code == 1
    line = line_with(text, "1.job_typ}")
    assert (f"blueprints/{MAKE_ALERT}:{line}: {{{{1.job_typ}}}} is not a field of the job event "
            "schema (did you mean 'job_type'?)") in result.stderr


def test_bridge_check_passes_with_the_shipped_blueprints(project):
    result = run_cli("check")
    assert result.exit_code == 0, result.output
    assert "blueprints" not in result.stderr


def test_bridge_check_skips_a_project_without_blueprints(project):
    shutil.rmtree(project / "blueprints")
    assert run_cli("check").exit_code == 0


# -- bridge send-sample ---------------------------------------------------------------------------

class Hook:
    """A catch-hook on a real loopback socket: records requests, answers ``status``."""

    def __init__(self, status: int = 200, body: bytes = b'{"status": "success"}') -> None:
        self.requests: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hook.requests.append({"path": self.path, "headers": dict(self.headers),
                                      "body": data})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/catch/1/abc/"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    server = Hook()
    yield server
    server.close()


def send_sample(*args: str, **env: str):
    return run_cli("send-sample", *args, BRIDGE_CONFIG=str(SHIPPED_CONFIG), **env)


def test_send_sample_posts_the_flat_event_of_the_default_sample(hook):
    result = send_sample(hook.url)
    assert result.exit_code == 0, result.output
    assert f"POST {hook.url} -> 200" in result.stdout
    assert len(hook.requests) == 1
    request = hook.requests[0]
    assert request["path"] == "/hooks/catch/1/abc/"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["User-Agent"].startswith("bridge/")
    event = json.loads(request["body"])
    assert list(event) == schema_keys()
    jsonschema.validate(event, json.loads(SCHEMA_FILE.read_text()))
    assert all(not isinstance(v, (dict, list)) for v in event.values())
    raw = json.loads((RATIOREADY / "wall_art_completed.json").read_text())
    assert event["source"] == "ratioready" and event["event_type"] == "job.completed"
    assert event["job_id"] == raw["job_id"] and event["credits"] == raw["credit_cost"]
    assert event["asset_url_1"] == raw["assets"]["download_urls"][0]
    assert event["folder_url"] == raw["assets"]["drive_share_link"]
    assert EVENT_ID.match(event["event_id"])
    assert request["headers"]["Idempotency-Key"] == event["event_id"]


def test_send_sample_takes_another_sample(hook):
    result = send_sample(hook.url, "--source", "ratioready", "--sample", "job_failed")
    assert result.exit_code == 0, result.output
    event = json.loads(hook.requests[0]["body"])
    raw = json.loads((RATIOREADY / "job_failed.json").read_text())
    assert event["event_type"] == "job.failed" and event["error"] == raw["error"]
    assert list(event) == schema_keys()


def test_send_sample_refuses_a_sample_the_mapping_filters(hook):
    result = send_sample(hook.url, "--sample", "job_queued")
    assert result.exit_code != 0
    assert "filtered" in result.output
    assert hook.requests == []


def test_send_sample_uses_the_headers_of_a_configured_destination(hook):
    result = send_sample(hook.url, MAKE_WEBHOOK_URL=hook.url, MAKE_API_KEY="k-123")
    assert result.exit_code == 0, result.output
    assert hook.requests[0]["headers"]["x-make-apikey"] == "k-123"


def test_send_sample_fails_on_a_refusal_and_shows_the_answer():
    refusing = Hook(status=410, body=b'{"error": "hook deleted"}')
    try:
        result = send_sample(refusing.url)
    finally:
        refusing.close()
    assert result.exit_code == 1
    assert "-> 410" in result.stdout and "hook deleted" in result.stdout


def test_send_sample_when_nothing_listens_says_so():
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = send_sample(f"http://127.0.0.1:{port}/x")
    assert result.exit_code == 1
    assert "cannot reach" in result.output


# -- the Zapier sample ----------------------------------------------------------------------------

def test_the_zapier_sample_validates_against_the_published_json_schema():
    sample = json.loads((BLUEPRINTS / ZAPIER_SAMPLE).read_text())
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(sample)
    assert list(sample) == schema_keys()
    assert all(not isinstance(v, (dict, list)) for v in sample.values())
    raw = json.loads((RATIOREADY / "wall_art_completed.json").read_text())
    assert sample["schema_version"] == 1
    assert sample["job_id"] == raw["job_id"]
    assert sample["asset_urls"].split("\n") == raw["assets"]["download_urls"]
    assert sample["asset_count"] == len(raw["assets"]["download_urls"])
    assert sample["preview_url_5"] == raw["assets"]["mockup_urls"][4]


def test_the_zapier_sample_is_what_the_shipped_mapping_makes_now():
    """Drift check: the file is regenerated by scripts/zapier_sample.py."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "zapier_sample.py"),
                             "--check"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
