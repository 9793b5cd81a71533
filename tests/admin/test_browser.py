"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright):
a real bridge server with its delivery worker, a real SQLite file and a real receiving
server that refuses (410) until the test flips it. Screenshots of the main pages go to
artifacts/screenshots/ (not committed).

Skipped, saying why, when Playwright or Chromium is missing; .ci/run installs Chromium."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from werkzeug.serving import make_server

from .conftest import REPO, ratioready_job, wait_for, zupertry_job

CHROMIUM = Path(os.environ.get("BRIDGE_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
SHOTS = REPO / "artifacts" / "screenshots"
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="Playwright is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (as .ci/run does)")
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=CHROMIUM_ARGS, timeout=30_000)
    except Exception as err:  # noqa: BLE001 - any launch failure is a reason to skip
        playwright.stop()
        pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(err).splitlines()[0]}")
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield browser
    browser.close()
    playwright.stop()


class Server:
    """The bridge app with its delivery worker on a real loopback port (werkzeug)."""

    def __init__(self, app):
        self.http = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.thread.join(5)


@pytest.fixture
def bridge(rig) -> Iterator[tuple[object, Server]]:
    rig.receiver.answer("/hook", 410)  # refuse: every delivery becomes a dead letter
    server = Server(rig.app(start_worker=True))
    yield rig, server
    server.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.dialogs = dialogs
    yield page
    context.close()


def post(rig, server: Server, source: str, payload: dict) -> str:
    body, headers = rig.signed(source, payload)
    response = requests.post(f"{server.url}/hooks/{source}", data=body, headers=headers,
                             timeout=5)
    assert response.status_code == 200, response.text
    return response.json()["event_id"]


def sign_in(page, server: Server, token: str) -> None:
    page.goto(f"{server.url}/admin/")
    assert "/admin/login" in page.url
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/admin/")


def reload_until(page, predicate, timeout: float = 15.0, what: str = "the page") -> None:
    def check() -> bool:
        page.reload()
        return predicate()

    wait_for(check, timeout=timeout, interval=0.2, message=what)


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def event_rows(page) -> int:
    return page.locator("table.events tbody tr a.mono").count()


def test_an_operator_finds_a_dead_letter_replays_it_and_bulk_replays_the_rest(bridge, page):
    rig, server = bridge
    first = post(rig, server, "ratioready", ratioready_job(1, credits=12))
    second = post(rig, server, "ratioready", ratioready_job(2))
    post(rig, server, "ratioready", ratioready_job(3, status="processing"))  # filtered
    hostile = zupertry_job(1)
    hostile["data"]["job_id"] = "<img src=x onerror=alert(1)>"
    third = post(rig, server, "zupertry", hostile)
    post(rig, server, "ratioready", ratioready_job(1, credits=12))  # a duplicate
    wait_for(lambda: len(rig.store.search_events(status="dead")) == 3, timeout=15,
             message="three dead letters")

    # a wrong token is refused, the right one lets in
    page.goto(f"{server.url}/admin/")
    page.fill("#token", "not-the-token")
    with page.expect_response(lambda r: r.request.method == "POST") as refused:
        page.click("button[type=submit]")
    assert refused.value.status == 401
    assert page.locator(".error").inner_text() == "That is not the admin token."
    shot(page, "login-refused")
    page.fill("#token", rig.token)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}/admin/")
    assert page.locator(".stat.bad .n").inner_text() == "3"  # dead letters waiting
    assert page.locator(".stat .n").first.inner_text() == "4"  # events received
    shot(page, "summary")

    # the events of the run, newest first; the hostile job id shown as text, never run
    page.click("nav >> text=Events")
    assert event_rows(page) == 4
    assert page.locator("table.events").get_by_text("<img src=x onerror=alert(1)>").count() == 1
    assert page.dialogs == []
    shot(page, "events")
    page.select_option("select[name=status]", "dead")
    page.click("#filters button")
    assert "status=dead" in page.url and event_rows(page) == 3
    page.fill("input[name=q]", "rr_job_1")
    page.click("#filters button")
    assert event_rows(page) == 1

    # one dead letter: its payload and its refused attempt
    page.click(f"text={first}")
    assert page.locator("#event-status").inner_text() == "dead"
    attempts = page.locator("#delivery-hook tbody tr")
    assert attempts.count() == 1 and "410" in attempts.first.inner_text()
    assert json.loads(page.locator("#payload").inner_text())["job_id"] == "rr_job_1"
    shot(page, "event-dead")

    # the hook is fixed: replay, and watch the event turn delivered
    rig.receiver.answer("/hook", 200)
    page.click("#replay")
    assert "Queued again: 1 delivery" in page.locator(".flash").inner_text()
    reload_until(page, lambda: page.locator("#event-status").inner_text() == "delivered",
                 what="the replayed event delivered")
    assert [row.split("\t")[2] for row in page.locator("#delivery-hook tbody tr")
            .all_inner_texts()] == ["410", "200"]
    page.click("details summary")
    assert json.loads(page.locator("#delivery-hook details pre").inner_text())["credits"] == 12
    shot(page, "event-delivered")

    # the mapping preview with the YAML as it is now
    page.click("#preview")
    result = page.locator("#preview-result")
    assert "rule completed" in result.inner_text() and '"job_id": "rr_job_1"' in \
        result.inner_text()
    shot(page, "event-preview")

    # bulk replay: every dead letter left (the second ratioready job and the zupertry one)
    page.goto(f"{server.url}/admin/events?status=dead")
    assert event_rows(page) == 2
    page.click("#replay-dead button")
    assert "Queued again: 2 dead letters" in page.locator(".flash").inner_text()
    reload_until(page, lambda: event_rows(page) == 0, what="no dead letter left")
    page.goto(f"{server.url}/admin/events?status=delivered")
    assert event_rows(page) == 3
    shot(page, "events-after-bulk-replay")
    assert {rig.status(e) for e in (first, second, third)} == {"delivered"}
    assert page.dialogs == []

    page.click("text=Sign out")
    page.wait_for_url("**/admin/login")


def test_the_pages_fit_a_phone_screen(bridge, browser):
    rig, server = bridge
    event_id = post(rig, server, "ratioready", ratioready_job(1))
    wait_for(lambda: rig.status(event_id) == "dead", timeout=15, message="a dead letter")
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    try:
        sign_in(page, server, rig.token)
        for name, path in (("summary", "/admin/"), ("events", "/admin/events"),
                           ("event", f"/admin/events/{event_id}")):
            page.goto(f"{server.url}{path}")
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{path} is {overflow}px wider than the phone"
            shot(page, f"phone-{name}")
    finally:
        context.close()
