"""Unit tests of the delivery rules: what an answer means (classify), when to try again
(RetryPolicy.next_delay) and what a Retry-After header asks for (retry_after).
Expected values are written by hand."""

from __future__ import annotations

import calendar
import random

import pytest

from bridge.destinations import RetryPolicy, classify, retry_after

N8N_404 = ('{"code":404,"message":"The requested webhook \\"POST abc\\" is not registered.",'
           '"hint":"The workflow must be active for a production URL to run successfully."}')

# 2015-10-21 07:28:00 UTC, computed by hand-written calendar arithmetic, not by the bridge
OCT_21 = calendar.timegm((2015, 10, 21, 7, 28, 0))


# -- classify ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["http", "make", "n8n", "zapier"])
@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
def test_2xx_is_done(kind, code):
    outcome = classify(kind, code, "Accepted", {})
    assert outcome.verdict == "done"
    assert outcome.reason is None


@pytest.mark.parametrize("kind", ["http", "make", "n8n", "zapier"])
@pytest.mark.parametrize("code", [408, 425, 429, 500, 502, 503, 504, 507, 599])
def test_transient_statuses_are_retried_with_the_status_in_the_reason(kind, code):
    outcome = classify(kind, code, "upstream sad", {})
    assert outcome.verdict == "retry"
    assert f"HTTP {code}" in outcome.reason
    assert "upstream sad" in outcome.reason
    assert outcome.retry_after is None


@pytest.mark.parametrize("kind", ["http", "make", "n8n", "zapier"])
@pytest.mark.parametrize("code", [400, 401, 403, 404, 405, 409, 410, 413, 422])
def test_other_4xx_are_dead_letters_at_once(kind, code):
    outcome = classify(kind, code, '{"error":"nope"}', {})
    assert outcome.verdict == "dead"
    assert f"HTTP {code}" in outcome.reason
    assert "nope" in outcome.reason
    assert "replay" in outcome.reason


@pytest.mark.parametrize("code", [100, 101, 199, 301, 302, 304, 307, 308])
def test_informational_and_redirects_are_dead(code):
    assert classify("http", code, "", {}).verdict == "dead"


@pytest.mark.parametrize("error", ["timeout: no answer within 15 s",
                                   "connection failed: Connection refused"])
def test_no_answer_is_retried_with_the_error_as_reason(error):
    outcome = classify("http", None, "", {}, error)
    assert outcome.verdict == "retry"
    assert outcome.reason == error


def test_no_answer_without_an_error_still_has_a_reason():
    outcome = classify("zapier", None, "", {})
    assert outcome.verdict == "retry"
    assert outcome.reason


def test_n8n_inactive_workflow_404_is_retried_and_says_workflow_inactive():
    outcome = classify("n8n", 404, N8N_404, {"Content-Type": "application/json"})
    assert outcome.verdict == "retry"
    assert "workflow inactive" in outcome.reason
    assert "activate" in outcome.reason


def test_a_404_not_from_n8n_or_without_not_registered_is_dead():
    assert classify("http", 404, N8N_404, {}).verdict == "dead"
    assert classify("make", 404, N8N_404, {}).verdict == "dead"
    assert classify("n8n", 404, '{"message":"Not Found"}', {}).verdict == "dead"
    assert classify("n8n", 410, N8N_404, {}).verdict == "dead"


def test_make_full_queue_400_is_retried_other_400_is_dead():
    outcome = classify("make", 400, "Queue is full.", {})
    assert outcome.verdict == "retry"
    assert "queue is full" in outcome.reason.lower()
    assert classify("make", 400, "Bad request", {}).verdict == "dead"
    assert classify("http", 400, "Queue is full.", {}).verdict == "dead"


def test_429_and_503_carry_retry_after():
    assert classify("zapier", 429, "", {"Retry-After": "7"}).retry_after == 7.0
    assert classify("http", 503, "", {"retry-after": "120"}).retry_after == 120.0
    moment = classify("http", 429, "", {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
                      now=OCT_21 - 30).retry_after
    assert moment == pytest.approx(30.0)


def test_long_answers_are_cut_in_the_reason():
    outcome = classify("http", 500, "x" * 5000, {})
    assert len(outcome.reason) < 300


# -- retry_after -------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "seconds"), [("1", 1.0), ("120", 120.0), (" 5 ", 5.0),
                                                ("1.5", 1.5), ("0", 0.0)])
def test_retry_after_seconds(value, seconds):
    assert retry_after({"Retry-After": value}) == seconds


def test_retry_after_http_date_in_the_future():
    header = {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}
    assert retry_after(header, now=OCT_21 - 120) == pytest.approx(120.0)
    assert retry_after(header, now=OCT_21 - 0.5) == pytest.approx(0.5)


def test_retry_after_http_date_lowercase_header_name():
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"},
                       now=OCT_21 - 60) == pytest.approx(60.0)


def test_retry_after_http_date_in_the_past_is_now():
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=OCT_21 + 3600) == 0


def test_retry_after_is_capped_at_a_day():
    assert retry_after({"Retry-After": "9999999"}) == 86400
    assert retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
                       now=OCT_21 - 10 * 86400) == 86400


@pytest.mark.parametrize("value", ["", "soon", "-5", "Wed, 32 Foo 2015 99:99:99 GMT",
                                   "1e3"])
def test_retry_after_garbage_is_ignored(value):
    assert retry_after({"Retry-After": value}) is None


def test_no_retry_after_header():
    assert retry_after({}) is None
    assert retry_after({"Content-Type": "application/json"}) is None


# -- RetryPolicy.next_delay --------------------------------------------------------------

def test_next_delay_follows_the_schedule_then_repeats():
    policy = RetryPolicy(schedule=(10, 60, 300), repeat=3600, max_age=10 * 86400, jitter=0)
    assert [policy.next_delay(n, age=0) for n in (1, 2, 3, 4, 5, 50)] == \
        [10, 60, 300, 3600, 3600, 3600]


def test_default_policy_is_the_documented_one():
    policy = RetryPolicy(jitter=0)
    assert [policy.next_delay(n, age=0) for n in range(1, 9)] == \
        [10, 60, 300, 1800, 7200, 21600, 43200, 43200]
    assert policy.next_delay(1, age=3 * 86400 - 5) is None
    assert policy.next_delay(1, age=3 * 86400 - 10) == 10


def test_next_delay_gives_up_past_max_age():
    policy = RetryPolicy(schedule=(0.2, 0.4), repeat=0.5, max_age=3, jitter=0)
    assert policy.next_delay(1, age=0) == 0.2
    assert policy.next_delay(3, age=2.5) == 0.5        # lands exactly on max_age: still ok
    assert policy.next_delay(3, age=2.51) is None      # would land past it: give up
    assert policy.next_delay(1, age=2.9) is None
    assert policy.next_delay(1, age=5) is None


def test_jitter_stays_within_its_bounds_and_spreads():
    policy = RetryPolicy(schedule=(100,), repeat=1000, max_age=10 ** 9, jitter=0.2)
    rng = random.Random(1234)
    first = [policy.next_delay(1, 0, rng) for _ in range(2000)]
    later = [policy.next_delay(7, 0, rng) for _ in range(2000)]
    assert all(80 <= d <= 120 for d in first)
    assert all(800 <= d <= 1200 for d in later)
    assert min(first) < 85 and max(first) > 115       # really spread over the whole range
    assert len(set(first)) > 1000


def test_no_jitter_is_exact():
    policy = RetryPolicy(schedule=(7,), repeat=9, max_age=100, jitter=0)
    assert {policy.next_delay(1, 0) for _ in range(50)} == {7}


def test_jitter_does_not_go_negative_or_past_max_age():
    policy = RetryPolicy(schedule=(0,), repeat=10, max_age=11, jitter=0.5)
    rng = random.Random(7)
    assert all(policy.next_delay(1, 0, rng) == 0 for _ in range(100))
    delays = [policy.next_delay(2, 5, rng) for _ in range(500)]
    # base 10 ± 50 % from age 5: 5..15 s, but only up to 6 s fits in max_age 11
    assert all(d is None or 5 <= d <= 6 for d in delays)
    assert any(d is None for d in delays) and any(d is not None for d in delays)
