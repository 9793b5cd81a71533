"""YAML mappings: how a provider's payload becomes one flat job event (schema v1).

A mapping file has shared ``fields`` and a list of ``rules``; the first rule whose
``when`` holds gives the ``event_type`` and adds its own ``fields``. No rule → the event
is filtered (stored, not forwarded). A field is a JMESPath expression over the payload,
or a small section using the helpers no-code data needs::

    job_id: data.job_id                              # a path (JMESPath)
    status: {from: status, map: {complete: completed}}
    asset_url: {from: assets.download_urls, spread: 10}   # asset_url_1 … asset_url_10
    asset_urls: {from: assets.download_urls, join: "\\n"}
    asset_count: {from: assets.download_urls, count: true}
    folder_url: {from: assets.drive_share_link, default: null}
    job_type: {value: try_on}                        # a fixed value
    summary: {template: "{job_type} job {job_id} completed"}

Everything is checked when the file is loaded (``bridge check``), each problem reported
as ``file:line: what (hint)``. At run time a failure for one event raises MappingError.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.functions
import jmespath.visitor

from . import schema
from .errors import ConfigError, ConfigErrors, MappingError
from .validate import Problems, check_keys, line_of, suggest
from .yamlfile import LineDict, LineList, load_yaml_file

log = logging.getLogger("bridge.mapping")

FILE_KEYS = ("source", "schema_version", "description", "fields", "rules")
RULE_KEYS = ("name", "when", "event_type", "fields")
SPEC_KEYS = ("from", "value", "template", "default", "spread", "join", "count", "map")
EVENT_TYPE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)+$")
SIMPLE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]+)\}")
_UNSENDABLE = re.compile("[\x00\ud800-\udfff]")

Getter = Callable[[Any], Any]
# A compiled field writes one or more output keys into the event being built.
Writer = Callable[[Any, dict], None]


@dataclass(frozen=True)
class Rule:
    name: str
    when: Getter | None
    event_type: str
    writers: tuple[Writer, ...]
    line: int


@dataclass(frozen=True)
class Result:
    """A mapped event, or ``event is None`` when no rule matched (filtered)."""

    event: dict[str, Any] | None
    rule: str | None
    tried: tuple[str, ...] = ()


@dataclass
class Mapping:
    file: str
    rules: tuple[Rule, ...]
    shared: tuple[Writer, ...]
    mtime: float = 0.0

    def apply(self, payload: Any, event_id: str, source: str, received_at: float) -> Result:
        """Map one payload. Raises MappingError (with file:line) if a field fails."""
        tried = []
        for rule in self.rules:
            tried.append(rule.name)
            if rule.when is not None and not _truthy(self._run(rule.when, payload, rule)):
                continue
            event = schema.blank_event()
            for writer in (*self.shared, *rule.writers):
                writer(payload, event)
            event.update(schema_version=schema.SCHEMA_VERSION, event_id=event_id,
                         source=source, event_type=rule.event_type,
                         received_at=iso_time(received_at))
            return Result(event, rule.name, tuple(tried))
        return Result(None, None, tuple(tried))

    def _run(self, getter: Getter, payload: Any, rule: Rule) -> Any:
        try:
            return getter(payload)
        except MappingError:
            raise
        except Exception as err:  # noqa: BLE001 - any expression failure is this event's
            raise MappingError(f"{self.file}:{rule.line}: 'when' of rule '{rule.name}' "
                               f"failed: {_first_line(err)}") from None


def iso_time(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _truthy(value: Any) -> bool:
    # JMESPath's idea of truth: null, false, "", [] and {} are false (0 is true, and
    # 0 == False in Python, so false is tested by identity)
    return not (value is None or value is False or value in ("", [], {}))


def _first_line(err: Exception) -> str:
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__


# -- loading and checking ------------------------------------------------------------------

def load_mapping(path: str | os.PathLike) -> Mapping:
    """Load and check one mapping file; raise ConfigErrors listing every problem."""
    filename = str(path)
    try:
        data = load_yaml_file(path)
        mtime = os.stat(path).st_mtime
    except ConfigError as err:
        raise ConfigErrors([err]) from None
    problems = Problems(filename)
    mapping = _compile(data, filename, problems)
    if problems or mapping is None:
        raise ConfigErrors(problems.errors or [ConfigError("invalid mapping", filename)])
    mapping.mtime = mtime
    return mapping


def _compile(data: Any, filename: str, problems: Problems) -> Mapping | None:
    if not isinstance(data, LineDict):
        problems.add("a mapping file must be a section with 'rules' (and usually 'fields')",
                     line_of(data) or 1, "see mappings/ratioready.yaml for an example")
        return None
    check_keys(data, FILE_KEYS, "the mapping", problems)
    version = data.get("schema_version", schema.SCHEMA_VERSION)
    if version != schema.SCHEMA_VERSION:
        problems.add(f"schema_version {version!r} is not supported",
                     line_of(data, "schema_version"),
                     f"this bridge produces schema_version {schema.SCHEMA_VERSION}")
    shared = _writers(data.get("fields"), data, "fields", filename, problems)
    rules = data.get("rules")
    if not isinstance(rules, LineList) or not rules:
        problems.add("'rules' must be a list with at least one rule", line_of(data, "rules"),
                     "each rule starts with '- when: …' and has an event_type")
        return None
    compiled = [_rule(rule, rules, i, filename, problems) for i, rule in enumerate(rules)]
    return Mapping(filename, tuple(r for r in compiled if r), shared)


def _rule(rule: Any, rules: LineList, index: int, filename: str,
          problems: Problems) -> Rule | None:
    line = rules.line_of(index)
    if not isinstance(rule, LineDict):
        problems.add(f"rule {index + 1} must be a section with 'when', 'event_type' and "
                     "'fields'", line, "e.g. - when: \"status == 'completed'\"")
        return None
    name = str(rule.get("name") or f"rule {index + 1}")
    check_keys(rule, RULE_KEYS, f"rule '{name}'", problems)
    when = None
    if "when" in rule:
        if not isinstance(rule["when"], str):
            problems.add(f"'when' of rule '{name}' must be an expression in quotes",
                         rule.line_of("when"), "e.g. when: \"status == 'completed'\"")
        else:
            when = _expression(rule["when"], rule.line_of("when"), filename, problems)
    event_type = rule.get("event_type")
    if not isinstance(event_type, str) or not EVENT_TYPE.match(event_type):
        problems.add(f"rule '{name}' needs an event_type: a dotted lowercase name",
                     rule.line_of("event_type") if "event_type" in rule else line,
                     "e.g. job.completed, job.failed, image.started")
        event_type = "invalid"
    writers = _writers(rule.get("fields"), rule, "fields", filename, problems)
    return Rule(name, when, event_type, writers, line)


def _writers(fields: Any, parent: LineDict, key: str, filename: str,
             problems: Problems) -> tuple[Writer, ...]:
    if fields is None:
        return ()
    if not isinstance(fields, LineDict):
        problems.add("'fields' must be a section of 'output_key: expression' lines",
                     parent.line_of(key), "e.g. job_id: data.job_id, one per line")
        return ()
    writers = []
    for name, spec in fields.items():
        writer = _field(str(name), spec, fields.line_of(name), filename, problems)
        if writer is not None:
            writers.append(writer)
    return tuple(writers)


def _field(name: str, spec: Any, line: int, filename: str, problems: Problems) -> Writer | None:
    if isinstance(spec, str):
        spec = LineDict({"from": spec})
        spec.line, spec.key_lines = line, {"from": line}
    elif not isinstance(spec, LineDict):
        problems.add(f"field '{name}' must be an expression in quotes or a section with "
                     "'from', 'value' or 'template'", line,
                     "to set a fixed value write {value: …}")
        return None
    check_keys(spec, SPEC_KEYS, f"field '{name}'", problems)
    sources = [k for k in ("from", "value", "template") if k in spec]
    if len(sources) != 1:
        problems.add(f"field '{name}' needs exactly one of 'from', 'value' or 'template'", line,
                     "from reads the payload, value is fixed, template makes a text")
        return None
    spread = spec.get("spread")
    if spread is not None:
        return _spread_field(name, spec, line, filename, problems)
    if not _check_output_key(name, line, problems):
        return None
    getter = _source_getter(spec, sources[0], filename, problems)
    getter = _modifiers(getter, spec, name, problems)
    if getter is None:
        return None
    kind = schema.FIELDS.get(name)
    where = f"{filename}:{line}"

    def write(payload: Any, event: dict) -> None:
        try:
            value = getter(payload)
        except MappingError:
            raise
        except Exception as err:  # noqa: BLE001
            raise MappingError(f"{where}: field '{name}' failed: {_first_line(err)}") from None
        event[name] = coerce(name, kind, value, where)

    return write


def _spread_field(name: str, spec: LineDict, line: int, filename: str,
                  problems: Problems) -> Writer | None:
    count = spec.get("spread")
    slots = schema.numbered_slots(name)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        problems.add(f"'spread' of field '{name}' must be a whole number of fields",
                     spec.line_of("spread"), "e.g. spread: 10 writes name_1 … name_10")
        return None
    if slots == 0 and not schema.CUSTOM_KEY.match(name):
        hint = suggest(name, [k.rsplit("_", 1)[0] for k in schema.FIELDS if k[-1].isdigit()])
        problems.add(f"'{name}' has no numbered fields in the schema", line,
                     hint or "spread writes name_1 … name_N; use asset_url or preview_url")
        return None
    if slots and count > slots:
        problems.add(f"spread: {count} is more than the schema has ({name}_1 … {name}_{slots})",
                     spec.line_of("spread"), f"use spread: {slots} or less; the full list "
                     f"can go in a joined text field")
        return None
    for other in ("join", "count", "map", "template", "value"):
        if other in spec:
            problems.add(f"field '{name}' cannot use '{other}' together with 'spread'",
                         spec.line_of(other), f"use another field for '{other}'")
            return None
    getter = _source_getter(spec, "from", filename, problems)
    if getter is None:
        return None
    default = spec.get("default")
    where = f"{filename}:{line}"
    keys = [f"{name}_{i}" for i in range(1, count + 1)]
    kind = schema.FIELDS.get(keys[0], "string")

    def write(payload: Any, event: dict) -> None:
        try:
            items = getter(payload)
        except Exception as err:  # noqa: BLE001
            raise MappingError(f"{where}: field '{name}' failed: {_first_line(err)}") from None
        if items is None:
            items = []
        elif not isinstance(items, list):
            items = [items]
        for index, key in enumerate(keys):
            value = items[index] if index < len(items) else None
            event[key] = coerce(key, kind, default if value in (None, "") else value, where)

    return write


def _check_output_key(name: str, line: int, problems: Problems) -> bool:
    if name in schema.SET_BY_BRIDGE:
        problems.add(f"'{name}' is set by the bridge and cannot be mapped", line,
                     "event_type comes from the rule's event_type")
        return False
    if not schema.is_output_key(name):
        hint = suggest(name, schema.FIELDS)
        problems.add(f"'{name}' is not a field of the job event schema (v1)", line,
                     hint or "see docs/SCHEMA.md; custom fields must start with x_")
        return False
    return True


def _source_getter(spec: LineDict, kind: str, filename: str,
                   problems: Problems) -> Getter | None:
    line = spec.line_of(kind)
    if kind == "value":
        value = spec["value"]
        if isinstance(value, (dict, list)):
            problems.add("'value' must be a single text, number, true/false or null", line,
                         "to join a list write it as one text")
            return None
        return lambda payload: value
    if kind == "template":
        return _template(spec["template"], line, filename, problems)
    if not isinstance(spec["from"], str):
        problems.add("'from' must be an expression (a path such as data.job_id)", line,
                     "put it in quotes if it starts with a special character")
        return None
    return _expression(spec["from"], line, filename, problems)


def _modifiers(getter: Getter | None, spec: LineDict, name: str,
               problems: Problems) -> Getter | None:
    if getter is None:
        return None
    if "join" in spec and "count" in spec:
        problems.add(f"field '{name}' cannot use both 'join' and 'count'", spec.line_of("count"),
                     "use two fields, e.g. asset_urls with join and asset_count with count")
        return None
    if "join" in spec:
        separator = spec["join"]
        if not isinstance(separator, str):
            problems.add(f"'join' of field '{name}' must be text", spec.line_of("join"),
                         'e.g. join: "\\n" (one per line) or join: ", "')
            return None
        getter = _join(getter, separator)
    if "count" in spec:
        if spec["count"] is not True:
            problems.add(f"'count' of field '{name}' must be true", spec.line_of("count"),
                         "write count: true (without quotes), or remove it")
            return None
        getter = _count(getter)
    if "map" in spec:
        table = spec["map"]
        if not isinstance(table, dict):
            problems.add(f"'map' of field '{name}' must be a section of 'from: to' lines",
                         spec.line_of("map"), "e.g. map: {complete: completed}")
            return None
        getter = _lookup(getter, {_text(k): v for k, v in table.items()})
    if "default" in spec:
        default = spec["default"]
        if isinstance(default, (dict, list)):
            problems.add(f"'default' of field '{name}' must be a single value",
                         spec.line_of("default"), "a text, number, true/false or null")
            return None
        getter = _default(getter, default)
    return getter


def _join(getter: Getter, separator: str) -> Getter:
    def join(payload: Any) -> Any:
        value = getter(payload)
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        return separator.join(_text(item) for item in items if item is not None) or None
    return join


def _count(getter: Getter) -> Getter:
    def count(payload: Any) -> int:
        value = getter(payload)
        if value is None or value == "":
            return 0
        if isinstance(value, list):
            return sum(1 for item in value if item is not None)
        return 1  # one value (e.g. a single output_url) is one item
    return count


def _lookup(getter: Getter, table: dict[str, Any]) -> Getter:
    def lookup(payload: Any) -> Any:
        value = getter(payload)
        return table.get(_text(value), value) if value is not None else None
    return lookup


def _default(getter: Getter, default: Any) -> Getter:
    def with_default(payload: Any) -> Any:
        value = getter(payload)
        return default if value in (None, "") else value
    return with_default


def _expression(text: str, line: int, filename: str, problems: Problems) -> Getter | None:
    if SIMPLE_PATH.match(text):  # the common case, without the JMESPath interpreter
        return _path_getter(text.split("."))
    try:
        compiled = jmespath.compile(text)
    except jmespath.exceptions.JMESPathError as err:
        problems.add(f"invalid expression '{text}': {_first_line(err)}", line,
                     "text values need quotes inside: status == 'completed'; "
                     "syntax: https://jmespath.org")
        return None
    if not _check_functions(compiled.parsed, text, line, problems):
        return None
    tree = compiled.parsed
    return lambda payload: _INTERPRETER.visit(tree, payload)


# One interpreter for every expression: ParsedResult.search() builds a new one per call,
# which is most of the cost of a short expression. It keeps no state between calls.
_INTERPRETER = jmespath.visitor.TreeInterpreter(jmespath.visitor.Options())
_FUNCTIONS = jmespath.functions.Functions.FUNCTION_TABLE


def _check_functions(node: Any, text: str, line: int, problems: Problems) -> bool:
    """JMESPath only finds an unknown function or a wrong number of arguments when it is
    called, i.e. on every event; find them when the file is loaded instead."""
    if not isinstance(node, dict):
        return True
    if node.get("type") == "function_expression":
        name, args = node.get("value"), len(node.get("children", ()))
        spec = _FUNCTIONS.get(name)
        if spec is None:
            problems.add(f"invalid expression '{text}': unknown function {name}()", line,
                         suggest(name, _FUNCTIONS) or "functions: https://jmespath.org/"
                         "specification.html#built-in-functions")
            return False
        signature = spec["signature"]
        variadic = bool(signature) and signature[-1].get("variadic", False)
        if args < len(signature) or (args > len(signature) and not variadic):
            wanted = f"{len(signature)}{' or more' if variadic else ''}"
            problems.add(f"invalid expression '{text}': {name}() takes {wanted} argument(s), "
                         f"not {args}", line, "see https://jmespath.org/specification.html")
            return False
    return all(_check_functions(child, text, line, problems)
               for child in node.get("children", ()))


def _path_getter(keys: list[str]) -> Getter:
    if len(keys) == 1:
        key = keys[0]
        return lambda payload: payload.get(key) if isinstance(payload, dict) else None

    def get(payload: Any) -> Any:
        for key in keys:
            if not isinstance(payload, dict):
                return None
            payload = payload.get(key)
        return payload
    return get


def _template(text: Any, line: int, filename: str, problems: Problems) -> Getter | None:
    if not isinstance(text, str):
        problems.add("'template' must be text with {placeholders}", line,
                     'e.g. template: "{job_type} job {job_id} completed"')
        return None
    pieces: list[str | Getter] = []
    position = 0
    for match in PLACEHOLDER.finditer(text):
        pieces.append(text[position:match.start()])
        if match.group(1) is None:
            pieces.append(match.group(0)[0])  # {{ or }} is a literal brace
        else:
            getter = _expression(match.group(1).strip(), line, filename, problems)
            if getter is None:
                return None
            pieces.append(getter)
        position = match.end()
    pieces.append(text[position:])

    def render(payload: Any) -> str:
        return "".join(p if isinstance(p, str) else _text(p(payload)) for p in pieces)
    return render


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    return str(value)


# -- run-time types ---------------------------------------------------------------------

def coerce(name: str, kind: str | None, value: Any, where: str) -> Any:
    """Fit a value to the schema type of ``name``, or raise MappingError saying why."""
    if value is None:
        return None
    if isinstance(value, str) and (not value.isascii() or "\x00" in value):
        # a lone surrogate (JSON's "\ud800") cannot be encoded, so it could never be sent;
        # a NUL is sent fine but PostgreSQL's jsonb (the admin summary) refuses it
        value = _UNSENDABLE.sub("\ufffd", value)
    if isinstance(value, (dict, list)):
        shape = "a list" if isinstance(value, list) else "an object"
        raise MappingError(
            f"{where}: field '{name}' got {shape}, but job event fields are single values "
            "(use spread, join or count for lists, or a longer path for objects)")
    if isinstance(value, float) and not math.isfinite(value):
        raise MappingError(f"{where}: field '{name}' got {value!r}, which JSON cannot carry")
    if kind in (None, "string"):
        return _text(value) if kind == "string" else value
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise MappingError(f"{where}: field '{name}' must be true or false, got {value!r}")
    number = _as_number(value)
    if number is None:
        raise MappingError(f"{where}: field '{name}' must be a number, got {value!r}")
    if kind == "integer":
        if isinstance(number, float) and not number.is_integer():
            raise MappingError(f"{where}: field '{name}' must be a whole number, got {value!r}")
        if number < 0:
            raise MappingError(f"{where}: field '{name}' is a count and cannot be negative, "
                               f"got {value!r}")
        return int(number)
    return number


def _as_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                number = float(value.strip())
            except ValueError:
                return None
            return number if number == number and abs(number) != float("inf") else None
    return None


# -- the set of mappings in use, reloaded when a file changes -------------------------------

@dataclass
class Mappings:
    """The mapping of each source, reloaded when its file changes on disk (checked at most
    every ``interval`` seconds). An invalid edit keeps the last good mapping and is logged
    with file:line; ``errors`` holds it for the dashboard and the CLI."""

    paths: dict[str, Path]
    interval: float = 2.0
    clock: Callable[[], float] = time.monotonic
    loaded: dict[str, Mapping] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    _checked: dict[str, float] = field(default_factory=dict)

    def load_all(self) -> None:
        """Load every mapping now; raise ConfigErrors with all problems (used at start)."""
        problems: list[ConfigError] = []
        for source, path in self.paths.items():
            try:
                self.loaded[source] = load_mapping(path)
            except ConfigErrors as err:
                problems.extend(err.errors)
            self._checked[source] = self.clock()
        if problems:
            raise ConfigErrors(problems)

    def get(self, source: str) -> Mapping | None:
        path = self.paths.get(source)
        if path is None:
            return None
        now = self.clock()
        if now - self._checked.get(source, float("-inf")) >= self.interval:
            self._checked[source] = now
            self._reload_if_changed(source, path)
        return self.loaded.get(source)

    def _reload_if_changed(self, source: str, path: Path) -> None:
        current = self.loaded.get(source)
        try:
            mtime = os.stat(path).st_mtime
        except OSError as err:
            self._failed(source, f"{path}: cannot read the mapping ({err.strerror}); "
                                 "keeping the last good one")
            return
        if current is not None and mtime == current.mtime:
            return
        try:
            self.loaded[source] = load_mapping(path)
        except ConfigErrors as err:
            self._failed(source, str(err) + "\n(keeping the last good mapping)")
            return
        self.errors.pop(source, None)
        if current is not None:
            log.info("mapping for %s reloaded from %s", source, path)

    def _failed(self, source: str, message: str) -> None:
        if self.errors.get(source) != message:
            log.error("mapping for %s not reloaded: %s", source, message)
        self.errors[source] = message
