"""bridge.yaml: sources (provider profile + secrets) and server settings, validated into
plain objects. Every problem is collected and reported as ``file:line: what (hint)``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, ConfigErrors
from .mapping import Mappings
from .profiles import Profile, build_profile, load_profile_data, merge
from .validate import Problems, check_keys, get, line_of
from .yamlfile import Expanded, LineDict, expand_all, load_yaml_file

DEFAULT_CONFIG = "bridge.yaml"
DEFAULT_DATABASE_URL = "sqlite:///bridge.db"
DEFAULT_MAX_BODY = 1024 * 1024
TOP_KEYS = ("database_url", "max_body_bytes", "sources")
SOURCE_KEYS = ("profile", "secrets", "mapping", "title", "signature", "timestamp",
               "event_type", "dedup_key")
SOURCE_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class Source:
    """A configured sender: ``POST /hooks/<name>`` is verified with ``profile``."""

    name: str
    profile: Profile
    secrets: tuple[str, ...]
    disabled_reason: str | None = None  # set when the source can accept nothing (fail closed)
    mapping: Path | None = None  # its YAML mapping; None: events are stored, not forwarded


@dataclass
class Settings:
    path: str
    database_url: str = DEFAULT_DATABASE_URL
    max_body_bytes: int = DEFAULT_MAX_BODY
    sources: dict[str, Source] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def config_path(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("BRIDGE_CONFIG") or DEFAULT_CONFIG


def load_settings(path: str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load and validate bridge.yaml; raise ConfigErrors listing every problem found."""
    environ = dict(os.environ if environ is None else environ)
    path = path or config_path(environ)
    problems = Problems(path)
    try:
        data = load_yaml_file(path)
    except ConfigError as err:
        raise ConfigErrors([err]) from None
    if data is None:
        data = LineDict()
    if not isinstance(data, dict):
        raise ConfigErrors([ConfigError("the file must be a set of 'key: value' sections",
                                        path, line_of(data))])
    data = expand_all(data, environ)
    check_keys(data, TOP_KEYS, "bridge.yaml", problems)
    settings = Settings(path=path)
    settings.database_url = (get(data, "database_url", str, problems, "bridge.yaml")
                             or environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    settings.max_body_bytes = get(data, "max_body_bytes", int, problems, "bridge.yaml",
                                  default=DEFAULT_MAX_BODY)
    if settings.max_body_bytes <= 0:
        problems.add("'max_body_bytes' must be a positive number of bytes",
                     line_of(data, "max_body_bytes"))
    sources = get(data, "sources", dict, problems, "bridge.yaml", required=True) or {}
    for name, section in sources.items():
        source = _source(str(name), section, sources, problems, settings.warnings,
                         Path(path).resolve().parent)
        if source is not None:
            settings.sources[source.name] = source
    if problems:
        raise ConfigErrors(problems.errors)
    return settings


def _source(name: str, section: object, sources: LineDict, problems: Problems,
            warnings: list[str], base_dir: Path) -> Source | None:
    where = f"source '{name}'"
    if not set(name) <= SOURCE_NAME_CHARS:
        problems.add(f"source name '{name}' can only use a-z, 0-9, '-' and '_'",
                     line_of(sources, name), "it becomes the URL path /hooks/<name>")
        return None
    if not isinstance(section, dict):
        problems.add(f"{where} must be a section with 'profile' and 'secrets'",
                     line_of(sources, name))
        return None
    check_keys(section, SOURCE_KEYS, where, problems)
    profile_name = get(section, "profile", str, problems, where, default=name)
    base = load_profile_data(profile_name, problems, line_of(section, "profile") or
                             line_of(sources, name))
    if base is None:
        return None
    overrides = {k: v for k, v in section.items() if k not in ("profile", "secrets", "mapping")}
    overrides = LineDict(overrides)
    overrides.line, overrides.key_lines = section.line, section.key_lines
    profile = build_profile(name, merge(base, overrides), problems)
    secrets, reason = _secrets(section, where, problems, warnings)
    mapping = _mapping_path(name, section, base_dir, problems, warnings)
    if profile is None:
        return None
    return Source(name=name, profile=profile, secrets=secrets, disabled_reason=reason,
                  mapping=mapping)


def _mapping_path(name: str, section: Mapping, base_dir: Path, problems: Problems,
                  warnings: list[str]) -> Path | None:
    """The source's mapping file: ``mapping:`` if given, else mappings/<name>.yaml beside
    bridge.yaml when it exists. Relative paths are relative to bridge.yaml's folder."""
    given = get(section, "mapping", str, problems, f"source '{name}'")
    path = base_dir / (given or f"mappings/{name}.yaml")
    if path.is_file():
        return path
    if given:
        problems.add(f"mapping file {path} does not exist", line_of(section, "mapping"),
                     "the path is relative to the folder of bridge.yaml")
    else:
        warnings.append(f"source '{name}' has no mapping ({path} does not exist): its events "
                        "are stored but not forwarded")
    return None


def _secrets(section: Mapping, where: str, problems: Problems,
             warnings: list[str]) -> tuple[tuple[str, ...], str | None]:
    raw = section.get("secrets")
    items = [raw] if isinstance(raw, str) else raw
    if items is None:
        items = []
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        problems.add(f"'secrets' in {where} must be a list of texts",
                     line_of(section, "secrets"), "e.g. secrets: [\"${MY_WEBHOOK_SECRET}\"]")
        return (), "its secrets are not valid"
    secrets = tuple(s for s in items if s.strip())
    if secrets:
        for secret in secrets:
            if not isinstance(secret, Expanded):
                warnings.append(f"{where}: a secret is written in bridge.yaml itself; "
                                "prefer ${VARIABLE} and set it in the environment")
        return secrets, None
    unset = [name for s in items if isinstance(s, Expanded) for name in s.unset]
    named = [name for s in items if isinstance(s, Expanded) for name in s.variables]
    wanted = unset[:1] or named[:1]
    if wanted:
        return (), f"no signing secret is set; set {wanted[0]} to the provider's webhook secret"
    return (), "no signing secret is configured; add 'secrets' to the source in bridge.yaml"


def load_mappings(settings: Settings) -> Mappings:
    """The mappings of every source, loaded and checked; raise ConfigErrors listing every
    problem (the server refuses to start with an invalid mapping)."""
    mappings = Mappings({name: source.mapping for name, source in settings.sources.items()
                         if source.mapping is not None})
    mappings.load_all()
    return mappings
