"""One destination, real HTTP: what is sent, what each answer leads to (done, retry,
dead letter), and how mapping results (filtered, mapping failed) are kept."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from email.utils import formatdate

from .conftest import (
    MAPPINGS,
    close,
    destination,
    hang,
    hmac_hex,
    n8n_not_registered,
    ok,
    sample,
    status,
    too_many,
)

WALL_ART = sample("ratioready", "wall_art_completed")


def test_success_sends_the_flat_job_event_with_headers(make_rig, receiver):
    rig = make_rig({"tool": destination(receiver.url("/hook/tool"),
                                        headers={"X-Bridge-Token": "tok-123"})})
    client = rig.app().test_client()
    event_id = rig.post(client, "ratioready", WALL_ART)
    assert receiver.count() == 0  # the web path never sends

    rig.drain(lambda: rig.done(event_id, "tool"))

    [request] = receiver.requests
    assert request.path == "/hook/tool"
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"] == event_id
    assert request.headers["User-Agent"].startswith("bridge/")
    assert request.headers["X-Bridge-Token"] == "tok-123"
    assert "X-Bridge-Signature" not in request.headers  # no signing_secret, no signature
    event = request.json
    assert event["schema_version"] == 1
    assert event["event_id"] == event_id
    assert event["source"] == "ratioready"
    assert event["event_type"] == "job.completed"
    assert event["status"] == "completed"
    assert event["job_id"] == "rr_job_7f3c9a21"
    assert event["job_type"] == "wall_art"
    assert event["credits"] == 89
    assert event["asset_count"] == 5
    assert event["asset_url_1"] == \
        "https://cdn.ratioready.com/jobs/rr_job_7f3c9a21/print/2x3-300dpi.jpg"
    assert event["asset_url_6"] is None
    assert event["preview_count"] == 20
    assert event["folder_url"] == \
        "https://drive.google.com/drive/folders/1A2b3C4d5E6f7G8h9I0jKlMnOpQrStUv"
    assert all(not isinstance(v, (dict, list)) for v in event.values()), "not flat"

    delivery = rig.delivery(event_id, "tool")
    assert (delivery.state, delivery.attempts, delivery.total_attempts) == ("done", 1, 1)
    assert delivery.last_status == 200
    [attempt] = rig.attempts(event_id, "tool")
    assert (attempt.http_status, attempt.state, attempt.error) == (200, "done", None)
    assert "Workflow was started" in attempt.response_excerpt

    rig.worker().run_burst()  # nothing is sent twice
    assert receiver.count() == 1


def test_signing_secret_signs_the_exact_body_bytes(make_rig, receiver):
    secret = "whsec-delivery-test-7d1e"
    rig = make_rig({"signed": destination(receiver.url("/signed"), signing_secret=secret)})
    event_id = rig.add()
    rig.drain(lambda: rig.done(event_id, "signed"))

    [request] = receiver.requests
    expected = "sha256=" + hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Bridge-Signature"] == expected
    # any other bytes (even the same JSON re-serialised) would not verify
    other = json.dumps(request.json).encode()
    assert other != request.body
    assert request.headers["X-Bridge-Signature"] != "sha256=" + hmac_hex(secret, other)


def test_retry_then_success_records_every_attempt(make_rig, receiver):
    rig = make_rig({"tool": destination(receiver.url("/flaky"))})
    receiver.script("/flaky", status(500, "boom"), status(500, "boom again"), ok())
    event_id = rig.add()

    rig.drain(lambda: rig.done(event_id, "tool"), timeout=5)

    attempts = rig.attempts(event_id, "tool")
    assert [a.http_status for a in attempts] == [500, 500, 200]
    assert [a.number for a in attempts] == [1, 2, 3]
    assert [a.state for a in attempts] == ["pending", "pending", "done"]
    assert "HTTP 500" in attempts[0].error and "boom" in attempts[0].error
    assert attempts[2].error is None
    assert receiver.ids("/flaky") == [event_id] * 3
    delivery = rig.delivery(event_id, "tool")
    assert (delivery.state, delivery.total_attempts, delivery.last_status) == ("done", 3, 200)
    times = [r.time for r in receiver.requests]
    assert times[1] - times[0] >= 0.15  # the schedule's first wait (0.2 s) was kept


def test_retry_after_seconds_is_honoured(make_rig, receiver):
    rig = make_rig({"tool": destination(receiver.url("/busy"))})  # schedule says 0.2 s
    receiver.script("/busy", too_many("1"), ok())
    event_id = rig.add()

    rig.drain(lambda: rig.done(event_id, "tool"), timeout=5)

    first, second = receiver.to("/busy")
    assert second.time - first.time >= 0.95
    attempts = rig.attempts(event_id, "tool")
    assert [a.http_status for a in attempts] == [429, 200]
    assert "HTTP 429" in attempts[0].error


def test_retry_after_http_date_is_honoured(make_rig, receiver):
    rig = make_rig({"tool": destination(receiver.url("/busy"))})
    event_id = rig.add()
    # an HTTP date 2 s ahead (whole seconds: between 1 and 2 s from the answer)
    receiver.script("/busy", too_many(formatdate(time.time() + 2, usegmt=True)), ok())

    rig.drain(lambda: rig.done(event_id, "tool"), timeout=6)

    first, second = receiver.to("/busy")
    assert second.time - first.time >= 0.9


def test_retry_after_past_max_age_is_a_dead_letter_at_once(make_rig, receiver):
    rig = make_rig({"tool": destination(receiver.url("/busy"))})  # max_age 3 s
    receiver.script("/busy", too_many("60"))
    event_id = rig.add()
    rig.drain(lambda: rig.delivery(event_id, "tool").state != "pending", timeout=3)
    delivery = rig.delivery(event_id, "tool")
    assert delivery.state == "dead"
    assert "gave up" in delivery.last_error
    assert receiver.count() == 1


def test_n8n_inactive_workflow_is_retried_and_said(make_rig, receiver):
    rig = make_rig({"n8n": destination(receiver.url("/webhook/abc"), kind="n8n")})
    receiver.script("/webhook/abc", n8n_not_registered("abc"), ok())
    event_id = rig.add()

    rig.drain(lambda: rig.done(event_id, "n8n"), timeout=5)

    first, second = rig.attempts(event_id, "n8n")
    assert first.http_status == 404
    assert first.state == "pending"
    assert "workflow inactive" in first.error
    assert "is not registered" in first.response_excerpt
    assert second.http_status == 200


def test_dead_letter_after_the_compressed_schedule(make_rig, receiver):
    rig = make_rig({"tool": destination(receiver.url("/down"))})
    receiver.default("/down", status(503, "maintenance"))
    event_id = rig.add()
    started = time.monotonic()

    rig.drain(lambda: rig.delivery(event_id, "tool").state != "pending", timeout=8)

    elapsed = time.monotonic() - started
    delivery = rig.delivery(event_id, "tool")
    assert delivery.state == "dead"
    assert "gave up" in delivery.last_error
    assert "HTTP 503" in delivery.last_error
    # tries at about 0, 0.2, 0.6, 1.1, 1.6, 2.1, 2.6 s; the next (3.1 s) is past max_age 3 s
    attempts = rig.attempts(event_id, "tool")
    # (5 or 6 when a slow machine delays the tries; without max_age there would be more)
    assert 5 <= len(attempts) <= 7
    assert receiver.count("/down") == len(attempts)
    assert [a.state for a in attempts] == ["pending"] * (len(attempts) - 1) + ["dead"]
    assert 2.0 <= elapsed < 4.5
    rig.worker().run_burst()
    assert receiver.count("/down") == len(attempts)  # a dead letter is not sent again


def test_400_is_a_dead_letter_after_one_attempt(make_rig, receiver):
    rig = make_rig({"tool": destination(receiver.url("/strict"))})
    receiver.default("/strict", status(400, '{"error":"field job_id unknown"}'))
    event_id = rig.add()

    rig.drain(lambda: rig.delivery(event_id, "tool").state != "pending", timeout=3)
    time.sleep(0.3)  # longer than the first retry wait: would have been tried again
    rig.worker().run_burst()

    [attempt] = rig.attempts(event_id, "tool")
    assert (attempt.http_status, attempt.state) == (400, "dead")
    assert "HTTP 400" in attempt.error and "field job_id unknown" in attempt.error
    assert rig.delivery(event_id, "tool").state == "dead"
    assert receiver.count() == 1


def test_410_is_a_dead_letter_after_one_attempt(make_rig, receiver):
    rig = make_rig({"zap": destination(receiver.url("/gone"), kind="zapier")})
    receiver.default("/gone", status(410, "hook deleted"))
    event_id = rig.add()

    rig.drain(lambda: rig.delivery(event_id, "zap").state != "pending", timeout=3)
    time.sleep(0.3)
    rig.worker().run_burst()

    [attempt] = rig.attempts(event_id, "zap")
    assert (attempt.http_status, attempt.state) == (410, "dead")
    assert "HTTP 410" in rig.delivery(event_id, "zap").last_error
    assert receiver.count() == 1


def test_timeout_is_retried_with_a_readable_error(make_rig, receiver):
    rig = make_rig({"slow": destination(receiver.url("/slow"), timeout="0.3s")})
    receiver.script("/slow", hang(2.0), ok())
    event_id = rig.add()
    started = time.monotonic()

    rig.drain(lambda: rig.done(event_id, "slow"), timeout=5)

    first, second = rig.attempts(event_id, "slow")
    assert first.http_status is None
    assert first.state == "pending"
    assert "timeout" in first.error and "0.3 s" in first.error
    assert 250 <= first.duration_ms < 1500   # gave up at the timeout, not at the answer
    assert second.http_status == 200
    assert time.monotonic() - started < 1.9  # did not wait for the hung answer


def test_connection_closed_without_answer_is_retried(make_rig, receiver):
    rig = make_rig({"tool": destination(receiver.url("/rude"))})
    receiver.script("/rude", close(), ok())
    event_id = rig.add()

    rig.drain(lambda: rig.done(event_id, "tool"), timeout=5)

    first, second = rig.attempts(event_id, "tool")
    assert first.http_status is None
    assert first.error.startswith("connection failed")
    assert "closed" in first.error.lower() or "aborted" in first.error.lower()
    assert second.http_status == 200
    assert receiver.count("/rude") == 2


def test_connection_refused_is_retried_with_a_readable_error(make_rig):
    from .conftest import free_port

    rig = make_rig({"off": destination(f"http://127.0.0.1:{free_port()}/hook")})
    event_id = rig.add()
    rig.drain(lambda: rig.delivery(event_id, "off").attempts >= 2, timeout=3)
    delivery = rig.delivery(event_id, "off")
    assert delivery.state == "pending"
    assert delivery.last_error.startswith("connection failed")
    assert "refused" in delivery.last_error.lower()


def test_filtered_event_is_kept_and_not_sent(make_rig, receiver):
    rig = make_rig({"tool": destination(receiver.url("/hook"))})
    client = rig.app().test_client()
    queued = rig.post(client, "ratioready", sample("ratioready", "job_queued"))

    rig.drain(lambda: rig.delivery(queued, "tool").state != "pending", timeout=3)

    delivery = rig.delivery(queued, "tool")
    assert delivery.state == "filtered"
    assert delivery.total_attempts == 0
    assert rig.attempts(queued, "tool") == []
    assert receiver.count() == 0
    assert rig.store.get_event(queued) is not None  # stored all the same


def test_mapping_failure_stays_pending_and_a_fixed_mapping_is_picked_up(make_rig, receiver,
                                                                       tmp_path):
    good = (MAPPINGS / "ratioready.yaml").read_text(encoding="utf-8")
    assert "  credits: credit_cost\n" in good
    path = tmp_path / "ratioready.yaml"
    path.write_text(good.replace("  credits: credit_cost\n", "  credits: job_type\n"),
                    encoding="utf-8")
    rig = make_rig({"tool": destination(receiver.url("/hook"))},
                   mappings={"ratioready": path}, mapping_interval=0.05)
    event_id = rig.add()
    worker = rig.worker()

    rig.drain(lambda: rig.delivery(event_id, "tool").attempts >= 1, worker=worker, timeout=3)

    delivery = rig.delivery(event_id, "tool")
    assert delivery.state == "pending"
    assert "mapping failed" in delivery.last_error
    [attempt] = rig.attempts(event_id, "tool")[:1]
    assert "mapping failed" in attempt.error
    assert "credits" in attempt.error and "wall_art" in attempt.error
    assert attempt.http_status is None
    assert receiver.count() == 0

    path.write_text(good, encoding="utf-8")
    later = time.time() + 10
    os.utime(path, (later, later))  # a new mtime even on coarse file systems
    rig.drain(lambda: rig.done(event_id, "tool"), worker=worker, timeout=5)

    [request] = receiver.requests
    assert request.json["credits"] == 89
    assert request.json["event_id"] == event_id


def test_redirect_is_a_dead_letter_naming_the_new_url(make_rig, receiver):
    rig = make_rig({"tool": destination(receiver.url("/old"))})
    receiver.default("/old", status(301, "", Location="https://hook.eu2.make.com/newtoken"))
    event_id = rig.add()

    rig.drain(lambda: rig.delivery(event_id, "tool").state != "pending", timeout=3)

    delivery = rig.delivery(event_id, "tool")
    assert delivery.state == "dead"
    assert "HTTP 301" in delivery.last_error
    assert "redirected to https://hook.eu2.make.com/newtoken" in delivery.last_error
    assert receiver.count() == 1  # not followed
