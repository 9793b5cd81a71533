"""The dashboard: server-rendered pages under ``/admin/`` (Jinja, autoescaped: payloads are
untrusted), one stylesheet, no JavaScript."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response

from . import auth, data
from .data import BadRequest

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
               static_folder="static", static_url_path="/static")
OPEN = {"admin.login", "admin.static"}  # reachable before signing in


def _bridge() -> Any:
    return current_app.extensions["bridge"]


@bp.before_request
def guard() -> Any:
    bridge = _bridge()
    if request.endpoint == "admin.static":
        return None
    if not bridge.admin_token:
        return render_template("off.html", how=auth.HOW_TO_TURN_ON), 404
    if request.endpoint in OPEN or auth.signed_in():
        if request.method == "POST":
            refused = auth.csrf_refusal(request.form)
            if refused is not None:
                return _page_error(*refused)
        return None
    return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))


@bp.after_request
def headers(response: Response) -> Response:
    return secure_headers(response)


def secure_headers(response: Response) -> Response:
    response.headers.setdefault(
        "Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.endpoint != "admin.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_template_filter("pretty")
def pretty(value: Any) -> str:
    """JSON for people (a plain str: autoescaping still applies)."""
    return json.dumps(value, indent=2, ensure_ascii=False)


@bp.app_template_filter("when")
def when(iso_text: str | None) -> str:
    return iso_text.replace("T", " ").replace("Z", " UTC") if iso_text else "-"


@bp.context_processor
def page_globals() -> dict[str, Any]:
    bridge = _bridge()
    return {"csrf_token": auth.csrf_token if bridge.admin_token else (lambda: ""),
            "sources": sorted(bridge.settings.sources), "statuses": data.STATUS_FILTERS,
            "signed_in": bool(bridge.admin_token) and auth.signed_in()}


# -- signing in and out ------------------------------------------------------------------------
@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if auth.signed_in():
            return redirect(target)
        return render_template("login.html", next=target, error=None)
    if not auth.token_matches(_bridge(), request.form.get("token")):
        return render_template("login.html", next=target,
                               error="That is not the admin token."), 401
    auth.sign_in()
    return redirect(target)


@bp.post("/logout")
def logout() -> Response:
    auth.sign_out()
    return redirect(url_for("admin.login"))


def _safe_next(value: str | None) -> str:
    """Only a path of this dashboard: never another site (an open redirect)."""
    parts = urlsplit(value or "")
    if (value and not parts.scheme and not parts.netloc and "\\" not in value
            and parts.path.startswith("/admin/")):
        return value
    return url_for("admin.overview")


# -- pages ---------------------------------------------------------------------------------
@bp.get("/")
def overview() -> str:
    return render_template("summary.html", summary=data.summary(_bridge()))


@bp.get("/events")
def events() -> Any:
    try:
        filters = data.parse_filters(request.args)
    except BadRequest as err:
        return _page_error(400, str(err))
    rows, cursor = data.list_events(_bridge(), filters)
    return render_template("events.html", rows=[data.event_row(r) for r in rows],
                           filters=filters, cursor=cursor)


@bp.get("/events/<event_id>")
def event(event_id: str) -> Any:
    return _event_page(event_id)


def _event_page(event_id: str, preview: dict | None = None) -> Any:
    detail = data.event_detail(_bridge(), event_id)
    if detail is None:
        return _page_error(404, f"no event {event_id[:64]}")
    return render_template("event.html", event=detail, preview=preview)


# -- actions (POST, CSRF-checked in guard) --------------------------------------------------------
@bp.post("/events/<event_id>/replay")
def replay(event_id: str) -> Any:
    count = data.replay_event(_bridge(), event_id)
    if count is None:
        return _page_error(404, f"no event {event_id[:64]}")
    flash(f"Queued again: {count} deliver{'y' if count == 1 else 'ies'} "
          "(with the current mapping).")
    return redirect(url_for("admin.event", event_id=event_id))


@bp.post("/events/<event_id>/preview")
def preview(event_id: str) -> Any:
    result = data.preview(_bridge(), event_id)
    if result is None:
        return _page_error(404, f"no event {event_id[:64]}")
    return _event_page(event_id, preview=result)


@bp.post("/replay-dead")
def replay_dead() -> Any:
    source = (request.form.get("source") or "").strip() or None
    try:
        since = data.parse_since(request.form.get("since"))
    except BadRequest as err:
        return _page_error(400, str(err))
    count = data.replay_dead(_bridge(), source, since)
    flash(f"Queued again: {count} dead letter{'' if count == 1 else 's'}"
          f"{' of ' + source if source else ''}"
          f"{' since ' + request.form['since'] if since is not None else ''}.")
    return redirect(url_for("admin.events", status="dead", source=source))


def _page_error(status: int, message: str) -> tuple[str, int]:
    return render_template("error.html", status=status, message=message), status
