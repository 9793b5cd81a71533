"""Signature checks: the five provider profiles and the four presets over HTTP, then
``verify`` itself. Every expected signature is computed here with hmac/hashlib/base64."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets as secrets_module
import time
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import samples
from bridge.errors import SignatureError
from bridge.signatures import MAX_HEADER_LENGTH, Scheme, TimestampRule, parse_timestamp, verify

from .conftest import PROVIDERS, SIGNATURE_HEADERS, assert_error, sign


def now() -> int:
    return math.ceil(time.time())


def hmac_b64(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


# -- the five providers ---------------------------------------------------------------


@pytest.fixture(params=PROVIDERS)
def provider(request) -> str:
    return request.param


@pytest.fixture
def body(provider) -> bytes:
    return samples.read(provider)


def send(client, provider: str, body: bytes, signature: str | None, **headers: str):
    if signature is not None:
        headers[SIGNATURE_HEADERS[provider]] = signature
    return client.post(f"/hooks/{provider}", data=body,
                       headers={"Content-Type": "application/json", **headers})


def assert_accepted(response) -> str:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["status"] == "accepted"
    return response.get_json()["event_id"]


def test_a_valid_signature_is_accepted(client, store, provider, body, secrets):
    event_id = assert_accepted(send(client, provider, body, sign(secrets[provider], body)))
    assert store.get_event(event_id).body == body


def test_a_body_changed_after_signing_is_rejected(client, store, provider, body, secrets):
    signature = sign(secrets[provider], body)
    tampered = body + b" "  # still the same JSON: only the raw bytes differ
    response = send(client, provider, tampered, signature)
    assert_error(response, 401, forbidden=[secrets[provider], sign(secrets[provider], tampered)])
    assert store.list_events() == []


def test_a_signature_made_with_another_secret_is_rejected(client, provider, body, secrets):
    response = send(client, provider, body, sign("not-" + secrets[provider], body))
    assert_error(response, 401, forbidden=[secrets[provider], sign(secrets[provider], body)])


def test_the_previous_secret_is_accepted_during_rotation(client, provider, body,
                                                         previous_secrets):
    assert_accepted(send(client, provider, body, sign(previous_secrets[provider], body)))


@pytest.mark.parametrize("signature", [None, "", "  "], ids=["absent", "empty", "blank"])
def test_a_missing_signature_header_is_rejected(client, store, provider, body, secrets,
                                                signature):
    error = assert_error(send(client, provider, body, signature), 401, forbidden=[
        secrets[provider], sign(secrets[provider], body)])
    assert SIGNATURE_HEADERS[provider] in error
    assert store.list_events() == []


def test_uppercase_hex_is_accepted(client, provider, body, secrets):
    assert_accepted(send(client, provider, body, sign(secrets[provider], body).upper()))


def test_a_sha256_prefix_is_accepted(client, provider, body, secrets):
    assert_accepted(send(client, provider, body, "sha256=" + sign(secrets[provider], body)))


def test_a_signature_that_is_not_hex_is_rejected(client, provider, body, secrets):
    assert_error(send(client, provider, body, "zz" * 32), 401, forbidden=[secrets[provider]])


# -- ratioready's optional timestamp ----------------------------------------------------


def send_ratioready(client, secrets, timestamp: str | None):
    body = samples.read("ratioready")
    extra = {} if timestamp is None else {"X-RatioReady-Timestamp": timestamp}
    return send(client, "ratioready", body, sign(secrets["ratioready"], body), **extra)


def iso(seconds_from_now: int) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds_from_now)).isoformat()


OUTSIDE = {"301s-old": lambda: str(now() - 301), "1h-old": lambda: str(now() - 3600),
           "310s-ahead": lambda: str(now() + 310), "1h-ahead": lambda: str(now() + 3600),
           "iso-400s-old": lambda: iso(-400)}
WITHIN = {"290s-old": lambda: str(now() - 290), "now": lambda: str(now()),
          "290s-ahead": lambda: str(now() + 290),
          "milliseconds": lambda: str(now() * 1000), "iso-8601": lambda: iso(0)}


@pytest.mark.parametrize("timestamp", OUTSIDE.values(), ids=OUTSIDE.keys())
def test_a_timestamp_more_than_300_seconds_away_is_rejected(client, store, secrets, timestamp):
    error = assert_error(send_ratioready(client, secrets, timestamp()), 401,
                         forbidden=[secrets["ratioready"]])
    assert "stale timestamp" in error
    assert store.list_events() == []


@pytest.mark.parametrize("timestamp", WITHIN.values(), ids=WITHIN.keys())
def test_a_timestamp_within_300_seconds_is_accepted(client, secrets, timestamp):
    assert_accepted(send_ratioready(client, secrets, timestamp()))


@pytest.mark.parametrize("text", ["yesterday", "nan", "12:00", "1e999"])
def test_a_timestamp_that_is_not_a_time_is_rejected(client, secrets, text):
    error = assert_error(send_ratioready(client, secrets, text), 401,
                         forbidden=[secrets["ratioready"]])
    assert "timestamp" in error


def test_a_missing_timestamp_is_accepted_as_it_is_optional(client, secrets):
    assert_accepted(send_ratioready(client, secrets, None))


# -- presets, used through bridge.yaml ----------------------------------------------------

PRESETS_YAML = """
sources:
  svix:
    profile: standard-webhooks
    secrets: ["${SVIX_SECRET}"]
  stripe:
    profile: stripe
    secrets: ["${STRIPE_SECRET}"]
  github:
    profile: github
    secrets: ["${GITHUB_SECRET}"]
  shopify:
    profile: shopify
    secrets: ["${SHOPIFY_SECRET}"]
"""

PRESET_BODY = '{"id": "evt_1", "type": "order.paid", "amount": 1250, "note": "é"}\n'.encode()


@pytest.fixture
def svix_key() -> bytes:
    return secrets_module.token_bytes(24)


@pytest.fixture
def preset_secrets(svix_key) -> dict[str, str]:
    return {"svix": "whsec_" + base64.b64encode(svix_key).decode(),
            "stripe": "sk_" + secrets_module.token_hex(16),
            "github": secrets_module.token_hex(16),
            "shopify": secrets_module.token_hex(16)}


@pytest.fixture
def presets(load_config, make_app, preset_secrets):
    env = {f"{name.upper()}_SECRET": secret for name, secret in preset_secrets.items()}
    return make_app(load_config(PRESETS_YAML, env)).test_client()


def post(client, source: str, headers: dict[str, str], body: bytes = PRESET_BODY):
    return client.post(f"/hooks/{source}", data=body, headers=headers)


class TestStandardWebhooks:
    def headers(self, key: bytes, msg_id="msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
                timestamp: int | None = None, signed_id: str | None = None) -> dict:
        timestamp = now() if timestamp is None else timestamp
        content = f"{signed_id or msg_id}.{timestamp}.".encode() + PRESET_BODY
        other = base64.b64encode(secrets_module.token_bytes(32)).decode()
        return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
                "webhook-signature": f"v1,{hmac_b64(key, content)} v1,{other}"}

    def test_one_matching_signature_among_several_is_accepted(self, presets, svix_key):
        assert assert_accepted(post(presets, "svix", self.headers(svix_key)))

    def test_a_redelivery_of_the_same_message_id_is_a_duplicate(self, presets, svix_key):
        first = assert_accepted(post(presets, "svix", self.headers(svix_key)))
        again = post(presets, "svix", self.headers(svix_key))
        assert again.get_json() == {"status": "duplicate", "event_id": first}

    def test_a_key_not_decoded_from_base64_is_rejected(self, presets, preset_secrets):
        wrong_key = preset_secrets["svix"].encode()
        assert_error(post(presets, "svix", self.headers(wrong_key)), 401,
                     forbidden=[preset_secrets["svix"]])

    def test_a_signature_for_another_message_id_is_rejected(self, presets, svix_key):
        headers = self.headers(svix_key, signed_id="msg_other")
        assert_error(post(presets, "svix", headers), 401)

    def test_a_stale_timestamp_is_rejected(self, presets, svix_key):
        headers = self.headers(svix_key, timestamp=now() - 301)
        assert "stale" in assert_error(post(presets, "svix", headers), 401)

    def test_a_missing_timestamp_is_rejected_as_it_is_required(self, presets, svix_key):
        headers = self.headers(svix_key)
        del headers["webhook-timestamp"]
        assert_error(post(presets, "svix", headers), 401)


class TestStripe:
    def header(self, secret: str, t: int, signed_t: int | None = None) -> dict:
        message = f"{t if signed_t is None else signed_t}.".encode() + PRESET_BODY
        return {"Stripe-Signature": f"t={t},v1={sign(secret, message)}"}

    def test_a_valid_signature_is_accepted(self, presets, preset_secrets):
        assert_accepted(post(presets, "stripe", self.header(preset_secrets["stripe"], now())))

    def test_a_timestamp_changed_after_signing_is_rejected(self, presets, preset_secrets):
        t = now()
        headers = self.header(preset_secrets["stripe"], t, signed_t=t - 1)
        assert_error(post(presets, "stripe", headers), 401, forbidden=[preset_secrets["stripe"]])

    def test_a_signature_of_the_body_alone_is_rejected(self, presets, preset_secrets):
        body_only = sign(preset_secrets["stripe"], PRESET_BODY)
        headers = {"Stripe-Signature": f"t={now()},v1={body_only}"}
        assert_error(post(presets, "stripe", headers), 401)

    def test_a_stale_signed_timestamp_is_rejected(self, presets, preset_secrets):
        headers = self.header(preset_secrets["stripe"], now() - 301)
        assert "stale" in assert_error(post(presets, "stripe", headers), 401)


class TestGitHub:
    def test_a_valid_signature_is_accepted_and_the_event_named_by_its_header(
            self, presets, store, preset_secrets):
        headers = {"X-Hub-Signature-256": "sha256=" + sign(preset_secrets["github"], PRESET_BODY),
                   "X-GitHub-Event": "push", "X-GitHub-Delivery": "72d3162e-cc78"}
        event = store.get_event(assert_accepted(post(presets, "github", headers)))
        assert (event.event_type, event.dedup_key) == ("push", "72d3162e-cc78")

    def test_a_wrong_secret_is_rejected(self, presets, preset_secrets):
        headers = {"X-Hub-Signature-256": "sha256=" + sign("wrong", PRESET_BODY)}
        assert_error(post(presets, "github", headers), 401, forbidden=[
            preset_secrets["github"], sign(preset_secrets["github"], PRESET_BODY)])


class TestShopify:
    def test_a_base64_signature_is_accepted(self, presets, preset_secrets):
        key = preset_secrets["shopify"].encode()
        headers = {"X-Shopify-Hmac-Sha256": hmac_b64(key, PRESET_BODY)}
        assert_accepted(post(presets, "shopify", headers))

    def test_the_right_digest_in_hex_is_rejected(self, presets, preset_secrets):
        headers = {"X-Shopify-Hmac-Sha256": sign(preset_secrets["shopify"], PRESET_BODY)}
        assert_error(post(presets, "shopify", headers), 401, forbidden=[preset_secrets["shopify"]])


# -- verify() itself ------------------------------------------------------------------

HEX = Scheme(header="X-Sig", prefix="sha256=")
secret_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=300), secret=secret_text)
def test_any_body_signed_with_the_secret_verifies(body, secret):
    verify(HEX, [secret], {"X-Sig": sign(secret, body)}, body)


@settings(max_examples=60, deadline=None)
@given(body=st.binary(min_size=1, max_size=300), secret=secret_text, data=st.data())
def test_changing_any_byte_of_the_body_fails(body, secret, data):
    index = data.draw(st.integers(0, len(body) - 1))
    changed = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1:]
    with pytest.raises(SignatureError):
        verify(HEX, [secret], {"X-Sig": sign(secret, body)}, changed)


def test_headers_are_found_whatever_their_case():
    verify(HEX, ["k"], {"x-sig": sign("k", b"{}")}, b"{}")


def test_no_secret_accepts_nothing_not_even_a_signature_made_with_an_empty_key():
    with pytest.raises(SignatureError, match="no signing secret"):
        verify(HEX, [], {"X-Sig": sign("", b"{}")}, b"{}")


def test_an_overlong_header_is_refused():
    with pytest.raises(SignatureError, match="too long"):
        verify(HEX, ["k"], {"X-Sig": "a" * (MAX_HEADER_LENGTH + 1)}, b"{}")


def test_a_rejection_never_shows_the_expected_signature():
    expected = sign("the-secret", b"{}")
    with pytest.raises(SignatureError) as caught:
        verify(HEX, ["the-secret"], {"X-Sig": sign("other", b"{}")}, b"{}")
    assert expected not in str(caught.value) and "the-secret" not in str(caught.value)


def test_freshness_is_checked_against_the_given_clock():
    scheme = Scheme(header="X-Sig", timestamp=TimestampRule(header="X-Ts", tolerance=300))
    headers = {"X-Sig": sign("k", b"{}"), "X-Ts": "1700000000"}
    verify(scheme, ["k"], headers, b"{}", now=1700000300)
    with pytest.raises(SignatureError, match="stale"):
        verify(scheme, ["k"], headers, b"{}", now=1700000301)
    with pytest.raises(SignatureError, match="stale"):
        verify(scheme, ["k"], headers, b"{}", now=1699999699)


@pytest.mark.parametrize("text, expected", [
    ("1700000000", 1700000000.0),
    ("1700000000000", 1700000000.0),        # milliseconds
    ("2023-11-14T22:13:20Z", 1700000000.0),
    ("2023-11-14T23:13:20+01:00", 1700000000.0),
    ("2023-11-14T22:13:20", 1700000000.0),  # no zone: UTC
    ("", None), ("soon", None), ("nan", None), ("-inf", None), ("1" * 65, None),
])
def test_parse_timestamp(text, expected):
    assert parse_timestamp(text) == expected
