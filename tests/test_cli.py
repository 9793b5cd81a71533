"""The ``bridge`` command, run with click's CliRunner in tmp_path with an explicit
environment (and once as a real process, to see it read .env from its folder)."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest
from click.testing import CliRunner

from bridge.cli import cli

from .conftest import (
    PROVIDERS,
    SHIPPED_CONFIG,
    bridge_command,
    free_port,
    line_with,
    secret_var,
)

SECRET_LINE = re.compile(r"^([A-Z]+_WEBHOOK_SECRET)=([0-9a-f]{48})$")


@pytest.fixture
def run(tmp_path, monkeypatch):
    """Run ``bridge ARGS`` in tmp_path; only ``env`` is set of what the bridge reads."""
    monkeypatch.chdir(tmp_path)
    outer = {name: None for name in os.environ
             if name.startswith("BRIDGE_") or "_WEBHOOK_" in name
             or name in ("DATABASE_URL", "PORT")}

    def run(*args: str, **env: str):
        return CliRunner().invoke(cli, list(args), env={**outer, **env},
                                  auto_envvar_prefix="BRIDGE")

    return run


@pytest.fixture
def all_secrets(secrets) -> dict[str, str]:
    return {secret_var(p): s for p, s in secrets.items()}


# The shipped bridge.yaml, its destinations set (nothing is sent: only checked).
SHIPPED = {"BRIDGE_CONFIG": str(SHIPPED_CONFIG),
           **{f"{kind}_WEBHOOK_URL": f"http://127.0.0.1:9/{kind}" for kind in
              ("MAKE", "N8N", "ZAPIER")}}


# -- bridge check ---------------------------------------------------------------------


def test_check_passes_on_the_shipped_file_and_lists_every_source(run):
    result = run("check", **SHIPPED)
    assert result.exit_code == 0, result.output
    assert f"{SHIPPED_CONFIG}: ok" in result.stdout
    for provider in PROVIDERS:
        assert f"/hooks/{provider} " in result.stdout


def test_check_reports_a_broken_file_as_file_and_line(run, tmp_path):
    text = ("sources:\n  ratioready:\n    profile: ratioready\n"
            "    secret: ['${RATIOREADY_WEBHOOK_SECRET}']\n  zupertry:\n    profile: zuper\n")
    (tmp_path / "bridge.yaml").write_text(text)
    result = run("check")
    assert result.exit_code == 1
    errors = result.stderr
    assert f"bridge.yaml:{line_with(text, 'secret:')}: unknown key 'secret'" in errors
    assert f"bridge.yaml:{line_with(text, 'profile: zuper')}: unknown profile 'zuper'" in errors
    assert "2 problem(s) found" in result.stderr
    assert "ok" not in result.stdout


def test_check_reports_a_missing_file(run):
    result = run("check")  # no bridge.yaml in tmp_path
    assert result.exit_code == 1
    assert "bridge.yaml: file not found" in result.stderr


def test_check_strict_fails_while_secrets_are_missing(run):
    result = run("check", "--strict", **SHIPPED)
    assert result.exit_code == 1
    assert "RATIOREADY_WEBHOOK_SECRET" in result.stdout
    assert "5 warning(s) with --strict" in result.stderr


def test_check_strict_passes_once_every_secret_is_set(run, all_secrets):
    result = run("check", "--strict", **SHIPPED, **all_secrets)
    assert result.exit_code == 0, result.output
    for secret in all_secrets.values():
        assert secret not in result.output


# -- bridge send-test -------------------------------------------------------------------


def test_send_test_to_an_unknown_source_fails_and_names_the_known_ones(run, all_secrets):
    result = run("send-test", "nosuch", **SHIPPED, **all_secrets)
    assert result.exit_code == 1
    assert "unknown source 'nosuch'" in result.stderr
    assert "ratioready, zupertry, posternity, upscale, listingrva" in result.stderr


def test_send_test_lists_the_samples_of_a_source(run):
    result = run("send-test", "ratioready", "--list", **SHIPPED)
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == ["clipart_completed", "job_failed", "job_processing",
                                     "job_queued", "poster_completed", "wall_art_completed"]


def test_send_test_without_a_secret_says_which_variable_to_set(run):
    result = run("send-test", "ratioready", "--url", "http://127.0.0.1:9/hooks/ratioready",
                 **SHIPPED)
    assert result.exit_code == 1
    assert "RATIOREADY_WEBHOOK_SECRET" in result.stderr


def test_send_test_to_an_unknown_sample_lists_the_samples(run, all_secrets):
    result = run("send-test", "upscale", "--sample", "nope", **SHIPPED, **all_secrets)
    assert result.exit_code == 1
    assert "batch_complete, batch_partial" in result.stderr


def test_send_test_when_nothing_listens_says_so(run, all_secrets):
    url = f"http://127.0.0.1:{free_port()}/hooks/zupertry"
    result = run("send-test", "zupertry", "--url", url, **SHIPPED, **all_secrets)
    assert result.exit_code == 1
    assert f"cannot reach {url}" in result.stderr
    assert all_secrets["ZUPERTRY_WEBHOOK_SECRET"] not in result.output


# -- bridge init ------------------------------------------------------------------------


def test_init_writes_a_private_env_with_a_random_secret_per_provider(run, tmp_path):
    result = run("init")
    assert result.exit_code == 0, result.output
    env = tmp_path / ".env"
    found = dict(m.groups() for line in env.read_text().splitlines()
                 if (m := SECRET_LINE.match(line)))
    assert sorted(found) == sorted(secret_var(p) for p in PROVIDERS)
    assert len(set(found.values())) == 5
    assert stat.S_IMODE(env.stat().st_mode) == 0o600


def test_init_never_overwrites_an_env(run, tmp_path):
    (tmp_path / ".env").write_text("KEEP=1\n")
    refused = run("init")
    quiet = run("init", "--if-missing")
    assert (refused.exit_code, quiet.exit_code) == (1, 0)
    assert "exists" in refused.stderr
    assert (tmp_path / ".env").read_text() == "KEEP=1\n"


def test_every_command_reads_the_env_file_of_its_folder(tmp_path):
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
           "BRIDGE_CONFIG": str(SHIPPED_CONFIG)}
    command = bridge_command()
    subprocess.run([*command, "init"], cwd=tmp_path, env=env, check=True,
                   capture_output=True, timeout=30)
    checked = subprocess.run([*command, "check"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.count("ready (1 secret(s))") == len(PROVIDERS)
