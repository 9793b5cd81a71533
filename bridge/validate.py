"""Small typed readers for YAML sections that collect every problem with its line.

Used by the config, profile and mapping loaders so that ``bridge check`` reports all
problems of a file at once, each as ``file:line: what (hint)``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError
from .yamlfile import LineDict, LineList

_MISSING = object()

TYPE_NAMES = {str: "text", int: "a whole number", float: "a number", bool: "true or false",
              dict: "a section (key: value lines)", list: "a list (lines starting with '- ')"}


class Problems:
    """Collects ConfigErrors for one file."""

    def __init__(self, file: str):
        self.file = file
        self.errors: list[ConfigError] = []

    def add(self, message: str, line: int | None, hint: str | None = None) -> None:
        self.errors.append(ConfigError(message, self.file, line, hint))

    def extend(self, errors: Iterable[ConfigError]) -> None:
        self.errors.extend(errors)

    def __bool__(self) -> bool:
        return bool(self.errors)


def line_of(container: Any, key: Any = None) -> int | None:
    if isinstance(container, LineDict):
        return container.line_of(key) if key is not None else container.line
    if isinstance(container, LineList):
        return container.line_of(key) if key is not None else container.line
    return None


def suggest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def check_keys(section: Any, allowed: Iterable[str], where: str, problems: Problems) -> None:
    """Report keys the section does not know, with the closest known key as a hint."""
    if not isinstance(section, dict):
        return
    allowed = list(allowed)
    for key in section:
        if key not in allowed:
            hint = suggest(key, allowed) or f"known keys here: {', '.join(allowed)}"
            problems.add(f"unknown key '{key}' in {where}", line_of(section, key), hint)


def get(section: Any, key: str, kind: type | tuple[type, ...], problems: Problems,
        where: str, default: Any = None, required: bool = False) -> Any:
    """Read ``section[key]`` checking its type; whole numbers given as text (from
    ``${VAR}``) are accepted where a number is expected."""
    value = section.get(key, _MISSING) if isinstance(section, dict) else _MISSING
    if value is _MISSING or value is None:
        if required:
            problems.add(f"'{key}' is missing in {where}", line_of(section))
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (int in kinds or float in kinds) and isinstance(value, str):
        value = _number(value)
        if value is None:
            problems.add(f"'{key}' in {where} must be {TYPE_NAMES[kinds[0]]}",
                         line_of(section, key))
            return default
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds) or (float in kinds and isinstance(value, int))
    if not ok:
        wanted = " or ".join(TYPE_NAMES.get(k, k.__name__) for k in kinds)
        problems.add(f"'{key}' in {where} must be {wanted}", line_of(section, key))
        return default
    return value


def _number(text: str) -> int | float | None:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None
