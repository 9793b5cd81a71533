"""Config loader fuzzing: random YAML text, and random mutations of the shipped bridge.yaml
and of the shipped profile files (lines deleted, indentation swapped, tabs, random
characters, values of the wrong type, unknown keys, values YAML itself cannot build),
loaded with ``load_settings(path, environ=...)``.

The only acceptable failure is ConfigErrors, each error a ConfigError with a file and a
message (what ``bridge check`` prints as ``file:line: message``): never another exception.
A few of the broken files also go through ``bridge check`` as a subprocess: exit 1,
``file:`` on stderr, no traceback.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import bridge.profiles
from bridge.config import Settings, load_settings
from bridge.errors import ConfigError, ConfigErrors

from .conftest import count, fuzz_settings

REPO = Path(__file__).resolve().parents[2]
SHIPPED = (REPO / "bridge.yaml").read_text("utf-8")
PROFILE_DIR = REPO / "bridge" / "profiles"
PROFILES = {p.stem: p.read_text("utf-8") for p in sorted(PROFILE_DIR.glob("*.yaml"))}
BRIDGE = Path(sys.executable).with_name("bridge")

# every variable the shipped bridge.yaml reads, set as on a real deploy
ENVIRON = {
    **{f"{p.upper()}_WEBHOOK_SECRET": f"secret-{p}" for p in
       ("ratioready", "zupertry", "posternity", "upscale", "listingrva")},
    "MAKE_WEBHOOK_URL": "https://hook.eu1.make.com/abc", "MAKE_API_KEY": "k",
    "N8N_WEBHOOK_URL": "https://n8n.example/webhook/x", "N8N_AUTH_TOKEN": "t",
    "ZAPIER_WEBHOOK_URL": "https://hooks.zapier.com/hooks/catch/1/a/",
    "MAKE_ALERT_WEBHOOK_URL": "https://hook.eu1.make.com/alert",
}

# a bridge.yaml with a source for every profile, so that every profile file is loaded
ALL_PROFILES_CONFIG = "sources:\n" + "".join(
    f"  s-{name}:\n    profile: {name}\n    secrets: [\"${{S_{i}}}\"]\n"
    for i, name in enumerate(PROFILES))
ALL_PROFILES_ENVIRON = {f"S_{i}": "whsec_c2VjcmV0c2VjcmV0c2VjcmV0" for i in range(len(PROFILES))}


# -- the check ---------------------------------------------------------------------------------

def load(path: Path, environ: dict[str, str], test: str, allowed_files: set[str]) -> None:
    """Load; pass with Settings or ConfigErrors whose every error names a file and says
    what is wrong. Anything else (another exception) fails the test."""
    try:
        settings = load_settings(str(path), environ=environ)
    except ConfigErrors as err:
        assert err.errors, "ConfigErrors without errors"
        for error in err.errors:
            assert isinstance(error, ConfigError), repr(error)
            assert error.file and isinstance(error.file, str), repr(error)
            assert error.file in allowed_files, f"{error.file} is not among {allowed_files}"
            assert isinstance(error.message, str) and error.message.strip(), repr(error)
            assert error.line is None or (isinstance(error.line, int) and error.line >= 0)
            assert "Traceback" not in str(error)
        str(err)
        count("config", test, "config_errors", f"errors_{min(len(err.errors), 5)}")
        return
    except Exception:
        count("config", test, "escaped_exceptions")
        raise
    assert isinstance(settings, Settings)
    count("config", test, "loaded")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder like a deploy: the shipped mappings beside bridge.yaml."""
    path = tmp_path_factory.mktemp("configfuzz")
    shutil.copytree(REPO / "mappings", path / "mappings")
    return path


# -- mutations ----------------------------------------------------------------------------------

WRONG_VALUES = ["[1, 2]", "{a: 1}", "2024-13-45", "2024-02-30T10:00:00Z", "!!int abc",
                "!!float x", "!!bool maybe", "!!timestamp 2020-99-01", "0x_", "0o9", "~",
                "yes", "-1", "0", "1e9", "99999999999999999999999", ".nan", "-.inf",
                "'${UNSET_VAR}'", "${DATABASE_URL}", "$${X}", "'${X:-}'", "\"\\x00\"",
                "!!binary '###'", "!!set {a, b}", "!!omap [a: 1]", "&anchor x", "*nowhere",
                "\"a\\tb\"", "|\n  block", ">\n  folded", "''", "\"\"", "é", "😀", "? complex",
                "[" * 50 + "]" * 50, "{[1]: 2}", "!!python/object:os.system x", "@x", "`x",
                "%x", "a: b: c", "- item"]
CHARACTERS = list(":-{}[],&*!|>'\"%@`#?\t\n\\$") + ["  ", "é", "\x00", "\x85", "\ufeff",
                                                    "\u2028", "😀", "\r"]
UNKNOWN_KEYS = ["colour", "sources", "secret", "profil", "database", "routes", "kind", "urls",
                "tolerance", "header", "in_web", "retry", "schedule", "x", "1", "true", "~",
                "? [a]", "<<"]


def mutate_text(text: str, operations: list[tuple[str, int, int]]) -> str:
    """Apply line and character mutations, each chosen by (kind, n, m)."""
    for kind, n, m in operations:
        lines = text.split("\n")
        i = n % max(1, len(lines))
        if kind == "delete_line" and lines:
            del lines[i]
        elif kind == "duplicate_line" and lines:
            lines.insert(i, lines[i])
        elif kind == "swap_lines" and len(lines) > 1:
            j = (i + 1 + m % 3) % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == "indent":
            lines[i] = " " * (1 + m % 4) + lines[i]
        elif kind == "dedent":
            lines[i] = lines[i][1 + m % 4:] if lines[i].startswith(" ") else lines[i]
        elif kind == "swap_indentation":  # two lines exchange their indentation
            j = m % len(lines)
            a, b = lines[i], lines[j]
            pa, pb = len(a) - len(a.lstrip(" ")), len(b) - len(b.lstrip(" "))
            lines[i], lines[j] = " " * pb + a.lstrip(" "), " " * pa + b.lstrip(" ")
        elif kind == "tab":
            position = m % (len(lines[i]) + 1)
            lines[i] = lines[i][:position] + "\t" + lines[i][position:]
        elif kind == "tab_indent":
            stripped = lines[i].lstrip(" ")
            lines[i] = "\t" * ((len(lines[i]) - len(stripped)) // 2 or 1) + stripped
        elif kind == "character":
            position = m % (len(lines[i]) + 1)
            lines[i] = lines[i][:position] + CHARACTERS[n % len(CHARACTERS)] + lines[i][position:]
        elif kind == "replace_character" and lines[i]:
            position = m % len(lines[i])
            lines[i] = (lines[i][:position] + CHARACTERS[n % len(CHARACTERS)]
                        + lines[i][position + 1:])
        elif kind == "wrong_value":
            match = re.match(r"^(\s*(?:- )?[^:#]+:)(\s.*)?$", lines[i])
            if match:
                lines[i] = f"{match.group(1)} {WRONG_VALUES[m % len(WRONG_VALUES)]}"
        elif kind == "unknown_key":
            indent = len(lines[i]) - len(lines[i].lstrip(" "))
            key = UNKNOWN_KEYS[m % len(UNKNOWN_KEYS)]
            lines.insert(i, " " * indent + f"{key}: {WRONG_VALUES[n % len(WRONG_VALUES)]}")
        elif kind == "truncate":
            return "\n".join(lines)[: m % (len(text) + 1)]
        elif kind == "deep":
            depth = 150 + m % 250  # from fine to deeper than the YAML reader can go
            lines.insert(i, "deep: " + "[" * depth + "]" * depth)
        text = "\n".join(lines)
    return text


TEXT_OPERATIONS = ["delete_line", "duplicate_line", "swap_lines", "indent", "dedent",
                   "swap_indentation", "tab", "tab_indent", "character", "replace_character",
                   "wrong_value", "wrong_value", "unknown_key", "truncate", "deep"]
operations = st.lists(st.tuples(st.sampled_from(TEXT_OPERATIONS), st.integers(0, 10**6),
                                st.integers(0, 10**6)), min_size=1, max_size=4)

yaml_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() |
                st.text(max_size=12) | st.sampled_from(["${X}", "${DATABASE_URL:-x}", "5s",
                                                        "1m", "-3", "http://", "all"]))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8) | st.sampled_from(
                               UNKNOWN_KEYS), inner, max_size=4), max_leaves=10)


def tree_paths(value, prefix=()) -> list[tuple]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(tree_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(tree_paths(item, (*prefix, index)))
    return found


@st.composite
def tree_mutation(draw, text: str) -> str:
    """Parse, change one value to one of another type (or add an unknown key, or delete
    one), write back as YAML."""
    data = yaml.safe_load(text)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(tree_paths(data)))
        action = draw(st.sampled_from(["replace", "replace", "add", "delete"]))
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        if not path:
            data = draw(yaml_values) if action == "replace" else data
            continue
        target = parent[path[-1]]
        if action == "replace":
            parent[path[-1]] = draw(yaml_values)
        elif action == "add" and isinstance(target, dict):
            target[draw(st.sampled_from(UNKNOWN_KEYS) | st.text(max_size=6))] = draw(yaml_values)
        elif action == "delete":
            del parent[path[-1]]
        if not isinstance(data, (dict, list)):
            break
    return yaml.safe_dump(data, allow_unicode=draw(st.booleans()), sort_keys=False)


@st.composite
def environments(draw) -> dict[str, str]:
    """The deploy's variables, some unset, some odd."""
    environ = dict(ENVIRON)
    for name in draw(st.lists(st.sampled_from(sorted(ENVIRON) + [
            "DATABASE_URL", "BRIDGE_MAX_BODY_BYTES", "BRIDGE_DELIVER_IN_WEB"]), max_size=3)):
        environ[name] = draw(st.sampled_from(["", " ", "0", "-1", "abc", "1e9", "2024-13-45",
                                              "http://x y", "ftp://x", "postgres://u:p@h/db",
                                              "sqlite:///", "${X}", "[1]", "true", "é"]))
    return environ


# -- the fuzz tests ------------------------------------------------------------------------------

def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


@fuzz_settings("config", 0.30)
@given(operations, environments())
def test_mutated_shipped_bridge_yaml(folder, ops, environ):
    path = write(folder, "bridge.yaml", mutate_text(SHIPPED, ops))
    load(path, environ, "bridge_yaml_text", {str(path)})


@fuzz_settings("config", 0.20)
@given(st.data())
def test_shipped_bridge_yaml_with_values_of_other_types(folder, data):
    text = data.draw(tree_mutation(SHIPPED))
    path = write(folder, "bridge.yaml", text)
    load(path, data.draw(environments()), "bridge_yaml_tree", {str(path)})


@pytest.fixture(scope="module")
def profile_copies(folder) -> Path:
    """A copy of bridge/profiles, to be used as PROFILE_DIR."""
    profiles = folder / "profiles"
    shutil.copytree(PROFILE_DIR, profiles)
    return profiles


@fuzz_settings("config", 0.30)
@given(st.sampled_from(sorted(PROFILES)), st.data())
def test_mutated_profile_files(folder, profile_copies, name, data):
    """A broken profile file (bridge/profiles/<name>.yaml, here a copy) is reported with
    its file, never as a traceback."""
    if data.draw(st.booleans()):
        text = mutate_text(PROFILES[name], data.draw(operations))
    else:
        text = data.draw(tree_mutation(PROFILES[name]))
    mutated = write(profile_copies, f"{name}.yaml", text)
    config = write(folder, "bridge.yaml",
                   f"sources:\n  s:\n    profile: {name}\n    secrets: [\"${{S_0}}\"]\n")
    try:
        with mock.patch.object(bridge.profiles, "PROFILE_DIR", profile_copies):
            load(config, ALL_PROFILES_ENVIRON, "profile_files", {str(config), str(mutated)})
    finally:
        write(profile_copies, f"{name}.yaml", PROFILES[name])


@fuzz_settings("config", 0.10)
@given(st.sampled_from(sorted(PROFILES)), st.data())
def test_profile_keys_overridden_with_wrong_values(folder, name, data):
    """A source may override any key of its profile in bridge.yaml: the same mutations,
    written as overrides."""
    overrides = data.draw(tree_mutation(PROFILES[name]))
    body = textwrap.indent(overrides, "    ") if overrides.strip() else ""
    text = f"sources:\n  s:\n    profile: {name}\n    secrets: [\"${{S_0}}\"]\n{body}"
    path = write(folder, "bridge.yaml", text)
    load(path, ALL_PROFILES_ENVIRON, "profile_overrides", {str(path)})


yaml_tokens = st.sampled_from([
    "a", "sources", "ratioready", "profile", "secrets", "destinations", "routes", "from", "to",
    "all", "kind", "url", "http", "retry", "schedule", "- ", ": ", ":", "-", "{", "}", "[",
    "]", ",", "&a ", "*a", "!!int ", "!!str ", "!!binary ", "!!timestamp ", "<<: ", "? ",
    "|", ">", "'", '"', "#", "%YAML 1.2\n", "---\n", "...\n", "\n", "\n  ", "\n    ",
    "\t", "${X}", "$${", "2024-13-45", "1e400", ".inf", "~", "null", "yes", "0x", "0o",
    "é", "\x00", "\ufeff", "😀", "\\", "@", "`", "%"])


@fuzz_settings("config", 0.10)
@given(st.lists(yaml_tokens | st.text(max_size=4), max_size=40).map("".join),
       environments())
def test_random_yaml_text(folder, text, environ):
    path = write(folder, "bridge.yaml", text)
    load(path, environ, "random_yaml", {str(path)})


# -- bridge check as a subprocess -------------------------------------------------------------

# known-bad edits, each a mistake a person makes (and two YAML cannot even build)
CHECK_CASES = {
    "tab_indent": SHIPPED.replace("    profile: zupertry", "\tprofile: zupertry"),
    "date_value": SHIPPED.replace("${BRIDGE_MAX_BODY_BYTES:-1048576}", "2024-13-45"),
    "int_tag": SHIPPED.replace("${BRIDGE_MAX_BODY_BYTES:-1048576}", "!!int lots"),
    "unknown_key": SHIPPED.replace("  upscale:\n", "  upscale:\n    secret: x\n"),
    "profile_override": SHIPPED.replace(
        "    profile: posternity\n", "    profile: posternity\n    signature: {encoding: hexx}\n"),
    "deep": SHIPPED + "\nextra: " + "[" * 3000 + "]" * 3000 + "\n",
}


def random_broken_configs(how_many: int, seed: int = 20240611) -> dict[str, str]:
    """Mutated copies of bridge.yaml that load_settings refuses (seeded, so the same every
    run)."""
    import tempfile

    rng = random.Random(seed)
    found: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="configfuzz-") as scratch:
        shutil.copytree(REPO / "mappings", Path(scratch) / "mappings")
        while len(found) < how_many:
            ops = [(rng.choice(TEXT_OPERATIONS), rng.randrange(10**6), rng.randrange(10**6))
                   for _ in range(rng.randint(1, 3))]
            text = mutate_text(SHIPPED, ops)
            try:
                load_settings(str(write(Path(scratch), "bridge.yaml", text)), environ=ENVIRON)
            except Exception:  # noqa: BLE001 - ConfigErrors, or a bug the subprocess shows
                found[f"random_{len(found)}"] = text
    return found


RANDOM_BROKEN = random_broken_configs(4)


@pytest.mark.skipif(not BRIDGE.exists(), reason="the bridge console script is missing")
@pytest.mark.parametrize("name", [*CHECK_CASES, *RANDOM_BROKEN])
def test_bridge_check_reports_file_and_line_without_a_traceback(tmp_path, name):
    text = CHECK_CASES.get(name) or RANDOM_BROKEN[name]
    shutil.copytree(REPO / "mappings", tmp_path / "mappings")
    config = write(tmp_path, "bridge.yaml", text)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "DATABASE"))},
           **ENVIRON, "BRIDGE_CONFIG": str(config)}
    result = subprocess.run([str(BRIDGE), "check"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == 1, output[-3000:]
    assert re.search(rf"^error: {re.escape(str(config))}:(\d+:)? ", result.stderr, re.M), \
        result.stderr[-3000:]
    count("config", "bridge_check_subprocess", "exit_1")


@pytest.mark.skipif(not BRIDGE.exists(), reason="the bridge console script is missing")
def test_bridge_check_reports_a_broken_profile_file(tmp_path):
    """The same for a profile file with a YAML mistake (a copy of bridge/profiles, used by
    `bridge check` through PROFILE_DIR)."""
    profiles = tmp_path / "profiles"
    shutil.copytree(PROFILE_DIR, profiles)
    broken = profiles / "stripe.yaml"
    broken.write_text(PROFILES["stripe"].replace("  tolerance: 300", "  tolerance: 2024-13-45"),
                      encoding="utf-8")
    config = write(tmp_path, "bridge.yaml", ALL_PROFILES_CONFIG)
    code = ("import sys, pathlib, bridge.profiles as p; p.PROFILE_DIR = pathlib.Path(sys.argv[1]);"
            " sys.argv = ['bridge', 'check']; from bridge.cli import main; main()")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "DATABASE"))},
           **ALL_PROFILES_ENVIRON, "BRIDGE_CONFIG": str(config)}
    result = subprocess.run([sys.executable, "-c", code, str(profiles)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == 1, output[-3000:]
    assert f"error: {broken}:" in result.stderr, result.stderr[-3000:]


# -- what the fuzzers found, kept as plain tests ---------------------------------------------

@pytest.mark.parametrize("value", ["2024-13-45", "2024-02-30T10:00:00Z", "!!int abc",
                                   '!!int ""', '!!float ""', "!!timestamp", "!!bool maybe",
                                   "0x_", "[" * 3000 + "]" * 3000])
def test_a_value_yaml_cannot_build_is_a_config_error_with_its_line(folder, value):
    text = SHIPPED.replace("${BRIDGE_MAX_BODY_BYTES:-1048576}", value)
    path = write(folder, "bridge.yaml", text)
    with pytest.raises(ConfigErrors) as caught:
        load_settings(str(path), environ=ENVIRON)
    [error] = caught.value.errors
    assert error.file == str(path)
    if not value.startswith("["):  # too deep to say where
        assert error.line == SHIPPED[:SHIPPED.index("max_body_bytes")].count("\n") + 1
    assert error.hint
