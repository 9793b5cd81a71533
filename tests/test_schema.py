"""The job event schema v1: the committed JSON Schema and docs/SCHEMA.md are exactly what
``bridge schema --write`` writes, and the schema has the keys the issue asks for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from bridge import schema
from bridge.cli import cli, schema_files

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "blueprints" / "schema" / "job-event.v1.schema.json"
DOC_PATH = REPO / "docs" / "SCHEMA.md"

# Written by hand from the issue: the keys every event must have.
REQUIRED_BY_ISSUE = [
    "schema_version", "event_id", "source", "event_type", "status", "job_id", "job_type",
    "credits", "asset_count",
    "asset_url_1", "asset_url_2", "asset_url_3", "asset_url_4", "asset_url_5",
    "asset_url_6", "asset_url_7", "asset_url_8", "asset_url_9", "asset_url_10",
    "asset_urls", "preview_count",
    "preview_url_1", "preview_url_2", "preview_url_3", "preview_url_4", "preview_url_5",
    "video_url", "document_url", "folder_url", "error", "submitted_at", "completed_at",
    "received_at",
]
# ... and the others of version 1, in the committed order (a Make data structure is built
# from these; adding or removing one is a new schema version).
ALL_KEYS_V1 = [
    "schema_version", "event_id", "source", "event_type", "status", "job_id", "job_type",
    "credits", "summary", "asset_count",
    "asset_url_1", "asset_url_2", "asset_url_3", "asset_url_4", "asset_url_5",
    "asset_url_6", "asset_url_7", "asset_url_8", "asset_url_9", "asset_url_10",
    "asset_urls", "preview_count",
    "preview_url_1", "preview_url_2", "preview_url_3", "preview_url_4", "preview_url_5",
    "preview_urls", "video_url", "document_url", "folder_url", "error", "error_code",
    "submitted_at", "completed_at", "received_at",
    "provider_event_id", "workspace_id", "org_id", "style", "platform", "asset_ids",
    "requested_count", "generated_count", "partial", "watermark",
]
SET_BY_BRIDGE = ["schema_version", "event_id", "source", "event_type", "received_at"]
TYPES = {"schema_version": "integer", "credits": "number", "asset_count": "integer",
         "preview_count": "integer", "requested_count": "integer",
         "generated_count": "integer", "partial": "boolean"}  # every other key: string


def committed() -> dict:
    return json.loads(SCHEMA_PATH.read_text("utf-8"))


def test_committed_json_schema_is_what_schema_write_produces():
    text = json.dumps(schema.json_schema(), indent=2, ensure_ascii=False) + "\n"
    assert SCHEMA_PATH.read_text("utf-8") == text
    files = schema_files(text)
    assert sorted(str(p) for p in files) == ["blueprints/schema/job-event.v1.schema.json",
                                             "docs/SCHEMA.md"]
    for relative, content in files.items():
        assert (REPO / relative).read_text("utf-8") == content, f"{relative} is stale"


def test_schema_write_in_an_empty_folder_writes_the_committed_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["schema", "--write"])
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["blueprints/schema/job-event.v1.schema.json", "docs/SCHEMA.md"]
    assert (tmp_path / "blueprints/schema/job-event.v1.schema.json").read_bytes() == \
        SCHEMA_PATH.read_bytes()
    assert (tmp_path / "docs/SCHEMA.md").read_bytes() == DOC_PATH.read_bytes()


def test_schema_command_prints_the_committed_schema():
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0
    assert result.stdout == SCHEMA_PATH.read_text("utf-8")


def test_schema_has_the_keys_the_issue_requires_all_required_no_others():
    doc = committed()
    Draft202012Validator.check_schema(doc)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert doc["type"] == "object"
    assert doc["additionalProperties"] is False
    missing = [k for k in REQUIRED_BY_ISSUE if k not in doc["required"]]
    assert not missing
    assert doc["required"] == ALL_KEYS_V1
    assert list(doc["properties"]) == ALL_KEYS_V1
    assert len(set(doc["required"])) == len(doc["required"])


@pytest.mark.parametrize("key", ALL_KEYS_V1)
def test_each_key_has_its_type_and_only_bridge_keys_are_never_null(key):
    prop = committed()["properties"][key]
    kind = TYPES.get(key, "string")
    assert prop["type"] == (kind if key in SET_BY_BRIDGE else [kind, "null"])
    assert prop["description"].strip()


def test_schema_version_is_the_constant_1():
    assert committed()["properties"]["schema_version"]["const"] == 1


def test_every_key_is_in_the_markdown_table():
    doc = DOC_PATH.read_text("utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ALL_KEYS_V1


def _valid_event() -> dict:
    event = dict.fromkeys(ALL_KEYS_V1)
    event.update(schema_version=1, event_id="evt_1", source="ratioready",
                 event_type="job.completed", received_at="2026-11-21T12:10:15.250Z")
    return event


def test_the_schema_accepts_a_blank_event_and_x_keys():
    validator = Draft202012Validator(committed())
    assert not list(validator.iter_errors(_valid_event()))
    assert not list(validator.iter_errors({**_valid_event(), "x_shop": "acme", "x_n": 2,
                                           "x_flag": True, "x_none": None}))


@pytest.mark.parametrize("change,remove", [
    ({"asset_url_11": "https://x.example/11.png"}, None),   # no such numbered field
    ({"assets": ["https://x.example/1.png"]}, None),         # unknown key
    ({"x_obj": {"a": 1}}, None),                             # x_ keys are single values
    ({"X_upper": "a"}, None),                                # x_ keys are lowercase
    ({"asset_urls": ["a", "b"]}, None),                      # no arrays
    ({"job_id": {"id": "a"}}, None),                         # no objects
    ({"credits": "89"}, None),
    ({"asset_count": -1}, None),
    ({"asset_count": 1.5}, None),
    ({"partial": "true"}, None),
    ({"schema_version": 2}, None),
    ({"event_id": None}, None),                              # set by the bridge: never null
    ({}, "folder_url"),                                      # every key is always present
    ({}, "received_at"),
])
def test_the_schema_rejects(change, remove):
    event = {**_valid_event(), **change}
    if remove:
        del event[remove]
    assert list(Draft202012Validator(committed()).iter_errors(event))
