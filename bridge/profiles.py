"""Provider profiles: YAML data saying how a provider signs and where its event type and
dedup key live. Shipped profiles are in ``bridge/profiles/``; a source in bridge.yaml
names one and may override any of its keys."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jmespath
import jmespath.exceptions

from .errors import ConfigError
from .signatures import (
    ALGORITHMS,
    ENCODINGS,
    SECRET_ENCODINGS,
    Parts,
    Scheme,
    TimestampRule,
    header_value,
)
from .validate import Problems, check_keys, get, line_of
from .yamlfile import LineDict, load_yaml_file

PROFILE_DIR = Path(__file__).parent / "profiles"
PROFILE_KEYS = ("title", "signature", "timestamp", "event_type", "dedup_key")
SIGNATURE_KEYS = ("header", "algorithm", "encoding", "prefix", "parts", "signed",
                  "secret_prefix", "secret_encoding")
TIMESTAMP_KEYS = ("header", "part", "tolerance", "required")
PARTS_KEYS = ("separator", "pair", "key", "timestamp_key")
MAX_DEDUP_KEY = 200  # longer keys are stored as their SHA-256

Extractor = Callable[[Any, Mapping[str, str]], Any]


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    scheme: Scheme
    event_type: Extractor
    dedup_alternatives: tuple[tuple[Extractor, ...], ...]

    def event_type_of(self, payload: Any, headers: Mapping[str, str]) -> str | None:
        value = self.event_type(payload, headers)
        return None if value is None else _clean(str(value))[:200]

    def dedup_key_of(self, payload: Any, headers: Mapping[str, str], body: bytes) -> str:
        """The first alternative whose parts are all present, joined with ':'; else the
        SHA-256 of the raw body (so an exact re-send is still caught)."""
        for parts in self.dedup_alternatives:
            values = [extract(payload, headers) for extract in parts]
            if all(v is not None and v != "" for v in values):
                key = _clean(":".join(str(v) for v in values))
                if len(key) <= MAX_DEDUP_KEY:
                    return key
                return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()
        return "body-sha256:" + hashlib.sha256(body).hexdigest()


def _clean(text: str) -> str:
    """Text safe for every database (PostgreSQL text cannot hold NUL characters, and no
    driver can encode a lone surrogate, which JSON's "\\ud800" escape gives)."""
    return _UNSAFE.sub("\ufffd", text)


_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def load_profile_data(name: str, problems: Problems, line: int | None) -> LineDict | None:
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        problems.add(f"unknown profile '{name}'", line,
                     f"shipped profiles: {', '.join(available())}")
        return None
    try:
        data = load_yaml_file(path)
    except ConfigError as err:  # a broken profile file: reported with its own file and line
        problems.extend([err])
        return None
    data = data if isinstance(data, LineDict) else LineDict()
    own = Problems(str(path))  # the profile alone first, so its problems name its file
    build_profile(name, data, own)
    if own:
        problems.extend(own.errors)
        return None
    return data


def merge(base: Mapping, override: Mapping) -> LineDict:
    """Deep-merge ``override`` over ``base``: sections merge, other values replace.
    Line numbers of overridden keys point into the overriding file."""
    result = LineDict(base)
    result.line = getattr(override, "line", getattr(base, "line", 0))
    result.key_lines = {**getattr(base, "key_lines", {}), **getattr(override, "key_lines", {})}
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            value = merge(result[key], value)
        result[key] = value
    return result


def build_profile(name: str, data: Mapping, problems: Problems) -> Profile | None:
    """Validate profile data (already merged with a source's overrides) into a Profile."""
    before = len(problems.errors)
    where = f"profile of source '{name}'"
    check_keys(data, PROFILE_KEYS, where, problems)
    scheme = _scheme(data, problems, where)
    event_type = _extractor(get(data, "event_type", str, problems, where, default="type"),
                            data, "event_type", problems)
    dedup = _dedup(data, problems, where)
    if len(problems.errors) > before or scheme is None:
        return None
    title = get(data, "title", str, problems, where, default=name)
    return Profile(name, title, scheme, event_type, dedup)


def _scheme(data: Mapping, problems: Problems, where: str) -> Scheme | None:
    sig = get(data, "signature", dict, problems, where, required=True)
    if sig is None:
        return None
    swhere = f"'signature' of {where}"
    check_keys(sig, SIGNATURE_KEYS, swhere, problems)
    header = get(sig, "header", str, problems, swhere, required=True)
    algorithm = _choice(sig, "algorithm", ALGORITHMS, "sha256", problems, swhere)
    encoding = _choice(sig, "encoding", ENCODINGS, "hex", problems, swhere)
    secret_encoding = _choice(sig, "secret_encoding", SECRET_ENCODINGS, "raw", problems, swhere)
    signed = get(sig, "signed", str, problems, swhere, default="{body}")
    if "{body}" not in signed:
        problems.add(f"'signed' in {swhere} must contain {{body}}", line_of(sig, "signed"),
                     "the signature always covers the raw body, e.g. \"{timestamp}.{body}\"")
    parts = _parts(sig, problems, swhere)
    timestamp = _timestamp(data, problems, where)
    if "{timestamp}" in signed and timestamp is None:
        problems.add(f"'signed' in {swhere} uses {{timestamp}} but there is no 'timestamp'",
                     line_of(sig, "signed"), "add a 'timestamp' section saying where it is")
    if not header:
        return None
    return Scheme(header=header, algorithm=algorithm, encoding=encoding,
                  prefix=get(sig, "prefix", str, problems, swhere, default=""), parts=parts,
                  signed=signed,
                  secret_prefix=get(sig, "secret_prefix", str, problems, swhere, default=""),
                  secret_encoding=secret_encoding, timestamp=timestamp)


def _choice(section: Mapping, key: str, choices: tuple[str, ...], default: str,
            problems: Problems, where: str) -> str:
    value = get(section, key, str, problems, where, default=default)
    if value not in choices:
        problems.add(f"'{key}' in {where} must be one of {', '.join(choices)}",
                     line_of(section, key))
        return default
    return value


def _parts(sig: Mapping, problems: Problems, where: str) -> Parts | None:
    parts = get(sig, "parts", dict, problems, where)
    if parts is None:
        return None
    pwhere = f"'parts' of {where}"
    check_keys(parts, PARTS_KEYS, pwhere, problems)
    separator = get(parts, "separator", str, problems, pwhere, required=True)
    pair = get(parts, "pair", str, problems, pwhere, required=True)
    key = get(parts, "key", str, problems, pwhere, required=True)
    if not (separator and pair and key):
        return None
    return Parts(separator, pair, key, get(parts, "timestamp_key", str, problems, pwhere))


def _timestamp(data: Mapping, problems: Problems, where: str) -> TimestampRule | None:
    ts = get(data, "timestamp", dict, problems, where)
    if ts is None:
        return None
    twhere = f"'timestamp' of {where}"
    check_keys(ts, TIMESTAMP_KEYS, twhere, problems)
    header = get(ts, "header", str, problems, twhere)
    part = get(ts, "part", str, problems, twhere)
    if bool(header) == bool(part):
        problems.add(f"{twhere} needs exactly one of 'header' or 'part'", line_of(ts))
    tolerance = get(ts, "tolerance", int, problems, twhere, default=300)
    if tolerance <= 0:
        problems.add(f"'tolerance' in {twhere} must be a positive number of seconds",
                     line_of(ts, "tolerance"))
    return TimestampRule(header=header, part=part, tolerance=tolerance,
                         required=get(ts, "required", bool, problems, twhere, default=False))


def _dedup(data: Mapping, problems: Problems, where: str) -> tuple[tuple[Extractor, ...], ...]:
    raw = data.get("dedup_key")
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [[raw]]
    if not isinstance(raw, list):
        problems.add(f"'dedup_key' in {where} must be a list of alternatives",
                     line_of(data, "dedup_key"), "e.g. dedup_key: [[job_id, status]]")
        return ()
    alternatives = []
    for index, alternative in enumerate(raw):
        parts = [alternative] if isinstance(alternative, str) else alternative
        if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
            problems.add(f"each alternative of 'dedup_key' in {where} must be a list of paths",
                         line_of(raw, index))
            continue
        alternatives.append(tuple(_extractor(p, raw, index, problems) for p in parts))
    return tuple(alternatives)


def _extractor(expression: str, container: Any, key: Any, problems: Problems) -> Extractor:
    """``header:Name`` reads a request header; anything else is a JMESPath expression
    over the parsed JSON body."""
    if expression.startswith("header:"):
        name = expression[7:].strip()
        return lambda payload, headers: header_value(headers, name)
    try:
        compiled = jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as err:
        problems.add(f"invalid expression '{expression}': {_short(err)}",
                     line_of(container, key), "see https://jmespath.org for the syntax")
        return lambda payload, headers: None

    def search(payload: Any, headers: Mapping[str, str]) -> Any:
        try:
            return compiled.search(payload)
        except jmespath.exceptions.JMESPathError:
            return None

    return search


def _short(err: Exception) -> str:
    return str(err).splitlines()[0]
