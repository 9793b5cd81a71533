"""The application factory: ``create_app()`` builds the Flask app from bridge.yaml.
Nothing happens at import time; tests build their own app with their own settings."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from . import admin, logs, metrics
from .config import Settings, load_mappings, load_settings
from .mapping import Mappings
from .store import Store, open_store
from .worker import Worker

log = logging.getLogger("bridge")
RUNNING: list[Worker] = []  # delivery workers started in this process (stopped on exit)


def stop_workers(timeout: float = 20.0) -> None:
    """Stop this process's delivery workers gracefully (gunicorn's worker_exit hook)."""
    while RUNNING:
        RUNNING.pop().stop(timeout)


@dataclass
class Bridge:
    """What the request handlers need, kept in ``app.extensions["bridge"]``."""

    settings: Settings
    store: Store
    mappings: Mappings
    worker: Worker | None = None  # the delivery worker of this process, if it runs here
    admin_token: str | None = None  # BRIDGE_ADMIN_TOKEN; None: dashboard, admin API off
    metrics_public: bool = False    # BRIDGE_METRICS_PUBLIC: /metrics without the token


def create_app(settings: Settings | None = None, store: Store | None = None,
               mappings: Mappings | None = None, start_worker: bool = False,
               environ: Mapping[str, str] | None = None) -> Flask:
    """Build the app. ``start_worker``: also run the delivery worker in this process (the
    server does this when ``delivery.in_web`` is on; tests build apps without one).
    ``environ`` (default os.environ) gives BRIDGE_ADMIN_TOKEN and BRIDGE_METRICS_PUBLIC."""
    environ = os.environ if environ is None else environ
    settings = settings or load_settings()
    mappings = mappings or load_mappings(settings)
    store = store or open_store(settings.database_url)
    store.migrate()
    for warning in settings.warnings:
        log.warning("%s", warning)
    if settings.skipped_destinations:
        log.warning("destinations skipped, their URL is not set: %s",
                    ", ".join(settings.skipped_destinations))
    for source in settings.sources.values():
        if source.disabled_reason:
            log.warning("source '%s' accepts nothing: %s", source.name, source.disabled_reason)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    bridge = Bridge(settings=settings, store=store, mappings=mappings,
                    admin_token=admin.admin_token(environ),
                    metrics_public=admin.metrics_public(environ))
    logs.protect(bridge.admin_token, *logs.secrets_of(settings))
    if start_worker and settings.destinations:
        bridge.worker = Worker(settings, store, mappings)
        bridge.worker.start()
        RUNNING.append(bridge.worker)
    app.extensions["bridge"] = bridge

    from . import health, ingest

    app.register_blueprint(ingest.bp)
    app.register_blueprint(health.bp)
    admin.init_app(app)
    metrics.init_app(app)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


MESSAGES = {
    404: "not found: callbacks go to POST /hooks/<source>",
    405: "method not allowed: send callbacks with POST",
    413: "body too large for this bridge (max_body_bytes in bridge.yaml)",
}


def _http_error(err: HTTPException):
    response = jsonify(error=MESSAGES.get(err.code or 500, err.description))
    response.status_code = err.code or 500
    if err.code == 405 and hasattr(err, "valid_methods") and err.valid_methods:
        response.headers["Allow"] = ", ".join(err.valid_methods)
    return response


def _unexpected_error(err: Exception):
    log.exception("unexpected error")
    response = jsonify(error="internal error in the bridge; see its log")
    response.status_code = 500
    return response
