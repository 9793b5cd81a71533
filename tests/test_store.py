"""The store contract, run against every implementation: subclass ``StoreContract`` and
override ``make_store`` (a PostgreSQL subclass can be added beside ``TestSqliteStore``)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from bridge.errors import ConfigError, StoreUnavailable
from bridge.events import NewEvent
from bridge.store import describe_url, open_store
from bridge.store.base import Store
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


class TestSqliteStore(StoreContract):
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
