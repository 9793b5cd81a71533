"""The admin JSON API: every endpoint, its filters and paging cursor, and its actions, over
a real SQLite file and a real receiving server."""

from __future__ import annotations

import time

import pytest

from .conftest import bearer, ratioready_job, zupertry_job


@pytest.fixture
def api(rig):
    app = rig.app()
    client = app.test_client()

    def call(method: str, path: str, status: int = 200, **kwargs):
        response = client.open(f"/admin/api{path}", method=method,
                               headers=bearer(rig.token), **kwargs)
        assert response.status_code == status, response.get_data(as_text=True)
        assert response.is_json
        return response.get_json()

    call.client = client
    call.app = app
    return call


def feed(rig, client, count: int, source: str = "ratioready") -> list[str]:
    make = ratioready_job if source == "ratioready" else zupertry_job
    return [rig.post(client, source, make(n)) for n in range(count)]


def test_events_are_listed_newest_first_with_a_cursor_to_the_next_page(rig, api):
    ids = feed(rig, api.client, 5)
    first = api("GET", "/events?limit=2")
    assert [e["id"] for e in first["events"]] == ids[:-3:-1]
    second = api("GET", f"/events?limit=2&before={first['next']}")
    third = api("GET", f"/events?limit=2&before={second['next']}")
    assert [e["id"] for e in second["events"] + third["events"]] == ids[2::-1]
    assert third["next"] is None
    row = first["events"][0]
    assert set(row) == {"id", "source", "event_type", "dedup_key", "received_at", "duplicates",
                        "last_duplicate_at", "status"}
    assert (row["source"], row["dedup_key"], row["status"]) == (
        "ratioready", "rr_job_4:completed", "queued")
    assert row["received_at"].endswith("Z")


def test_events_filter_by_source_status_duplicate_and_text(rig, api):
    ratioready = feed(rig, api.client, 3)
    zupertry = feed(rig, api.client, 2, "zupertry")
    rig.post(api.client, "ratioready", ratioready_job(1))  # a duplicate of rr_job_1
    rig.receiver.answer("/hook", 410)
    rig.burst()  # everything dead at once (410)
    rig.post(api.client, "ratioready", ratioready_job(9))  # queued

    def ids(query: str) -> list[str]:
        return [e["id"] for e in api("GET", f"/events?{query}")["events"]]

    assert ids("source=zupertry") == zupertry[::-1]
    assert ids("status=dead&source=ratioready") == ratioready[::-1]
    assert len(ids("status=dead")) == 5
    assert len(ids("status=queued")) == len(ids("status=accepted")) == 1
    assert ids("status=duplicate") == [ratioready[1]]
    assert ids("q=zt_job_1") == [zupertry[1]]
    assert ids(f"q={ratioready[0][-8:]}") == [ratioready[0]]
    assert ids("status=delivered") == []


@pytest.mark.parametrize("query, message", [
    ("status=nope", "unknown status"), ("limit=0", "limit"), ("limit=x", "limit"),
    ("limit=201", "limit")])
def test_bad_filters_are_400_with_the_reason(api, query, message):
    assert message in api("GET", f"/events?{query}", status=400)["error"]


def test_one_event_shows_payload_deliveries_and_every_attempt(rig, api):
    event_id = rig.post(api.client, "ratioready", ratioready_job(1, credits=42))
    rig.receiver.answer("/hook", 503)
    rig.burst()
    rig.receiver.answer("/hook", 200)
    rig.drain(lambda: rig.status(event_id) == "delivered")
    event = api("GET", f"/events/{event_id}")
    assert (event["id"], event["source"], event["status"]) == (event_id, "ratioready",
                                                               "delivered")
    assert event["payload"]["job_id"] == "rr_job_1"
    assert "X-RatioReady-Signature" not in event["headers"]
    [delivery] = event["deliveries"]
    assert (delivery["destination"], delivery["state"], delivery["total_tries"]) == (
        "hook", "done", 2)
    assert delivery["sent"]["credits"] == 42 and delivery["sent"]["event_id"] == event_id
    first, second = delivery["attempts"]
    assert (first["number"], first["http_status"], first["state"]) == (1, 503, "pending")
    assert (second["number"], second["http_status"], second["state"]) == (2, 200, "done")
    assert first["duration_ms"] >= 0 and '"answer": 503' in first["response_excerpt"]
    assert first["error"] and second["error"] is None
    assert api("GET", "/events/evt_nothing", status=404)["error"]


def test_replay_queues_the_event_again_and_wakes_the_worker(rig, api):
    event_id = rig.post(api.client, "ratioready", ratioready_job(1))
    rig.receiver.answer("/hook", 410)
    rig.burst()
    assert rig.status(event_id) == "dead"
    woken = []
    api.app.extensions["bridge"].worker = type("Stub", (), {"notify": lambda s: woken.append(1)})()
    assert api("POST", f"/events/{event_id}/replay") == {"event_id": event_id, "queued": 1}
    assert woken == [1] and rig.status(event_id) == "queued"
    rig.receiver.answer("/hook", 200)
    rig.burst()
    assert rig.status(event_id) == "delivered"
    assert api("POST", "/events/evt_nothing/replay", status=404)["error"]


def test_bulk_replay_takes_a_source_and_a_date(rig, api):
    rig.receiver.answer("/hook", 410)
    ratioready = feed(rig, api.client, 2)
    zupertry = feed(rig, api.client, 1, "zupertry")
    rig.burst()
    future = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 2 * 86400))
    assert api("POST", "/replay-dead", json={"since": future}) == {"queued": 0}
    assert api("POST", "/replay-dead", json={"source": "zupertry"}) == {"queued": 1}
    assert [rig.status(e) for e in ratioready + zupertry] == ["dead", "dead", "queued"]
    assert api("POST", "/replay-dead", json={"since": time.time() - 60}) == {"queued": 2}
    assert api("POST", "/replay-dead") == {"queued": 0}
    assert "since" in api("POST", "/replay-dead", json={"since": "last week"}, status=400)["error"]
    assert api("POST", "/replay-dead", json=["x"], status=400)["error"]


def test_preview_runs_the_current_mapping_without_storing_or_sending(rig, api, tmp_path):
    done = rig.post(api.client, "ratioready", ratioready_job(1, credits=7))
    processing = rig.post(api.client, "ratioready", ratioready_job(2, status="processing"))
    result = api("POST", f"/events/{done}/preview")
    assert (result["outcome"], result["rule"]) == ("mapped", "completed")
    assert result["event"]["job_id"] == "rr_job_1" and result["event"]["credits"] == 7
    assert result["event"]["event_id"] == done
    filtered = api("POST", f"/events/{processing}/preview")
    assert (filtered["outcome"], filtered["event"], filtered["tried"]) == (
        "filtered", None, ["completed", "failed"])
    assert rig.store.delivery_payloads(done) == {d.id: None for d in
                                                 rig.store.deliveries_of(done)}
    assert rig.receiver.to("/hook") == []
    assert api("POST", "/events/evt_nothing/preview", status=404)["error"]


def test_preview_uses_the_yaml_as_it_is_now(rig, api, tmp_path):
    mapping = tmp_path / "ratioready.yaml"
    text = (rig.settings.sources["ratioready"].mapping).read_text()
    mapping.write_text(text)
    rig.mappings.paths["ratioready"] = mapping
    rig.mappings.interval = 0
    event_id = rig.post(api.client, "ratioready", ratioready_job(2, status="processing"))
    assert api("POST", f"/events/{event_id}/preview")["outcome"] == "filtered"
    mapping.write_text(text.replace("when: \"status == 'completed'\"",
                                    "when: \"status == 'processing'\""))
    result = api("POST", f"/events/{event_id}/preview")
    assert (result["outcome"], result["rule"]) == ("mapped", "completed")


def test_summary_counts_the_last_24_hours(rig, api):
    ids = feed(rig, api.client, 3)
    feed(rig, api.client, 1, "zupertry")
    rig.post(api.client, "ratioready", ratioready_job(0))  # duplicate
    rig.burst()
    rig.receiver.answer("/hook", 410)
    rig.store.replay(ids[0], ("hook",), time.time())
    rig.burst()
    summary = api("GET", "/summary")
    assert summary["hours"] == 24 and summary["events_total"] == 4
    assert summary["events"] == [{"source": "ratioready", "events": 3, "duplicates": 1},
                                 {"source": "zupertry", "events": 1, "duplicates": 0}]
    hook = {r["source"]: r for r in summary["deliveries"]}
    assert (hook["ratioready"]["done"], hook["ratioready"]["dead"]) == (2, 1)
    assert hook["ratioready"]["success_rate"] == pytest.approx(2 / 3, abs=1e-3)
    assert hook["zupertry"]["success_rate"] == 1.0
    assert summary["destinations"][0]["destination"] == "hook"
    assert summary["dead_letters"] == {"hook": 1} and summary["dead_letters_total"] == 1
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert {(c["day"], c["source"], c["credits"], c["events"])
            for c in summary["credits"]} == {(today, "ratioready", 30.0, 3),
                                             (today, "zupertry", 1.0, 1)}
    assert api("GET", "/summary?hours=1&days=2")["hours"] == 1
    assert api("GET", "/summary?hours=x", status=400)["error"]
    assert api("GET", "/summary?hours=-1", status=400)["error"]


def test_api_answers_are_never_cached_or_framed(api):
    response = api.client.get("/admin/api/summary", headers=bearer(api.app.extensions[
        "bridge"].admin_token))
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
