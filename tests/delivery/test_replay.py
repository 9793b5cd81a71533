"""Dead letters: listed by `bridge deliveries --status dead`, sent again by store.replay,
`bridge replay EVENT_ID` and `bridge replay --dead [--source]`."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from bridge.cli import cli

from .conftest import destination, ok, sample, status


@pytest.fixture
def run_cli(monkeypatch, tmp_path):
    """Run a `bridge` command as a user would: cwd tmp_path, BRIDGE_CONFIG set."""
    monkeypatch.chdir(tmp_path)

    def run(rig, *args: str):
        env = {"BRIDGE_CONFIG": str(rig.config), **rig.environ}
        result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
        return result

    return run


def make_dead(rig, receiver, path: str, count: int = 1, source: str = "ratioready",
              payload: dict | None = None) -> list[str]:
    """Events whose only delivery became a dead letter (the receiver answered 410)."""
    receiver.default(path, status(410, "hook switched off"))
    ids = [rig.add(source, payload) for _ in range(count)]
    rig.drain(lambda: all(d.state == "dead" for i in ids for d in rig.store.deliveries_of(i)),
              timeout=5)
    return ids


def test_store_replay_of_a_dead_letter_delivers_it(make_rig, receiver):
    rig = make_rig({"tool": destination(receiver.url("/hook"))})
    [event_id] = make_dead(rig, receiver, "/hook")
    receiver.default("/hook", ok())

    assert rig.store.replay(event_id, rig.settings.destinations_for("ratioready"),
                            time.time()) == 1
    delivery = rig.delivery(event_id, "tool")
    assert (delivery.state, delivery.attempts, delivery.total_attempts) == ("pending", 0, 1)
    rig.drain(lambda: rig.done(event_id, "tool"), timeout=3)

    assert [a.http_status for a in rig.attempts(event_id, "tool")] == [410, 200]
    assert receiver.ids("/hook") == [event_id, event_id]
    assert rig.delivery(event_id, "tool").total_attempts == 2


def test_store_replay_of_an_unknown_event_is_none(make_rig, receiver):
    rig = make_rig({"tool": destination(receiver.url("/hook"))})
    assert rig.store.replay("evt_01NOSUCHEVENT0000000000000", ["tool"], time.time()) is None


def test_deliveries_status_dead_lists_the_event(make_rig, receiver, run_cli):
    rig = make_rig({"tool": destination(receiver.url("/hook"))})
    [dead] = make_dead(rig, receiver, "/hook")
    receiver.default("/hook", ok())
    delivered = rig.add()
    rig.drain(lambda: rig.done(delivered, "tool"), timeout=3)

    result = run_cli(rig, "deliveries", "--status", "dead")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["EVENT", "SOURCE", "DESTINATION", "STATE", "TRIES", "LAST",
                                "NEXT", "TRY"]
    [row] = [line for line in lines[1:] if line.strip()]
    assert row.split()[:5] == [dead, "ratioready", "tool", "dead", "1"]
    assert delivered not in result.output

    everything = run_cli(rig, "deliveries")
    assert dead in everything.output and delivered in everything.output
    assert run_cli(rig, "deliveries", "--status", "pending").output.strip() == \
        "no deliveries match"


def test_cli_replay_of_one_event(make_rig, receiver, run_cli):
    rig = make_rig({"tool": destination(receiver.url("/hook"))})
    first, second = make_dead(rig, receiver, "/hook", count=2)
    receiver.default("/hook", ok())

    result = run_cli(rig, "replay", first)

    assert result.exit_code == 0, result.output
    assert first in result.output and "1 delivery queued again" in result.output
    rig.drain(lambda: rig.done(first, "tool"), timeout=3)
    assert rig.delivery(second, "tool").state == "dead"  # only the one named
    assert receiver.ids("/hook").count(first) == 2
    assert receiver.ids("/hook").count(second) == 1


def test_cli_replay_of_an_unknown_event_fails(make_rig, receiver, run_cli):
    rig = make_rig({"tool": destination(receiver.url("/hook"))})
    result = run_cli(rig, "replay", "evt_01NOSUCHEVENT0000000000000")
    assert result.exit_code != 0
    assert "no event evt_01NOSUCHEVENT0000000000000" in result.output


def test_cli_bulk_replay_by_source_then_all(make_rig, receiver, run_cli):
    rig = make_rig({"tool": destination(receiver.url("/hook"))},
                   sources=("ratioready", "zupertry"))
    ratio = make_dead(rig, receiver, "/hook", count=3)
    zuper = make_dead(rig, receiver, "/hook", count=2, source="zupertry",
                      payload=json.loads(sample("zupertry", "job_completed")))
    receiver.default("/hook", ok())

    result = run_cli(rig, "replay", "--dead", "--source", "zupertry")

    assert result.exit_code == 0, result.output
    assert "2 dead letter(s) queued again" in result.output
    rig.drain(lambda: all(rig.done(i, "tool") for i in zuper), timeout=3)
    assert all(rig.delivery(i, "tool").state == "dead" for i in ratio)
    sent = [r.json for r in receiver.requests if r.json and r.headers.get("Idempotency-Key")]
    assert {e["event_id"] for e in sent if e["source"] == "zupertry"} == set(zuper)

    result = run_cli(rig, "replay", "--dead")

    assert "3 dead letter(s) queued again" in result.output
    rig.drain(lambda: all(rig.done(i, "tool") for i in ratio), timeout=3)
    assert rig.states() == {"done": 5}
    for event_id in ratio + zuper:
        assert receiver.ids("/hook").count(event_id) == 2  # the 410, then the replay
    assert "0 dead letter(s) queued again" in run_cli(rig, "replay", "--dead").output


def test_cli_replay_needs_an_event_or_dead(make_rig, receiver, run_cli):
    rig = make_rig({"tool": destination(receiver.url("/hook"))})
    assert run_cli(rig, "replay").exit_code != 0


def test_cli_worker_burst_delivers_what_is_due(make_rig, receiver, run_cli):
    rig = make_rig({"tool": destination(receiver.url("/hook"))})
    ids = [rig.add() for _ in range(3)]

    result = run_cli(rig, "worker", "--burst")

    assert result.exit_code == 0, result.output
    assert "burst done: 3 deliveries tried" in result.output
    assert sorted(receiver.ids("/hook")) == sorted(ids)
    assert all(rig.done(i, "tool") for i in ids)
