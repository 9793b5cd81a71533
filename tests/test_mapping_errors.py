"""Mapping errors: every broken file is reported once, as ``file:line: message (hint)``,
with the line counted by hand; run-time failures are MappingError naming file and line,
never another exception; random payloads through the shipped mappings (hypothesis).

The broken files are tests/mapping_cases/broken/*.yaml; the line of each mistake is
written in BROKEN_CASES below, counted by hand in the file.
"""

from __future__ import annotations

import copy
import json
import os
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from bridge.cli import cli
from bridge.errors import ConfigError, ConfigErrors, MappingError
from bridge.mapping import load_mapping

REPO = Path(__file__).resolve().parents[1]
BROKEN = REPO / "tests" / "mapping_cases" / "broken"
MAPPINGS = REPO / "mappings"
SAMPLES = REPO / "bridge" / "samples"
SCHEMA = json.loads((REPO / "blueprints/schema/job-event.v1.schema.json").read_text("utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)
RECEIVED_AT = 1795263015.25
PROVIDERS = ("ratioready", "zupertry", "posternity", "upscale", "listingrva")

# file name -> (line of the mistake, counted by hand; words of the message; words of the hint)
BROKEN_CASES = {
    "01_yaml_syntax.yaml": (11, "YAML syntax error: mapping values are not allowed here",
                            "a value containing ': ' must be put in quotes"),
    "02_bad_jmespath.yaml": (8, "invalid expression 'status == 'completed'",
                             "text values need quotes inside"),
    "03_unknown_top_key.yaml": (4, "unknown key 'descripion' in the mapping",
                                "did you mean 'description'?"),
    "04_unknown_rule_key.yaml": (10, "unknown key 'field' in rule 'completed'",
                                 "did you mean 'fields'?"),
    "05_unknown_output_field.yaml": (12, "'asset_cont' is not a field of the job event schema",
                                     "did you mean 'asset_count'?"),
    "06_spread_text.yaml": (13, "'spread' of field 'asset_url' must be a whole number",
                            "spread: 10"),
    "07_count_text.yaml": (13, "'count' of field 'asset_count' must be true", "count: true"),
    "08_join_number.yaml": (13, "'join' of field 'asset_urls' must be text", 'join: "\\n"'),
    "09_spread_beyond_schema.yaml": (13, "spread: 20 is more than the schema has "
                                         "(preview_url_1 … preview_url_5)",
                                     "use spread: 5 or less"),
    "10_missing_event_type.yaml": (10, "rule 'failed' needs an event_type", "job.completed"),
    "11_bad_event_type.yaml": (9, "rule 'completed' needs an event_type: a dotted lowercase",
                               "job.completed"),
    "12_bridge_field.yaml": (6, "'event_id' is set by the bridge and cannot be mapped", ""),
    "13_schema_version_2.yaml": (3, "schema_version 2 is not supported",
                                 "this bridge produces schema_version 1"),
    "14_template_bad_expression.yaml": (11, "invalid expression 'length(assets.'",
                                        "syntax: https://jmespath.org"),
    # no line holds a missing key: the error points at the top of the file's section
    "15_rules_missing.yaml": (2, "'rules' must be a list with at least one rule",
                              "event_type"),
    "16_rules_empty.yaml": (6, "'rules' must be a list with at least one rule", "event_type"),
    "17_duplicate_key.yaml": (7, "'job_id' is given twice", "remove one of them"),
    "18_tab_indent.yaml": (8, "YAML syntax error", "indent with spaces, not tabs"),
    "19_spread_no_numbered_fields.yaml": (11, "'asset' has no numbered fields in the schema",
                                          "did you mean 'asset_url'?"),
    "20_from_and_value.yaml": (11, "field 'job_type' needs exactly one of 'from', 'value' or "
                                   "'template'", ""),
    "21_map_list.yaml": (6, "'map' of field 'status' must be a section", "complete: completed"),
    "22_when_not_text.yaml": (8, "'when' of rule 'always' must be an expression in quotes",
                              "when: \"status == 'completed'\""),
    "23_unknown_function.yaml": (9, "unknown function lenght()", "did you mean 'length'?"),
    "24_function_arity.yaml": (11, "starts_with() takes 2 argument(s), not 1",
                               "jmespath.org"),
}

ERROR_FORM = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<message>.+) \((?P<hint>.+)\)$",
                        re.DOTALL)


def test_every_broken_file_has_a_case_and_there_are_at_least_ten():
    on_disk = sorted(p.name for p in BROKEN.glob("*.yaml"))
    assert on_disk == sorted(BROKEN_CASES)
    assert len(on_disk) >= 10


@pytest.mark.parametrize("name", sorted(BROKEN_CASES))
def test_broken_mapping_reports_one_error_at_its_line(name):
    path = BROKEN / name
    line, message, hint = BROKEN_CASES[name]
    with pytest.raises(ConfigErrors) as caught:
        load_mapping(path)
    errors = caught.value.errors
    assert len(errors) == 1, "\n".join(str(e) for e in errors)
    error = errors[0]
    assert isinstance(error, ConfigError)
    assert error.file == str(path)
    assert error.line == line, str(error)
    assert message in error.message
    assert error.hint, f"no hint: {error}"
    assert hint in error.hint
    text = str(error)
    assert text == f"{path}:{line}: {error.message} ({error.hint})"
    form = ERROR_FORM.match(text)
    assert form is not None, text
    assert (form["file"], int(form["line"])) == (str(path), line)
    # the ConfigErrors itself reads the same (what `bridge check` prints)
    assert str(caught.value) == text


def test_relative_path_is_reported_as_given(monkeypatch):
    monkeypatch.chdir(BROKEN)
    with pytest.raises(ConfigErrors) as caught:
        load_mapping("05_unknown_output_field.yaml")
    assert str(caught.value).startswith("05_unknown_output_field.yaml:12: 'asset_cont' ")


def test_several_mistakes_in_one_file_are_all_reported(tmp_path):
    path = tmp_path / "many.yaml"
    path.write_text(textwrap.dedent("""\
        source: ratioready
        colour: blue
        fields:
          job_idd: job_id
        rules:
          - name: completed
            when: "status == 'completed'"
            event_type: Completed
            fields:
              asset_urls: {from: assets.download_urls, join: 5}
        """), encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_mapping(path)
    assert [(e.line, e.message.split(" ")[0]) for e in caught.value.errors] == [
        (2, "unknown"), (4, "'job_idd'"), (8, "rule"), (10, "'join'")]


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigErrors) as caught:
        load_mapping(tmp_path / "nope.yaml")
    [error] = caught.value.errors
    assert error.file == str(tmp_path / "nope.yaml")
    assert "file not found" in error.message


# -- bridge check ----------------------------------------------------------------------

def test_bridge_check_prints_file_and_line_and_exits_1(tmp_path, monkeypatch):
    (tmp_path / "broken.yaml").write_bytes((BROKEN / "05_unknown_output_field.yaml").read_bytes())
    (tmp_path / "bridge.yaml").write_text(textwrap.dedent("""\
        sources:
          ratioready:
            profile: ratioready
            secrets:
              - ${RATIOREADY_WEBHOOK_SECRET}
            mapping: broken.yaml
        """), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    monkeypatch.setenv("RATIOREADY_WEBHOOK_SECRET", "s3cret-for-the-check-test")
    result = CliRunner().invoke(cli, ["check"])
    assert result.exit_code == 1, result.output
    expected = ("error: broken.yaml:12: 'asset_cont' is not a field of the job event schema "
                "(v1) (did you mean 'asset_count'?)")
    assert expected in result.stderr.splitlines()
    assert "1 problem(s) found." in result.stderr
    assert "s3cret-for-the-check-test" not in result.output


def test_bridge_check_passes_with_a_good_mapping(tmp_path, monkeypatch):
    (tmp_path / "good.yaml").write_bytes((MAPPINGS / "ratioready.yaml").read_bytes())
    (tmp_path / "bridge.yaml").write_text(textwrap.dedent("""\
        sources:
          ratioready:
            profile: ratioready
            secrets: ["${RATIOREADY_WEBHOOK_SECRET}"]
            mapping: good.yaml
        """), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BRIDGE_CONFIG", raising=False)
    monkeypatch.setenv("RATIOREADY_WEBHOOK_SECRET", "s3cret")
    result = CliRunner().invoke(cli, ["check"])
    assert result.exit_code == 0, result.output
    assert "bridge.yaml: ok" in result.output


# -- run-time failures -----------------------------------------------------------------

def sample(provider: str, name: str) -> dict:
    return json.loads((SAMPLES / provider / f"{name}.json").read_text("utf-8"))


def apply(provider: str, payload):
    return load_mapping(MAPPINGS / f"{provider}.yaml").apply(payload, "evt_err", provider,
                                                             RECEIVED_AT)


def shipped(provider: str) -> str:
    return str(MAPPINGS / f"{provider}.yaml")


# (provider, sample, change to the payload, line of the mapping that fails, field named)
RUNTIME_CASES = [
    # credits: credit_cost (mappings/ratioready.yaml line 13) gets an object
    ("ratioready", "wall_art_completed", {"credit_cost": {"amount": 89}}, 13, "credits"),
    # credits gets a word
    ("ratioready", "wall_art_completed", {"credit_cost": "abc"}, 13, "credits"),
    # job_id (line 11) gets a list
    ("ratioready", "poster_completed", {"job_id": ["rr_1", "rr_2"]}, 11, "job_id"),
    # the spread of download_urls (line 23) meets objects instead of URLs
    ("ratioready", "poster_completed",
     {"assets": {"download_urls": [{"url": "https://x.example/1.png"}]}}, 23, "asset_url_1"),
    # zupertry credits (line 10): true is not a number
    ("zupertry", "job_completed", {"data": {**sample("zupertry", "job_completed")["data"],
                                            "credits_consumed": True}}, 10, "credits"),
    # posternity summary (line 28) calls length() on a number (the projections
    # data.images[].url of lines 21-23 give null for a number, which is no error)
    ("posternity", "image_generation_completed",
     {"data": {**sample("posternity", "image_generation_completed")["data"], "images": 5}},
     28, "summary"),
    # upscale counts (lines 12, 13) that are not numbers
    ("upscale", "batch_complete", {"generated_messages_count": "twelve"}, 13,
     "generated_count"),
    ("upscale", "batch_complete", {"requested_messages_count": "twelve"}, 12,
     "requested_count"),
    # upscale partial (line 15) compares a text with a number ("9" is a fine count on
    # lines 13-14, but JMESPath does not order a text against a number)
    ("upscale", "batch_partial", {"generated_messages_count": "9"}, 15, "partial"),
    # listingrva asset_count (line 13) gets a fraction
    ("listingrva", "image_generated",
     {"payload": {**sample("listingrva", "image_generated")["payload"], "imageCount": 1.5}},
     13, "asset_count"),
    # a negative count cannot be a count (the schema says minimum 0)
    ("listingrva", "image_generated",
     {"payload": {**sample("listingrva", "image_generated")["payload"], "imageCount": -2}},
     13, "asset_count"),
]


@pytest.mark.parametrize("provider,name,change,line,field", RUNTIME_CASES,
                         ids=[f"{c[0]}-{c[4]}-{i}" for i, c in enumerate(RUNTIME_CASES)])
def test_unexpected_type_is_a_mapping_error_naming_file_and_line(provider, name, change,
                                                                  line, field):
    payload = {**sample(provider, name), **change}
    with pytest.raises(MappingError) as caught:
        apply(provider, payload)
    message = str(caught.value)
    assert message.startswith(f"{shipped(provider)}:{line}: field '{field}' "), message


def test_when_calling_a_function_on_null_is_a_mapping_error(tmp_path):
    path = tmp_path / "when.yaml"
    path.write_text(textwrap.dedent("""\
        source: test
        rules:
          - name: first
            when: "status == 'x'"
            event_type: job.first
          - name: many items
            when: "length(data.items) > `2`"
            event_type: job.many
        """), encoding="utf-8")
    mapping = load_mapping(path)
    assert mapping.apply({"data": {"items": [1, 2, 3]}}, "e", "test", 0).rule == "many items"
    with pytest.raises(MappingError) as caught:
        mapping.apply({"data": {}}, "e", "test", 0)
    assert str(caught.value).startswith(f"{path}:6: 'when' of rule 'many items' failed: ")


def test_template_calling_a_function_on_null_is_a_mapping_error(tmp_path):
    path = tmp_path / "template.yaml"
    path.write_text(textwrap.dedent("""\
        source: test
        rules:
          - event_type: job.done
            fields:
              job_id: id
              summary: {template: "{id} has {length(items)} items"}
        """), encoding="utf-8")
    mapping = load_mapping(path)
    event = mapping.apply({"id": "j1", "items": [1]}, "e", "test", 0).event
    assert event["summary"] == "j1 has 1 items"
    with pytest.raises(MappingError) as caught:
        mapping.apply({"id": "j1"}, "e", "test", 0)
    assert str(caught.value).startswith(f"{path}:6: field 'summary' failed: ")


# -- fuzzing: nothing but MappingError, and every event fits the schema -------------------

FUZZ_EXAMPLES = int(os.environ.get("BRIDGE_FUZZ_EXAMPLES", "300"))
LOADED = {p: load_mapping(MAPPINGS / f"{p}.yaml") for p in PROVIDERS}
SAMPLE_PAYLOADS = [(p.parent.name, p.stem, json.loads(p.read_text("utf-8")))
                   for p in sorted(SAMPLES.glob("*/*.json"))]


def _keys_of(value, found: set) -> set:
    if isinstance(value, dict):
        for key, item in value.items():
            found.add(key)
            _keys_of(item, found)
    elif isinstance(value, list):
        for item in value:
            _keys_of(item, found)
    return found


KEYS = sorted(set().union(*(_keys_of(p, set()) for _, _, p in SAMPLE_PAYLOADS)))
WORDS = ["completed", "complete", "failed", "error", "queued", "processing", "job.completed",
         "job.failed", "image.generated", "image.generation.completed",
         "image.generation.failed", "video.processing.completed", "studio.campaign.completed",
         "studio.client.approved", "map.content.completed", "", "12", "12.5", "-3", "abc",
         "1e400", "true", "https://cdn.example/x.png"]

# values at the edges of what the mappings expect: zero, negative, fractional, numbers as
# text, empty text and containers
edges = st.sampled_from([0, -1, 1, 1.5, -2.0, 12, 10**30, 1e300, "12", " 7 ", "-3", "2.5",
                         "", "abc", "1e400", "true", True, False, None, [], {}, [None]])
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 30)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=12) | st.sampled_from(WORDS) | edges)
keys = st.sampled_from(KEYS) | st.text(max_size=6)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=8)
random_payloads = st.dictionaries(keys, json_values, max_size=6)


def _slots(value) -> list[tuple[object, object]]:
    """Every (container, key or index) inside a JSON value."""
    slots = []
    if isinstance(value, dict):
        for key, item in value.items():
            slots.append((value, key))
            slots.extend(_slots(item))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            slots.append((value, index))
            slots.extend(_slots(item))
    return slots


@st.composite
def mutated_samples(draw):
    provider = draw(st.sampled_from(PROVIDERS))  # each provider as often, whatever its samples
    original = draw(st.sampled_from([p for name, _, p in SAMPLE_PAYLOADS if name == provider]))
    payload = copy.deepcopy(original)
    for _ in range(draw(st.integers(1, 4))):
        slots = _slots(payload)
        if not slots:
            break
        # half of the time a key of an object (list items would crowd them out)
        keyed = [slot for slot in slots if isinstance(slot[0], dict)]
        container, key = draw(st.sampled_from(keyed if keyed and draw(st.booleans())
                                              else slots))
        if isinstance(container, dict) and draw(st.integers(0, 3)) == 0:
            del container[key]
        else:
            container[key] = copy.deepcopy(draw(edges | scalars | json_values))  # never shared
    return payload


def check_through_every_mapping(payload) -> None:
    for provider, mapping in LOADED.items():
        try:
            result = mapping.apply(payload, "evt_fuzz", provider, RECEIVED_AT)
        except MappingError as err:
            assert re.match(rf"^{re.escape(mapping.file)}:\d+: ", str(err)), str(err)
            continue
        if result.event is None:
            assert result.rule is None
            continue
        errors = sorted(VALIDATOR.iter_errors(result.event), key=str)
        assert not errors, f"{provider}: {errors[0].message} in {result.event}"
        json.dumps(result.event, allow_nan=False)


FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(random_payloads)
def test_random_json_gives_a_valid_event_or_a_mapping_error(payload):
    check_through_every_mapping(payload)


@FUZZ
@given(mutated_samples())
def test_mutated_samples_give_a_valid_event_or_a_mapping_error(payload):
    check_through_every_mapping(payload)


@FUZZ
@given(json_values)
def test_any_json_value_as_the_whole_payload(payload):
    check_through_every_mapping(payload)


EDGE_VALUES = [0, -1, 1, 1.5, -2.0, 12, 10**30, 1e300, -1e300, "12", " 7 ", "-3", "2.5", "",
               "abc", "1e400", "nan", "true", True, False, None, [], {}, [None], ["a", 1],
               {"url": "https://x.example/a.png"}, [{"url": 5}]]


def _paths(value, prefix=()) -> list[tuple]:
    """The path of every key and list item inside a JSON value; of a list, only the
    first two items and the last (the others behave like them)."""
    paths = []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = [(i, value[i]) for i in sorted({0, 1, len(value) - 1}) if 0 <= i < len(value)]
    else:
        return paths
    for key, item in items:
        paths.append((*prefix, key))
        paths.extend(_paths(item, (*prefix, key)))
    return paths


@pytest.mark.parametrize("provider,name,original", SAMPLE_PAYLOADS,
                         ids=[f"{p}/{n}" for p, n, _ in SAMPLE_PAYLOADS])
def test_every_value_of_every_sample_replaced_by_every_edge_value(provider, name, original):
    """Not random: each key and list item of the sample, in turn, gets each edge value
    (and each key is also removed), through every shipped mapping."""
    paths = _paths(original)
    assert paths
    for path in paths:
        for value in [*EDGE_VALUES, KeyError]:
            payload = copy.deepcopy(original)
            container = payload
            for key in path[:-1]:
                container = container[key]
            if value is KeyError:
                if not isinstance(container, dict):
                    continue
                del container[path[-1]]
            else:
                container[path[-1]] = copy.deepcopy(value)
            check_through_every_mapping(payload)
