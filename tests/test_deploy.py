"""The deploy files (Procfile, app.json, render.yaml, runtime pin) are valid, the commands
they run exist, and every environment variable they list is documented in the README and
read by the bridge (its code or the shipped bridge.yaml)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from bridge.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
# set by the platforms themselves, read by the bridge, documented all the same
PLATFORM_VARS = {"PORT", "WEB_CONCURRENCY", "PYTHON_VERSION"}


def code_text() -> str:
    files = sorted((ROOT / "bridge").rglob("*.py")) + [ROOT / "bridge.yaml"]
    return "\n".join(path.read_text(encoding="utf-8") for path in files)


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text(encoding="utf-8").splitlines():
        if line.strip():
            kind, _, command = line.partition(":")
            entries[kind.strip()] = command.strip()
    return entries


def assert_runs_a_bridge_command(command: str) -> None:
    words = shlex.split(command)
    assert words[0] == "bridge", command
    assert words[1] in cli.commands, f"{command}: 'bridge {words[1]}' does not exist"


def render() -> dict:
    return yaml.safe_load((ROOT / "render.yaml").read_text(encoding="utf-8"))


def app_json() -> dict:
    return json.loads((ROOT / "app.json").read_text(encoding="utf-8"))


def test_the_procfile_runs_web_worker_and_a_release_migration():
    entries = procfile()
    assert set(entries) == {"web", "worker", "release"}
    assert entries["web"].startswith("bridge serve")
    assert entries["worker"].startswith("bridge worker")
    assert entries["release"] == "bridge migrate"
    for command in entries.values():
        assert_runs_a_bridge_command(command)


def test_app_json_asks_for_postgres_and_describes_every_variable():
    data = app_json()
    assert any(a["plan"].startswith("heroku-postgresql:") for a in data["addons"])
    assert set(data["formation"]) <= set(procfile())
    for name, spec in data["env"].items():
        assert spec.get("description"), f"{name} has no description in app.json"
    assert data["env"]["BRIDGE_ADMIN_TOKEN"]["generator"] == "secret"


def test_render_yaml_is_a_web_service_on_a_free_postgres():
    data = render()
    (service,) = data["services"]
    (database,) = data["databases"]
    assert (service["type"], service["runtime"], service["healthCheckPath"]) == (
        "web", "python", "/healthz")
    assert_runs_a_bridge_command(service["startCommand"])
    assert "requirements.txt" in service["buildCommand"]
    env = {item["key"]: item for item in service["envVars"]}
    assert env["DATABASE_URL"]["fromDatabase"] == {"name": database["name"],
                                                  "property": "connectionString"}
    for name, item in env.items():
        if name.endswith(("_SECRET", "_URL", "_KEY", "_TOKEN")) and name != "DATABASE_URL":
            assert item.get("sync") is False or item.get("generateValue") is True, name


@pytest.mark.parametrize("source", ["app.json", "render.yaml"])
def test_every_variable_of_the_deploy_files_is_documented_and_read(source):
    names = (set(app_json()["env"]) if source == "app.json"
             else {item["key"] for item in render()["services"][0]["envVars"]})
    code = code_text()
    for name in names:
        assert f"`{name}`" in README, f"{name} ({source}) is not documented in README.md"
        if name not in PLATFORM_VARS:
            assert re.search(rf"\b{name}\b", code), f"{name} ({source}) is read nowhere"


def test_every_secret_the_shipped_config_reads_can_be_set_on_both_platforms():
    config = "\n".join(line.split("#")[0] for line in
                       (ROOT / "bridge.yaml").read_text(encoding="utf-8").splitlines())
    wanted = set(re.findall(r"\$\{([A-Z0-9_]+)", config))
    wanted -= {"DATABASE_URL", "BRIDGE_MAX_BODY_BYTES"}
    wanted = {name for name in wanted if not name.endswith("_PREVIOUS")}
    render_keys = {item["key"] for item in render()["services"][0]["envVars"]}
    assert wanted <= set(app_json()["env"]), wanted - set(app_json()["env"])
    assert wanted <= render_keys, wanted - render_keys


def test_requirements_install_this_project_and_the_runtime_is_pinned():
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == ["."]
    version = (ROOT / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.(1[1-9])(\.\d+)?", version), version
    render_python = {item["key"]: item.get("value")
                     for item in render()["services"][0]["envVars"]}["PYTHON_VERSION"]
    assert render_python.startswith(version)
