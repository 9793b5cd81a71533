"""Who gets in: no token configured → everything admin is off and says how to turn it on;
a wrong token → 401; the sign-in form and its cookie (HttpOnly, SameSite=Lax, Secure over
https); CSRF on every form that changes something; the bearer token for the API."""

from __future__ import annotations

import re

import pytest
from werkzeug.http import parse_set_header

from .conftest import bearer, csrf_of, ratioready_job, sign_in


def cookie_header(response) -> str:
    [cookie] = [c for c in response.headers.getlist("Set-Cookie")
                if c.startswith("bridge_admin=")]
    return cookie


def attributes(cookie: str) -> dict[str, str]:
    parts = [p.strip() for p in cookie.split(";")[1:]]
    return {p.split("=", 1)[0].lower(): (p.split("=", 1)[1] if "=" in p else "") for p in parts}


# -- off without a token ----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/admin/", "/admin/events", "/admin/login",
                                  "/admin/events/evt_x"])
def test_without_a_token_the_dashboard_is_off_and_says_how_to_turn_it_on(make_rig, path):
    client = make_rig(token=None).app().test_client()
    response = client.get(path)
    assert response.status_code == 404
    assert "BRIDGE_ADMIN_TOKEN" in response.get_data(as_text=True)
    assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize("method, path", [("GET", "/admin/api/events"),
                                          ("GET", "/admin/api/summary"),
                                          ("POST", "/admin/api/replay-dead"),
                                          ("GET", "/metrics")])
def test_without_a_token_the_api_and_metrics_are_off(make_rig, method, path):
    client = make_rig(token=None).app().test_client()
    response = client.open(path, method=method, headers=bearer("anything-at-all"))
    assert response.status_code == 404
    assert "set BRIDGE_ADMIN_TOKEN" in response.get_json()["error"]


def test_without_a_token_a_post_changes_nothing(make_rig):
    rig = make_rig(token=None)
    client = rig.app().test_client()
    rig.receiver.answer("/hook", 410)
    rig.post(client, "ratioready", ratioready_job(1))
    rig.burst()
    assert client.post("/admin/replay-dead", data={"csrf": "x"}).status_code == 404
    assert rig.store.search_events(status="dead")


# -- the API's bearer token -------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"},
                                     {"Authorization": "Basic d3Jvbmc6d3Jvbmc="},
                                     {"Authorization": "Bearer "},
                                     {"Authorization": "Bearer " + "é" * 10}])
def test_the_api_refuses_a_missing_or_wrong_token_with_401(rig, headers):
    response = rig.app().test_client().get("/admin/api/events", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in response.get_json()["error"]


def test_the_api_does_not_take_the_dashboard_cookie(rig):
    client = rig.app().test_client()
    sign_in(client, rig.token)
    assert client.get("/admin/api/events").status_code == 401
    assert client.get("/admin/api/events", headers=bearer(rig.token)).status_code == 200


# -- signing in ---------------------------------------------------------------------------------
def test_the_dashboard_sends_a_stranger_to_the_sign_in_form(rig):
    client = rig.app().test_client()
    response = client.get("/admin/events?status=dead")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/admin/login?next=")
    form = client.get(response.headers["Location"])
    assert form.status_code == 200 and 'type="password"' in form.get_data(as_text=True)


def test_a_wrong_token_is_refused_with_401(rig):
    client = rig.app().test_client()
    form = client.get("/admin/login")
    response = client.post("/admin/login", data={"csrf": csrf_of(form), "token": "wrong"})
    assert response.status_code == 401
    assert "not the admin token" in response.get_data(as_text=True)
    assert client.get("/admin/events").status_code == 302  # still outside


def test_the_right_token_signs_in_with_a_safe_cookie_and_goes_where_asked(rig):
    client = rig.app().test_client()
    form = client.get("/admin/login?next=/admin/events%3Fstatus%3Ddead")
    response = client.post("/admin/login", data={
        "csrf": csrf_of(form), "token": rig.token, "next": "/admin/events?status=dead"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/events?status=dead"
    cookie = attributes(cookie_header(response))
    assert "httponly" in cookie and cookie["samesite"] == "Lax" and cookie["path"] == "/admin"
    assert "secure" not in cookie  # plain http (local); see the https tests
    assert rig.token not in cookie_header(response)
    assert client.get("/admin/events").status_code == 200


@pytest.mark.parametrize("next_url", ["https://evil.example/", "//evil.example/admin/",
                                      "/hooks/ratioready", "/admin\\@evil.example"])
def test_sign_in_never_redirects_off_the_dashboard(rig, next_url):
    client = rig.app().test_client()
    form = client.get("/admin/login")
    response = client.post("/admin/login", data={"csrf": csrf_of(form), "token": rig.token,
                                                 "next": next_url})
    assert response.headers["Location"] == "/admin/"


@pytest.mark.parametrize("kwargs", [{"base_url": "https://bridge.example"},
                                    {"headers": {"X-Forwarded-Proto": "https"}}])
def test_the_cookie_is_secure_when_the_request_came_over_https(rig, kwargs):
    client = rig.app().test_client()
    form = client.get("/admin/login", **kwargs)
    response = client.post("/admin/login", data={"csrf": csrf_of(form), "token": rig.token},
                           **kwargs)
    assert response.status_code == 302
    assert "secure" in attributes(cookie_header(response))


def test_signing_out_ends_the_session(rig):
    client = rig.app().test_client()
    csrf = sign_in(client, rig.token)
    assert client.post("/admin/logout", data={"csrf": csrf}).status_code == 302
    assert client.get("/admin/events").status_code == 302


def test_a_session_from_another_token_is_worthless(rig):
    client = rig.app().test_client()
    sign_in(client, rig.token)
    cookie = client.get_cookie("bridge_admin", path="/admin").value
    other = rig.app(BRIDGE_ADMIN_TOKEN="another-token-" + "x" * 20).test_client()
    other.set_cookie("bridge_admin", cookie, path="/admin")
    assert other.get("/admin/events").status_code == 302


def test_every_process_with_the_same_token_accepts_the_session(rig):
    client = rig.app().test_client()
    sign_in(client, rig.token)
    cookie = client.get_cookie("bridge_admin", path="/admin").value
    second_process = rig.app().test_client()
    second_process.set_cookie("bridge_admin", cookie, path="/admin")
    assert second_process.get("/admin/events").status_code == 200


def test_pages_forbid_framing_scripts_and_caching(rig):
    client = rig.app().test_client()
    sign_in(client, rig.token)
    response = client.get("/admin/")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "script-src" not in policy  # no script may run
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "no-store" in parse_set_header(response.headers["Cache-Control"])


# -- CSRF on every state-changing form ---------------------------------------------------------
@pytest.fixture
def dead_event(rig):
    """An app, a signed-in client and a dead letter."""
    app = rig.app()
    client = app.test_client()
    rig.receiver.answer("/hook", 410)
    event_id = rig.post(client, "ratioready", ratioready_job(1))
    rig.burst()
    assert rig.status(event_id) == "dead"
    csrf = sign_in(client, rig.token)
    return client, csrf, event_id


FORMS = ["/admin/events/{id}/replay", "/admin/events/{id}/preview", "/admin/replay-dead",
         "/admin/logout"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("given, status", [(None, 400), ("", 400), ("wrong", 403)])
def test_a_form_without_the_right_csrf_token_is_refused_and_changes_nothing(
        rig, dead_event, form, given, status):
    client, csrf, event_id = dead_event
    data = {"source": "ratioready"} if given is None else {"csrf": given}
    response = client.post(form.format(id=event_id), data=data)
    assert response.status_code == status
    assert "CSRF" in response.get_data(as_text=True)
    assert rig.status(event_id) == "dead"
    assert client.get("/admin/events").status_code == 200  # still signed in


def test_the_sign_in_form_needs_its_csrf_token_too(rig):
    client = rig.app().test_client()
    client.get("/admin/login")
    assert client.post("/admin/login", data={"token": rig.token}).status_code == 400
    assert client.post("/admin/login", data={"token": rig.token,
                                             "csrf": "forged"}).status_code == 403
    assert client.get("/admin/events").status_code == 302


def test_a_csrf_token_of_another_session_is_refused(rig, dead_event):
    client, csrf, event_id = dead_event
    other = rig.app().test_client()
    other_csrf = sign_in(other, rig.token)
    assert other_csrf != csrf
    assert client.post(f"/admin/events/{event_id}/replay",
                       data={"csrf": other_csrf}).status_code == 403


@pytest.mark.parametrize("form", FORMS)
def test_every_form_on_the_pages_carries_the_csrf_token(rig, dead_event, form):
    client, csrf, event_id = dead_event
    pages = "".join(client.get(path).get_data(as_text=True) for path in (
        "/admin/", "/admin/events?status=dead", f"/admin/events/{event_id}"))
    action = form.format(id=event_id)
    forms = re.findall(r'<form method="post" action="([^"]+)"[^>]*>\s*<input type="hidden" '
                       r'name="csrf" value="([^"]+)"', pages)
    assert (action, csrf) in forms


def test_with_the_csrf_token_the_actions_work(rig, dead_event):
    client, csrf, event_id = dead_event
    response = client.post(f"/admin/events/{event_id}/replay", data={"csrf": csrf})
    assert response.status_code == 302 and rig.status(event_id) == "queued"
    assert client.post(f"/admin/events/{event_id}/preview",
                       data={"csrf": csrf}).status_code == 200
