"""The dashboard's pages with Flask's test client (the browser tests drive the same pages in
Chromium): what each page shows, untrusted payloads escaped, errors as pages."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from .conftest import REPO, ratioready_job, sign_in


@pytest.fixture
def signed_in(rig):
    client = rig.app().test_client()
    csrf = sign_in(client, rig.token)
    return client, csrf


def text(response) -> str:
    return response.get_data(as_text=True)


def test_an_empty_bridge_shows_empty_pages(rig, signed_in):
    client, _ = signed_in
    summary = text(client.get("/admin/"))
    assert "No events in this period." in summary and "No credits reported." in summary
    assert "No events match." in text(client.get("/admin/events"))


def test_a_hostile_payload_is_shown_as_text_never_as_markup(rig, signed_in):
    client, csrf = signed_in
    payload = ratioready_job(1)
    payload["job_id"] = '<script>alert("job")</script>'
    payload["note"] = "</pre><img src=x onerror=alert(1)>"
    event_id = rig.post(client, "ratioready", payload)
    rig.burst()
    pages = [text(client.get("/admin/events")), text(client.get(f"/admin/events/{event_id}")),
             text(client.post(f"/admin/events/{event_id}/preview", data={"csrf": csrf}))]
    for page in pages:
        assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#34;job&#34;)&lt;/script&gt;" in pages[0]
    assert "&lt;/pre&gt;&lt;img src=x onerror=alert(1)&gt;" in pages[1]


def test_the_event_page_shows_each_try_and_the_flat_event_sent(rig, signed_in):
    client, _ = signed_in
    rig.receiver.answer("/hook", 503)
    event_id = rig.post(client, "ratioready", ratioready_job(1, credits=31))
    rig.burst()
    page = text(client.get(f"/admin/events/{event_id}"))
    assert 'class="badge s-failing"' in page
    assert re.search(r'data-label="HTTP">503<', page)
    assert "HTTP 503" in page and "next try" in page
    assert '<meta http-equiv="refresh" content="3">' in page  # reloads while pending
    assert "&#34;credits&#34;: 31" in page  # the flat event last sent


def test_an_event_without_a_route_is_stored(make_rig):
    rig = make_rig(destinations=("hook",), sources=("ratioready", "zupertry"))
    rig.settings.routes = {"ratioready": ("hook",)}
    client = rig.app().test_client()
    sign_in(client, rig.token)
    from .conftest import zupertry_job

    event_id = rig.post(client, "zupertry", zupertry_job(1))
    page = text(client.get(f"/admin/events/{event_id}"))
    assert 's-stored">stored' in page and "No deliveries: no route" in page


def test_preview_says_filtered_and_which_rules_were_tried(rig, signed_in):
    client, csrf = signed_in
    event_id = rig.post(client, "ratioready", ratioready_job(1, status="processing"))
    page = text(client.post(f"/admin/events/{event_id}/preview", data={"csrf": csrf}))
    assert "Filtered: no rule matched (tried: completed, failed)." in page


def test_preview_shows_a_mapping_failure(rig, signed_in, tmp_path):
    client, csrf = signed_in
    broken = tmp_path / "broken.yaml"
    broken.write_text("source: ratioready\nrules:\n  - name: all\n    event_type: job.x\n"
                      "    fields:\n      credits: \"to_number('1e999')\"\n")
    rig.mappings.paths["ratioready"] = broken
    rig.mappings.interval = 0
    event_id = rig.post(client, "ratioready", ratioready_job(1))
    page = text(client.post(f"/admin/events/{event_id}/preview", data={"csrf": csrf}))
    assert "Mapping failed:" in page and "field &#39;credits&#39; got inf" in page


def test_errors_are_pages_with_the_reason(rig, signed_in):
    client, csrf = signed_in
    missing = client.get("/admin/events/evt_nothing")
    assert missing.status_code == 404 and "no event evt_nothing" in text(missing)
    bad = client.get("/admin/events?status=nonsense")
    assert bad.status_code == 400 and "unknown status" in text(bad)
    when = client.post("/admin/replay-dead", data={"csrf": csrf, "since": "yesterday"})
    assert when.status_code == 400 and "is not a date" in text(when)
    assert client.post("/admin/events/evt_nothing/replay",
                       data={"csrf": csrf}).status_code == 404


def test_paging_links_carry_the_filters(rig, signed_in):
    client, _ = signed_in
    for n in range(4):
        rig.post(client, "ratioready", ratioready_job(n))
    page = text(client.get("/admin/events?source=ratioready&limit=3"))
    [older] = re.findall(r'<a rel="next" href="([^"]+)"', page)
    assert "source=ratioready" in older and "before=evt_" in older
    last = text(client.get(older.replace("&amp;", "&") + "&limit=3"))
    assert last.count('class="mono" href="/admin/events/evt_') == 1
    assert 'rel="next"' not in last and "Newest" in last


def test_bulk_replay_from_the_form_reports_how_many(rig, signed_in):
    client, csrf = signed_in
    rig.receiver.answer("/hook", 410)
    for n in range(3):
        rig.post(client, "ratioready", ratioready_job(n))
    rig.burst()
    response = client.post("/admin/replay-dead", data={"csrf": csrf, "source": "ratioready",
                                                       "since": "2000-01-01"})
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/events?status=dead&source=ratioready"
    assert "Queued again: 3 dead letters of ratioready since 2000-01-01." in text(
        client.get(response.headers["Location"]))


# -- docs and packaging stay in step with the code -------------------------------------------
def test_the_openapi_file_describes_every_api_route(rig):
    spec = yaml.safe_load((REPO / "docs" / "admin-api.openapi.yaml").read_text())
    app = rig.app()
    routes = {(re.sub(r"<(\w+)>", r"{\1}", rule.rule.removeprefix("/admin/api")), method.lower())
              for rule in app.url_map.iter_rules() if rule.rule.startswith("/admin/api/")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, item in spec["paths"].items() for method in item
                  if method in ("get", "post")}
    assert routes == documented


def test_readme_documents_the_new_settings_and_the_code_reads_them():
    readme = (REPO / "README.md").read_text()
    assert "## Admin dashboard and API" in readme
    code = "".join(p.read_text() for p in (REPO / "bridge").rglob("*.py"))
    for name in ("BRIDGE_ADMIN_TOKEN", "BRIDGE_METRICS_PUBLIC", "BRIDGE_LOG_FORMAT"):
        assert f"| `{name}` |" in readme
        assert f'"{name}"' in code


def test_templates_and_stylesheet_are_package_data():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["bridge"]
    assert "admin/templates/*.html" in patterns and "admin/static/*" in patterns
    assert list((REPO / "bridge" / "admin" / "templates").glob("*.html"))
    assert any("prometheus-client" in d for d in data["project"]["dependencies"])
    assert any(d.startswith("playwright") for d in data["project"]["optional-dependencies"]
               ["test"])
