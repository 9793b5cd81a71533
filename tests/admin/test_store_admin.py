"""The store methods behind the dashboard, run on SQLite and on a real PostgreSQL (skipped,
saying why, when no server answers): the event status kept in step with the deliveries,
search with filters and keyset paging, the summary, the totals for metrics, and the
migration that adds the status to an existing database."""

from __future__ import annotations

import json
import sqlite3

import pytest

from bridge.events import AttemptResult, NewEvent
from bridge.store.base import EVENT_STATUSES, event_status
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore

T0 = 1_790_000_000.0  # 2026-09-21T... UTC
DAY = 86400.0


def new_event(key: str, source: str = "ratioready", received_at: float = T0,
              body: bytes = b'{"job_id": "x"}') -> NewEvent:
    return NewEvent(source=source, event_type="completed", dedup_key=key, body=body,
                    headers={}, remote_addr="127.0.0.1", received_at=received_at)


class AdminStoreContract:
    def make_store(self, tmp_path):
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path):
        store = self.make_store(tmp_path)
        store.migrate()
        yield store
        store.close()

    # helpers: deliveries moved through the real claim/record path
    def add(self, store, key: str, destinations=("a", "b"), **kwargs) -> str:
        return store.add_event(new_event(key, **kwargs), destinations).event_id

    def finish(self, store, event_id: str, destination: str, state: str, now: float = T0,
               payload: dict | None = None, attempted: bool = True) -> None:
        """Claim the event's delivery to ``destination`` and record ``state`` for it."""
        claims = []
        for _ in range(50):  # claims come in due order: take until ours is there
            claims = store.claim(destination, "w", 100, 10_000, 30, now + 10_000)
            if any(c.event_id == event_id for c in claims) or not claims:
                break
        [claim] = [c for c in claims if c.event_id == event_id]
        others = [c.delivery_id for c in claims if c.event_id != event_id]
        store.release("w", others, now)
        store.record("w", [AttemptResult(
            claim.delivery_id, state, now, attempted=attempted and state != "filtered",
            next_attempt_at=now + 60 if state == "pending" else None,
            http_status={"done": 200, "dead": 410, "pending": 503}.get(state),
            duration_ms=12.5, error=None if state == "done" else f"{state} here",
            payload=json.dumps(payload) if payload is not None else None)], now)

    def status(self, store, event_id: str) -> str:
        [row] = [e for e in store.search_events(text=event_id)]
        assert event_status(store.deliveries_of(event_id)) == row.status  # SQL == Python
        return row.status

    # -- the status ------------------------------------------------------------------------
    def test_a_new_event_is_queued_or_stored_without_a_route(self, store):
        assert self.status(store, self.add(store, "k1")) == "queued"
        assert self.status(store, self.add(store, "k2", destinations=())) == "stored"

    def test_the_status_follows_the_deliveries(self, store):
        event = self.add(store, "k1")
        self.finish(store, event, "a", "pending")
        assert self.status(store, event) == "failing"
        self.finish(store, event, "a", "done")
        assert self.status(store, event) == "queued"  # b not tried yet
        self.finish(store, event, "b", "dead")
        assert self.status(store, event) == "dead"
        assert store.replay(event, ("a", "b"), T0 + 1) == 2
        assert self.status(store, event) == "queued"
        self.finish(store, event, "a", "done")
        self.finish(store, event, "b", "done")
        assert self.status(store, event) == "delivered"

    def test_filtered_everywhere_is_filtered_and_filtered_beside_done_is_delivered(self, store):
        filtered = self.add(store, "k1")
        self.finish(store, filtered, "a", "filtered")
        self.finish(store, filtered, "b", "filtered")
        mixed = self.add(store, "k2")
        self.finish(store, mixed, "a", "filtered")
        self.finish(store, mixed, "b", "done")
        assert (self.status(store, filtered), self.status(store, mixed)) == (
            "filtered", "delivered")

    def test_a_bulk_replay_requeues_only_the_chosen_dead_letters(self, store):
        old = self.add(store, "old", received_at=T0 - 2 * DAY)
        new = self.add(store, "new")
        other = self.add(store, "other", source="zupertry")
        for event in (old, new, other):
            self.finish(store, event, "a", "dead")
        assert store.replay_dead(T0 + 5, source="ratioready", since=T0 - DAY) == 1
        assert [self.status(store, e) for e in (old, new, other)] == ["dead", "queued", "dead"]
        assert store.replay_dead(T0 + 6) == 2
        assert [self.status(store, e) for e in (old, new, other)] == ["queued"] * 3

    def test_a_duplicate_keeps_the_first_events_status(self, store):
        event = self.add(store, "k1")
        self.finish(store, event, "a", "dead")
        assert store.add_event(new_event("k1"), ("a", "b")).duplicate
        assert self.status(store, event) == "dead"

    # -- search and paging -------------------------------------------------------------------
    def test_events_page_newest_first_with_a_cursor(self, store):
        ids = [self.add(store, f"job_{n}:completed", received_at=T0 + n) for n in range(7)]
        pages, before = [], None
        while True:
            page = store.search_events(before=before, limit=3)
            if not page:
                break
            pages.append([e.id for e in page])
            before = page[-1].id
        assert pages == [ids[6:3:-1], ids[3:0:-1], ids[0:1]]

    def test_filters_combine_and_page(self, store):
        dead = []
        for n in range(6):
            source = "zupertry" if n % 2 else "ratioready"
            event = self.add(store, f"job_{n}", source=source, received_at=T0 + n)
            if n >= 2:
                self.finish(store, event, "a", "dead")
                dead.append((event, source))
        zupertry_dead = [e for e, s in dead if s == "zupertry"][::-1]
        first = store.search_events(source="zupertry", status="dead", limit=1)
        rest = store.search_events(source="zupertry", status="dead", before=first[0].id)
        assert [e.id for e in first + rest] == zupertry_dead
        assert len(store.search_events(status="dead")) == 4
        assert len(store.search_events(status="queued")) == 2
        assert {e.status for e in store.search_events(source="ratioready")} == {"dead", "queued"}

    def test_duplicate_lists_events_received_more_than_once(self, store):
        once = self.add(store, "once")
        twice = self.add(store, "twice")
        store.add_event(new_event("twice"), ("a", "b"))
        assert [e.id for e in store.search_events(status="duplicate")] == [twice]
        assert once not in [e.id for e in store.search_events(status="duplicate")]
        assert store.search_events(status="duplicate")[0].duplicates == 1

    def test_text_finds_a_job_id_inside_the_dedup_key_or_an_event_id(self, store):
        wanted = self.add(store, "rr_job_7F3C:completed")
        self.add(store, "rr_job_1234:completed")
        assert [e.id for e in store.search_events(text="job_7f3c")] == [wanted]
        assert [e.id for e in store.search_events(text=wanted)] == [wanted]
        assert [e.id for e in store.search_events(text=wanted[-10:].lower())] == [wanted]

    def test_like_wildcards_in_the_text_are_literal(self, store):
        self.add(store, "job_1:completed")
        percent = self.add(store, "50%off:completed")
        assert [e.id for e in store.search_events(text="%")] == [percent]
        assert store.search_events(text="job%1") == []
        assert store.search_events(text="jo_") == []  # _ matches only itself ("job_1")
        assert len(store.search_events(text="b_1")) == 1

    def test_an_unknown_status_is_refused(self, store):
        with pytest.raises(ValueError):
            store.search_events(status="nonsense")
        assert set(EVENT_STATUSES) == {"dead", "failing", "queued", "delivered", "filtered",
                                       "stored"}

    # -- summary, totals, payloads ---------------------------------------------------------------
    def test_the_summary_counts_the_window(self, store):
        old = self.add(store, "old", received_at=T0 - 3 * DAY)
        self.finish(store, old, "a", "dead", payload={"credits": 100})
        e1 = self.add(store, "e1", received_at=T0 + 10)
        e2 = self.add(store, "e2", received_at=T0 + 20)
        z1 = self.add(store, "z1", source="zupertry", destinations=("a",), received_at=T0 + 30)
        store.add_event(new_event("e1", received_at=T0 + 40), ("a", "b"))  # a duplicate
        self.finish(store, e1, "a", "done", payload={"credits": 5})
        self.finish(store, e1, "b", "done", payload={"credits": 5})  # counted once per event
        self.finish(store, e2, "a", "pending", payload={"credits": 2.5})
        self.finish(store, z1, "a", "done", payload={"credits": "lots"})  # not a number
        summary = store.summary(T0, credits_since=T0 - 7 * DAY)
        assert summary.events == [("ratioready", 2, 1), ("zupertry", 1, 0)]
        assert summary.deliveries == [
            ("ratioready", "a", "done", 1), ("ratioready", "a", "failing", 1),
            ("ratioready", "b", "done", 1), ("ratioready", "b", "queued", 1),
            ("zupertry", "a", "done", 1)]
        assert summary.dead_letters == {"a": 1}
        old_day = _day(T0 - 3 * DAY)
        assert summary.credits == [(old_day, "ratioready", 100.0, 1),
                                   (_day(T0), "ratioready", 7.5, 2)]
        assert store.summary(T0).credits == [(_day(T0), "ratioready", 7.5, 2)]

    def test_totals_for_metrics(self, store):
        e1 = self.add(store, "e1", received_at=T0 - 50)
        self.add(store, "e2", received_at=T0 - 10, source="zupertry", destinations=("b",))
        self.finish(store, e1, "a", "dead")
        totals = store.totals()
        assert totals.events == {("ratioready", "dead"): 1, ("zupertry", "queued"): 1}
        assert totals.deliveries == {("a", "dead"): 1, ("b", "pending"): 2}
        assert totals.pending == {"b": (2, T0 - 50)}

    def test_delivery_payloads_are_the_last_flat_events_sent(self, store):
        event = self.add(store, "e1")
        self.finish(store, event, "a", "done", payload={"job_id": "x", "credits": 1})
        by_destination = {d.destination: d.id for d in store.deliveries_of(event)}
        payloads = store.delivery_payloads(event)
        assert json.loads(payloads[by_destination["a"]]) == {"job_id": "x", "credits": 1}
        assert payloads[by_destination["b"]] is None
        assert store.delivery_payloads("evt_none") == {}


def _day(timestamp: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


class TestSqliteAdminStore(AdminStoreContract):
    def make_store(self, tmp_path):
        return SqliteStore(str(tmp_path / "bridge.db"))

    def test_pages_and_filters_use_indexes(self, store):
        conn = sqlite3.connect(store.path)
        queries = {
            "status": "SELECT id FROM events WHERE status = 'dead' AND id < 'x' "
                      "ORDER BY id DESC LIMIT 50",
            "source+status": "SELECT id FROM events WHERE source = 'r' AND status = 'dead' "
                             "ORDER BY id DESC LIMIT 50",
            "duplicate": "SELECT id FROM events WHERE duplicates > 0 ORDER BY id DESC LIMIT 50",
        }
        for name, query in queries.items():
            plan = " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
            assert "USING" in plan and "TEMP B-TREE" not in plan, (name, plan)
        conn.close()

    def test_version_2_fills_the_status_of_an_existing_database(self, tmp_path):
        class Version1(SqliteStore):
            migrations = SqliteStore.migrations[:1]

        path = str(tmp_path / "old.db")
        old = Version1(path)
        old.migrate()
        with old.transaction(write=True) as cur:  # rows as version 1 wrote them
            for n, (state, attempts) in enumerate([("dead", 1), ("pending", 2), ("pending", 0),
                                                   ("done", 1), ("filtered", 0)]):
                cur.execute("INSERT INTO events (id, source, event_type, dedup_key, body, "
                            "headers, received_at) VALUES (?, 'r', NULL, ?, x'7b7d', '{}', ?)",
                            (f"evt_{n}", f"k{n}", T0 + n))
                cur.execute("INSERT INTO deliveries (event_id, destination, state, attempts, "
                            "next_attempt_at, round_started_at, created_at, updated_at) "
                            "VALUES (?, 'a', ?, ?, 0, 0, 0, 0)", (f"evt_{n}", state, attempts))
            cur.execute("INSERT INTO events (id, source, event_type, dedup_key, body, headers, "
                        "received_at) VALUES ('evt_9', 'r', NULL, 'k9', x'7b7d', '{}', 0)")
        old.close()
        store = SqliteStore(path)
        store.migrate()
        assert store.schema_version() == len(SqliteStore.migrations)
        assert {e.id: e.status for e in store.search_events()} == {
            "evt_0": "dead", "evt_1": "failing", "evt_2": "queued", "evt_3": "delivered",
            "evt_4": "filtered", "evt_9": "stored"}
        store.close()


class TestPostgresAdminStore(AdminStoreContract):
    @pytest.fixture(autouse=True)
    def _url(self, pg_url):
        self.url = pg_url

    def make_store(self, tmp_path):
        return PostgresStore(self.url)
