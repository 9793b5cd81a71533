"""YAML loading that remembers line numbers, and ``${VAR}`` interpolation.

Every error a user can meet in a YAML file is reported as ``file:line: what (hint)``.
PyYAML knows each node's line while composing; ``LineLoader`` keeps it on the dicts and
lists it builds, so the validators further on can point at the exact line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


class LineDict(dict):
    """A dict from YAML that knows the line of itself and of each of its keys (1-based)."""

    line: int = 0
    key_lines: dict

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):
    """A list from YAML that knows the line of itself and of each item (1-based)."""

    line: int = 0
    item_lines: list

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


class LineLoader(yaml.SafeLoader):
    """SafeLoader that builds LineDict / LineList and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LineDict:
        self.flatten_mapping(node)
        result = LineDict()
        result.line = node.start_mark.line + 1
        result.key_lines = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ConfigError("a key must be a plain word", line=key_node.start_mark.line + 1)
            if key in result:
                raise ConfigError(f"'{key}' is given twice", line=key_node.start_mark.line + 1,
                                  hint="remove one of them")
            result[key] = self.construct_object(value_node, deep=True)
            result.key_lines[key] = key_node.start_mark.line + 1
        return result

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ConfigError, yaml.YAMLError, RecursionError):
            raise
        except Exception as err:  # noqa: BLE001 - PyYAML's own errors on odd values
            # a value PyYAML recognises but cannot build: 2024-13-45, !!int abc, 0x_,
            # !!int "" (IndexError), !!timestamp with no value (AttributeError)
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value {node.value!r}: {err}"[:200],
                node.start_mark) from None

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> LineList:
        result = LineList(self.construct_object(child, deep=True) for child in node.value)
        result.line = node.start_mark.line + 1
        result.item_lines = [child.start_mark.line + 1 for child in node.value]
        return result


LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                           LineLoader.construct_mapping)
LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG,
                           LineLoader.construct_sequence)


def load_yaml(text: str, filename: str) -> Any:
    """Parse YAML text; any syntax problem becomes a ConfigError naming file and line."""
    try:
        return yaml.load(text, Loader=LineLoader)  # noqa: S506 - LineLoader is a SafeLoader
    except ConfigError as err:
        err.file = filename
        raise
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else None
        problem = err.problem or err.context or "invalid YAML"
        raise ConfigError(f"YAML syntax error: {problem}", filename, line,
                          _yaml_hint(problem)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"YAML syntax error: {err}", filename) from None
    except RecursionError:
        raise ConfigError("YAML syntax error: nested too deeply", filename,
                          hint="check the brackets") from None


def _yaml_hint(problem: str) -> str:
    if problem.startswith("cannot read the value"):
        return "put the value in quotes if it is text"
    if "tab" in problem or "'\\t'" in problem:  # PyYAML writes a tab as '\t'
        return "indent with spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "a value containing ': ' must be put in quotes"
    if "could not find expected ':'" in problem:
        return "each line inside a section needs 'key: value'; check indentation and quotes"
    if "found character '%' " in problem or "'@'" in problem or "'`'" in problem:
        return "put the value in quotes"
    return "check indentation and quotes on this line and the one above"


def load_yaml_file(path: str | os.PathLike) -> Any:
    """Read and parse a YAML file; a missing or unreadable file is a ConfigError too."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", str(path),
                          hint="check the path, or set BRIDGE_CONFIG") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read file: {err}", str(path)) from None
    return load_yaml(text, str(path))


# ${VAR} or ${VAR:-default}; $${ is a literal ${
_VAR = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Expanded(str):
    """A string that came from ``${...}`` interpolation; ``variables`` names what it read
    and ``unset`` the variables that were not set (so errors can say which to set)."""

    variables: tuple[str, ...] = ()
    unset: tuple[str, ...] = ()


def expand(value: str, environ: Mapping[str, str]) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in one string.

    An unset variable without a default becomes the empty string; an empty variable with
    a default takes the default (as in the shell's ``:-``)."""
    if "${" not in value:
        return value
    names: list[str] = []
    unset: list[str] = []

    def replace(match: re.Match) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        names.append(name)
        current = environ.get(name, "")
        if current:
            return current
        if default is None:
            unset.append(name)
            return ""
        return default

    result = Expanded(_VAR.sub(replace, value))
    result.variables = tuple(names)
    result.unset = tuple(unset)
    return result


def expand_all(value: Any, environ: Mapping[str, str]) -> Any:
    """Interpolate every string inside a loaded YAML tree, keeping line information."""
    if isinstance(value, str):
        return expand(value, environ)
    if isinstance(value, LineDict):
        for key in value:
            value[key] = expand_all(value[key], environ)
        return value
    if isinstance(value, LineList):
        for index, item in enumerate(value):
            value[index] = expand_all(item, environ)
        return value
    return value
