"""``GET /metrics``: names, labels and values after real callbacks and deliveries; the
store gauges; the admin token (or BRIDGE_METRICS_PUBLIC=true)."""

from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.errors import StoreUnavailable

from .conftest import bearer, hmac_hex, ratioready_job


def scrape(client, token: str | None) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics as {(name, sorted labels): value}."""
    response = client.get("/metrics", headers=bearer(token) if token else {})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before, after, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def two_destinations(make_rig):
    return make_rig(destinations=("hook", "backup"), sources=("ratioready",))


def test_events_deliveries_and_queue_are_counted(two_destinations):
    rig = two_destinations
    app = rig.app()
    client = app.test_client()
    before = scrape(client, rig.token)
    rig.receiver.answer("/backup", 503)
    for n in range(3):
        rig.post(client, "ratioready", ratioready_job(n))
    rig.post(client, "ratioready", ratioready_job(0))  # duplicate
    rig.post(client, "ratioready", ratioready_job(7, status="processing"))  # filtered
    body = json.dumps(ratioready_job(8)).encode()
    client.post("/hooks/ratioready", data=body,
                headers={"X-RatioReady-Signature": hmac_hex("forged", body)})  # 401
    client.post("/hooks/ratioready", data=b"[1]", headers={
        "X-RatioReady-Signature": hmac_hex(rig.secrets["RATIOREADY_WEBHOOK_SECRET"], b"[1]")})
    client.post("/hooks/made-up-1", data=b"{}")
    client.post("/hooks/made-up-2", data=b"{}")
    client.post("/hooks/ratioready", data=b"x" * (rig.settings.max_body_bytes + 1))
    rig.burst()
    after = scrape(client, rig.token)

    events = "bridge_events_received_total"
    assert delta(before, after, events, source="ratioready", outcome="accepted") == 4
    assert delta(before, after, events, source="ratioready", outcome="duplicate") == 1
    assert delta(before, after, events, source="ratioready", outcome="rejected_401") == 1
    assert delta(before, after, events, source="ratioready", outcome="rejected_400") == 1
    assert delta(before, after, events, source="ratioready", outcome="rejected_413") == 1
    assert delta(before, after, events, source="unknown", outcome="rejected_404") == 2
    assert not [k for k in after if "made-up" in str(k)]  # no label per made-up name

    deliveries = "bridge_deliveries_total"
    assert delta(before, after, deliveries, destination="hook", outcome="done") == 3
    assert delta(before, after, deliveries, destination="hook", outcome="filtered") == 1
    assert delta(before, after, deliveries, destination="backup", outcome="retry") == 3
    assert delta(before, after, deliveries, destination="backup", outcome="filtered") == 1
    assert delta(before, after, "bridge_delivery_duration_seconds_count",
                 destination="hook") == 3
    assert delta(before, after, "bridge_delivery_duration_seconds_bucket",
                 destination="hook", le="+Inf") == 3
    assert delta(before, after, "bridge_delivery_duration_seconds_sum", destination="hook") > 0

    assert value(after, "bridge_store_up") == 1
    assert value(after, "bridge_queue_depth", destination="backup") == 3
    assert value(after, "bridge_queue_depth", destination="hook") == 0
    assert value(after, "bridge_oldest_pending_age_seconds", destination="backup") > 0
    assert value(after, "bridge_oldest_pending_age_seconds", destination="hook") == 0
    assert value(after, "bridge_deliveries", destination="hook", state="done") == 3
    assert value(after, "bridge_deliveries", destination="backup", state="pending") == 3
    assert value(after, "bridge_deliveries", destination="backup", state="filtered") == 1
    assert value(after, "bridge_dead_letters", destination="hook") == 0
    assert value(after, "bridge_events", source="ratioready", status="failing") == 3
    assert value(after, "bridge_events", source="ratioready", status="filtered") == 1


def test_dead_letters_are_a_gauge_from_the_store(rig):
    client = rig.app().test_client()
    rig.receiver.answer("/hook", 410)
    rig.post(client, "ratioready", ratioready_job(1))
    before = scrape(client, rig.token)
    rig.burst()
    after = scrape(client, rig.token)
    assert value(after, "bridge_dead_letters", destination="hook") == 1
    assert value(after, "bridge_events", source="ratioready", status="dead") == 1
    assert delta(before, after, "bridge_deliveries_total", destination="hook",
                 outcome="dead") == 1


def test_the_gauges_are_the_same_whichever_process_answers(rig):
    first, second = rig.app().test_client(), rig.app().test_client()
    rig.post(first, "ratioready", ratioready_job(1))
    one, two = scrape(first, rig.token), scrape(second, rig.token)
    for name in ("bridge_queue_depth", "bridge_deliveries", "bridge_events"):
        assert {k: v for k, v in one.items() if k[0] == name} == {
            k: v for k, v in two.items() if k[0] == name} != {}


def test_metrics_need_the_admin_token(rig):
    client = rig.app().test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer("wrong")).status_code == 401
    assert client.get("/metrics", headers=bearer(rig.token)).status_code == 200


@pytest.mark.parametrize("token", [None, "generate"])
def test_public_metrics_need_no_token(make_rig, token):
    rig = make_rig(token=token)
    client = rig.app(BRIDGE_METRICS_PUBLIC="true").test_client()
    assert "bridge_store_up 1.0" in client.get("/metrics").get_data(as_text=True)


def test_a_store_outage_is_a_gauge_not_an_error(rig, monkeypatch):
    app = rig.app()

    def down():
        raise StoreUnavailable("database unavailable: test")

    monkeypatch.setattr(app.extensions["bridge"].store, "totals", down)
    samples = scrape(app.test_client(), rig.token)
    assert value(samples, "bridge_store_up") == 0
    assert not [k for k in samples if k[0] == "bridge_queue_depth"]


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(rig):
    client = rig.app().test_client()
    response = client.get("/metrics", headers={
        **bearer(rig.token), "Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")
