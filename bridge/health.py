"""``GET /healthz``: is the bridge up and can it reach its store?"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from . import __version__
from .errors import StoreUnavailable

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    bridge = current_app.extensions["bridge"]
    try:
        bridge.store.ping()
    except StoreUnavailable as err:
        return jsonify(status="unavailable", storage=str(err), version=__version__), 503
    return jsonify(status="ok", storage="ok", version=__version__), 200
