"""Signature fuzzing through the real Flask app: every shipped provider profile and every
preset, with mutated bodies, mutated signature headers and odd timestamps.

The oracle is written here from each provider's documented scheme (hmac, hashlib and
base64; never bridge.signatures). It looks only at the request as sent and says, for the
signature: ``True`` it must be accepted, ``False`` it must be refused, or ``None`` either
is fine. ``None`` is kept for presentations of a *genuine* signature that the documents do
not define (a prefix in capitals, an ISO date in a timestamp header meant for Unix seconds,
a header longer than the bridge's 4,096 characters, two different ``t=`` parts…): refusing
them is right, and accepting them lets nobody in who does not hold the secret. Anything
that is not the exact HMAC of the exact raw body (and signed content) under a configured
secret, or whose timestamp is not within the tolerance, is ``False``.

From it follows the HTTP answer: 413 over max_body_bytes; 401 for a refused signature;
for an accepted one 200 if the body is a JSON object, else 400. Every answer is JSON; an
error is ``{"error": ...}`` and never shows a secret or an expected signature. A 500 is
never right.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import re
import secrets as secrets_module
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from bridge.app import create_app
from bridge.config import load_settings
from bridge.store.sqlite import SqliteStore

from .conftest import count, fuzz_settings

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "bridge" / "samples"
MAX_BODY = 65536
TOLERANCE = 300
BAND = 10          # seconds either side of the tolerance where either answer is fine
LONG_HEADER = 4096  # the bridge may refuse longer signature headers before any work
HEX64 = re.compile(r"[0-9a-fA-F]{64}")
B64_32 = re.compile(r"[A-Za-z0-9+/]{43}=")


@dataclass(frozen=True)
class Spec:
    """A provider's signing scheme as its document gives it (written by hand)."""

    kind: str                     # hex | base64 | stripe | standard
    header: str
    prefix: str = ""              # hex: a prefix that may be present ("sha256=")
    timestamp_header: str | None = None
    id_header: str | None = None


SPECS = {
    # X-RatioReady-Signature: hex HMAC-SHA256 of the raw body; optional
    # X-RatioReady-Timestamp within 300 s (not part of the signed bytes)
    "ratioready": Spec("hex", "X-RatioReady-Signature", "sha256=", "X-RatioReady-Timestamp"),
    "zupertry": Spec("hex", "X-Zupertry-Signature", "sha256="),
    "posternity": Spec("hex", "X-Posternity-Signature", "sha256="),
    "upscale": Spec("hex", "Upscale-Signature", "sha256="),
    "listingrva": Spec("hex", "X-Webhook-Signature", "sha256="),
    # GitHub: X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>
    "github": Spec("hex", "X-Hub-Signature-256", "sha256="),
    # Shopify: X-Shopify-Hmac-Sha256: base64 HMAC-SHA256 of the body
    "shopify": Spec("base64", "X-Shopify-Hmac-Sha256"),
    # Stripe: Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">[,v1=…]
    "stripe": Spec("stripe", "Stripe-Signature"),
    # Standard Webhooks: webhook-signature: "v1,<base64>" (space-separated), content
    # "<webhook-id>.<webhook-timestamp>.<body>", key = base64-decoded secret after whsec_
    "standard-webhooks": Spec("standard", "webhook-signature", timestamp_header="webhook-timestamp",
                              id_header="webhook-id"),
}
PROFILES = sorted(SPECS)
OTHER_HEADERS = ["X-Signature", "X-Hub-Signature", "Signature", "X-Webhook-Signature-256",
                 "webhook-signature-v2"]


def new_secret(profile: str) -> str:
    if profile == "standard-webhooks":
        return "whsec_" + base64.b64encode(secrets_module.token_bytes(24)).decode()
    return secrets_module.token_urlsafe(24)


def key_of(profile: str, secret: str) -> bytes:
    if profile == "standard-webhooks":
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode("utf-8")


def digest(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


# -- the oracle ----------------------------------------------------------------------------

def both(a: bool | None, b: bool | None) -> bool | None:
    """Two conditions that must both hold: False wins, then None."""
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True


def any_of(results: list[bool | None]) -> bool | None:
    if True in results:
        return True
    if None in results:
        return None
    return False


def strict_then_loose(check, value: str) -> bool | None:
    """``check(text, strict)``: True when the strict reading holds; None when only a reading
    that also trims every kind of white space (not only HTTP's space and tab) holds."""
    if check(value.strip(" \t"), True):
        return True
    if check(value.strip(), False):
        return None
    return False


def timestamp_verdict(text: str | None, now: float, required: bool) -> bool | None:
    """Unix seconds (digits only) within the tolerance: True; the same beyond it: False;
    other readable forms of a time (milliseconds, a fraction, ISO 8601) that are fresh:
    None, and stale: False; anything else: False. Absent: False if required."""
    if text is None or not text.strip(" \t"):
        return not required
    if not text.strip():  # only white space beyond space and tab: absent to some readings
        return False if required else None
    plain = text.strip(" \t")
    canonical = re.fullmatch(r"[0-9]{1,11}", plain)
    if canonical and int(plain) <= 10**11:
        return window(int(plain), now, strict=True)
    value = None
    if re.fullmatch(r"[+-]?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?", plain.strip()):
        value = float(plain.strip())
        if not math.isfinite(value):
            return False
        value = value / 1000 if value > 1e11 else value
    else:
        try:
            moment = datetime.fromisoformat(plain.strip())
        except ValueError:
            return False
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        value = moment.timestamp()
    return window(value, now, strict=False)


def window(seconds: float, now: float, strict: bool) -> bool | None:
    drift = abs(seconds - now)
    if drift > TOLERANCE + BAND:
        return False
    if drift < TOLERANCE - BAND:
        return True if strict else None
    return None


def hex_check(candidates: list[bytes], prefix: str):
    def check(text: str, strict: bool) -> bool:
        if prefix and text[:len(prefix)].lower() == prefix.lower():
            if strict and text[:len(prefix)] != prefix:
                return False
            text = text[len(prefix):]
        return bool(HEX64.fullmatch(text)) and bytes.fromhex(text) in candidates
    return check


def base64_check(candidates: list[bytes]):
    def check(text: str, strict: bool) -> bool:
        if not B64_32.fullmatch(text):
            return False
        decoded = base64.b64decode(text)
        if strict:  # the canonical text of a digest (not an alias with other spare bits)
            return text in {base64.b64encode(c).decode() for c in candidates}
        return decoded in candidates
    return check


def signature_verdict(profile: str, secrets: list[str], headers: dict[str, str], body: bytes,
                      now: float) -> bool | None:
    spec = SPECS[profile]
    value = find(headers, spec.header)
    if value is None or not value.strip():
        return False
    keys = [key_of(profile, s) for s in secrets]
    if spec.kind in ("hex", "base64"):
        candidates = [digest(k, body) for k in keys]
        check = (hex_check(candidates, spec.prefix) if spec.kind == "hex"
                 else base64_check(candidates))
        verdict = strict_then_loose(check, value)
        if spec.timestamp_header:
            verdict = both(verdict, timestamp_verdict(find(headers, spec.timestamp_header),
                                                      now, required=False))
    elif spec.kind == "stripe":
        verdict = stripe_verdict(keys, value, body, now)
    else:
        verdict = standard_verdict(keys, headers, value, body, now)
    if verdict is True and len(value) > LONG_HEADER:
        verdict = None
    return verdict


def stripe_verdict(keys: list[bytes], value: str, body: bytes, now: float) -> bool | None:
    results = []
    for strict in (True, False):
        times, signatures = [], []
        for item in value.split(","):
            item = item.strip(" \t") if strict else item.strip()
            name, sep, text = item.partition("=")
            if not sep:
                continue
            text = text if strict else text.strip()
            if name == "t":
                times.append(text)
            elif name == "v1":
                signatures.append(text)
        verdicts = []
        for t in dict.fromkeys(times):
            candidates = [digest(k, t.encode("utf-8") + b"." + body) for k in keys]
            signed = any(HEX64.fullmatch(s) and bytes.fromhex(s) in candidates
                         for s in signatures)
            verdicts.append(both(signed, timestamp_verdict(t, now, required=True)))
        if not verdicts:
            result = False
        elif len(verdicts) == 1:
            result = verdicts[0]
        else:  # several different t= parts: which one counts is not documented
            result = None if any(v is not False for v in verdicts) else False
        results.append(result)
    strict, loose = results
    if strict is True:
        return True
    return None if (strict is None or loose is not False) else False


def standard_verdict(keys: list[bytes], headers: dict[str, str], value: str, body: bytes,
                     now: float) -> bool | None:
    stamp = find(headers, "webhook-timestamp")
    fresh = timestamp_verdict(stamp, now, required=True)
    if fresh is False:
        return False
    message_id = find(headers, "webhook-id")
    results = []
    for strict in (True, False):
        stamp_text = stamp.strip(" \t") if strict else stamp.strip()
        content = f"{message_id or ''}.{stamp_text}.".encode() + body
        canonical = {base64.b64encode(digest(k, content)).decode() for k in keys}
        decoded = {digest(k, content) for k in keys}
        found = False
        for item in value.split(" ") if strict else value.split():
            name, sep, text = item.partition(",")
            if not sep or name != "v1":
                continue
            if strict:
                found = found or text in canonical
            elif B64_32.fullmatch(text.strip()):
                found = found or base64.b64decode(text.strip()) in decoded
        results.append(found)
    strict, loose = results
    verdict = True if strict else (None if loose else False)
    if message_id is None and verdict is not False:
        verdict = None  # the id is required by the standard; signed as empty, either way
    return both(verdict, fresh)


def find(headers: dict[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, RecursionError):
        return False


def expected_statuses(profile: str, secrets: list[str], headers: dict[str, str], body: bytes,
                      now: float) -> tuple[set[int], bool | None]:
    if len(body) > MAX_BODY:
        return {413}, False
    verdict = signature_verdict(profile, secrets, headers, body, now)
    passed = {200} if json_object(body) else {400}
    if verdict is True:
        return passed, verdict
    if verdict is False:
        return {401}, verdict
    return {401} | passed, verdict


def test_the_oracle_agrees_with_published_test_vectors():
    """The oracle's arithmetic, checked against the vectors the schemes publish."""
    # GitHub's "Validating webhook deliveries" example
    github_key = "It's a Secret to Everybody"
    assert signature_verdict(
        "github", [github_key],
        {"X-Hub-Signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46"
                                "f4379c8b043e17"}, b"Hello, World!", time.time()) is True
    # the Standard Webhooks example (its timestamp is 1614265330)
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    assert signature_verdict("standard-webhooks", ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
                             headers, b'{"test": 2432232314}', 1614265330 + 5) is True
    assert signature_verdict("standard-webhooks", ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
                             headers, b'{"test": 2432232314}', 1614265330 + 400) is False


# -- the app under test ------------------------------------------------------------------

@dataclass
class Rig:
    client: object
    secrets: dict[str, list[str]]


@pytest.fixture(scope="module")
def rig(tmp_path_factory) -> Rig:
    folder = tmp_path_factory.mktemp("sigfuzz")
    secrets = {p: [new_secret(p), new_secret(p)] for p in PROFILES}  # current + previous
    environ = {}
    sources = {}
    for profile in PROFILES:
        variable = profile.upper().replace("-", "_") + "_SECRET"
        environ[variable] = secrets[profile][0]
        environ[variable + "_PREVIOUS"] = secrets[profile][1]
        sources[profile] = {"profile": profile,
                            "secrets": [f"${{{variable}}}", f"${{{variable}_PREVIOUS}}"]}
    config = folder / "bridge.yaml"
    config.write_text(yaml.safe_dump({"database_url": f"sqlite:///{folder / 'bridge.db'}",
                                      "max_body_bytes": MAX_BODY, "sources": sources}),
                      encoding="utf-8")
    settings = load_settings(str(config), environ=environ)
    store = SqliteStore(str(folder / "bridge.db"))
    app = create_app(settings, store)
    logger = logging.getLogger("bridge")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # thousands of "rejected …" warnings say nothing here
    try:
        yield Rig(app.test_client(), secrets)
    finally:
        logger.setLevel(level)
        store.close()


@pytest.mark.parametrize("profile", ["github", "standard-webhooks"])
def test_the_bridge_accepts_the_published_test_vectors(profile, tmp_path):
    """The published examples, through the app, signed with their own secrets."""
    if profile == "github":
        secret, body = "It's a Secret to Everybody", b'{"zen": "Hello, World!"}'
        headers = {"X-Hub-Signature-256": "sha256=" + hmac.new(
            secret.encode(), body, hashlib.sha256).hexdigest()}
        moment = time.time()
    else:
        secret, body = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", b'{"test": 2432232314}'
        headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
                   "webhook-timestamp": "1614265330",
                   "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
        moment = 1614265330 + 5
    config = tmp_path / "bridge.yaml"
    config.write_text(yaml.safe_dump({"database_url": f"sqlite:///{tmp_path / 'b.db'}",
                                      "sources": {"s": {"profile": profile,
                                                        "secrets": ["${S}"]}}}), "utf-8")
    store = SqliteStore(str(tmp_path / "b.db"))
    client = create_app(load_settings(str(config), environ={"S": secret}), store).test_client()
    with mock.patch("bridge.signatures.time.time", return_value=moment):
        response = client.post("/hooks/s", data=body, headers=headers)
    store.close()
    assert response.status_code == 200, response.get_data(as_text=True)


# -- strategies ----------------------------------------------------------------------------

def sample_bodies(profile: str) -> list[bytes]:
    folder = SAMPLES / profile
    if folder.is_dir():
        return [p.read_bytes() for p in sorted(folder.glob("*.json"))]
    return [json.dumps(PRESET_SAMPLES[profile]).encode()]


PRESET_SAMPLES = {
    "github": {"action": "opened", "number": 7, "repository": {"full_name": "o/r"}},
    "shopify": {"id": 820982911946154508, "email": "jon@example.com", "total_price": "9.99"},
    "stripe": {"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "type": "payment_intent.succeeded",
               "data": {"object": {"id": "pi_1", "amount": 2000}}},
    "standard-webhooks": {"type": "invoice.paid", "timestamp": "2022-11-03T20:26:10.344522Z",
                          "data": {"id": "inv_1", "amount": 10}},
}

# text with what breaks naive code: lone surrogates (as JSON \u escapes), NUL, controls,
# right-to-left marks, emoji, very long runs
odd_text = st.text(st.characters(codec=None, exclude_categories=()) |
                   st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) |
                   st.sampled_from(["\x00", "\u202e", "\ufeff", "😀", "é", "\n", '"', "\\"]),
                   max_size=20)
identity_text = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF) |
                        st.sampled_from(["\x00", "a", "é", "😀", "\u202e", "'", "%", "_"]),
                        min_size=1, max_size=8)
json_scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20) |
                st.floats(allow_nan=False, allow_infinity=False) | odd_text)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(odd_text, inner, max_size=4), max_leaves=12)


# where each provider keeps its event type and the parts of its dedup key (written by
# hand from the documents): text there ends up in indexed database columns
IDENTITY_FIELDS = {
    "ratioready": [("job_id",), ("status",)],
    "zupertry": [("type",), ("data", "job_id")],
    "posternity": [("id",), ("event",), ("type",), ("data", "job_id"), ("data", "id")],
    "upscale": [("secure_request_id",), ("status",), ("webhook_triggered_at",)],
    "listingrva": [("event",), ("payload", "jobId")],
    "stripe": [("id",), ("type",)],
    "standard-webhooks": [("type",)],
    "github": [("action",)],
    "shopify": [("id",)],
}


def paths_of(value, prefix=()) -> list[tuple]:
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append((*prefix, key))
            found.extend(paths_of(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            found.append((*prefix, index))
            found.extend(paths_of(item, (*prefix, index)))
    return found


def put(payload, path: tuple, value) -> None:
    container = payload
    for key in path[:-1]:
        if isinstance(container, dict):
            container = container.setdefault(key, {})
        elif isinstance(container, list) and isinstance(key, int) and key < len(container):
            container = container[key]
        else:
            return
        if not isinstance(container, (dict, list)):
            return
    if isinstance(container, dict) or (isinstance(container, list) and
                                       isinstance(path[-1], int) and path[-1] < len(container)):
        container[path[-1]] = value


@st.composite
def bodies(draw, profile: str) -> bytes:
    kind = draw(st.sampled_from(["sample", "sample", "shaped", "identity", "identity",
                                 "object", "value", "bytes", "large", "empty"]))
    if kind in ("sample", "shaped", "identity"):
        body = draw(st.sampled_from(sample_bodies(profile)))
        if kind == "sample":
            return body
        payload = json.loads(body)
        if kind == "shaped":
            for path in draw(st.lists(st.sampled_from(paths_of(payload)), max_size=3)):
                put(payload, path, draw(json_values))
            return dump(draw, payload)
        for path in draw(st.lists(st.sampled_from(IDENTITY_FIELDS[profile]), min_size=1,
                                  max_size=3)):
            put(payload, path, draw(identity_text | odd_text | json_scalars))
        return json.dumps(payload).encode()  # \u escapes, lone surrogates too
    if kind == "object":
        return dump(draw, draw(st.dictionaries(odd_text, json_values, max_size=5)))
    if kind == "value":
        return dump(draw, draw(json_values.filter(lambda v: not isinstance(v, dict))))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "large":  # around max_body_bytes
        size = draw(st.sampled_from([MAX_BODY - 1, MAX_BODY, MAX_BODY + 1, MAX_BODY * 2]))
        head = b'{"pad": "'
        return head + b"x" * (size - len(head) - 2) + b'"}'
    return b""


def dump(draw, payload) -> bytes:
    style = draw(st.sampled_from(["compact", "spaced", "indented", "ascii"]))
    if style == "compact":
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode(
            "utf-8", "surrogatepass")
    if style == "spaced":
        return json.dumps(payload).encode()
    if style == "indented":
        return json.dumps(payload, indent=2, sort_keys=True).encode()
    return json.dumps(payload, ensure_ascii=True).encode()


# timestamp texts: (kind, offset from now in seconds); the text is made at send time
TIMESTAMP_KINDS = ["fresh", "fresh", "fresh", "stale", "future", "edge", "ms", "fraction",
                   "iso", "padded", "word", "empty", "nan", "inf", "huge", "negative",
                   "exponent", "latin1"]
timestamps = st.tuples(st.sampled_from(TIMESTAMP_KINDS),
                       st.one_of(st.integers(-280, 280), st.integers(311, 10**9)),
                       st.booleans())


def timestamp_text(kind: str, offset: int, sign: bool, now: float) -> str:
    direction = 1 if sign else -1
    moment = int(now)
    if kind == "fresh":
        return str(moment + (offset % 280) * direction)
    if kind in ("stale", "future"):
        return str(moment + (abs(offset) + 311) * (-1 if kind == "stale" else 1))
    if kind == "edge":
        return str(moment + (TOLERANCE + offset % 3 - 1) * direction)
    if kind == "ms":
        return str((moment + offset * direction) * 1000)
    if kind == "fraction":
        return f"{moment + offset * direction}.5"
    if kind == "iso":
        return datetime.fromtimestamp(moment + offset * direction, UTC).isoformat()
    if kind == "padded":
        return f" {moment + (offset % 280) * direction}\t"
    if kind == "exponent":
        return f"{(moment + offset * direction) / 1e9:.6f}e9"
    if kind == "latin1":
        return f"\xa0{moment}\xa0"
    return {"word": "yesterday", "empty": "", "nan": "NaN", "inf": "-Infinity",
            "huge": "9" * (20 + abs(offset) % 400), "negative": str(-moment)}[kind]


SIGNERS = ["current", "current", "current", "previous", "other", "raw_whsec", "empty"]

HEADER_MUTATIONS = ["upper", "mixed", "pad", "tabs", "spaced", "prefix_add", "prefix_caps",
                    "prefix_drop", "prefix_other", "prefix_twice", "to_base64", "to_hex",
                    "urlsafe", "unpadded", "truncate", "extend", "duplicate", "duplicate_other",
                    "huge", "huge_pad", "non_ascii", "nbsp", "rename", "name_case", "remove",
                    "empty", "flip_char", "part_swap", "part_caps", "t_drop", "t_twice",
                    "t_change", "v0", "id_change", "id_drop"]
BODY_MUTATIONS = ["flip", "truncate", "append", "unicode", "reserialise", "swap"]


@st.composite
def cases(draw, profile: str):
    return {
        "body": draw(bodies(profile)),
        "signer": draw(st.sampled_from(SIGNERS)),
        "timestamp": draw(timestamps),
        "message_id": draw(st.sampled_from(["msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
                                            "msg_" + "a" * 40, "1", "évt"])),
        "header_mutations": draw(st.just([]) | st.lists(st.tuples(
            st.sampled_from(HEADER_MUTATIONS), st.integers(0, 10**6)), min_size=1,
            max_size=3)),
        "timestamp_override": draw(st.none() | st.none() | timestamps),
        "body_mutation": draw(st.none() | st.none() | st.tuples(
            st.sampled_from(BODY_MUTATIONS), st.integers(0, 10**6), json_values)),
    }


# -- building a request --------------------------------------------------------------------

def sign_request(profile: str, case: dict, secrets: list[str], now: float
                 ) -> tuple[dict[str, str], bytes]:
    """The headers a provider would send for ``case["body"]``, from the signer the case
    names, before any mutation."""
    spec = SPECS[profile]
    body = case["body"]
    signer = case["signer"]
    if signer == "current":
        key = key_of(profile, secrets[0])
    elif signer == "previous":
        key = key_of(profile, secrets[1])
    elif signer == "raw_whsec":  # the secret's text used as the key (a common mistake)
        key = secrets[0].encode()
    elif signer == "empty":
        key = b""
    else:
        key = key_of(profile, new_secret(profile))
    stamp = timestamp_text(*case["timestamp"], now)
    headers: dict[str, str] = {"Content-Type": "application/json"}
    if spec.kind in ("hex", "base64"):
        raw = digest(key, body)
        headers[spec.header] = (spec.prefix + raw.hex() if spec.kind == "hex"
                                else base64.b64encode(raw).decode())
        if spec.timestamp_header and case["timestamp"][2]:
            headers[spec.timestamp_header] = stamp
    elif spec.kind == "stripe":
        raw = digest(key, stamp.strip().encode() + b"." + body)
        headers[spec.header] = f"t={stamp},v1={raw.hex()}"
    else:
        message_id = case["message_id"]
        content = f"{message_id}.{stamp.strip()}.".encode() + body
        headers["webhook-id"] = message_id
        headers["webhook-timestamp"] = stamp
        headers[spec.header] = "v1," + base64.b64encode(digest(key, content)).decode()
    return headers, body


def mutate_header(profile: str, headers: dict[str, str], mutation: str, n: int,
                  now: float) -> None:
    spec = SPECS[profile]
    name = spec.header
    value = headers.get(name)
    if value is None:
        return
    if mutation == "upper":
        value = value.upper()
    elif mutation == "mixed":
        value = "".join(c.upper() if i % 2 else c.lower() for i, c in enumerate(value))
    elif mutation == "pad":
        value = " " * (n % 3 + 1) + value + " " * (n % 2)
    elif mutation == "tabs":
        value = "\t" + value + "\t"
    elif mutation == "spaced":  # white space inside the encoded signature
        cut = len(value) - 2 - n % max(1, len(value) - 2)
        value = value[:cut] + " " + value[cut:]
    elif mutation == "prefix_add":
        value = "sha256=" + value
    elif mutation == "prefix_caps":
        value = re.sub("^sha256=", "SHA256=", value)
    elif mutation == "prefix_drop":
        value = re.sub("^sha256=", "", value)
    elif mutation == "prefix_other":
        value = ["sha1=", "sha512=", "v1=", "sha256:", "sha256 ", "="][n % 6] + \
            re.sub("^sha256=", "", value)
    elif mutation == "prefix_twice":
        value = "sha256=" + value if value.startswith("sha256=") else value + value[:7]
    elif mutation in ("to_base64", "to_hex", "urlsafe", "unpadded"):
        value = reencode(value, mutation)
    elif mutation == "truncate":
        value = value[: n % max(1, len(value))]
    elif mutation == "extend":
        value = value + "0123456789abcdef+/="[n % 19]
    elif mutation == "duplicate":  # the same header twice, joined as a server does
        value = value + [", ", ",", " "][n % 3] + value
    elif mutation == "duplicate_other":
        other = fake_signature(profile, n)
        value = (other + ", " + value) if n % 2 else (value + ", " + other)
    elif mutation == "huge":
        value = value + ("," if spec.kind == "stripe" else " ") + \
            "v1=" + "ab" * (1000 + n % 31000)
    elif mutation == "huge_pad":
        value = " " * (4096 + n % 60000) + value
    elif mutation == "non_ascii":
        position = n % (len(value) + 1)
        value = value[:position] + "éÿ０٣\u200b"[n % 5] + value[position:]
    elif mutation == "nbsp":
        value = "\xa0" + value
    elif mutation == "rename":
        headers[OTHER_HEADERS[n % len(OTHER_HEADERS)]] = headers.pop(name)
        return
    elif mutation == "name_case":
        headers.pop(name)
        headers[name.swapcase()] = value
        return
    elif mutation == "remove":
        headers.pop(name)
        return
    elif mutation == "empty":
        value = ""
    elif mutation == "flip_char":
        if value:
            position = n % len(value)
            value = value[:position] + chr(ord(value[position]) ^ 1) + value[position + 1:]
    elif mutation == "part_swap":
        separator = "," if spec.kind == "stripe" else " "
        value = separator.join(reversed(value.split(separator)))
    elif mutation == "part_caps":
        value = value.replace("t=", "T=").replace("v1", "V1")
    elif mutation == "t_drop":
        value = re.sub(r"t=[^,]*,?", "", value)
    elif mutation == "t_twice":
        value = f"t={int(now) - 3600 * (n % 5 + 1)}," + value if n % 2 else \
            value + f",t={int(now) + n % 200}"
    elif mutation == "t_change":
        value = re.sub(r"t=[^,]*", f"t={int(now) + n % 100 - 50}", value)
    elif mutation == "v0":
        value = value + ",v0=" + "0" * 64
    elif mutation == "id_change" and spec.id_header:
        headers[spec.id_header] = headers.get(spec.id_header, "") + "x"
    elif mutation == "id_drop" and spec.id_header:
        headers.pop(spec.id_header, None)
    headers[name] = value


def reencode(value: str, how: str) -> str:
    """Re-encode every signature inside the header value (hex <-> base64, url-safe,
    without padding)."""
    def swap(match: re.Match) -> str:
        text = match.group(0)
        try:
            raw = bytes.fromhex(text) if HEX64.fullmatch(text) else base64.b64decode(text)
        except ValueError:
            return text
        if how == "to_base64":
            return base64.b64encode(raw).decode()
        if how == "to_hex":
            return raw.hex()
        if how == "urlsafe":
            return base64.urlsafe_b64encode(raw).decode()
        return base64.b64encode(raw).decode().rstrip("=")
    return re.sub(r"[0-9a-fA-F]{64}|[A-Za-z0-9+/]{43}=", swap, value)


def fake_signature(profile: str, n: int) -> str:
    raw = hashlib.sha256(str(n).encode()).digest()
    spec = SPECS[profile]
    if spec.kind == "hex":
        return spec.prefix + raw.hex()
    if spec.kind == "base64":
        return base64.b64encode(raw).decode()
    if spec.kind == "stripe":
        return f"t={int(time.time())},v1={raw.hex()}"
    return "v1," + base64.b64encode(raw).decode()


def mutate_body(body: bytes, mutation: str, n: int, value) -> bytes:
    if mutation == "flip":
        if not body:
            return b"\x01"
        position = n % len(body)
        return body[:position] + bytes([body[position] ^ (1 << (n % 8))]) + body[position + 1:]
    if mutation == "truncate":
        return body[: n % max(1, len(body))]
    if mutation == "append":
        return body + [b"\n", b" ", b"\x00", b"}", b"\r\n", "é".encode(), b"{}"][n % 7]
    if mutation == "unicode":
        position = n % (len(body) + 1)
        return body[:position] + ["é", "\u2028", "😀", "\ufeff"][n % 4].encode() + body[position:]
    if mutation == "reserialise":  # the same JSON, other bytes
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return body + b" "
        styles = [dict(separators=(",", ":")), dict(indent=1), dict(sort_keys=True),
                  dict(ensure_ascii=False), dict()]
        text = json.dumps(payload, **styles[n % len(styles)])
        return text.encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()  # another body altogether


def wire(value: str) -> str:
    """What a server hands the app for a header sent as UTF-8 bytes (latin-1 text)."""
    return value.encode("utf-8", "surrogatepass").decode("latin-1")


# -- the fuzz test -------------------------------------------------------------------------

@pytest.mark.parametrize("profile", PROFILES)
def test_signature_fuzz(rig, profile):
    secrets = rig.secrets[profile]

    @fuzz_settings("signatures", 1 / len(PROFILES))
    @given(case=cases(profile))
    def run(case):
        now = time.time()
        headers, body = sign_request(profile, case, secrets, now)
        if case["timestamp_override"] is not None:
            text = timestamp_text(*case["timestamp_override"], now)
            spec = SPECS[profile]
            if spec.kind == "stripe":
                headers[spec.header] = re.sub(r"t=[^,]*", lambda m: "t=" + text,
                                              headers[spec.header], count=1)
            elif spec.timestamp_header:
                headers[spec.timestamp_header] = text
        for mutation, n in case["header_mutations"]:
            mutate_header(profile, headers, mutation, n, now)
        if case["body_mutation"] is not None:
            body = mutate_body(body, *case["body_mutation"])
        headers = {name: wire(value) for name, value in headers.items()}
        allowed, verdict = expected_statuses(profile, secrets, headers, body, time.time())
        response = rig.client.post(f"/hooks/{profile}", data=body, headers=headers)
        status = response.status_code
        outcome = {True: "must_accept", False: "must_refuse", None: "either"}[verdict]
        wrong = ["wrongly_accepted"] if status == 200 and 200 not in allowed else []
        count("signatures", profile, outcome, f"http_{status}", *wrong)
        assert status != 500, f"500 for {profile}: {response.get_data(as_text=True)}"
        assert status in allowed, (
            f"{profile}: answered {status}, expected one of {sorted(allowed)} "
            f"(oracle: {outcome}); headers={headers!r} body={body[:300]!r} "
            f"answer={response.get_data(as_text=True)[:300]}")
        assert response.is_json, response.get_data(as_text=True)[:200]
        answer = response.get_json()
        if status == 200:
            assert set(answer) == {"status", "event_id"}
            assert answer["status"] in ("accepted", "duplicate")
        else:
            assert list(answer) == ["error"] and isinstance(answer["error"], str)
            text = answer["error"].lower()
            for secret in secrets:
                assert secret.lower() not in text
            for key in (key_of(profile, s) for s in secrets):
                raw = digest(key, body)
                assert raw.hex() not in text
                assert base64.b64encode(raw).decode().lower() not in text

    run()


# -- what the fuzzer found, kept as plain tests ----------------------------------------------

def test_hex_with_spaces_between_the_bytes_is_refused(rig):
    body = json.dumps({"job_id": "rr_spaced", "status": "completed"}).encode()
    good = digest(key_of("ratioready", rig.secrets["ratioready"][0]), body).hex()
    spaced = " ".join(good[i:i + 2] for i in range(0, 64, 2))
    response = rig.client.post("/hooks/ratioready", data=body,
                               headers={"X-RatioReady-Signature": spaced})
    assert response.status_code == 401
    response = rig.client.post("/hooks/ratioready", data=body,
                               headers={"X-RatioReady-Signature": good})
    assert response.status_code == 200


@pytest.mark.parametrize("profile,body", [
    ("ratioready", b'{"job_id": "\\ud800", "status": "completed"}'),
    ("zupertry", b'{"type": "job.\\udfff", "data": {"job_id": "z1\\ud83d"}}'),
    ("stripe", b'{"id": "evt_\\udc00\\u0000", "type": "x"}'),
])
def test_a_lone_surrogate_in_the_dedup_key_is_stored_not_a_500(rig, profile, body):
    now = time.time()
    headers, body = sign_request(profile, {"body": body, "signer": "current",
                                           "timestamp": ("fresh", 0, True),
                                           "message_id": "msg_1"}, rig.secrets[profile], now)
    response = rig.client.post(f"/hooks/{profile}", data=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    again = rig.client.post(f"/hooks/{profile}", data=body, headers=headers)
    assert again.get_json() == {"status": "duplicate",
                                "event_id": response.get_json()["event_id"]}
