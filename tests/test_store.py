"""The store contract, run against every implementation: ``TestSqliteStore`` always,
``TestPostgresStore`` on a real server when one answers (BRIDGE_TEST_DATABASE_URL, else
postgresql://postgres@127.0.0.1:5432/test). Each subclass overrides only ``make_store``."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from bridge.errors import ConfigError, StoreUnavailable
from bridge.events import Attempt, AttemptResult, NewEvent
from bridge.store import describe_url, open_store
from bridge.store.base import Store
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore

T0 = 1_700_000_000.0


def new_event(dedup_key: str = "job_1:completed", source: str = "ratioready",
              received_at: float = T0, body: bytes = b'{"job_id": "job_1"}') -> NewEvent:
    return NewEvent(source=source, event_type="completed", dedup_key=dedup_key, body=body,
                    headers={"Content-Type": "application/json"}, remote_addr="127.0.0.1",
                    received_at=received_at)


class StoreContract:
    def make_store(self, tmp_path) -> Store:
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path):
        store = self.make_store(tmp_path)
        store.migrate()
        yield store
        store.close()

    def add_many(self, store, count: int, source: str = "ratioready") -> list[str]:
        """``count`` events received one second apart; their ids, oldest first."""
        return [store.add_event(new_event(f"{source}-{n}", source, T0 + n)).event_id
                for n in range(count)]

    def test_an_added_event_reads_back_as_it_was_given(self, store):
        body = b'{ "job_id":"job_1" ,\n "note":"\xc3\xa9" }\r\n'
        stored = store.add_event(new_event(body=body))
        event = store.get_event(stored.event_id)
        assert stored.duplicate is False
        assert (event.id, event.source, event.event_type, event.dedup_key, event.body,
                event.headers, event.remote_addr, event.received_at, event.duplicates,
                event.last_duplicate_at) == (
            stored.event_id, "ratioready", "completed", "job_1:completed", body,
            {"Content-Type": "application/json"}, "127.0.0.1", T0, 0, None)

    def test_an_unknown_id_reads_as_none(self, store):
        assert store.get_event("evt_00000000000000000000000000") is None

    def test_events_get_distinct_ids(self, store):
        ids = self.add_many(store, 20)
        assert len(set(ids)) == 20 and all(i.startswith("evt_") for i in ids)

    def test_events_are_listed_newest_first(self, store):
        ids = self.add_many(store, 5)
        assert [e.id for e in store.list_events()] == ids[::-1]

    def test_pages_follow_each_other_with_before(self, store):
        ids = self.add_many(store, 5)[::-1]
        first = store.list_events(limit=2)
        second = store.list_events(limit=2, before=first[-1].id)
        last = store.list_events(limit=2, before=second[-1].id)
        assert [[e.id for e in page] for page in (first, second, last)] == [
            ids[0:2], ids[2:4], ids[4:5]]
        assert store.list_events(before=ids[-1]) == []

    def test_events_can_be_listed_for_one_source(self, store):
        zupertry = self.add_many(store, 2, source="zupertry")
        self.add_many(store, 3, source="ratioready")
        assert [e.id for e in store.list_events(source="zupertry")] == zupertry[::-1]
        assert store.list_events(source="upscale") == []

    def test_a_duplicate_returns_the_first_id_and_is_counted(self, store):
        first = store.add_event(new_event(body=b'{"copy": 1}'))
        second = store.add_event(new_event(body=b'{"copy": 2}', received_at=T0 + 60))
        third = store.add_event(new_event(body=b'{"copy": 3}', received_at=T0 + 120))
        assert (second.event_id, second.duplicate) == (first.event_id, True)
        assert (third.event_id, third.duplicate) == (first.event_id, True)
        event = store.get_event(first.event_id)
        assert (event.body, event.duplicates, event.last_duplicate_at) == (
            b'{"copy": 1}', 2, T0 + 120)
        assert len(store.list_events()) == 1

    def test_the_same_dedup_key_from_two_sources_is_two_events(self, store):
        a = store.add_event(new_event(source="ratioready"))
        b = store.add_event(new_event(source="zupertry"))
        assert a.event_id != b.event_id and not b.duplicate

    def test_concurrent_copies_of_one_event_are_stored_exactly_once(self, store):
        start = threading.Barrier(8)
        results, errors = [], []

        def deliver(n: int) -> None:
            start.wait()
            try:
                results.append(store.add_event(new_event(body=b'{"copy": %d}' % n)))
            except Exception as err:  # noqa: BLE001 - reported by the assertion below
                errors.append(err)

        threads = [threading.Thread(target=deliver, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert errors == []
        assert len({r.event_id for r in results}) == 1
        assert sorted(r.duplicate for r in results) == [False] + [True] * 7
        (event,) = store.list_events()
        assert event.duplicates == 7

    def test_ping_answers(self, store):
        assert store.ping() is None

    def test_a_closed_store_reconnects_when_used_again(self, store):
        first = store.add_event(new_event("a")).event_id
        store.close()
        store.ping()
        second = store.add_event(new_event("b", received_at=T0 + 1)).event_id
        assert [e.id for e in store.list_events()] == [second, first]

    def test_migrate_can_run_again(self, store):
        event_id = store.add_event(new_event()).event_id
        store.migrate()
        assert store.get_event(event_id) is not None


class DeliveryContract(StoreContract):
    """Deliveries: the queue every worker shares. Times are given (``now=``), never read."""

    def queue(self, store, count: int = 1, destinations=("make",)) -> list[str]:
        return [store.add_event(new_event(f"job-{n}", received_at=T0), destinations).event_id
                for n in range(count)]

    def test_an_event_gets_one_pending_delivery_per_destination(self, store):
        (event_id,) = self.queue(store, destinations=("make", "zapier"))
        rows = store.deliveries_of(event_id)
        assert [(d.destination, d.state, d.attempts, d.next_attempt_at) for d in rows] == [
            ("make", "pending", 0, T0), ("zapier", "pending", 0, T0)]
        assert (rows[0].source, rows[0].event_type) == ("ratioready", "completed")

    def test_a_duplicate_creates_no_delivery(self, store):
        (event_id,) = self.queue(store)
        again = store.add_event(new_event("job-0", received_at=T0 + 5), ["make", "n8n"])
        assert again.duplicate and [d.destination for d in store.deliveries_of(event_id)] == [
            "make"]

    def test_a_claim_carries_what_the_worker_needs(self, store):
        (event_id,) = self.queue(store)
        (claim,) = store.claim("make", "w1", limit=10, rate=100, lease=30, now=T0 + 1)
        assert (claim.event_id, claim.destination, claim.source, claim.body, claim.received_at,
                claim.attempts, claim.total_attempts, claim.round_started_at) == (
            event_id, "make", "ratioready", b'{"job_id": "job_1"}', T0, 0, 0, T0)
        assert claim.send_at == T0 + 1

    def test_only_due_deliveries_of_that_destination_are_claimed(self, store):
        self.queue(store, 2, destinations=("make",))
        store.add_event(new_event("later", received_at=T0 + 100), ["make"])
        assert store.claim("zapier", "w1", 10, 100, 30, now=T0 + 1) == []
        claimed = store.claim("make", "w1", 10, 100, 30, now=T0 + 1)
        assert len(claimed) == 2  # the one received at T0 + 100 is not due at T0 + 1

    def test_a_claimed_delivery_is_held_until_its_lease_ends(self, store):
        self.queue(store)
        (first,) = store.claim("make", "w1", 10, 100, lease=30, now=T0)
        assert store.claim("make", "w2", 10, 100, 30, now=T0 + 29) == []
        (again,) = store.claim("make", "w2", 10, 100, 30, now=T0 + 31)  # w1 died
        assert again.delivery_id == first.delivery_id

    def test_the_rate_limit_is_shared_through_the_store(self, store):
        self.queue(store, 10)
        first = store.claim("make", "w1", 10, rate=2, lease=30, now=T0)
        second = store.claim("make", "w2", 10, rate=2, lease=30, now=T0)
        third = store.claim("make", "w2", 10, rate=2, lease=30, now=T0 + 1)
        assert [c.send_at for c in first] == [T0, T0 + 0.5]
        assert second == []  # both slots of this second are taken, whoever asks
        assert [c.send_at for c in third] == [T0 + 1, T0 + 1.5]

    def test_a_slow_rate_still_hands_out_one_slot(self, store):
        self.queue(store, 2)
        assert len(store.claim("make", "w1", 10, rate=0.1, lease=30, now=T0)) == 1
        assert store.claim("make", "w1", 10, rate=0.1, lease=30, now=T0 + 5) == []
        assert len(store.claim("make", "w1", 10, rate=0.1, lease=30, now=T0 + 9.5)) == 1

    def test_recording_done_closes_the_delivery_and_keeps_the_attempt(self, store):
        (event_id,) = self.queue(store)
        (claim,) = store.claim("make", "w1", 10, 100, 30, now=T0)
        store.record("w1", [AttemptResult(claim.delivery_id, "done", T0 + 1, http_status=200,
                                          duration_ms=12.5, response_excerpt="Accepted",
                                          payload='{"a": 1}')], now=T0 + 2)
        (delivery,) = store.deliveries_of(event_id)
        assert (delivery.state, delivery.attempts, delivery.total_attempts,
                delivery.last_status, delivery.leased_by) == ("done", 1, 1, 200, None)
        assert store.attempts_of(claim.delivery_id) == [
            Attempt(claim.delivery_id, 1, T0 + 1, 12.5, 200, "Accepted", None, "done")]
        assert store.claim("make", "w1", 10, 100, 30, now=T0 + 100) == []

    def test_a_retry_is_due_again_at_its_time(self, store):
        self.queue(store)
        (claim,) = store.claim("make", "w1", 10, 100, 30, now=T0)
        store.record("w1", [AttemptResult(claim.delivery_id, "pending", T0, next_attempt_at=T0 + 60,
                                          http_status=503, error="HTTP 503")], now=T0 + 1)
        assert store.claim("make", "w1", 10, 100, 30, now=T0 + 59) == []
        (again,) = store.claim("make", "w1", 10, 100, 30, now=T0 + 60)
        assert (again.attempts, again.total_attempts) == (1, 1)
        failed = store.list_deliveries(state="failed")
        assert [(d.id, d.last_status, d.last_error) for d in failed] == [
            (claim.delivery_id, 503, "HTTP 503")]

    def test_a_worker_that_lost_its_lease_does_not_overwrite_the_state(self, store):
        self.queue(store)
        (claim,) = store.claim("make", "w1", 10, 100, lease=30, now=T0)
        store.claim("make", "w2", 10, 100, lease=30, now=T0 + 31)
        store.record("w1", [AttemptResult(claim.delivery_id, "dead", T0 + 40, http_status=400,
                                          error="HTTP 400")], now=T0 + 40)
        (delivery,) = store.list_deliveries()
        assert (delivery.state, delivery.leased_by) == ("pending", "w2")
        assert [a.http_status for a in store.attempts_of(claim.delivery_id)] == [400]

    def test_filtered_records_no_attempt(self, store):
        (event_id,) = self.queue(store)
        (claim,) = store.claim("make", "w1", 10, 100, 30, now=T0)
        store.record("w1", [AttemptResult(claim.delivery_id, "filtered", T0, attempted=False,
                                          error="filtered")], now=T0)
        (delivery,) = store.deliveries_of(event_id)
        assert (delivery.state, delivery.total_attempts) == ("filtered", 0)
        assert store.attempts_of(claim.delivery_id) == []

    def test_released_claims_are_due_at_once(self, store):
        self.queue(store, 2)
        claims = store.claim("make", "w1", 10, 100, lease=300, now=T0)
        store.release("w1", [c.delivery_id for c in claims], now=T0 + 1)
        assert len(store.claim("make", "w2", 10, 100, 30, now=T0 + 1)) == 2

    def test_replay_starts_a_new_round_and_adds_missing_destinations(self, store):
        (event_id,) = self.queue(store)
        (claim,) = store.claim("make", "w1", 10, 100, 30, now=T0)
        store.record("w1", [AttemptResult(claim.delivery_id, "dead", T0, http_status=410,
                                          error="HTTP 410")], now=T0)
        assert store.replay(event_id, ["make", "n8n"], now=T0 + 500) == 2
        rows = store.deliveries_of(event_id)
        assert [(d.destination, d.state, d.attempts, d.total_attempts, d.next_attempt_at)
                for d in rows] == [("make", "pending", 0, 1, T0 + 500),
                                   ("n8n", "pending", 0, 0, T0 + 500)]
        (again,) = [c for c in store.claim("make", "w1", 10, 100, 30, now=T0 + 500)]
        assert again.round_started_at == T0 + 500
        assert store.replay("evt_nope", ["make"], now=T0) is None

    def test_replay_dead_picks_by_source_and_date(self, store):
        old = store.add_event(new_event("old", "ratioready", T0), ["make"]).event_id
        new = store.add_event(new_event("new", "ratioready", T0 + 3600), ["make"]).event_id
        other = store.add_event(new_event("x", "zupertry", T0 + 3600), ["make"]).event_id
        claims = store.claim("make", "w1", 10, 100, 30, now=T0 + 4000)
        store.record("w1", [AttemptResult(c.delivery_id, "dead", T0, error="gone")
                            for c in claims], now=T0 + 4000)
        assert store.replay_dead(T0 + 5000, source="ratioready", since=T0 + 60) == 1
        states = {e: store.deliveries_of(e)[0].state for e in (old, new, other)}
        assert states == {old: "dead", new: "pending", other: "dead"}
        assert store.replay_dead(T0 + 5000) == 2
        assert store.list_deliveries(state="dead") == []

    def test_concurrent_claims_never_hand_out_a_delivery_twice(self, store):
        self.queue(store, 60)
        start = threading.Barrier(6)
        taken, errors = [], []

        def claim(worker: str) -> None:
            start.wait()
            try:
                for _ in range(20):
                    taken.extend(c.delivery_id for c in
                                 store.claim("make", worker, 5, 1e6, 300, now=T0 + 1))
            except Exception as err:  # noqa: BLE001 - reported by the assertion below
                errors.append(err)

        threads = [threading.Thread(target=claim, args=(f"w{n}",)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert sorted(taken) == sorted(set(taken)) and len(taken) == 60


class TestSqliteStore(DeliveryContract):
    def make_store(self, tmp_path) -> Store:
        return SqliteStore(str(tmp_path / "events.db"))

    def test_events_survive_a_new_store_on_the_same_file(self, store, tmp_path):
        event_id = store.add_event(new_event()).event_id
        reopened = self.make_store(tmp_path)
        try:
            assert reopened.get_event(event_id).body == b'{"job_id": "job_1"}'
        finally:
            reopened.close()

    def test_a_locked_database_is_unavailable_and_nothing_is_written(self, store, tmp_path):
        impatient = SqliteStore(str(tmp_path / "events.db"), busy_timeout_ms=100)
        locker = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            with pytest.raises(StoreUnavailable, match="locked"):
                impatient.add_event(new_event())
            locker.rollback()
            assert impatient.list_events() == []
            assert impatient.add_event(new_event()).duplicate is False
        finally:
            locker.close()
            impatient.close()

    def test_a_missing_folder_is_unavailable(self, tmp_path):
        store = SqliteStore(str(tmp_path / "no-such-folder" / "events.db"))
        with pytest.raises(StoreUnavailable, match="does not exist"):
            store.ping()
        with pytest.raises(StoreUnavailable):
            store.migrate()
        assert not (tmp_path / "no-such-folder").exists()

    def test_the_database_is_in_wal_mode(self, store, tmp_path):
        store.ping()
        with sqlite3.connect(tmp_path / "events.db") as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize("url, path", [("sqlite:///bridge.db", "bridge.db"),
                                       ("sqlite:////var/data/bridge.db", "/var/data/bridge.db")])
def test_open_store_reads_sqlite_urls(url, path):
    store = open_store(url)
    assert isinstance(store, SqliteStore) and store.path == path


@pytest.mark.parametrize("url", ["mysql://u:p@db/x", "bridge.db", "sqlite://bridge.db"])
def test_open_store_refuses_what_it_cannot_open(url):
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    assert ":p@" not in str(caught.value)


def test_describe_url_hides_the_password():
    assert describe_url("postgres://bridge:s3cret@db.example:5432/x") == (
        "postgres://bridge:***@db.example:5432/x")
    assert describe_url("sqlite:///bridge.db") == "sqlite:///bridge.db"


class TestPostgresStore(DeliveryContract):
    """The same contract on a real PostgreSQL server (skipped, saying why, without one)."""

    @pytest.fixture(autouse=True)
    def _url(self, pg_url):
        self.url = pg_url

    def make_store(self, tmp_path) -> Store:
        return PostgresStore(self.url)

    def test_postgres_urls_open_a_postgres_store(self):
        assert isinstance(open_store("postgres://u@h/db"), PostgresStore)
        assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)

    def test_an_unreachable_server_is_unavailable(self):
        store = PostgresStore("postgresql://postgres@127.0.0.1:1/test")
        with pytest.raises(StoreUnavailable):
            store.ping()

    def test_migrations_from_several_processes_at_once_succeed(self, pg_url):
        stores = [PostgresStore(pg_url) for _ in range(4)]
        errors = []

        def migrate(store):
            try:
                store.migrate()
            except Exception as err:  # noqa: BLE001
                errors.append(err)

        threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        for store in stores:
            store.close()
        assert errors == []


def test_group_commit_runs_concurrent_calls_in_few_batches_and_answers_each():
    from bridge.store.sqlite import GroupCommit

    batches = []

    def run(items):
        batches.append(list(items))
        time.sleep(0.05)  # a commit's fsync: others arrive meanwhile
        return [item * 10 for item in items]

    group = GroupCommit(run)
    start = threading.Barrier(12)
    answers = {}

    def call(n):
        start.wait()
        answers[n] = group.submit(n)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert answers == {n: n * 10 for n in range(12)}
    assert sorted(item for batch in batches for item in batch) == list(range(12))
    assert len(batches) < 12  # shared: fewer transactions than calls


def test_group_commit_gives_a_failure_to_every_caller_of_that_batch_only():
    from bridge.store.sqlite import GroupCommit

    def run(items):
        if "bad" in items:
            raise StoreUnavailable("database unavailable: disk full")
        return items

    group = GroupCommit(run)
    with pytest.raises(StoreUnavailable, match="disk full"):
        group.submit("bad")
    assert group.submit("good") == "good"  # the next batch is not poisoned


def test_writers_of_two_stores_on_one_file_queue_on_the_lock_file(tmp_path):
    first, second = (SqliteStore(str(tmp_path / "events.db")) for _ in range(2))
    first.migrate()
    errors = []

    def add(store, prefix):
        try:
            for n in range(100):
                store.add_event(new_event(f"{prefix}-{n}", received_at=T0 + n), ["make"])
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    threads = [threading.Thread(target=add, args=(s, p)) for s, p in ((first, "a"), (second, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(first.list_events(limit=1000)) == 200
    assert (tmp_path / "events.db-lock").exists()
    first.close()
    second.close()
