"""bridge.yaml: interpolation, overrides, and every problem reported as file:line."""

from __future__ import annotations

import textwrap

import pytest

from bridge.config import DEFAULT_DATABASE_URL, DEFAULT_MAX_BODY, load_settings
from bridge.errors import ConfigErrors

from .conftest import PROVIDERS, SHIPPED_CONFIG, SIGNATURE_HEADERS, line_with, secret_var, sign

ONE_SOURCE = """
sources:
  ratioready:
    profile: ratioready
    secrets: ["${RR_SECRET}"]
"""


def literal_secret_warnings(settings) -> list[str]:
    """The warnings about a secret written in the file itself."""
    return [w for w in settings.warnings if "a secret is written" in w]


def problems(write_config, text: str, environ: dict | None = None) -> list:
    """The ConfigErrors found in ``text``, written as bridge.yaml."""
    path = write_config(text)
    with pytest.raises(ConfigErrors) as caught:
        load_settings(str(path), environ=environ or {})
    for error in caught.value.errors:
        assert error.file == str(path)
    return caught.value.errors


def only_problem(write_config, text: str, environ: dict | None = None):
    (error,) = problems(write_config, text, environ)
    return error


# -- the shipped file -----------------------------------------------------------------


def test_the_shipped_file_has_one_ready_source_per_provider(environ, secrets,
                                                            previous_secrets):
    settings = load_settings(str(SHIPPED_CONFIG), environ=environ)
    assert list(settings.sources) == list(PROVIDERS)
    for name, source in settings.sources.items():
        assert source.secrets == (secrets[name], previous_secrets[name])
        assert source.disabled_reason is None
        assert source.profile.scheme.header == SIGNATURE_HEADERS[name]
    assert literal_secret_warnings(settings) == []
    assert (settings.database_url, settings.max_body_bytes) == (DEFAULT_DATABASE_URL,
                                                                DEFAULT_MAX_BODY)


def test_without_secrets_every_source_accepts_nothing_and_names_its_variable():
    settings = load_settings(str(SHIPPED_CONFIG), environ={})
    for name, source in settings.sources.items():
        assert source.secrets == ()
        assert secret_var(name) in source.disabled_reason
        assert "_PREVIOUS" not in source.disabled_reason


def test_the_previous_secret_alone_is_enough():
    settings = load_settings(str(SHIPPED_CONFIG),
                             environ={"UPSCALE_WEBHOOK_SECRET_PREVIOUS": "old"})
    assert settings.sources["upscale"].secrets == ("old",)
    assert settings.sources["upscale"].disabled_reason is None


# -- interpolation -------------------------------------------------------------------------


@pytest.mark.parametrize("value, environ, expected", [
    ("${DB}", {"DB": "sqlite:///from-env.db"}, "sqlite:///from-env.db"),
    ("${DB:-sqlite:///default.db}", {}, "sqlite:///default.db"),
    ("${DB:-sqlite:///default.db}", {"DB": ""}, "sqlite:///default.db"),
    ("${DB:-sqlite:///default.db}", {"DB": "sqlite:///set.db"}, "sqlite:///set.db"),
    ("sqlite:///${DIR}/${NAME}.db", {"DIR": "/data", "NAME": "b"}, "sqlite:////data/b.db"),
    ("sqlite:///$${NOT_EXPANDED}.db", {"NOT_EXPANDED": "no"}, "sqlite:///${NOT_EXPANDED}.db"),
    ("sqlite:///$HOME.db", {"HOME": "/root"}, "sqlite:///$HOME.db"),
])
def test_database_url_is_interpolated(load_config, value, environ, expected):
    settings = load_config(f'database_url: "{value}"\n' + ONE_SOURCE, environ)
    assert settings.database_url == expected


def test_database_url_falls_back_to_the_environment(load_config):
    settings = load_config(ONE_SOURCE, {"DATABASE_URL": "sqlite:///env.db"})
    assert settings.database_url == "sqlite:///env.db"


def test_a_number_can_come_from_the_environment(load_config):
    settings = load_config("max_body_bytes: ${LIMIT:-100}\n" + ONE_SOURCE, {"LIMIT": "2048"})
    assert settings.max_body_bytes == 2048


def test_a_secret_comes_from_the_environment_without_warning(load_config):
    settings = load_config(ONE_SOURCE, {"RR_SECRET": "s3"})
    assert settings.sources["ratioready"].secrets == ("s3",)
    assert literal_secret_warnings(settings) == []


def test_a_secret_written_in_the_file_works_but_warns(load_config):
    settings = load_config(ONE_SOURCE.replace("${RR_SECRET}", "literal-s3cret"))
    assert settings.sources["ratioready"].secrets == ("literal-s3cret",)
    (warning,) = literal_secret_warnings(settings)
    assert "ratioready" in warning and "${VARIABLE}" in warning
    assert "literal-s3cret" not in warning


def test_an_unset_secret_variable_disables_the_source_and_names_it(load_config):
    source = load_config(ONE_SOURCE).sources["ratioready"]
    assert source.secrets == ()
    assert "set RR_SECRET" in source.disabled_reason


# -- overriding a profile ------------------------------------------------------------------


def test_a_source_can_change_its_profiles_signature_header(load_config, make_app):
    settings = load_config("""
        sources:
          posternity:
            profile: posternity
            signature: {header: X-Signature}
            secrets: ["${P_SECRET}"]
        """, {"P_SECRET": "k"})
    scheme = settings.sources["posternity"].profile.scheme
    assert (scheme.header, scheme.algorithm, scheme.encoding, scheme.prefix) == (
        "X-Signature", "sha256", "hex", "sha256=")
    client = make_app(settings).test_client()
    body = b'{"id": "evt_1", "event": "error"}'
    moved = client.post("/hooks/posternity", data=body, headers={"X-Signature": sign("k", body)})
    old = client.post("/hooks/posternity", data=body,
                      headers={"X-Posternity-Signature": sign("k", body)})
    assert (moved.status_code, old.status_code) == (200, 401)


def test_a_source_named_differently_uses_the_profile_it_names(load_config):
    settings = load_config("""
        sources:
          shop-2:
            profile: zupertry
            secrets: ["${Z}"]
            timestamp: {header: X-Zupertry-Time, tolerance: 60}
        """, {"Z": "k"})
    profile = settings.sources["shop-2"].profile
    assert profile.name == "zupertry" and profile.title == "Zupertry"
    assert profile.scheme.timestamp.header == "X-Zupertry-Time"
    assert profile.scheme.timestamp.tolerance == 60


def test_a_source_without_profile_uses_the_profile_of_its_name(load_config):
    settings = load_config("""
        sources:
          listingrva:
            secrets: ["${L}"]
        """, {"L": "k"})
    assert settings.sources["listingrva"].profile.scheme.header == "X-Webhook-Signature"


# -- problems, with file and line -------------------------------------------------------------


def test_an_unknown_top_level_key_suggests_the_right_one(write_config):
    text = "databse_url: sqlite:///x.db\n" + ONE_SOURCE
    error = only_problem(write_config, text)
    assert "unknown key 'databse_url'" in error.message
    assert error.hint == "did you mean 'database_url'?"
    assert error.line == 1


def test_an_unknown_source_key_is_reported_on_its_line(write_config):
    text = ONE_SOURCE.replace('secrets: ["${RR_SECRET}"]', 'secret: ["${RR_SECRET}"]')
    error = only_problem(write_config, text)
    assert "unknown key 'secret'" in error.message
    assert error.hint == "did you mean 'secrets'?"
    assert error.line == line_with(text, "secret:")
    assert str(error).startswith(f"{error.file}:{error.line}: ")


def test_an_unknown_key_inside_an_override_is_reported_on_its_line(write_config):
    text = textwrap.dedent("""
        sources:
          posternity:
            profile: posternity
            signature:
              hedaer: X-Signature
        """)
    error = only_problem(write_config, text)
    assert "unknown key 'hedaer'" in error.message and error.hint == "did you mean 'header'?"
    assert error.line == line_with(text, "hedaer")


def test_an_unknown_profile_is_reported_with_the_shipped_ones(write_config):
    text = ONE_SOURCE.replace("profile: ratioready", "profile: ratio-ready")
    error = only_problem(write_config, text)
    assert error.message == "unknown profile 'ratio-ready'"
    assert "ratioready" in error.hint and "stripe" in error.hint
    assert error.line == line_with(text, "profile:")


def test_bad_yaml_syntax_is_reported_with_its_line(write_config):
    text = ONE_SOURCE.replace("profile: ratioready", "profile: ratioready: oops")
    error = only_problem(write_config, text)
    assert error.message.startswith("YAML syntax error")
    assert error.line == line_with(text, "oops")
    assert "quotes" in error.hint


def test_a_tab_in_the_indentation_gets_a_hint(write_config):
    text = ONE_SOURCE.replace("    secrets:", "\tsecrets:")
    error = only_problem(write_config, text)
    assert error.line == line_with(text, "\t")
    assert error.hint == "indent with spaces, not tabs"


def test_a_key_given_twice_is_reported_on_the_second(write_config):
    text = "sources:\n  ratioready:\n    profile: ratioready\n  ratioready:\n    secrets: []\n"
    error = only_problem(write_config, text)
    assert (error.line, error.message, error.hint) == (4, "'ratioready' is given twice",
                                                       "remove one of them")


def test_every_problem_is_reported_at_once(write_config):
    text = textwrap.dedent("""
        max_body_bytes: lots
        sources:
          ratioready:
            profile: nope
          zupertry:
            profile: zupertry
            event_type: "data.[oops"
          Bad Name:
            profile: upscale
        """)
    found = {(e.line, e.message.split(" in ")[0].split(":")[0]) for e in problems(write_config,
                                                                                   text)}
    assert found == {
        (line_with(text, "max_body_bytes"), "'max_body_bytes'"),
        (line_with(text, "nope"), "unknown profile 'nope'"),
        (line_with(text, "oops"), "invalid expression 'data.[oops'"),
        (line_with(text, "Bad Name"), "source name 'Bad Name' can only use a-z, 0-9, '-' and '_'"),
    }


@pytest.mark.parametrize("text, message", [
    ("", "'sources' is missing"),
    ("- a\n- b\n", "the file must be a set of 'key: value' sections"),
    ("sources:\n  ratioready:\n    secrets: {a: b}\n", "'secrets' in source 'ratioready' must"),
    ("sources:\n  ratioready: yes\n", "source 'ratioready' must be a section"),
    ("max_body_bytes: 0\nsources: {}\n", "'max_body_bytes' must be a positive number"),
])
def test_malformed_files_are_explained(write_config, text, message):
    assert any(message in e.message for e in problems(write_config, text))


def test_a_missing_file_is_reported_with_its_path(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigErrors) as caught:
        load_settings(str(path), environ={})
    (error,) = caught.value.errors
    assert (error.file, error.message) == (str(path), "file not found")


def test_the_path_comes_from_bridge_config(write_config):
    path = write_config(ONE_SOURCE, name="elsewhere.yaml")
    settings = load_settings(environ={"BRIDGE_CONFIG": str(path)})
    assert settings.path == str(path) and list(settings.sources) == ["ratioready"]
