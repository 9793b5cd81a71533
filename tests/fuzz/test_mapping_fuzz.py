"""Mapping fuzzing, beyond tests/test_mapping_errors.py (which mutates one to four values
of a sample, or draws small random objects): here

* whole JSON *documents* are generated as text, with what real JSON parsers let through
  (NaN, Infinity, -0, 1e400, numbers of hundreds of digits, duplicate keys, \\u escapes of
  NUL and of lone surrogates, deep nesting) and read with json.loads as the worker does;
* every value of a provider's sample is replaced at once, keeping its shape, by values of
  any type (lists of 50 URLs for a spread of 10, objects for texts, texts for numbers…);
* every payload goes through *every* shipped mapping (a Zupertry payload posted to the
  ratioready source is a plausible mistake), and every event that comes out is sent
  through the real request encoder of a destination (``Destination.request``): the bytes
  a Make / n8n / Zapier hook receives must be UTF-8 JSON that reads back as the event,
  with an X-Bridge-Signature computed here with hmac.

Nothing but MappingError (naming file:line) may escape; every event validates against
blueprints/schema/job-event.v1.schema.json and is json.dumps(allow_nan=False)-able.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from bridge.destinations import Destination
from bridge.errors import MappingError
from bridge.mapping import load_mapping

from .conftest import count, fuzz_settings

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "bridge" / "samples"
SCHEMA = json.loads((REPO / "blueprints/schema/job-event.v1.schema.json").read_text("utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)
MAPPINGS = {path.stem: load_mapping(path) for path in sorted((REPO / "mappings").glob("*.yaml"))}
SAMPLE_PAYLOADS = {path.parent.name + "/" + path.stem: json.loads(path.read_text("utf-8"))
                   for path in sorted(SAMPLES.glob("*/*.json"))}
RECEIVED_AT = 1795263015.25
SIGNING_SECRET = "fuzz-signing-secret"
DESTINATIONS = [Destination(name=kind, kind=kind, url="https://hook.example/x",
                            headers={"x-make-apikey": "k"} if kind == "make" else {},
                            signing_secret=SIGNING_SECRET if kind == "http" else None)
                for kind in ("make", "n8n", "zapier", "http")]


def _keys_of(value, found: set) -> set:
    if isinstance(value, dict):
        for key, item in value.items():
            found.add(key)
            _keys_of(item, found)
    elif isinstance(value, list):
        for item in value:
            _keys_of(item, found)
    return found


KEYS = sorted(set().union(*(_keys_of(p, set()) for p in SAMPLE_PAYLOADS.values())))
WORDS = ["completed", "complete", "failed", "error", "queued", "processing", "job.completed",
         "job.failed", "image.generated", "image.generation.completed",
         "image.generation.failed", "video.processing.completed", "studio.campaign.completed",
         "studio.client.approved", "map.content.completed", "https://cdn.example/x.png"]


# -- the check every payload goes through -------------------------------------------------

def check(payload, fuzzer_test: str) -> None:
    outcomes = []
    for name, mapping in MAPPINGS.items():
        try:
            result = mapping.apply(payload, "evt_fuzz", name, RECEIVED_AT)
        except MappingError as err:
            assert re.match(rf"^{re.escape(mapping.file)}:\d+: ", str(err)), str(err)
            str(err).encode("utf-8")  # the reason is stored on the delivery: it must encode
            outcomes.append("mapping_error")
            continue
        except Exception:
            count("mappings", fuzzer_test, "escaped_exceptions")
            raise
        if result.event is None:
            assert result.rule is None
            outcomes.append("filtered")
            continue
        check_event(result.event, name, result.rule, mapping)
        outcomes.append("event")
    count("mappings", fuzzer_test, *outcomes)


def check_event(event: dict, source: str, rule: str, mapping) -> None:
    errors = sorted(VALIDATOR.iter_errors(event), key=str)
    assert not errors, f"{source} rule {rule}: {errors[0].message} in {event}"
    assert list(event)[:len(SCHEMA["required"])] == SCHEMA["required"]
    assert (event["event_id"], event["source"]) == ("evt_fuzz", source)
    assert event["event_type"] in {r.event_type for r in mapping.rules}
    json.dumps(event, allow_nan=False)
    for destination in DESTINATIONS:
        body, headers = destination.request(event)
        assert isinstance(body, bytes)
        text = body.decode("utf-8")  # strict: what a hook receives is UTF-8
        assert json.loads(text) == event, f"{destination.kind}: {text[:300]}"
        assert headers["Idempotency-Key"] == "evt_fuzz"
        assert headers["Content-Type"] == "application/json"
        if destination.signing_secret:
            expected = hmac.new(SIGNING_SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["X-Bridge-Signature"] == "sha256=" + expected


# -- 1. JSON documents generated as text ------------------------------------------------------

def quoted(text: str) -> str:
    return json.dumps(text)  # \u escapes for controls and lone surrogates


number_texts = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.integers(1, 600).map(lambda n: "9" * n),                 # beyond 64-bit
    st.sampled_from(["NaN", "Infinity", "-Infinity", "-0", "-0.0", "1e400", "-1e400",
                     "1E-400", "0.1e1", "1.5", "2.0", "12", "-3", "0", "1e2",
                     "123456789012345678901234567890.5", "5e-324"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr))
string_texts = st.one_of(
    st.sampled_from(WORDS).map(quoted),
    st.text(max_size=20).map(quoted),
    st.sampled_from(['"\\ud800"', '"a\\udc00b"', '"\\udc00\\ud800"', '"\\u0000"',
                     '"\\ud83d\\ude00"', '"\\u202e\\u0041"', '""', '" "', '"\\n"',
                     '"https://x.example/a.png\\u0000"']))
key_texts = st.sampled_from(KEYS).map(quoted) | string_texts


def object_text(inner):
    return st.lists(st.tuples(key_texts, inner), max_size=4).map(
        lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}")


def array_text(inner):
    return st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]")


value_texts = st.recursive(
    number_texts | string_texts | st.sampled_from(["true", "false", "null"]),
    lambda inner: object_text(inner) | array_text(inner), max_leaves=12)


SELECTORS = [(quoted(key), quoted(value)) for key, value in [
    ("status", "completed"), ("status", "failed"), ("status", "complete"), ("status", "error"),
    ("type", "job.completed"), ("type", "job.failed"), ("event", "image.generated"),
    ("event", "image.generation.completed"), ("event", "image.generation.failed"),
    ("event", "video.processing.completed"), ("event", "error"),
    ("event", "studio.campaign.completed"), ("event", "studio.client.approved"),
    ("type", "map.content.completed")]]


@st.composite
def documents(draw) -> str:
    """A JSON object as text: keys from the samples (so the mappings' paths find things),
    sometimes twice, and now and then a very deep value."""
    pairs = draw(st.lists(st.tuples(key_texts, value_texts), min_size=1, max_size=10))
    if draw(st.integers(0, 3)):  # what the rules look at, so that one of them matches
        pairs.insert(0, draw(st.sampled_from(SELECTORS)))
    if draw(st.booleans()):
        key, value = draw(st.sampled_from(pairs))
        pairs.append((key, draw(value_texts)))  # a duplicate key: the last one wins
    if draw(st.integers(0, 9)) == 0:
        depth = draw(st.integers(20, 400))
        pairs.append((quoted(draw(st.sampled_from(KEYS))),
                      "[" * depth + draw(value_texts) + "]" * depth))
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


@fuzz_settings("mappings", 0.35)
@given(documents())
def test_json_documents_as_the_worker_reads_them(text):
    try:
        payload = json.loads(text.encode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError):
        # not JSON to Python (e.g. over 4,300 digits): refused at ingest with 400
        count("mappings", "json_documents", "refused_at_ingest")
        return
    assert isinstance(payload, dict)
    check(payload, "json_documents")


# -- 2. every value of a sample replaced, keeping the shape ------------------------------------

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.one_of(
    st.sampled_from(WORDS), st.text(max_size=15),
    st.text(surrogates | st.sampled_from(["\x00", "é", "😀", "\u202e", "{", "}", "%"]),
            min_size=1, max_size=6),
    st.integers(0, 20).map(lambda n: "https://cdn.example/" + "a" * n * 500))
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-3, 30),
    st.floats(),  # NaN and infinities too: json.loads gives them for NaN / Infinity
    st.sampled_from([-0.0, 1e308, -1e308, 5e-324, 2**63, -(2**63), 10**300]),
    texts)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=5) |
                      st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner,
                                      max_size=5), max_leaves=10)


RULE_KEYS = ("status", "type", "event")  # what the shipped rules look at


@st.composite
def reshaped(draw, value, top: bool = False):
    """``value`` with each leaf replaced (or kept) and each container sometimes turned
    into something else: a list of it, one of its items, a scalar, or a long list. At the
    top, the keys the rules look at are mostly kept, so that a rule matches."""
    choice = draw(st.integers(0, 9))
    if isinstance(value, dict):
        if choice == 0 and not top:
            return draw(values)
        if choice == 1 and not top:
            return [draw(reshaped(value))]
        result = {}
        for key, item in value.items():
            if top and key in RULE_KEYS and draw(st.integers(0, 3)):
                result[key] = item
                continue
            if draw(st.integers(0, 7)) == 0:
                continue  # the key is missing
            result[key] = draw(reshaped(item))
        for key in draw(st.lists(st.sampled_from(KEYS), max_size=2)):
            result.setdefault(key, draw(values))
        return result
    if isinstance(value, list):
        if choice == 0:
            return draw(values)
        if choice == 1 and value:
            return draw(reshaped(value[0]))
        if choice == 2:  # far more items than a spread has fields
            return [draw(leaves) for _ in range(draw(st.integers(11, 60)))]
        return [draw(reshaped(item)) for item in value]
    if choice < 3:
        return value
    if choice < 5:
        return draw(texts)
    return draw(leaves if choice < 9 else values)


@fuzz_settings("mappings", 0.40)
@given(st.sampled_from(sorted(SAMPLE_PAYLOADS)).flatmap(
    lambda name: st.tuples(st.just(name), reshaped(copy.deepcopy(SAMPLE_PAYLOADS[name]),
                                                   top=True))))
def test_samples_with_every_value_reshaped(case):
    name, payload = case
    check(payload, "reshaped_samples")


# -- 3. random JSON trees (hypothesis recursive strategies) -------------------------------------

SELECTOR_PAIRS = [(json.loads(k), json.loads(v)) for k, v in SELECTORS]


@fuzz_settings("mappings", 0.25)
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), values, max_size=8),
       st.none() | st.sampled_from(SELECTOR_PAIRS), st.booleans())
def test_random_json_trees(payload, selector, nested):
    """Random trees; most with a key a rule looks at (e.g. status: completed), at the top
    or under data, so that the rules' fields run on random values."""
    if selector is not None:
        key, value = selector
        if nested and isinstance(payload.get("data"), dict):
            payload["data"][key] = value
        payload[key] = value
    check(payload, "random_trees")


# -- what the fuzzer found, kept as a plain test ----------------------------------------------

def test_a_lone_surrogate_in_a_payload_still_gives_an_event_that_can_be_sent():
    """Found by the fuzzer: {"id": "\\ud800"} made an event no destination could encode
    (the worker retried it for three days as an "internal error")."""
    payload = json.loads(b'{"id": "\\ud800x", "event": "error", "data": {"error": "\\udfff"}}')
    result = MAPPINGS["posternity"].apply(payload, "evt_fuzz", "posternity", RECEIVED_AT)
    assert result.event["provider_event_id"] == "\ufffdx"
    check_event(result.event, "posternity", result.rule, MAPPINGS["posternity"])
