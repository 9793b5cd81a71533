"""The admin JSON API under ``/admin/api/`` (``Authorization: Bearer <BRIDGE_ADMIN_TOKEN>``):
the dashboard's data and actions for scripts. Described in docs/admin-api.openapi.yaml."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from werkzeug.wrappers import Response

from . import auth, data
from .dashboard import secure_headers
from .data import BadRequest

bp = Blueprint("admin_api", __name__, url_prefix="/admin/api")


def _bridge() -> Any:
    return current_app.extensions["bridge"]


@bp.before_request
def guard() -> Response | None:
    return auth.bearer_refusal(_bridge(), "API")


@bp.after_request
def headers(response: Response) -> Response:
    return secure_headers(response)


@bp.errorhandler(BadRequest)
def bad_request(err: BadRequest) -> tuple[Response, int]:
    return _error(400, str(err))


@bp.get("/events")
def events() -> Response:
    filters = data.parse_filters(request.args)
    rows, cursor = data.list_events(_bridge(), filters)
    return jsonify(events=[data.event_row(row) for row in rows], next=cursor)


@bp.get("/events/<event_id>")
def event(event_id: str) -> Any:
    detail = data.event_detail(_bridge(), event_id)
    if detail is None:
        return _error(404, f"no event {event_id[:64]}")
    detail.pop("payload_text")
    return jsonify(detail)


@bp.post("/events/<event_id>/replay")
def replay(event_id: str) -> Any:
    count = data.replay_event(_bridge(), event_id)
    if count is None:
        return _error(404, f"no event {event_id[:64]}")
    return jsonify(event_id=event_id, queued=count)


@bp.post("/events/<event_id>/preview")
def preview(event_id: str) -> Any:
    result = data.preview(_bridge(), event_id)
    if result is None:
        return _error(404, f"no event {event_id[:64]}")
    return jsonify(result)


@bp.post("/replay-dead")
def replay_dead() -> Any:
    body = request.get_json(silent=True) if request.content_length else {}
    if not isinstance(body, dict):
        return _error(400, 'send a JSON object: {"source": "…", "since": "2026-11-20"} '
                           "(both optional)")
    source = body.get("source")
    if source is not None and not isinstance(source, str):
        return _error(400, "source must be a source name")
    count = data.replay_dead(_bridge(), source or None, data.parse_since(body.get("since")))
    return jsonify(queued=count)


@bp.get("/summary")
def summary() -> Any:
    try:
        hours = float(request.args.get("hours") or 24)
        days = int(request.args.get("days") or 7)
    except ValueError:
        return _error(400, "hours and days must be numbers")
    if not (0 < hours <= 24 * 90 and 1 <= days <= 366):
        return _error(400, "hours must be between 0 and 2160, days between 1 and 366")
    return jsonify(data.summary(_bridge(), hours=hours, days=days))


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status
