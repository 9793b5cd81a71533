"""The ``bridge`` command. Every option also reads an environment variable
(``BRIDGE_<COMMAND>_<OPTION>``, plus the documented ones such as ``PORT``).
A ``.env`` file in the working directory is read first; real environment variables win."""

from __future__ import annotations

import logging
import os
import secrets as secrets_module
import sys
from pathlib import Path

import click
import requests
from dotenv import load_dotenv

from . import __version__, samples
from .config import Settings, load_settings
from .errors import ConfigErrors
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
    logging.basicConfig(level=os.environ.get("BRIDGE_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def settings_or_exit() -> Settings:
    """Load bridge.yaml, or print every problem as file:line and exit 1."""
    try:
        return load_settings()
    except ConfigErrors as err:
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
    from .server import run_gunicorn

    click.echo(f"bridge {__version__} listening on http://{host}:{port} "
               f"(POST /hooks/<source>, GET /healthz)")
    run_gunicorn(settings, host=host, port=port, workers=workers, threads=threads)


@cli.command()
@click.option("--strict", is_flag=True, help="Also fail on warnings (e.g. a missing secret).")
def check(strict: bool) -> None:
    """Check bridge.yaml and the provider profiles; exit 1 on any problem."""
    settings = settings_or_exit()
    for warning in settings.warnings:
        click.echo(f"warning: {warning}")
    click.echo(f"{settings.path}: ok")
    for source in settings.sources.values():
        state = (f"accepts nothing: {source.disabled_reason}" if source.disabled_reason
                 else f"ready ({len(source.secrets)} secret(s))")
        click.echo(f"  /hooks/{source.name}  {source.profile.title}  {state}")
    disabled = [s for s in settings.sources.values() if s.disabled_reason]
    if strict and (settings.warnings or disabled):
        click.echo(f"{len(settings.warnings) + len(disabled)} warning(s) with --strict", err=True)
        sys.exit(1)


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
