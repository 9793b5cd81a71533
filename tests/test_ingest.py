"""POST /hooks/<source> and GET /healthz through the Flask test client, over a real
SQLite file: what is stored, what is answered, and what never leaks."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time

import pytest

from bridge import samples
from bridge.config import load_settings
from bridge.store.sqlite import SqliteStore

from .conftest import SHIPPED_CONFIG, SIGNATURE_HEADERS, assert_error, sign


def post(client, source: str, body: bytes, secret: str | None, **headers: str):
    """POST ``body`` to ``source``, signed with ``secret`` as its provider would."""
    if secret is not None:
        headers[SIGNATURE_HEADERS[source]] = sign(secret, body)
    return client.post(f"/hooks/{source}", data=body,
                       headers={"Content-Type": "application/json", **headers})


def rows(db_path) -> list[tuple]:
    """The events table, read with a connection of our own."""
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT id, source, dedup_key, duplicates FROM events").fetchall()


@pytest.fixture
def ratioready(secrets) -> str:
    return secrets["ratioready"]


COMPLETED = samples.read("ratioready", "wall_art_completed")


# -- what is stored ---------------------------------------------------------------------


def test_an_accepted_callback_is_answered_with_its_event_id(client, ratioready, db_path):
    response = post(client, "ratioready", COMPLETED, ratioready)
    assert response.status_code == 200
    answer = response.get_json()
    assert answer["status"] == "accepted" and answer["event_id"].startswith("evt_")
    assert rows(db_path) == [(answer["event_id"], "ratioready", "rr_job_7f3c9a21:completed", 0)]


def test_a_duplicate_is_answered_200_with_the_first_event_id_and_stored_once(
        client, store, ratioready, db_path):
    first = post(client, "ratioready", COMPLETED, ratioready).get_json()["event_id"]
    for repeat in (1, 2):
        response = post(client, "ratioready", COMPLETED, ratioready)
        assert response.status_code == 200
        assert response.get_json() == {"status": "duplicate", "event_id": first}
        assert store.get_event(first).duplicates == repeat
    assert [row[0] for row in rows(db_path)] == [first]


def test_a_new_status_of_the_same_job_is_a_new_event(client, ratioready, db_path):
    processing = samples.read("ratioready", "job_processing")
    queued = samples.read("ratioready", "job_queued")
    for body in (processing, queued):
        assert post(client, "ratioready", body, ratioready).get_json()["status"] == "accepted"
    assert len(rows(db_path)) == 2


@pytest.mark.parametrize("source, sample, event_type, dedup_key", [
    ("ratioready", "wall_art_completed", "completed", "rr_job_7f3c9a21:completed"),
    ("zupertry", "job_completed", "job.completed", "job_abc123:job.completed"),
    ("posternity", "image_generation_completed", "image.generation.completed", "evt_pst_02"),
    ("upscale", "batch_complete", "complete", "a1b2c3d4-e5f6-7890-abcd-ef1234567890:complete"),
    ("upscale", "batch_partial", "complete",
     "0f9e8d7c-6b5a-4321-9876-fedcba098765:complete:2026-11-21T12:10:03Z"),
    ("listingrva", "image_generated", "image.generated",
     "clx9k2m3n0001qz8h4f5g6j7k:image.generated"),
])
def test_each_provider_event_is_stored_with_its_type_and_natural_dedup_key(
        client, store, secrets, source, sample, event_type, dedup_key):
    response = post(client, source, samples.read(source, sample), secrets[source])
    event = store.get_event(response.get_json()["event_id"])
    assert (event.source, event.event_type, event.dedup_key) == (source, event_type, dedup_key)


def test_a_body_without_a_dedup_key_is_deduplicated_by_its_exact_bytes(client, ratioready,
                                                                      db_path):
    body = b'{"note": "no job id here"}'
    first = post(client, "ratioready", body, ratioready).get_json()
    again = post(client, "ratioready", body, ratioready).get_json()
    other = post(client, "ratioready", body + b"\n", ratioready).get_json()
    assert again == {"status": "duplicate", "event_id": first["event_id"]}
    assert other["status"] == "accepted"
    assert len(rows(db_path)) == 2


def test_the_exact_raw_body_is_kept_and_the_signature_is_not(client, store, ratioready):
    body = ('{ "job_id" :"rr_ws",\n\t"status":"completed" ,  "note": "café ☕ \\u00e9",'
            '"n": 1.50e1 }\r\n  ').encode("utf-8")
    signature = sign(ratioready, body)
    timestamp = str(int(time.time()))
    response = post(client, "ratioready", body, ratioready, **{
        "X-RatioReady-Timestamp": timestamp, "User-Agent": "ratioready-test/1"})
    event = store.get_event(response.get_json()["event_id"])
    assert event.body == body
    assert event.headers == {"Content-Type": "application/json",
                             "User-Agent": "ratioready-test/1",
                             "X-RatioReady-Timestamp": timestamp}
    stored_row = json.dumps(event.headers) + event.dedup_key + (event.event_type or "")
    assert signature not in stored_row and ratioready not in stored_row


# -- what bad input gets ------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"not json", b"{", b"", b"\xff\xfe", b"[1, 2]",
                                  b'"a string"', b"42", b"null"],
                         ids=["text", "truncated", "empty", "binary", "array", "string",
                              "number", "null"])
def test_a_body_that_is_not_a_json_object_is_400(client, ratioready, db_path, body):
    response = post(client, "ratioready", body, ratioready)
    assert_error(response, 400, forbidden=[ratioready, sign(ratioready, body)])
    assert rows(db_path) == []


def test_the_signature_is_checked_before_the_body_is_read(client, ratioready):
    assert_error(post(client, "ratioready", b"not json", "wrong"), 401, forbidden=[ratioready])


@pytest.fixture
def small_client(make_app, environ):
    """The shipped bridge.yaml with BRIDGE_MAX_BODY_BYTES=64."""
    settings = load_settings(str(SHIPPED_CONFIG), {**environ, "BRIDGE_MAX_BODY_BYTES": "64"})
    return make_app(settings).test_client()


def padded(size: int) -> bytes:
    head = b'{"job_id": "rr_big", "status": "completed", "pad": "'
    return head + b"x" * (size - len(head) - 2) + b'"}'


def test_a_body_over_max_body_bytes_is_413_and_not_stored(small_client, ratioready, db_path):
    body = padded(65)
    assert_error(post(small_client, "ratioready", body, ratioready), 413,
                 forbidden=[ratioready, sign(ratioready, body)])
    assert rows(db_path) == []


def test_a_body_of_exactly_max_body_bytes_is_accepted(small_client, ratioready):
    response = post(small_client, "ratioready", padded(64), ratioready)
    assert response.get_json()["status"] == "accepted"


def test_an_unknown_source_is_404(client, ratioready):
    response = client.post("/hooks/nosuch", data=COMPLETED,
                           headers={"X-RatioReady-Signature": sign(ratioready, COMPLETED)})
    assert "nosuch" in assert_error(response, 404, forbidden=[ratioready])


def test_an_unknown_path_is_404_in_json(client):
    assert_error(client.post("/webhooks/ratioready", data=b"{}"), 404)


def test_get_is_405_in_json_and_says_post(client):
    response = client.get("/hooks/ratioready")
    assert_error(response, 405)
    assert "POST" in response.headers["Allow"]


@pytest.fixture
def unset_ratioready(make_app, environ):
    """The shipped bridge.yaml without RATIOREADY_WEBHOOK_SECRET (nor its previous one)."""
    env = {k: v for k, v in environ.items() if not k.startswith("RATIOREADY_")}
    return make_app(load_settings(str(SHIPPED_CONFIG), env)).test_client()


def test_a_source_without_secret_is_503_and_names_the_variable(unset_ratioready, db_path):
    response = post(unset_ratioready, "ratioready", COMPLETED, "")  # signed with an empty key
    assert "RATIOREADY_WEBHOOK_SECRET" in assert_error(response, 503,
                                                       forbidden=[sign("", COMPLETED)])
    assert rows(db_path) == []


def test_other_sources_still_work_when_one_has_no_secret(unset_ratioready, secrets):
    body = samples.read("zupertry")
    assert post(unset_ratioready, "zupertry", body, secrets["zupertry"]).status_code == 200


# -- storage unavailable ---------------------------------------------------------------------


@pytest.fixture
def impatient_client(make_app, make_store, shipped_settings):
    """A store that waits only 100 ms for SQLite's write lock."""
    return make_app(shipped_settings, make_store(busy_timeout_ms=100)).test_client()


@pytest.fixture
def write_lock(db_path, impatient_client):
    """Another connection holding SQLite's write lock (the app has created the schema)."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    yield conn
    conn.rollback()
    conn.close()


def test_a_locked_store_is_503_and_nothing_is_half_written(impatient_client, write_lock,
                                                           ratioready, db_path):
    response = post(impatient_client, "ratioready", COMPLETED, ratioready)
    assert "storage" in assert_error(response, 503, forbidden=[ratioready])
    write_lock.rollback()
    assert rows(db_path) == []
    again = post(impatient_client, "ratioready", COMPLETED, ratioready)
    assert again.get_json()["status"] == "accepted"  # a retry is stored, not a duplicate


def test_healthz_is_ok_when_the_store_answers(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_healthz_is_503_when_the_database_folder_does_not_exist(make_app, shipped_settings,
                                                                tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    store = SqliteStore(str(folder / "bridge.db"))
    client = make_app(shipped_settings, store).test_client()
    store.close()
    shutil.rmtree(folder)  # the volume went away
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "unavailable"


# -- nothing leaks -----------------------------------------------------------------------------


def test_rejections_never_log_the_secret_or_a_signature(client, secrets, previous_secrets,
                                                        caplog):
    caplog.set_level(logging.DEBUG)
    sent = sign("wrong", COMPLETED)
    post(client, "ratioready", COMPLETED, "wrong")
    post(client, "ratioready", COMPLETED, secrets["ratioready"],
         **{"X-RatioReady-Timestamp": "1"})
    post(client, "ratioready", b"[]", secrets["ratioready"])
    rejections = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejections) == 3
    text = caplog.text.lower()
    for value in (sent, sign(secrets["ratioready"], COMPLETED), sign(secrets["ratioready"], b"[]"),
                  secrets["ratioready"], previous_secrets["ratioready"]):
        assert value not in text
