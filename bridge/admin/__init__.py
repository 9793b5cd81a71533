"""The operator's side: the dashboard (``/admin/``) and its JSON API (``/admin/api/``),
both behind ``BRIDGE_ADMIN_TOKEN`` (see ``auth``). What they show and do is in ``data``."""

from __future__ import annotations

import logging
from datetime import timedelta

from flask import Flask

from .auth import AdminSessionInterface, admin_token, metrics_public, secret_key

__all__ = ["init_app", "admin_token", "metrics_public"]
log = logging.getLogger("bridge.admin")
SHORT_TOKEN = 24


def init_app(app: Flask) -> None:
    """Register the dashboard and the API; sign sessions with a key derived from the token."""
    from . import api, dashboard

    bridge = app.extensions["bridge"]
    if bridge.admin_token:
        app.secret_key = secret_key(bridge.admin_token)
        if len(bridge.admin_token) < SHORT_TOKEN:
            log.warning("BRIDGE_ADMIN_TOKEN is short (%d characters): use %d or more random "
                        "characters", len(bridge.admin_token), SHORT_TOKEN)
    app.session_interface = AdminSessionInterface()
    app.config.update(SESSION_COOKIE_NAME="bridge_admin", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_PATH="/admin",
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=12))
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(api.bp)
