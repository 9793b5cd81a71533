"""Who may use the admin dashboard, its API and the metrics: whoever holds
``BRIDGE_ADMIN_TOKEN``. The token is read once, when the app is built; none set: all of it
is off and says how to turn it on.

- The JSON API and ``/metrics`` take ``Authorization: Bearer <token>`` (no cookie, so no
  CSRF to fear).
- The dashboard signs in with a form that posts the token, then keeps Flask's signed
  session cookie (HttpOnly, SameSite=Lax, Path=/admin, Secure when the request came over
  https, directly or as X-Forwarded-Proto from a proxy). Every form that changes anything
  carries the session's CSRF token, checked with a constant-time comparison.
- The session is signed with a key derived from the token (HMAC with a fixed label): every
  process agrees without another setting, and a new token signs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from flask import Response, jsonify, request, session
from flask.sessions import SecureCookieSessionInterface

TOKEN_VAR = "BRIDGE_ADMIN_TOKEN"
METRICS_PUBLIC_VAR = "BRIDGE_METRICS_PUBLIC"
MAX_TOKEN = 1024
HOW_TO_TURN_ON = ("set BRIDGE_ADMIN_TOKEN to a long random value (for example the output "
                  "of: python3 -c \"import secrets; print(secrets.token_urlsafe(32))\") "
                  "and restart the bridge")


def admin_token(environ: Mapping[str, str]) -> str | None:
    return (environ.get(TOKEN_VAR) or "").strip() or None


def metrics_public(environ: Mapping[str, str]) -> bool:
    return (environ.get(METRICS_PUBLIC_VAR) or "").strip().lower() in ("1", "true", "yes", "on")


def secret_key(token: str) -> bytes:
    """The session signing key: the same in every process that has the same token."""
    return hmac.new(token.encode("utf-8"), b"bridge admin session key v1", hashlib.sha256).digest()


def token_matches(bridge: Any, given: str | None) -> bool:
    expected = bridge.admin_token
    if not expected or not given or len(given) > MAX_TOKEN:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def off_message(what: str) -> str:
    return f"the admin {what} is off: {HOW_TO_TURN_ON}"


def bearer_refusal(bridge: Any, what: str = "API") -> Response | None:
    """None if the request carries the admin token as a bearer token; else the JSON answer
    (404 when no token is configured, 401 when it is missing or wrong)."""
    if not bridge.admin_token:
        extra = " (or BRIDGE_METRICS_PUBLIC=true)" if what == "metrics" else ""
        response = jsonify(error=off_message(what) + extra)
        response.status_code = 404
        return response
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token_matches(bridge, given.strip()):
        return None
    response = jsonify(error="missing or wrong admin token: send the header "
                             "'Authorization: Bearer <BRIDGE_ADMIN_TOKEN>'")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer realm="bridge admin"'
    return response


# -- the dashboard's session -----------------------------------------------------------------
def signed_in() -> bool:
    return session.get("admin") is True


def sign_in() -> None:
    session.clear()  # a new session (and CSRF token) at every sign-in: no fixation
    session["admin"] = True
    session["csrf"] = secrets.token_urlsafe(32)
    session.permanent = True


def sign_out() -> None:
    session.clear()


def csrf_token() -> str:
    """This session's CSRF token (made on first use, e.g. by the sign-in form)."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_refusal(form: Mapping[str, str]) -> tuple[int, str] | None:
    """None if the form carries this session's CSRF token; else (400 if missing, 403 if
    wrong) and why."""
    given = form.get("csrf") or ""
    if not given:
        return 400, "this form has no CSRF token: reload the page and try again"
    expected = session.get("csrf") or ""
    if not expected or not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
        return 403, "this form's CSRF token is wrong or expired: reload the page and try again"
    return None


def request_is_https() -> bool:
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.is_secure or forwarded == "https"


class AdminSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, Secure whenever the request came over https."""

    def get_cookie_secure(self, app: Any) -> bool:
        return bool(super().get_cookie_secure(app)) or request_is_https()
