"""bridge.yaml: sources (provider profile + secrets) and server settings, validated into
plain objects. Every problem is collected and reported as ``file:line: what (hint)``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .destinations import (
    DEFAULT_MAX_AGE,
    DEFAULT_REPEAT,
    DEFAULT_SCHEDULE,
    KINDS,
    Destination,
    RetryPolicy,
    parse_duration,
)
from .errors import ConfigError, ConfigErrors
from .mapping import Mappings
from .profiles import PROFILE_KEYS, Profile, build_profile, load_profile_data, merge
from .validate import Problems, check_keys, get, line_of, suggest
from .yamlfile import Expanded, LineDict, expand_all, load_yaml_file

DEFAULT_CONFIG = "bridge.yaml"
DEFAULT_DATABASE_URL = "sqlite:///bridge.db"
DEFAULT_MAX_BODY = 1024 * 1024
TOP_KEYS = ("database_url", "max_body_bytes", "sources", "destinations", "routes", "delivery")
DESTINATION_KEYS = ("kind", "url", "headers", "signing_secret", "timeout", "rate_limit",
                    "concurrency", "retry")
RETRY_KEYS = ("schedule", "repeat", "max_age", "jitter")
ROUTE_KEYS = ("from", "to", "event_types")
DELIVERY_KEYS = ("in_web", "poll_interval", "batch")
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
    destinations: dict[str, Destination] = field(default_factory=dict)
    skipped_destinations: list[str] = field(default_factory=list)  # no URL set: "make (VAR)"
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # source → destinations
    # (source, destination) → the event types that route forwards; absent: every type
    route_filters: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    deliver_in_web: bool = True   # run the delivery worker inside the web process
    poll_interval: float = 1.0    # seconds an idle worker waits before looking again
    batch: int = 20               # most deliveries a worker claims at once per destination
    warnings: list[str] = field(default_factory=list)

    def destinations_for(self, source: str) -> tuple[str, ...]:
        return self.routes.get(source, ())

    def forwards(self, source: str, destination: str, event_type: str) -> bool:
        """Does a route take this mapped event type from source to destination?"""
        allowed = self.route_filters.get((source, destination))
        return allowed is None or event_type in allowed


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
    skipped = _destinations(data, settings, problems)
    _routes(data, settings, skipped, problems)
    _delivery(data, settings, problems)
    if problems:
        raise ConfigErrors(problems.errors)
    return settings


def _destinations(data: LineDict, settings: Settings, problems: Problems) -> set[str]:
    """Read ``destinations``; those whose URL is unset are skipped with one warning."""
    section = get(data, "destinations", dict, problems, "bridge.yaml") or {}
    skipped, unset = set(), []
    for name, spec in section.items():
        where = f"destination '{name}'"
        if not isinstance(spec, dict):
            problems.add(f"{where} must be a section with 'kind' and 'url'",
                         line_of(section, name))
            continue
        check_keys(spec, DESTINATION_KEYS, where, problems)
        kind = get(spec, "kind", str, problems, where, default="http")
        if kind not in KINDS:
            problems.add(f"'kind' of {where} must be one of {', '.join(KINDS)}",
                         line_of(spec, "kind"))
            continue
        url = (get(spec, "url", str, problems, where) or "").strip()
        if not url:
            variable = next(iter(getattr(spec.get("url"), "variables", ())), None)
            unset.append(f"{name} ({variable})" if variable else str(name))
            skipped.add(str(name))
            continue
        if not url.startswith(("http://", "https://")) or " " in url:
            problems.add(f"'url' of {where} must start with https:// (or http://)",
                         line_of(spec, "url"), "paste the whole webhook URL from the tool")
            continue
        destination = _destination(str(name), kind, url, spec, problems, where)
        if destination is not None:
            settings.destinations[destination.name] = destination
    settings.skipped_destinations = unset
    return skipped


def _destination(name: str, kind: str, url: str, spec: LineDict, problems: Problems,
                 where: str) -> Destination | None:
    defaults = KINDS[kind]
    headers = get(spec, "headers", dict, problems, where) or {}
    clean_headers = {}
    for header, value in headers.items():
        if not isinstance(value, (str, int)):
            problems.add(f"header '{header}' of {where} must be text", line_of(headers, header))
        elif str(value).strip():  # an unset ${VAR} leaves the header out
            clean_headers[str(header)] = str(value).strip()
    timeout = _duration(spec, "timeout", defaults.timeout, problems, where)
    rate = get(spec, "rate_limit", (int, float), problems, where, default=defaults.rate_limit)
    concurrency = get(spec, "concurrency", int, problems, where, default=defaults.concurrency)
    if rate <= 0 or concurrency < 1 or timeout <= 0:
        problems.add(f"timeout, rate_limit and concurrency of {where} must be positive",
                     line_of(spec))
        return None
    secret = (get(spec, "signing_secret", str, problems, where) or "").strip() or None
    return Destination(name=name, kind=kind, url=url, headers=clean_headers,
                       signing_secret=secret, timeout=timeout, rate_limit=float(rate),
                       concurrency=concurrency, retry=_retry(spec, problems, where))


def _retry(spec: LineDict, problems: Problems, where: str) -> RetryPolicy:
    retry = get(spec, "retry", dict, problems, where)
    if retry is None:
        return RetryPolicy()
    rwhere = f"'retry' of {where}"
    check_keys(retry, RETRY_KEYS, rwhere, problems)
    schedule = retry.get("schedule", list(DEFAULT_SCHEDULE))
    delays = [parse_duration(item) for item in schedule] if isinstance(schedule, list) else [None]
    if not delays or any(d is None for d in delays):
        problems.add(f"'schedule' of {rwhere} must be a list of durations",
                     line_of(retry, "schedule"), "e.g. schedule: [10s, 1m, 5m, 30m, 2h]")
        delays = list(DEFAULT_SCHEDULE)
    jitter = get(retry, "jitter", (int, float), problems, rwhere, default=0.2)
    if not 0 <= jitter < 1:
        problems.add(f"'jitter' of {rwhere} must be between 0 and 1", line_of(retry, "jitter"))
        jitter = 0.2
    return RetryPolicy(schedule=tuple(delays),
                       repeat=_duration(retry, "repeat", DEFAULT_REPEAT, problems, rwhere),
                       max_age=_duration(retry, "max_age", DEFAULT_MAX_AGE, problems, rwhere),
                       jitter=float(jitter))


def _duration(section: Mapping, key: str, default: float, problems: Problems,
              where: str) -> float:
    if section.get(key) is None:
        return default
    value = parse_duration(section[key])
    if value is None:
        problems.add(f"'{key}' of {where} must be a duration", line_of(section, key),
                     "e.g. 30s, 5m, 2h, 3d, or a number of seconds")
        return default
    return value


def _routes(data: LineDict, settings: Settings, skipped: set[str], problems: Problems) -> None:
    """``routes``: a list of ``{from: source(s) or all, to: destination(s)}``."""
    routes = data.get("routes") or []
    if not isinstance(routes, list):
        problems.add("'routes' must be a list of '- from: … to: …' entries",
                     line_of(data, "routes"))
        return
    found: dict[str, list[str]] = {}
    filters: dict[tuple[str, str], frozenset[str] | None] = {}
    for index, route in enumerate(routes):
        line = line_of(routes, index)
        if not isinstance(route, dict):
            problems.add("each route must have 'from' and 'to'", line,
                         "e.g. - {from: all, to: [make, zapier]}")
            continue
        check_keys(route, ROUTE_KEYS, "a route", problems)
        sources = _names(route.get("from"))
        targets = _names(route.get("to"))
        if not sources or not targets:
            problems.add("each route must have 'from' and 'to'", line,
                         "e.g. - {from: all, to: [make, zapier]}")
            continue
        if sources == ["all"]:
            sources = list(settings.sources)
        for source in sources:
            if source not in settings.sources:
                problems.add(f"route from unknown source '{source}'", line_of(route, "from"),
                             suggest(source, settings.sources) or "sources are named under "
                             "'sources:'")
        for target in targets:
            if target not in settings.destinations and target not in skipped:
                problems.add(f"route to unknown destination '{target}'", line_of(route, "to"),
                             suggest(target, settings.destinations) or "destinations are named "
                             "under 'destinations:'")
        types = _event_types(route, problems)
        for source in sources:
            kept = found.setdefault(source, [])
            for target in targets:
                if target not in settings.destinations:
                    continue
                if target not in kept:
                    kept.append(target)
                    filters[(source, target)] = types
                elif filters.get((source, target)) is not None:
                    # two routes for one pair: the union, or everything if one takes all
                    filters[(source, target)] = None if types is None else (
                        filters[(source, target)] | types)
    settings.routes = {source: tuple(targets) for source, targets in found.items() if targets}
    settings.route_filters = {pair: types for pair, types in filters.items() if types}
    for name, source in settings.sources.items():
        if settings.routes.get(name) and source.mapping is None:
            problems.add(f"source '{name}' is routed but has no mapping",
                         line_of(data.get("sources"), name),
                         f"create mappings/{name}.yaml (copy a shipped one) or give 'mapping:'")


def _event_types(route: Mapping, problems: Problems) -> frozenset[str] | None:
    """A route's ``event_types`` (e.g. [job.failed]): only those are forwarded."""
    if route.get("event_types") is None:
        return None
    types = _names(route["event_types"])
    if not types:
        problems.add("'event_types' of a route must be a list of event types",
                     line_of(route, "event_types"), "e.g. event_types: [job.failed]")
        return None
    return frozenset(types)


def _names(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return []


def _delivery(data: LineDict, settings: Settings, problems: Problems) -> None:
    section = get(data, "delivery", dict, problems, "bridge.yaml")
    if section is None:
        return
    check_keys(section, DELIVERY_KEYS, "'delivery'", problems)
    in_web = section.get("in_web", True)
    if isinstance(in_web, str):
        in_web = in_web.strip().lower() not in ("false", "no", "off", "0")
    settings.deliver_in_web = bool(in_web)
    settings.poll_interval = _duration(section, "poll_interval", 1.0, problems, "'delivery'")
    settings.batch = get(section, "batch", int, problems, "'delivery'", default=20)
    if settings.batch < 1:
        problems.add("'batch' of 'delivery' must be 1 or more", line_of(section, "batch"))
        settings.batch = 20


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
    # only profile keys: an unknown key was reported once above, not again as a profile key
    overrides = {k: v for k, v in section.items() if k in PROFILE_KEYS}
    overrides = LineDict(overrides)
    overrides.line, overrides.key_lines = section.line, section.key_lines
    profile = build_profile(name, merge(base, overrides), problems)
    secrets, reason = _secrets(section, where, problems, warnings)
    mapping = _mapping_path(name, section, base_dir, problems, warnings)
    if profile is None:
        return None
    profile = dataclasses.replace(profile, name=profile_name)  # e.g. shop-2 uses "zupertry"
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
