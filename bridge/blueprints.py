"""The no-code blueprints in ``blueprints/``: a checker and ``bridge send-sample``.

``blueprints/manifest.json`` lists every blueprint (Make scenario, n8n workflow, Zapier
guide and sample) with its tool, file, version and the job-event schema version it expects.
``problems(root)`` checks each one: the file exists and has the shape its tool imports,
it says its own version inside (``[blueprint <flow> v<N>, job event schema v<M>]``), and
every field it reads (``{{1.field}}`` in Make, ``$json.body.field`` in n8n, the keys of the
Zapier sample) is a field of that schema version. ``bridge check`` reports the problems as
``file:line: what (hint)``.

``bridge send-sample URL`` maps a shipped sample through the current mapping and posts the
flat event to a Make / n8n / Zapier catch-hook, so the editor learns the fields.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import requests

from . import samples, schema
from .destinations import Destination
from .errors import ConfigError, MappingError
from .events import new_event_id
from .validate import Problems, suggest

MANIFEST = "manifest.json"
TOOLS = ("make", "n8n", "zapier")

# schema version -> (its fields and their JSON types, the fields that are never null)
SCHEMAS: dict[int, tuple[Mapping[str, str], tuple[str, ...]]] = {
    1: (schema.FIELDS, schema.NOT_NULL),
}

# Make modules and the versions seen in real exports: anything else may not import.
MAKE_MODULES = {
    "gateway:CustomWebHook": 1,
    "gateway:WebhookRespond": 1,
    "builtin:BasicRouter": 1,
    "google-sheets:addRow": 2,
    "http:ActionSendData": 3,
    "datastore:AddRecord": 1,
}
MAKE_WEBHOOK = "gateway:CustomWebHook"
N8N_WEBHOOK = "n8n-nodes-base.webhook"

# The version every blueprint states inside itself (scenario / workflow name, notes, guide).
MARKER = re.compile(r"blueprint ([a-z0-9][a-z0-9-]*) v(\d+), job event schema v(\d+)")
MAKE_EXPRESSION = re.compile(r"\{\{(.*?)\}\}")
MAKE_WEBHOOK_FIELD = re.compile(r"(?<![\w.])1\.([A-Za-z_]\w*)")  # 1.job_id, not 21.x or a.1.x
N8N_BODY_FIELD = re.compile(r"\bjson\.body(?:\.([A-Za-z_]\w*)|\[\\?[\"']([^\"'\\]+)\\?[\"']\])")
JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "boolean": bool}


# -- the checker ----------------------------------------------------------------------------

def problems(root: Path) -> list[ConfigError]:
    """Every problem of the blueprints listed in ``root/manifest.json`` (``root`` is the
    ``blueprints`` folder; files are reported relative to its parent, the repository)."""
    root = Path(root).resolve()
    repo = root.parent
    manifest_path = root / MANIFEST
    where = _relative(manifest_path, repo)
    found = Problems(where)
    if not manifest_path.is_file():
        found.add("the blueprint manifest is missing", None,
                  "list every blueprint in it: tool, file, version, schema_version")
        return found.errors
    text = manifest_path.read_text(encoding="utf-8")
    try:
        manifest = json.loads(text)
    except ValueError as err:
        found.add(f"not valid JSON: {_json_error(err)}", getattr(err, "lineno", None))
        return found.errors
    entries = manifest.get("blueprints") if isinstance(manifest, dict) else None
    if not isinstance(entries, list):
        found.add("the manifest must be an object with a 'blueprints' list", 1)
        return found.errors
    errors = list(found.errors)
    listed: set[Path] = set()
    for index, entry in enumerate(entries):
        errors.extend(_check_entry(entry, index, root, repo, text, where, listed))
    for path in sorted(_blueprint_files(root)):
        if path.resolve() not in listed:
            errors.append(ConfigError(
                f"{_relative(path, root)} is not listed in the manifest", where, None,
                "add it to blueprints/manifest.json (tool, file, version, schema_version) "
                "or remove it"))
    return errors


def _check_entry(entry: Any, index: int, root: Path, repo: Path, manifest_text: str,
                 where: str, listed: set[Path]) -> list[ConfigError]:
    found = Problems(where)
    if not isinstance(entry, dict):
        found.add(f"blueprint {index + 1} of the manifest must be an object", None)
        return found.errors
    file = entry.get("file")
    line = _line_of(manifest_text, f'"file": {json.dumps(file)}') if isinstance(file, str) \
        else None
    tool, version, schema_version = (entry.get(k) for k in ("tool", "version", "schema_version"))
    if tool not in TOOLS:
        found.add(f"blueprint {index + 1}: 'tool' must be one of {', '.join(TOOLS)}", line,
                  suggest(str(tool), TOOLS))
    if not isinstance(file, str) or not file:
        found.add(f"blueprint {index + 1}: 'file' is missing", line)
    if not _is_count(version):
        found.add(f"blueprint {index + 1}: 'version' must be a whole number from 1", line)
    if not _is_count(schema_version):
        found.add(f"blueprint {index + 1}: 'schema_version' must be a whole number from 1",
                  line)
    elif schema_version not in SCHEMAS:
        known = ", ".join(str(v) for v in SCHEMAS)
        found.add(f"{file}: unknown job event schema version {schema_version}", line,
                  f"this bridge knows schema version(s) {known}")
    if not isinstance(entry.get("flow"), str) or not entry.get("flow"):
        found.add(f"blueprint {index + 1}: 'flow' is missing (e.g. job-log)", line)
    if not isinstance(file, str) or not file:
        return found.errors
    path = (root / file).resolve()
    if not path.is_relative_to(root):
        found.add(f"{file}: the file must be inside the blueprints folder", line)
        return found.errors
    if path in listed:
        found.add(f"{file} is listed twice", line)
        return found.errors
    listed.add(path)
    if found:  # the entry itself is wrong: its file cannot be checked against it
        return found.errors
    if not path.is_file():
        found.add(f"{file}: file not found", line, "fix the path or remove the entry")
        return found.errors
    if f".v{version}." not in path.name:
        found.add(f"{file}: the file name must carry its version (.v{version}.)", line,
                  f"rename it, e.g. {_versioned_name(path.name, version)}")
    schema_file = root / "schema" / f"job-event.v{schema_version}.schema.json"
    if not schema_file.is_file():
        found.add(f"{file}: the schema it expects is missing: {_relative(schema_file, repo)}",
                  line, "run 'bridge schema --write'")
    checker = Problems(_relative(path, repo))
    _check_file(entry, path, checker)
    return found.errors + checker.errors


def _check_file(entry: dict, path: Path, found: Problems) -> None:
    text = path.read_text(encoding="utf-8")
    tool = entry["tool"]
    fields, not_null = SCHEMAS[entry["schema_version"]]
    if path.suffix == ".md":
        _check_markers(text, entry, found)
        return
    try:
        data = json.loads(text)
    except ValueError as err:
        found.add(f"not valid JSON: {_json_error(err)}", getattr(err, "lineno", None),
                  "re-export it from the tool, or fix the JSON")
        return
    if tool == "make":
        if _check_make(data, text, found):
            _check_markers(text, entry, found)
            _check_references(text, _make_references, fields, "{{1.%s}}", found)
    elif tool == "n8n":
        if _check_n8n(data, text, entry, found):
            _check_markers(text, entry, found)
            _check_references(text, _n8n_references, fields, "$json.body.%s", found)
    else:
        _check_sample(data, text, entry, fields, not_null, found)


def _check_markers(text: str, entry: dict, found: Problems) -> None:
    """The file says which blueprint, version and schema version it is, as the manifest does."""
    wanted = (entry["flow"], entry["version"], entry["schema_version"])
    expected = f"blueprint {wanted[0]} v{wanted[1]}, job event schema v{wanted[2]}"
    markers = [(n, m) for n, line in enumerate(text.splitlines(), 1)
               for m in MARKER.finditer(line)]
    if not markers:
        found.add("the file does not say its version", None,
                  f"put '[{expected}]' in its name (or heading)")
    for number, match in markers:
        said = (match.group(1), int(match.group(2)), int(match.group(3)))
        if said != wanted:
            found.add(f"the file says '{match.group(0)}' but the manifest says '{expected}'",
                      number, "change one of them so they agree")


def _check_references(text: str, references, fields: Mapping[str, str], form: str,
                      found: Problems) -> None:
    for number, line in enumerate(text.splitlines(), 1):
        for name in dict.fromkeys(references(line)):
            if name not in fields:
                hint = suggest(name, fields) or "see docs/SCHEMA.md for the fields"
                found.add(f"{form % name} is not a field of the job event schema", number, hint)


def _make_references(line: str) -> Iterator[str]:
    for expression in MAKE_EXPRESSION.finditer(line):
        for match in MAKE_WEBHOOK_FIELD.finditer(expression.group(1)):
            yield match.group(1)


def _n8n_references(line: str) -> Iterator[str]:
    for match in N8N_BODY_FIELD.finditer(line):
        yield match.group(1) or match.group(2)


# -- Make -----------------------------------------------------------------------------------

def _check_make(data: Any, text: str, found: Problems) -> bool:
    """A Make blueprint: name, flow (modules with id, module, version) and metadata."""
    if not isinstance(data, dict):
        found.add("a Make blueprint must be a JSON object with name, flow and metadata", 1)
        return False
    ok = True
    for key, kind, wanted in (("name", str, "text"), ("flow", list, "a list of modules"),
                              ("metadata", dict, "an object")):
        if not isinstance(data.get(key), kind) or not data.get(key):
            found.add(f"'{key}' is missing or not {wanted}", _line_of(text, f'"{key}"') or 1,
                      "export the scenario again with Export Blueprint")
            ok = False
    if not ok:
        return False
    modules = list(_make_modules(data["flow"], text, found))
    if not modules:
        return False
    seen: set[int] = set()
    for module in modules:
        module_id = module.get("id")
        line = _module_line(text, module_id)
        if module_id in seen:
            found.add(f"module id {module_id} is used twice", line, "give each module its own id")
        seen.add(module_id)
        name, version = module.get("module"), module.get("version")
        if name not in MAKE_MODULES:
            found.add(f"module {module_id}: '{name}' is not a module seen in real Make exports",
                      line, suggest(str(name), MAKE_MODULES)
                      or f"known: {', '.join(MAKE_MODULES)}")
        elif version != MAKE_MODULES[name]:
            found.add(f"module {module_id}: {name} has version {version}; real exports have "
                      f"version {MAKE_MODULES[name]}", line)
        parameters = module.get("parameters") or {}
        if isinstance(parameters, dict) and parameters.get("__IMTCONN__") not in (None, ""):
            found.add(f"module {module_id}: a connection of one Make account is saved in the "
                      "blueprint", line, "set __IMTCONN__ to null: the importing user picks theirs")
        if name == "builtin:BasicRouter" and not module.get("routes"):
            found.add(f"module {module_id}: a router needs 'routes'", line)
    first = data["flow"][0] if isinstance(data["flow"][0], dict) else {}
    if first.get("module") != MAKE_WEBHOOK or first.get("id") != 1:
        found.add(f"the first module must be the webhook ({MAKE_WEBHOOK}) with id 1",
                  _module_line(text, first.get("id")),
                  "the job event arrives there and is read as {{1.field}}")
    elif (first.get("parameters") or {}).get("hook") not in (None, ""):
        found.add("the webhook of one Make account is saved in the blueprint",
                  _module_line(text, 1), "set parameters.hook to null: the user picks or adds one")
    return True


def _make_modules(flow: Any, text: str, found: Problems) -> Iterator[dict]:
    """Every module of a flow, routes included; reports modules without id/module/version."""
    if not isinstance(flow, list):
        found.add("a route's 'flow' must be a list of modules", None)
        return
    for position, module in enumerate(flow, 1):
        if not isinstance(module, dict):
            found.add(f"module {position} of a flow is not an object", None)
            continue
        missing = [k for k, kind in (("id", int), ("module", str), ("version", int))
                   if not isinstance(module.get(k), kind) or isinstance(module.get(k), bool)]
        if missing:
            found.add(f"a module has no valid {', '.join(missing)}",
                      _module_line(text, module.get("id")) or _line_of(
                          text, f'"module": {json.dumps(module.get("module"))}'),
                      "every module needs id (number), module (app:name) and version (number)")
            continue
        yield module
        routes = module.get("routes")
        if routes is not None:
            if not isinstance(routes, list):
                found.add(f"module {module['id']}: 'routes' must be a list",
                          _module_line(text, module["id"]))
                continue
            for route in routes:
                yield from _make_modules(route.get("flow") if isinstance(route, dict) else None,
                                         text, found)


def _module_line(text: str, module_id: Any) -> int | None:
    if not isinstance(module_id, int):
        return None
    pattern = re.compile(rf'"id":\s*{module_id}\s*(,|$|\}})')
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.search(line):
            return number
    return None


# -- n8n ------------------------------------------------------------------------------------

def _check_n8n(data: Any, text: str, entry: dict, found: Problems) -> bool:
    """An n8n workflow: name, nodes, connections between existing nodes, a POST webhook."""
    if not isinstance(data, dict):
        found.add("an n8n workflow must be a JSON object with name, nodes and connections", 1)
        return False
    ok = True
    for key, kind, wanted in (("name", str, "text"), ("nodes", list, "a list of nodes"),
                              ("connections", dict, "an object keyed by node name")):
        if not isinstance(data.get(key), kind) or (key != "connections" and not data.get(key)):
            found.add(f"'{key}' is missing or not {wanted}", _line_of(text, f'"{key}"') or 1,
                      "download the workflow again (… → Download)")
            ok = False
    if not ok:
        return False
    if not isinstance(data.get("id"), str) or not data["id"]:
        found.add("the workflow has no 'id'", 1,
                  "give it a fixed id so 'n8n import:workflow' updates the same workflow")
    names: list[str] = []
    for position, node in enumerate(data["nodes"], 1):
        if not isinstance(node, dict):
            found.add(f"node {position} is not an object", None)
            continue
        name = node.get("name")
        line = _line_of(text, f'"name": {json.dumps(name)}') if isinstance(name, str) else None
        missing = [k for k in ("name", "type", "typeVersion", "position", "parameters")
                   if k not in node]
        if missing:
            found.add(f"node {position} ({name or 'no name'}) has no {', '.join(missing)}", line)
        if isinstance(name, str):
            if name in names:
                found.add(f"two nodes are named '{name}'", line, "node names must be unique")
            names.append(name)
        if node.get("credentials"):
            found.add(f"node '{name}' carries credentials of one n8n instance", line,
                      "remove 'credentials': the importing user sets their own")
    for source, outputs in data["connections"].items():
        line = _line_of(text, f"{json.dumps(source)}: {{")
        if source not in names:
            found.add(f"a connection starts at '{source}', which is not a node", line,
                      suggest(source, names) or f"nodes: {', '.join(names)}")
        for target in _connection_targets(outputs):
            if target not in names:
                found.add(f"'{source}' connects to '{target}', which is not a node",
                          _line_of(text, f'"node": {json.dumps(target)}') or line,
                          suggest(str(target), names) or f"nodes: {', '.join(names)}")
    webhooks = [n for n in data["nodes"] if isinstance(n, dict) and n.get("type") == N8N_WEBHOOK]
    if not webhooks:
        found.add(f"the workflow has no Webhook node ({N8N_WEBHOOK})", 1,
                  "the bridge posts the job event to a Webhook node")
    for node in webhooks:
        parameters = node.get("parameters") if isinstance(node.get("parameters"), dict) else {}
        line = _line_of(text, f'"name": {json.dumps(node.get("name"))}')
        if parameters.get("httpMethod") != "POST":
            found.add(f"Webhook node '{node.get('name')}' must take POST (httpMethod: POST)",
                      _line_of(text, '"httpMethod"') or line,
                      "n8n's default is GET; the bridge posts")
        if not parameters.get("path"):
            found.add(f"Webhook node '{node.get('name')}' has no fixed 'path'", line,
                      "a fixed path keeps the production URL the same after every import")
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    for key, wanted in (("bridgeBlueprintVersion", entry["version"]),
                        ("jobEventSchemaVersion", entry["schema_version"])):
        if key in meta and meta[key] != wanted:
            found.add(f"meta.{key} is {meta[key]!r} but the manifest says {wanted}",
                      _line_of(text, f'"{key}"'), "change one of them so they agree")
    return True


def _connection_targets(outputs: Any) -> Iterator[Any]:
    if not isinstance(outputs, dict):
        return
    for branches in outputs.values():
        for branch in branches if isinstance(branches, list) else []:
            for link in branch if isinstance(branch, list) else []:
                if isinstance(link, dict):
                    yield link.get("node")


# -- Zapier sample --------------------------------------------------------------------------

def _check_sample(data: Any, text: str, entry: dict, fields: Mapping[str, str],
                  not_null: tuple[str, ...], found: Problems) -> None:
    """The sample event: every key of the schema, nothing else (but x_…), the right types."""
    if not isinstance(data, dict):
        found.add("the sample must be one flat JSON object (a job event)", 1)
        return
    missing = [name for name in fields if name not in data]
    if missing:
        found.add(f"the sample lacks {len(missing)} field(s) of schema v"
                  f"{entry['schema_version']}: {', '.join(missing)}", 1,
                  "every key is always present (null when empty); regenerate it with "
                  "scripts/zapier_sample.py")
    for key, value in data.items():
        line = _line_of(text, f"{json.dumps(key)}:")
        if key not in fields:
            if not schema.CUSTOM_KEY.match(key):
                found.add(f"'{key}' is not a field of the job event schema", line,
                          suggest(key, fields) or "see docs/SCHEMA.md for the fields")
            continue
        if value is None:
            if key in not_null:
                found.add(f"'{key}' is never null in a job event", line)
            continue
        kind = fields[key]
        if isinstance(value, bool) != (kind == "boolean") or not isinstance(
                value, JSON_TYPES.get(kind, object)):
            found.add(f"'{key}' must be {kind} or null, not {json.dumps(value)[:40]}", line)
    if "schema_version" in data and data["schema_version"] != entry["schema_version"]:
        found.add(f"the sample has schema_version {data['schema_version']!r} but the manifest "
                  f"says {entry['schema_version']}", _line_of(text, '"schema_version"'))


# -- helpers --------------------------------------------------------------------------------

def _blueprint_files(root: Path) -> Iterator[Path]:
    """The JSON files of the tool folders (each one must be in the manifest)."""
    for tool in TOOLS:
        folder = root / tool
        if folder.is_dir():
            yield from folder.rglob("*.json")


def _line_of(text: str, needle: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return number
    return None


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def _json_error(err: ValueError) -> str:
    return getattr(err, "msg", None) or str(err)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _versioned_name(name: str, version: Any) -> str:
    stem, dot, rest = name.partition(".")
    return f"{stem}.v{version}.{rest}" if dot else f"{name}.v{version}"


# -- sample events and `bridge send-sample` -------------------------------------------------

DEFAULT_SOURCE = "ratioready"


def sample_event(settings, mappings, source: str, sample_name: str | None = None,
                 event_id: str | None = None, received_at: float | None = None
                 ) -> dict[str, Any]:
    """The flat job event a shipped sample of ``source`` becomes with the current mapping.
    Raises click.ClickException when there is no such source, mapping or sample, when the
    mapping fails, or when no rule matches (the event would be filtered)."""
    if source not in settings.sources:
        raise click.ClickException(f"unknown source '{source}'; sources in {settings.path}: "
                                   f"{', '.join(settings.sources) or 'none'}")
    mapping = mappings.get(source)
    if mapping is None:
        raise click.ClickException(f"source '{source}' has no mapping; create "
                                   f"mappings/{source}.yaml")
    profile = settings.sources[source].profile.name
    profile = profile if samples.names(profile) else source
    try:
        payload = json.loads(samples.read(profile, sample_name))
    except LookupError as err:
        raise click.ClickException(str(err)) from None
    received = time.time() if received_at is None else received_at
    try:
        result = mapping.apply(payload, event_id or new_event_id(received), source, received)
    except MappingError as err:
        raise click.ClickException(f"mapping failed: {err}") from None
    if result.event is None:
        raise click.ClickException(
            f"the sample '{sample_name or samples.DEFAULTS.get(profile)}' is filtered by "
            f"{mapping.file} (no rule matched; tried: {', '.join(result.tried)}); pick "
            "another with --sample")
    return result.event


@click.command("send-sample")
@click.argument("url")
@click.option("--source", default=DEFAULT_SOURCE, show_default=True,
              help="Source whose shipped sample and mapping make the event.")
@click.option("--sample", "sample_name",
              help="Name of a shipped sample [default: the source's most common event, "
                   "wall_art_completed for ratioready]; see 'bridge send-test SOURCE --list'.")
@click.option("--timeout", type=float, default=20, show_default=True, help="Seconds to wait.")
def send_sample(url: str, source: str, sample_name: str | None, timeout: float) -> None:
    """POST a sample job event (a shipped sample through the current mapping) straight to a
    Make / n8n / Zapier catch-hook URL, so the tool's editor learns the fields.

    Make: click "Re-determine data structure" on the webhook, then run this. n8n: use the
    test URL after "Execute workflow", or the production URL of an active workflow.
    Zapier: run this, then "Test trigger" in the Catch Hook step."""
    from .cli import mappings_or_exit, settings_or_exit

    if not url.startswith(("http://", "https://")):
        raise click.BadParameter("give the full hook URL, starting with https://",
                                 param_hint="URL")
    settings = settings_or_exit()
    mappings = mappings_or_exit(settings)
    event = sample_event(settings, mappings, source, sample_name)
    configured = next((d for d in settings.destinations.values() if d.url == url), None)
    destination = configured or Destination(name="send-sample", kind="http", url=url)
    body, headers = destination.request(event)
    if configured:
        click.echo(f"# using the headers of destination '{configured.name}'", err=True)
    try:
        response = requests.post(url, data=body, headers=headers, timeout=timeout,
                                 allow_redirects=False)
    except requests.RequestException as err:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise click.ClickException(f"cannot reach {url}: {text}") from None
    click.echo(f"sent {event['event_type']} {event['event_id']} ({source}, "
               f"{sum(v is not None for v in event.values())} of {len(event)} fields set)")
    click.echo(f"POST {url} -> {response.status_code} {response.text.strip()[:500]}")
    if not response.ok:
        sys.exit(1)
