"""The ``bridge`` command. Every option also reads an environment variable
(``BRIDGE_<COMMAND>_<OPTION>``, plus the documented ones such as ``PORT``).
A ``.env`` file in the working directory is read first; real environment variables win."""

from __future__ import annotations

import json
import os
import secrets as secrets_module
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import click
import requests
from dotenv import load_dotenv

from . import __version__, samples, schema
from .config import Settings, load_mappings, load_settings
from .errors import BridgeError, ConfigError, ConfigErrors, MappingError
from .logs import setup_logging
from .mapping import Mapping, Mappings, load_mapping
from .signatures import sign

SECRET_VARS = ("RATIOREADY_WEBHOOK_SECRET", "ZUPERTRY_WEBHOOK_SECRET",
               "POSTERNITY_WEBHOOK_SECRET", "UPSCALE_WEBHOOK_SECRET",
               "LISTINGRVA_WEBHOOK_SECRET")


def main() -> None:
    load_dotenv(Path.cwd() / ".env", override=False)
    cli(auto_envvar_prefix="BRIDGE")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bridge")
def cli() -> None:
    """Webhook bridge: provider callbacks in, flat job events out to Make, n8n and Zapier."""
    setup_logging()  # BRIDGE_LOG_FORMAT, BRIDGE_LOG_LEVEL; secrets added once loaded


def settings_or_exit() -> Settings:
    """Load bridge.yaml, or print every problem as file:line and exit 1."""
    try:
        settings = load_settings()
    except ConfigErrors as err:
        _exit_with(err)
    setup_logging(settings)  # now every secret of bridge.yaml is hidden in the logs
    return settings


def mappings_or_exit(settings: Settings) -> Mappings:
    """Load every source's mapping, or print every problem as file:line and exit 1."""
    try:
        return load_mappings(settings)
    except ConfigErrors as err:
        _exit_with(err)


def _exit_with(err: ConfigErrors) -> NoReturn:
    for error in err.errors:
        click.echo(f"error: {error}", err=True)
    click.echo(f"{len(err.errors)} problem(s) found; the bridge cannot start.", err=True)
    sys.exit(1)


@cli.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, envvar="PORT", show_default=True,
              help="Port to listen on (env PORT).")
@click.option("--workers", type=int, default=2, envvar="WEB_CONCURRENCY", show_default=True,
              help="gunicorn worker processes (env WEB_CONCURRENCY).")
@click.option("--threads", type=int, default=4, show_default=True,
              help="Threads per worker process.")
def serve(host: str, port: int, workers: int, threads: int) -> None:
    """Run the bridge's HTTP server (gunicorn)."""
    settings = settings_or_exit()
    mappings_or_exit(settings)
    from .server import run_gunicorn

    click.echo(f"bridge {__version__} listening on http://{host}:{port} "
               f"(POST /hooks/<source>, GET /healthz)")
    run_gunicorn(settings, host=host, port=port, workers=workers, threads=threads)


@cli.command()
@click.option("--strict", is_flag=True, help="Also fail on warnings (e.g. a missing secret).")
def check(strict: bool) -> None:
    """Check bridge.yaml, the provider profiles and every mapping; exit 1 on any problem."""
    settings = settings_or_exit()
    problems = _mapping_problems(settings)
    blueprints = Path(settings.path).resolve().parent / "blueprints"
    if blueprints.is_dir():
        from .blueprints import problems as blueprint_problems

        problems += blueprint_problems(blueprints)
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    for warning in settings.warnings:
        click.echo(f"warning: {warning}")
    if settings.skipped_destinations:
        click.echo(f"warning: destinations skipped, their URL is not set: "
                   f"{', '.join(settings.skipped_destinations)}")
    if not settings.destinations:
        click.echo("warning: no destination has a URL: events are stored, nothing is "
                   "delivered (set MAKE_WEBHOOK_URL, N8N_WEBHOOK_URL or ZAPIER_WEBHOOK_URL)")
    for source in settings.sources.values():
        state = (f"accepts nothing: {source.disabled_reason}" if source.disabled_reason
                 else f"ready ({len(source.secrets)} secret(s))")
        mapping = _relative(source.mapping) if source.mapping else "no mapping"
        click.echo(f"  /hooks/{source.name}  {source.profile.title}  {state}; {mapping}")
    if problems:
        click.echo(f"{len(problems)} problem(s) found.", err=True)
        sys.exit(1)
    disabled = [s for s in settings.sources.values() if s.disabled_reason]
    undelivered = 0 if settings.destinations else 1
    if strict and (settings.warnings or disabled or undelivered):
        click.echo(f"{len(settings.warnings) + len(disabled) + undelivered} warning(s) with "
                   "--strict", err=True)
        sys.exit(1)
    click.echo(f"{settings.path}: ok")


def _mapping_problems(settings: Settings) -> list[ConfigError]:
    """Problems of every mapping in use, and of every other file in the mappings folder."""
    paths = {s.mapping.resolve() for s in settings.sources.values() if s.mapping}
    folder = Path(settings.path).resolve().parent / "mappings"
    if folder.is_dir():
        paths |= {p.resolve() for p in folder.glob("*.yaml")}
    problems: list[ConfigError] = []
    for path in sorted(paths):
        try:
            load_mapping(_relative(path))
        except ConfigErrors as err:
            problems.extend(err.errors)
    return problems


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


@cli.command()
@click.argument("source")
@click.argument("payload", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--sample", "sample_name", help="A shipped sample instead of a file.")
@click.option("--all", "preview_all", is_flag=True, help="Every shipped sample of every source.")
@click.option("--short", is_flag=True, help="Leave out the fields that are null.")
def preview(source: str, payload: Path | None, sample_name: str | None, preview_all: bool,
            short: bool) -> None:
    """Print the flat job event a payload becomes with the current mapping.

    SOURCE is a source of bridge.yaml (use 'all' with --all)."""
    settings = settings_or_exit()
    mappings = mappings_or_exit(settings)
    if preview_all:
        names = settings.sources if source == "all" else [source]
        failures = sum(_preview_samples(settings, mappings, name) for name in names)
        sys.exit(1 if failures else 0)
    mapping = _mapping_for(settings, mappings, source)
    try:
        body = payload.read_bytes() if payload else samples.read(
            _sample_profile(settings, source), sample_name)
        data = json.loads(body)
    except LookupError as err:
        raise click.ClickException(str(err)) from None
    except ValueError as err:
        raise click.ClickException(f"{payload}: not valid JSON ({err})") from None
    try:
        result = mapping.apply(data, "evt_preview", source, time.time())
    except MappingError as err:
        raise click.ClickException(f"mapping failed: {err}") from None
    if result.event is None:
        click.echo(f"filtered: no rule matched (tried: {', '.join(result.tried)}); the event "
                   "would be stored but not forwarded")
        return
    event = {k: v for k, v in result.event.items() if v is not None} if short else result.event
    click.echo(f"# rule '{result.rule}' of {mapping.file}", err=True)
    click.echo(json.dumps(event, indent=2, ensure_ascii=False))


def _mapping_for(settings: Settings, mappings: Mappings, source: str) -> Mapping:
    if source not in settings.sources:
        raise click.ClickException(f"unknown source '{source}'; sources in {settings.path}: "
                                   f"{', '.join(settings.sources) or 'none'}")
    mapping = mappings.get(source)
    if mapping is None:
        raise click.ClickException(f"source '{source}' has no mapping; create "
                                   f"mappings/{source}.yaml")
    return mapping


def _preview_samples(settings: Settings, mappings: Mappings, source: str) -> int:
    """One line per shipped sample; returns how many failed."""
    mapping = _mapping_for(settings, mappings, source)
    failures = 0
    for name in samples.names(_sample_profile(settings, source)):
        data = json.loads(samples.read(_sample_profile(settings, source), name))
        try:
            result = mapping.apply(data, "evt_preview", source, time.time())
        except MappingError as err:
            failures += 1
            click.echo(f"{source}/{name}: FAILED {err}")
            continue
        if result.event is None:
            click.echo(f"{source}/{name}: filtered (no rule matched)")
        else:
            filled = sum(v is not None for v in result.event.values())
            click.echo(f"{source}/{name}: {result.event['event_type']} (rule '{result.rule}', "
                       f"{filled} fields set)")
    return failures


@cli.command("schema")
@click.option("--write", is_flag=True,
              help="Write blueprints/schema/job-event.v1.schema.json and docs/SCHEMA.md.")
def schema_command(write: bool) -> None:
    """Print the JSON Schema of the job event (schema v1)."""
    text = json.dumps(schema.json_schema(), indent=2, ensure_ascii=False) + "\n"
    if not write:
        click.echo(text, nl=False)
        return
    for path, content in schema_files(text).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        click.echo(f"wrote {path}")


def schema_files(json_text: str) -> dict[Path, str]:
    doc = SCHEMA_DOC.format(table=schema.markdown_table())
    return {Path("blueprints/schema/job-event.v1.schema.json"): json_text,
            Path("docs/SCHEMA.md"): doc}


SCHEMA_DOC = """# The job event (schema version 1)

Every destination receives one flat JSON object with these keys, whatever the provider.
Every key is always present, `null` when the provider has no value, so the data structure
in Make, n8n or Zapier never changes between events. No nested objects, no arrays: lists
are given both as numbered fields (`asset_url_1` … `asset_url_10`, `preview_url_1` …
`preview_url_5`) and as one text with one URL per line (`asset_urls`, `preview_urls`).

A mapping may add fields of its own whose names start with `x_` (text, number, true/false
or null). The JSON Schema is `blueprints/schema/job-event.v1.schema.json`.
This file is written by `bridge schema --write`; edit `bridge/schema.py`, not this file.

{table}
## Provider extras

| provider | extras it fills |
|---|---|
| ratioready | `watermark` (clipart) |
| zupertry | `workspace_id`, `org_id` |
| posternity | `provider_event_id`, `error_code` |
| upscale | `requested_count`, `generated_count`, `partial` |
| listingrva | `style`, `platform`, `asset_ids` |
"""


@cli.command("send-test")
@click.argument("source")
@click.option("--url", help="Where to send it [default: http://127.0.0.1:$PORT/hooks/SOURCE].")
@click.option("--payload", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A JSON file to send instead of a shipped sample.")
@click.option("--sample", "sample_name", help="Name of a shipped sample (see --list).")
@click.option("--list", "list_samples", is_flag=True, help="List the shipped samples and exit.")
def send_test(source: str, url: str | None, payload: Path | None, sample_name: str | None,
              list_samples: bool) -> None:
    """Sign a sample callback exactly as SOURCE's provider would, and POST it."""
    settings = settings_or_exit()
    configured = settings.sources.get(source)
    if configured is None:
        raise click.ClickException(f"unknown source '{source}'; sources in {settings.path}: "
                                   f"{', '.join(settings.sources) or 'none'}")
    profile = configured.profile.name
    if list_samples:
        for name in samples.names(_sample_profile(settings, source)):
            click.echo(name)
        return
    if configured.disabled_reason:
        raise click.ClickException(f"cannot sign for '{source}': {configured.disabled_reason}")
    try:
        body = payload.read_bytes() if payload else samples.read(
            _sample_profile(settings, source), sample_name)
    except LookupError as err:
        raise click.ClickException(str(err)) from None
    url = url or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/hooks/{source}"
    headers = sign(configured.profile.scheme, configured.secrets[0], body,
                   {"Content-Type": "application/json",
                    "User-Agent": f"bridge-send-test/{__version__} ({profile})"})
    try:
        response = requests.post(url, data=body, headers=headers, timeout=15)
    except requests.RequestException as err:
        raise click.ClickException(f"cannot reach {url}: {_first_line(err)}. Is the bridge "
                                   "running? Start it with 'make run' or 'bridge serve'.") from None
    click.echo(f"POST {url} -> {response.status_code} {response.text.strip()[:500]}")
    if not response.ok:
        sys.exit(1)


def _sample_profile(settings: Settings, source: str) -> str:
    """Samples are filed by provider: a source named after a shipped provider uses its own."""
    name = settings.sources[source].profile.name
    return name if samples.names(name) else source


@cli.command()
@click.option("--path", "env_path", default=".env", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path))
@click.option("--if-missing", is_flag=True, help="Do nothing if the file exists.")
def init(env_path: Path, if_missing: bool) -> None:
    """Write a .env with a random secret per provider, for trying the bridge locally.
    Replace them with the secrets from each provider's dashboard before going live."""
    if env_path.exists():
        if if_missing:
            return
        raise click.ClickException(f"{env_path} exists; remove it first or edit it")
    lines = ["# Local settings for the bridge (read by every 'bridge' command).",
             "# These secrets are random, for local tests: paste each provider's real",
             "# webhook secret here (or in your platform's config vars) before going live."]
    lines += [f"{name}={secrets_module.token_hex(24)}" for name in SECRET_VARS]
    env_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env_path.chmod(0o600)
    click.echo(f"wrote {env_path} with a random secret for each of the five providers")


def _first_line(err: Exception) -> str:
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__


def _open_store(settings: Settings):
    from .store import open_store

    try:
        store = open_store(settings.database_url)
        store.migrate()
    except (ConfigError, BridgeError) as err:
        raise click.ClickException(str(err)) from None
    return store


@cli.command()
@click.option("--burst", is_flag=True, help="Deliver what is due now, then exit.")
def worker(burst: bool) -> None:
    """Run the delivery worker as its own process (set delivery.in_web to false, or
    BRIDGE_DELIVER_IN_WEB=false, so the web process does not deliver too).

    SIGTERM or Ctrl-C: in-flight deliveries finish, the rest are released; a second one
    exits at once."""
    from .worker import Worker

    settings = settings_or_exit()
    mappings = mappings_or_exit(settings)
    store = _open_store(settings)
    if not settings.destinations:
        click.echo("no destination has a URL: nothing to deliver (set MAKE_WEBHOOK_URL, "
                   "N8N_WEBHOOK_URL or ZAPIER_WEBHOOK_URL)", err=True)
        if burst:
            return
    delivery = Worker(settings, store, mappings)
    if burst:
        count = delivery.run_burst()
        click.echo(f"burst done: {count} deliveries tried")
        return
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop_requested.is_set():
            click.echo("stopping now", err=True)
            os._exit(1)
        stop_requested.set()
        click.echo("stopping: finishing in-flight deliveries (again to stop now)", err=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    delivery.start()
    while not stop_requested.wait(1.0):
        pass
    delivery.stop(timeout=30.0)
    store.close()


@cli.command()
@click.option("--status", "state", type=click.Choice(["pending", "done", "failed", "dead",
                                                      "filtered"]),
              help="Only deliveries in this state (failed: pending after a failed try).")
@click.option("--source", help="Only events from this source.")
@click.option("--destination", help="Only deliveries to this destination.")
@click.option("--limit", type=int, default=50, show_default=True)
def deliveries(state: str | None, source: str | None, destination: str | None,
               limit: int) -> None:
    """List deliveries, newest first."""
    settings = settings_or_exit()
    store = _open_store(settings)
    rows = store.list_deliveries(state=state, source=source, destination=destination,
                                 limit=limit)
    if not rows:
        click.echo("no deliveries match")
        return
    now = time.time()
    table = [("EVENT", "SOURCE", "DESTINATION", "STATE", "TRIES", "LAST", "NEXT TRY")]
    for d in rows:
        shown = "failed" if d.state == "pending" and d.attempts else d.state
        last = str(d.last_status) if d.last_status else (d.last_error or "-")
        next_try = ("in flight" if d.leased_by else _when(d.next_attempt_at - now)) \
            if d.state == "pending" else "-"
        table.append((d.event_id, d.source, d.destination, shown, str(d.total_attempts),
                       last[:40], next_try))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = zip(row, widths, strict=True)
        click.echo("  ".join(cell.ljust(width) for cell, width in cells).rstrip())


def _when(seconds: float) -> str:
    if seconds <= 0:
        return "now"
    if seconds < 90:
        return f"in {seconds:.0f} s"
    if seconds < 5400:
        return f"in {seconds / 60:.0f} min"
    return f"in {seconds / 3600:.1f} h"


@cli.command()
@click.argument("event_id", required=False)
@click.option("--dead", "dead", is_flag=True, help="Replay every dead letter (bulk).")
@click.option("--source", help="With --dead: only this source.")
@click.option("--since", help="With --dead: only events received since this date "
                              "(2026-11-20 or 2026-11-20T10:00).")
def replay(event_id: str | None, dead: bool, source: str | None, since: str | None) -> None:
    """Send an event again (with the current mapping), or every dead letter with --dead."""
    settings = settings_or_exit()
    store = _open_store(settings)
    now = time.time()
    if dead == bool(event_id):
        raise click.UsageError("give either an EVENT_ID or --dead")
    if event_id:
        event = store.get_event(event_id)
        if event is None:
            raise click.ClickException(f"no event {event_id}")
        count = store.replay(event_id, settings.destinations_for(event.source), now)
        click.echo(f"{event_id}: {count} deliver{'y' if count == 1 else 'ies'} queued again")
        return
    start = _parse_since(since) if since else None
    count = store.replay_dead(now, source=source, since=start)
    click.echo(f"{count} dead letter(s) queued again")


def _parse_since(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a date like 2026-11-20 or "
                                 "2026-11-20T10:00", param_hint="--since") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@cli.command()
@click.option("--port", type=int, default=8000, envvar="PORT", show_default=True,
              help="Port of the demo bridge (env PORT).")
@click.option("--once", is_flag=True, help="Exit after the demo instead of keeping it running.")
def demo(port: int, once: bool) -> None:
    """See the bridge work end to end on this machine (the first thing to run)."""
    from .demo import run_demo

    settings = settings_or_exit()
    mappings = mappings_or_exit(settings)
    problems = run_demo(settings, mappings, port, once)
    sys.exit(1 if problems else 0)


@cli.command()
def migrate() -> None:
    """Create or upgrade the database schema (the servers also do it when they start)."""
    from .store import describe_url

    settings = settings_or_exit()
    store = _open_store(settings)
    store.close()
    click.echo(f"database ready: {describe_url(settings.database_url)}")


from .blueprints import send_sample  # noqa: E402  (bridge.blueprints imports cli lazily)

cli.add_command(send_sample)
