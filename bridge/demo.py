"""``bridge demo``: the whole path on this machine, in one command.

The bridge runs on a throw-away SQLite database with its delivery worker; a local
stand-in for a Make / n8n / Zapier catch-hook prints what it receives; signed sample
callbacks from all five providers are sent to the bridge. The newcomer sees each event
arrive flat, a duplicate recognised, a forged callback refused, and a failing hook
retried until it takes the event. Nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from . import samples
from .app import create_app, stop_workers
from .config import Settings
from .destinations import Destination, RetryPolicy
from .mapping import Mappings
from .signatures import sign
from .store import open_store

# What the demo sends: not the samples send-test sends by default, so that a newcomer's
# first `bridge send-test ratioready` afterwards is accepted (and the second a duplicate).
DEMO_SAMPLES = [("ratioready", "clipart_completed"), ("ratioready", "job_queued"),
                ("zupertry", "job_failed"), ("posternity", "video_processing_completed"),
                ("upscale", "batch_partial"), ("listingrva", "image_generated_multi")]
FLAKY_FAILURES = 2  # the flaky hook refuses each event this many times, then takes it


class CatchHook:
    """A local stand-in for a no-code tool's catch-hook: ``/catch`` takes everything,
    ``/flaky`` answers 503 to each event twice before taking it."""

    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo
        self.received: list[dict] = []
        self.refused: dict[str, int] = {}
        self.lock = threading.Lock()
        self.server = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def wsgi(self, environ, start_response):
        request = Request(environ)
        event = request.get_json(silent=True) or {}
        event_id = event.get("event_id", "?")
        with self.lock:
            if request.path == "/flaky" and self.refused.get(event_id, 0) < FLAKY_FAILURES:
                self.refused[event_id] = self.refused.get(event_id, 0) + 1
                self.echo(click.style(f"  flaky-hook  refused {event_id} with HTTP 503 "
                                      f"(time {self.refused[event_id]}); the bridge will retry",
                                      fg="yellow"))
                return Response("busy", 503)(environ, start_response)
            self.received.append(event)
        self.echo(_arrival(request.path.strip("/"), event))
        return Response("Accepted", 200)(environ, start_response)

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def _arrival(hook: str, event: dict) -> str:
    name = "catch-hook" if hook == "catch" else "flaky-hook"
    text = (f"  {name:<10}  got {event.get('event_type')} from {event.get('source')}: "
            f"{event.get('summary') or event.get('job_id')}")
    return click.style(text, fg="green")


def demo_settings(settings: Settings, folder: Path, hook_url: str) -> tuple[Settings, list[str]]:
    """The user's sources and mappings, a throw-away database, and the two local hooks.
    Sources without a secret get a random one for this run (named in the notes)."""
    notes = []
    sources = {}
    for name, source in settings.sources.items():
        if source.disabled_reason:
            source = dataclasses.replace(source, secrets=(secrets.token_hex(16),),
                                         disabled_reason=None)
            notes.append(name)
        sources[name] = source
    fast = RetryPolicy(schedule=(1.0, 2.0), repeat=2.0, max_age=60.0, jitter=0.0)
    destinations = {
        "catch-hook": Destination("catch-hook", "http", f"{hook_url}/catch", timeout=5,
                                  rate_limit=50, concurrency=2, retry=fast),
        "flaky-hook": Destination("flaky-hook", "http", f"{hook_url}/flaky", timeout=5,
                                  rate_limit=50, concurrency=2, retry=fast),
    }
    routed = {name: ("catch-hook", "flaky-hook") for name, s in sources.items() if s.mapping}
    demo = dataclasses.replace(settings, database_url=f"sqlite:///{folder / 'demo.db'}",
                               sources=sources, destinations=destinations, routes=routed,
                               poll_interval=0.2, warnings=[])
    return demo, notes


def run_demo(settings: Settings, mappings: Mappings, port: int, once: bool,
             echo: Callable[[str], None] = click.echo) -> int:
    """Run the demo; returns how many expected outcomes did not happen (0 is success)."""
    logging.getLogger("bridge").setLevel(logging.ERROR)  # the hooks tell the story
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="bridge-demo-") as folder:
        hook = CatchHook(echo)
        hook.start()
        demo, notes = demo_settings(settings, Path(folder), hook.url)
        store = open_store(demo.database_url)
        app = create_app(demo, store, mappings, start_worker=True)
        try:
            server = make_server("127.0.0.1", port, app, threaded=True)
        except OSError as err:
            raise click.ClickException(f"cannot listen on port {port} ({err.strerror}): "
                                       "stop what uses it, or set PORT=8001") from None
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{port}"
        _intro(echo, base, hook.url, folder, notes)
        try:
            problems = _script(echo, demo, base, hook)
            _outro(echo, base, once)
            if not once:
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            echo("\nstopping the demo")
            problems = 0
        finally:
            server.shutdown()
            stop_workers(timeout=5)
            hook.stop()
            store.close()
    return problems


def _intro(echo, base: str, hook_url: str, folder: str, notes: list[str]) -> None:
    echo(click.style("bridge demo: the whole path on this machine; nothing leaves it",
                     bold=True))
    echo(f"  bridge      {base}/hooks/<source>   (database {folder}/demo.db, deleted at the end)")
    echo(f"  catch-hook  {hook_url}/catch   stands in for your Make / n8n / Zapier hook")
    echo(f"  flaky-hook  {hook_url}/flaky   refuses each event twice, then takes it")
    if notes:
        echo(f"  (no secret set for {', '.join(notes)}: using a random one for this run; "
             "`bridge init` writes a .env)")
    echo("")


def _script(echo, settings: Settings, base: str, hook: CatchHook) -> int:
    problems = 0
    echo(click.style("1. Providers post signed callbacks; the bridge stores each and answers "
                     "at once", bold=True))
    forwarded = 0
    for source, name in DEMO_SAMPLES:
        body = samples.read(source, name)
        answer = _post(settings, base, source, body)
        echo(f"  {source:<11} {name:<28} -> {answer}")
        problems += "accepted" not in answer
        forwarded += name != "job_queued"
    echo("  (ratioready's queued job is stored but filtered by its mapping: it is not "
         "forwarded)")
    echo(click.style("\n2. The same callback again (providers retry): recognised, not stored "
                     "twice", bold=True))
    answer = _post(settings, base, "ratioready", samples.read("ratioready", "clipart_completed"))
    echo(f"  ratioready  clipart_completed (again)    -> {answer}")
    problems += "duplicate" not in answer
    echo(click.style("\n3. A forged callback (signed with the wrong secret): refused",
                     bold=True))
    answer = _post(settings, base, "listingrva", samples.read("listingrva", "image_generated"),
                   secret="not-the-real-secret")
    echo(f"  listingrva  image_generated (forged)     -> {answer}")
    problems += "401" not in answer
    echo(click.style("\n4. The worker delivers flat job events to both hooks, retrying the "
                     "flaky one", bold=True))
    deadline = time.monotonic() + 30
    while len(hook.received) < forwarded * 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    if len(hook.received) < forwarded * 2:
        echo(click.style(f"  only {len(hook.received)} of {forwarded * 2} deliveries arrived",
                         fg="red"))
        problems += 1
    if hook.received:
        shortest = min(hook.received, key=lambda event: len(json.dumps(event)))
        first = {k: v for k, v in shortest.items() if v is not None}
        echo("\n  One of them, as the hook received it (null fields left out here):")
        echo("  " + json.dumps(first, indent=2, ensure_ascii=False).replace("\n", "\n  "))
    return problems


def _post(settings: Settings, base: str, source: str, body: bytes,
          secret: str | None = None) -> str:
    configured = settings.sources[source]
    headers = sign(configured.profile.scheme, secret or configured.secrets[0], body,
                   {"Content-Type": "application/json"})
    response = requests.post(f"{base}/hooks/{source}", data=body, headers=headers, timeout=10)
    data = response.json()
    if response.ok:
        return f"{response.status_code} {data['status']} {data['event_id']}"
    return f"{response.status_code} {data.get('error')}"


def _outro(echo, base: str, once: bool) -> None:
    echo(click.style("\nThe demo worked.", bold=True, fg="green"))
    if once:
        return
    echo(f"The bridge keeps running at {base}. In another terminal, try:\n"
         f"  .venv/bin/bridge send-test ratioready        (accepted, then delivered here)\n"
         f"  .venv/bin/bridge send-test ratioready        (again: a duplicate)\n"
         f"  .venv/bin/bridge preview ratioready --sample poster_completed\n"
         "Ctrl-C stops it. For real use: `bridge serve` (see README).")
