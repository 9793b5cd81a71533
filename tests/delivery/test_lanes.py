"""Several deliveries at once: the rate limit, the concurrency cap, fan-out where one
destination is down, and two workers sharing one SQLite store."""

from __future__ import annotations

import collections
import time

from .conftest import Reply, destination, free_port, sample, wait_for

WALL_ART = sample("ratioready", "wall_art_completed")


def test_rate_limit_is_respected(make_rig, receiver):
    rate, count = 5, 15
    rig = make_rig({"slowtool": destination(receiver.url("/rated"), rate_limit=rate,
                                            concurrency=4)})
    ids = [rig.add() for _ in range(count)]

    rig.drain(lambda: receiver.count("/rated") >= count, timeout=10)

    times = sorted(r.time for r in receiver.to("/rated"))
    assert sorted(receiver.ids("/rated")) == sorted(ids)
    # 15 sends at 5/s: the first and the last are at least 14 / 5 = 2.8 s apart
    minimum_span = (count - 1) / rate
    assert times[-1] - times[0] >= 0.8 * minimum_span
    # and no second holds more than about 5 of them
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert busiest <= rate + 1, busiest


def test_concurrency_cap(make_rig, receiver):
    rig = make_rig({"capped": destination(receiver.url("/capped"), concurrency=2,
                                          rate_limit=1000, timeout="3s")})
    receiver.default("/capped", Reply(200, delay=0.25))
    ids = [rig.add() for _ in range(8)]

    rig.drain(lambda: all(rig.done(i, "capped") for i in ids), timeout=10)

    assert receiver.count("/capped") == 8
    assert receiver.max_in_flight["/capped"] == 2  # both slots used, never a third


def test_fan_out_one_destination_down_does_not_delay_the_other(make_rig, receiver):
    rig = make_rig({"up": destination(receiver.url("/up")),
                    "down": destination(f"http://127.0.0.1:{free_port()}/hook")})
    app = rig.app(start_worker=True)  # the web process's own worker, woken by ingest
    client = app.test_client()
    time.sleep(0.2)  # let the idle lanes settle into their wait
    started = time.time()

    event_id = rig.post(client, "ratioready", WALL_ART)

    wait_for(lambda: receiver.count("/up") >= 1, timeout=3, message="'up' got nothing")
    assert receiver.to("/up")[0].time - started < 1.0
    assert receiver.ids("/up") == [event_id]
    wait_for(lambda: rig.delivery(event_id, "up").state == "done", timeout=3)
    wait_for(lambda: rig.delivery(event_id, "down").total_attempts >= 1, timeout=3)
    down = rig.delivery(event_id, "down")
    assert down.state == "pending"
    assert down.last_error.startswith("connection failed")
    assert "refused" in down.last_error.lower()


def test_two_workers_on_one_store_never_double_deliver(make_rig, receiver):
    count = 200
    rig = make_rig({"tool": destination(receiver.url("/once"), rate_limit=2000,
                                        concurrency=4)},
                   delivery={"poll_interval": "0.05s", "batch": 10})
    ids = [rig.add(key=f"job-{n}") for n in range(count)]
    stores = [rig.new_store(), rig.new_store()]
    claimed = collections.Counter()
    for index, store in enumerate(stores):  # count what each worker takes
        def claim(*args, _claim=store.claim, _index=index, **kwargs):
            claims = _claim(*args, **kwargs)
            claimed[_index] += len(claims)
            return claims
        store.claim = claim
    first, second = rig.worker(stores[0]), rig.worker(stores[1])

    first.start()
    second.start()
    wait_for(lambda: rig.states().get("done", 0) == count, timeout=30,
             message=lambda: f"states {dict(rig.states())}, received {receiver.count()}")
    time.sleep(0.5)  # anything sent twice would arrive by now
    first.stop(timeout=5)
    second.stop(timeout=5)

    seen = collections.Counter(receiver.ids("/once"))
    assert set(seen) == set(ids)
    assert [i for i, n in seen.items() if n > 1] == []
    assert receiver.count() == count
    workers_used = {d.leased_by for d in rig.store.list_deliveries(limit=1000)}
    assert workers_used == {None}  # every lease was given back when recorded
    assert claimed[0] > 0 and claimed[1] > 0, claimed  # both really worked
    assert claimed[0] + claimed[1] == count  # and no lease ran out to be claimed again


def test_a_rate_limit_below_one_per_second_still_delivers(make_rig, receiver):
    # 0.8/s: one send every 1.25 s; the second event waits for its slot, but is sent
    rig = make_rig({"trickle": destination(receiver.url("/trickle"), rate_limit=0.8)})
    ids = [rig.add() for _ in range(2)]

    rig.drain(lambda: receiver.count("/trickle") >= 2, timeout=6)

    first, second = receiver.to("/trickle")
    assert second.time - first.time >= 0.8 * 1.25
    assert sorted(receiver.ids("/trickle")) == sorted(ids)
    rig.drain(lambda: all(rig.done(i, "trickle") for i in ids), timeout=2)


def test_one_burst_delivers_everything_due_at_a_low_rate(make_rig, receiver):
    # `bridge worker --burst` runs run_burst once: at 1.5/s it must not stop after the
    # first slot while more are due
    rig = make_rig({"slow": destination(receiver.url("/slow"), rate_limit=1.5)})
    ids = [rig.add() for _ in range(3)]

    claimed = rig.worker().run_burst()

    assert claimed == 3
    assert sorted(receiver.ids("/slow")) == sorted(ids)
    assert all(rig.done(i, "slow") for i in ids)
    times = [r.time for r in receiver.to("/slow")]
    assert times[-1] - times[0] >= 0.8 * 2 / 1.5


def test_stop_finishes_in_flight_and_releases_the_rest(make_rig, receiver):
    rig = make_rig({"one": destination(receiver.url("/one"), concurrency=1, timeout="3s")},
                   delivery={"batch": 10, "poll_interval": "0.05s"})
    receiver.default("/one", Reply(200, delay=0.4))
    ids = [rig.add() for _ in range(10)]
    worker = rig.worker()
    worker.start()
    wait_for(lambda: receiver.count("/one") >= 1, timeout=3)

    started = time.monotonic()
    worker.stop(timeout=5)

    assert time.monotonic() - started < 2.0
    assert receiver.count("/one") == 1  # nothing new was started after stop
    [sent] = receiver.ids("/one")
    assert rig.delivery(sent, "one").state == "done"  # the one in flight finished
    rest = [rig.delivery(i, "one") for i in ids if i != sent]
    assert {d.state for d in rest} == {"pending"}
    assert {d.leased_by for d in rest} == {None}      # released, not left to a lease
    assert all(d.next_attempt_at <= time.time() for d in rest)
    assert all(d.total_attempts == 0 for d in rest)


def test_a_route_with_event_types_forwards_only_those(make_rig, receiver):
    rig = make_rig({"log": destination(receiver.url("/log")),
                    "alerts": destination(receiver.url("/alerts"))},
                   routes=[{"from": "all", "to": ["log"]},
                           {"from": "ratioready", "to": ["alerts"],
                            "event_types": ["job.failed"]}])
    completed = rig.add(payload=WALL_ART)
    failed = rig.add(payload=sample("ratioready", "job_failed"))

    rig.drain(lambda: receiver.count("/log") >= 2 and receiver.count("/alerts") >= 1)

    assert sorted(receiver.ids("/log")) == sorted([completed, failed])
    assert receiver.ids("/alerts") == [failed]
    skipped = rig.delivery(completed, "alerts")
    assert (skipped.state, skipped.total_attempts) == ("filtered", 0)
    assert "does not take job.completed" in skipped.last_error
