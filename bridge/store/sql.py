"""What the SQL stores share: the schema, the queries, one transaction helper.
Subclasses give only what differs: how to connect, the placeholder, the driver errors."""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from ..errors import StoreUnavailable
from ..events import Attempt, AttemptResult, Claim, Delivery, Event, NewEvent, Stored
from .base import EVENT_STATUSES, EventSummary, Store, Summary, Totals

EVENT_COLUMNS = ("id, source, event_type, dedup_key, body, headers, remote_addr, received_at, "
                 "duplicates, last_duplicate_at")
DELIVERY_COLUMNS = ("d.id, d.event_id, d.destination, d.state, d.attempts, d.total_attempts, "
                    "d.next_attempt_at, d.last_status, d.last_error, d.leased_by, d.created_at, "
                    "d.updated_at, e.source, e.event_type")
ATTEMPT_COLUMNS = ("delivery_id, number, started_at, duration_ms, http_status, "
                   "response_excerpt, error, state")
RATE_WINDOW = 1.0  # a claim hands out at most the sends that fit in the next second

# An event's status, derived from its deliveries (highest first): any dead → dead; any
# pending after a failed try → failing; any pending → queued; any done → delivered; the
# rest filtered; no delivery at all → stored. Kept in events.status (schema version 2) by
# every method that changes a delivery's state, in the same transaction, so the dashboard
# can filter and page 100,000s of events on an index. A new derivation needs a new
# migration that recomputes the column. One aggregate over the event's deliveries (found
# by the (event_id, destination) index), not one EXISTS per state: SQLite would answer
# those from the (state, id) index, scanning every delivery in that state.
EVENT_STATUS = """COALESCE((
    SELECT CASE
        WHEN MAX(CASE WHEN s.state = 'dead' THEN 1 ELSE 0 END) = 1 THEN 'dead'
        WHEN MAX(CASE WHEN s.state = 'pending' AND s.attempts > 0 THEN 1 ELSE 0 END) = 1
            THEN 'failing'
        WHEN MAX(CASE WHEN s.state = 'pending' THEN 1 ELSE 0 END) = 1 THEN 'queued'
        WHEN MAX(CASE WHEN s.state = 'done' THEN 1 ELSE 0 END) = 1 THEN 'delivered'
        WHEN COUNT(*) > 0 THEN 'filtered' END
      FROM deliveries s WHERE s.event_id = events.id), 'stored')"""
SUMMARY_COLUMNS = ("id, source, event_type, dedup_key, received_at, duplicates, "
                   "last_duplicate_at, status")


class SqlStore(Store):
    # Schema versions: migrations[0] makes version 1, migrations[1] version 2, …; a new
    # version is a new entry at the end (never edit one that has shipped).
    migrations: tuple[tuple[str, ...], ...] = ()
    migration_lock: tuple[str, ...] = ()  # PostgreSQL: one migrating process at a time
    driver_errors: tuple[type[BaseException], ...] = ()
    lock_rows = ""  # PostgreSQL: " FOR UPDATE SKIP LOCKED"
    like = "LIKE"  # case-insensitive (ASCII) in SQLite; PostgreSQL: ILIKE
    # the UTC day number of e.received_at, and d.payload's "credits" when it is a number
    day_sql = "CAST(e.received_at / 86400 AS INTEGER)"
    credits_sql = ("CASE WHEN json_valid(d.payload) AND json_type(d.payload, '$.credits') "
                   "IN ('integer', 'real') THEN json_extract(d.payload, '$.credits') END")

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[Any] = []

    # -- what subclasses provide -------------------------------------------------------
    def connect(self) -> Any:
        raise NotImplementedError

    def begin(self, cursor: Any, write: bool) -> None:
        """Start a transaction (the default: the driver starts one on its own)."""

    def sql(self, query: str) -> str:
        """Adapt a query written with ``?`` placeholders to the driver."""
        return query

    # -- connections and transactions ------------------------------------------------
    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.connect()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            with contextlib.suppress(Exception):  # a broken connection may fail to close
                conn.close()

    def write_lock(self) -> contextlib.AbstractContextManager:
        """Held around every write transaction (SQLite: writers queue instead of polling)."""
        return contextlib.nullcontext()

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Any]:
        """One transaction: commit on success, roll back on any error; driver errors
        become StoreUnavailable (the connection is dropped and reopened next time)."""
        if write:
            with self.write_lock(), self._transaction(write) as cursor:
                yield cursor
        else:
            with self._transaction(write) as cursor:
                yield cursor

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[Any]:
        try:
            conn = self._connection()
            cursor = conn.cursor()
            self.begin(cursor, write)
        except self.driver_errors as err:
            self._drop_connection()
            raise StoreUnavailable(_reason(err)) from err
        try:
            yield cursor
            conn.commit()
        except self.driver_errors as err:
            self._rollback(conn)
            raise StoreUnavailable(_reason(err)) from err
        except BaseException:
            self._rollback(conn)
            raise

    def _rollback(self, conn: Any) -> None:
        try:
            conn.rollback()
        except self.driver_errors:
            self._drop_connection()

    def execute(self, cursor: Any, query: str, params: tuple = ()) -> Any:
        cursor.execute(self.sql(query), params)
        return cursor

    # -- the contract ----------------------------------------------------------------
    def migrate(self) -> None:
        with self.transaction(write=True) as cur:
            for statement in self.migration_lock:
                self.execute(cur, statement)
            self.execute(cur, "CREATE TABLE IF NOT EXISTS bridge_schema (version INTEGER NOT NULL)")
            row = self.execute(cur, "SELECT MAX(version) FROM bridge_schema").fetchone()
            current = row[0] or 0
            for version, statements in enumerate(self.migrations, start=1):
                if version > current:
                    for statement in statements:
                        self.execute(cur, statement)
            if len(self.migrations) > current:
                self.execute(cur, "DELETE FROM bridge_schema")
                self.execute(cur, "INSERT INTO bridge_schema (version) VALUES (?)",
                             (len(self.migrations),))

    def schema_version(self) -> int:
        with self.transaction() as cur:
            return self.execute(cur, "SELECT MAX(version) FROM bridge_schema").fetchone()[0]

    def add_event(self, event: NewEvent, destinations: Sequence[str] = ()) -> Stored:
        return self.add_events([(event, destinations)])[0]

    def add_events(self, items: Sequence[tuple[NewEvent, Sequence[str]]]) -> list[Stored]:
        """``add_event`` for several events in one transaction (one commit, one fsync)."""
        with self.transaction(write=True) as cur:
            return [self._insert_event(cur, event.with_id(), destinations)
                    for event, destinations in items]

    def _insert_event(self, cur: Any, event: NewEvent, destinations: Sequence[str]) -> Stored:
        row = self.execute(cur, """
            INSERT INTO events (id, source, event_type, dedup_key, body, headers,
                                remote_addr, received_at, status)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (source, dedup_key) DO UPDATE
               SET duplicates = events.duplicates + 1,
                   last_duplicate_at = excluded.received_at
            RETURNING id""",
            (event.id, event.source, event.event_type, event.dedup_key, event.body,
             json.dumps(event.headers), event.remote_addr, event.received_at,
             "queued" if destinations else "stored")).fetchone()
        created = row[0] == event.id
        if created:
            self._add_deliveries(cur, event.id, destinations, event.received_at)
        return Stored(event_id=row[0], duplicate=not created)

    def _add_deliveries(self, cur: Any, event_id: str, destinations: Sequence[str],
                        now: float) -> None:
        for destination in destinations:
            self.execute(cur, """
                INSERT INTO deliveries (event_id, destination, state, attempts, total_attempts,
                                        next_attempt_at, round_started_at, created_at,
                                        updated_at)
                VALUES (?, ?, 'pending', 0, 0, ?, ?, ?, ?)
                ON CONFLICT (event_id, destination) DO NOTHING""",
                (event_id, destination, now, now, now, now))

    def get_event(self, event_id: str) -> Event | None:
        with self.transaction() as cur:
            row = self.execute(cur, f"SELECT {EVENT_COLUMNS} FROM events WHERE id = ?",
                               (event_id,)).fetchone()
        return _event(row) if row else None

    def list_events(self, source: str | None = None, limit: int = 50,
                    before: str | None = None) -> list[Event]:
        clauses, params = [], []
        if source:
            clauses.append("source = ?")
            params.append(source)
        if before:
            clauses.append("id < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.transaction() as cur:
            rows = self.execute(cur, f"SELECT {EVENT_COLUMNS} FROM events {where} "
                                     "ORDER BY id DESC LIMIT ?",
                                (*params, limit)).fetchall()
        return [_event(row) for row in rows]

    def ping(self) -> None:
        with self.transaction() as cur:
            self.execute(cur, "SELECT 1").fetchone()

    # -- deliveries --------------------------------------------------------------------
    def claim(self, destination: str, worker: str, limit: int, rate: float, lease: float,
              now: float) -> list[Claim]:
        with self.transaction(write=True) as cur:
            start = self._next_slot(cur, destination, now)
            # every slot that starts within the window (ceil, not int: at a rate below
            # 1/s the window holds less than one slot, and int() would never hand one out)
            room = math.ceil((now + RATE_WINDOW - start) * rate)
            count = min(limit, room)
            if count <= 0:
                return []
            rows = self.execute(cur, f"""
                SELECT d.id, d.event_id, e.source, e.body, e.received_at, d.attempts,
                       d.total_attempts, d.round_started_at
                  FROM deliveries d JOIN events e ON e.id = d.event_id
                 WHERE d.destination = ? AND d.state = 'pending' AND d.next_attempt_at <= ?
                 ORDER BY d.next_attempt_at, d.id
                 LIMIT ?{self.lock_rows}""", (destination, now, count)).fetchall()
            if not rows:
                return []
            ids = [row[0] for row in rows]
            self.execute(cur, f"""
                UPDATE deliveries SET next_attempt_at = ?, leased_by = ?, updated_at = ?
                 WHERE id IN ({_marks(ids)})""", (now + lease, worker, now, *ids))
            self.execute(cur, "UPDATE lanes SET next_slot = ? WHERE destination = ?",
                         (start + len(rows) / rate, destination))
        return [Claim(delivery_id=row[0], event_id=row[1], destination=destination,
                      source=row[2], body=bytes(row[3]), received_at=row[4], attempts=row[5],
                      total_attempts=row[6], round_started_at=row[7],
                      send_at=start + index / rate)
                for index, row in enumerate(rows)]

    def _next_slot(self, cur: Any, destination: str, now: float) -> float:
        """The destination's next free send slot, locking its row until commit."""
        self.execute(cur, "INSERT INTO lanes (destination, next_slot) VALUES (?, ?) "
                          "ON CONFLICT (destination) DO NOTHING", (destination, now))
        lock = " FOR UPDATE" if self.lock_rows else ""
        row = self.execute(cur, f"SELECT next_slot FROM lanes WHERE destination = ?{lock}",
                           (destination,)).fetchone()
        return max(now, row[0])

    def record(self, worker: str, results: Sequence[AttemptResult], now: float) -> None:
        if not results:
            return
        with self.transaction(write=True) as cur:
            for result in results:
                self._record_one(cur, worker, result, now)
            ids = sorted({result.delivery_id for result in results})
            self._refresh_status(cur, "id IN (SELECT event_id FROM deliveries "
                                      f"WHERE id IN ({_marks(ids)}))", tuple(ids))

    def _record_one(self, cur: Any, worker: str, result: AttemptResult, now: float) -> None:
        tried = 1 if result.attempted else 0
        row = self.execute(cur, """
            UPDATE deliveries
               SET state = ?, attempts = attempts + ?, total_attempts = total_attempts + ?,
                   next_attempt_at = COALESCE(?, next_attempt_at), last_status = ?,
                   last_error = ?, payload = COALESCE(?, payload), leased_by = NULL,
                   updated_at = ?
             WHERE id = ? AND leased_by = ?
            RETURNING total_attempts""",
            (result.state, tried, tried, result.next_attempt_at, result.http_status,
             result.error, result.payload, now, result.delivery_id, worker)).fetchone()
        if not result.attempted:
            return
        if row is None:  # taken over by another worker: keep the history all the same
            row = self.execute(cur, "SELECT total_attempts + 1 FROM deliveries WHERE id = ?",
                               (result.delivery_id,)).fetchone()
            if row is None:
                return
        self.execute(cur, f"""
            INSERT INTO attempts ({ATTEMPT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            (result.delivery_id, row[0], result.started_at, result.duration_ms,
             result.http_status, result.response_excerpt, result.error, result.state))

    def release(self, worker: str, delivery_ids: Sequence[int], now: float) -> None:
        if not delivery_ids:
            return
        with self.transaction(write=True) as cur:
            self.execute(cur, f"""
                UPDATE deliveries SET next_attempt_at = ?, leased_by = NULL, updated_at = ?
                 WHERE leased_by = ? AND state = 'pending' AND id IN ({_marks(delivery_ids)})""",
                (now, now, worker, *delivery_ids))

    def replay(self, event_id: str, destinations: Sequence[str], now: float) -> int | None:
        with self.transaction(write=True) as cur:
            if self.execute(cur, "SELECT 1 FROM events WHERE id = ?",
                            (event_id,)).fetchone() is None:
                return None
            self._add_deliveries(cur, event_id, destinations, now)
            count = self.execute(cur, f"{_RESTART} WHERE event_id = ?",
                                 (now, now, now, event_id)).rowcount
            self._refresh_status(cur, "id = ?", (event_id,))
            return count

    def replay_dead(self, now: float, source: str | None = None,
                    since: float | None = None) -> int:
        clauses, params = ["state = 'dead'"], []
        inner, inner_params = [], []
        if source or since is not None:
            if source:
                inner.append("source = ?")
                inner_params.append(source)
            if since is not None:
                inner.append("received_at >= ?")
                inner_params.append(since)
            clauses.append(f"event_id IN (SELECT id FROM events WHERE {' AND '.join(inner)})")
            params += inner_params
        with self.transaction(write=True) as cur:
            count = self.execute(cur, f"{_RESTART} WHERE {' AND '.join(clauses)}",
                                 (now, now, now, *params)).rowcount
            # the events that held a dead letter are exactly those whose status was dead
            self._refresh_status(cur, " AND ".join(["status = 'dead'", *inner]),
                                 tuple(inner_params))
            return count

    def list_deliveries(self, state: str | None = None, source: str | None = None,
                        destination: str | None = None, limit: int = 100) -> list[Delivery]:
        clauses, params = [], []
        if state == "failed":
            clauses.append("d.state = 'pending' AND d.attempts > 0")
        elif state:
            clauses.append("d.state = ?")
            params.append(state)
        if source:
            clauses.append("e.source = ?")
            params.append(source)
        if destination:
            clauses.append("d.destination = ?")
            params.append(destination)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.transaction() as cur:
            rows = self.execute(cur, f"""
                SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
                {where} ORDER BY d.id DESC LIMIT ?""", (*params, limit)).fetchall()
        return [Delivery(*row) for row in rows]

    def deliveries_of(self, event_id: str) -> list[Delivery]:
        with self.transaction() as cur:
            rows = self.execute(cur, f"""
                SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.id = d.event_id
                 WHERE d.event_id = ? ORDER BY d.destination""", (event_id,)).fetchall()
        return [Delivery(*row) for row in rows]

    def attempts_of(self, delivery_id: int) -> list[Attempt]:
        with self.transaction() as cur:
            rows = self.execute(cur, f"SELECT {ATTEMPT_COLUMNS} FROM attempts "
                                     "WHERE delivery_id = ? ORDER BY number",
                                (delivery_id,)).fetchall()
        return [Attempt(*row) for row in rows]

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()

    # -- the admin dashboard, API and metrics ------------------------------------------
    def _refresh_status(self, cur: Any, where: str, params: tuple) -> None:
        """Recompute events.status of the events ``where`` selects (after their deliveries
        changed, in the same transaction)."""
        if self.lock_rows:  # PostgreSQL: lock in id order, so concurrent writers never
            # deadlock (every writer locks deliveries first, then their events, in order)
            self.execute(cur, f"SELECT id FROM events WHERE {where} ORDER BY id FOR UPDATE",
                         params)
        self.execute(cur, f"UPDATE events SET status = {EVENT_STATUS} WHERE {where}", params)

    def search_events(self, source: str | None = None, status: str | None = None,
                      text: str | None = None, before: str | None = None,
                      limit: int = 50) -> list[EventSummary]:
        clauses, params = [], []
        if source:
            clauses.append("source = ?")
            params.append(source)
        if status == "duplicate":
            clauses.append("duplicates > 0")  # the partial index events_duplicated
        elif status:
            if status not in EVENT_STATUSES:
                raise ValueError(f"unknown status '{status}'")
            clauses.append("status = ?")
            params.append(status)
        if text:
            pattern = f"%{_escape_like(text)}%"  # a parameter: no % in the SQL text
            clauses.append(f"(dedup_key {self.like} ? ESCAPE '\\' "
                           f"OR id {self.like} ? ESCAPE '\\')")
            params += [pattern, pattern]
        if before:
            clauses.append("id < ?")
            params.append(before)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT {SUMMARY_COLUMNS} FROM events {where} ORDER BY id DESC LIMIT ?"
        if text:  # a scan: of the small index events_search, not of the rows with bodies
            query = (f"SELECT {SUMMARY_COLUMNS} FROM events WHERE id IN (SELECT id FROM "
                     f"events {where} ORDER BY id DESC LIMIT ?) ORDER BY id DESC")
        with self.transaction() as cur:
            rows = self.execute(cur, query, (*params, limit)).fetchall()
        return [EventSummary(*row) for row in rows]

    def summary(self, since: float, credits_since: float | None = None) -> Summary:
        credits_since = since if credits_since is None else credits_since
        # The window's events are taken first (MATERIALIZED, on the received_at index);
        # otherwise SQLite walks the whole events table in source order for the GROUP BY.
        with self.transaction() as cur:
            events = self.execute(cur, """
                WITH recent AS MATERIALIZED (
                    SELECT source, duplicates FROM events WHERE received_at >= ?)
                SELECT source, COUNT(*), COALESCE(SUM(duplicates), 0) FROM recent
                 GROUP BY source ORDER BY source""", (since,)).fetchall()
            deliveries = self.execute(cur, """
                WITH recent AS MATERIALIZED (
                    SELECT id, source FROM events WHERE received_at >= ?)
                SELECT source, destination, status, COUNT(*) FROM (
                    SELECT r.source AS source, d.destination AS destination,
                           CASE WHEN d.state = 'pending' AND d.attempts > 0 THEN 'failing'
                                WHEN d.state = 'pending' THEN 'queued'
                                ELSE d.state END AS status
                      FROM recent r JOIN deliveries d ON d.event_id = r.id) counted
                 GROUP BY source, destination, status
                 ORDER BY source, destination, status""", (since,)).fetchall()
            dead = self.execute(cur, "SELECT destination, COUNT(*) FROM deliveries "
                                     "WHERE state = 'dead' GROUP BY destination "
                                     "ORDER BY destination").fetchall()
            # one value per event however many destinations it went to
            credits = self.execute(cur, f"""
                WITH recent AS MATERIALIZED (
                    SELECT id, source, received_at FROM events WHERE received_at >= ?)
                SELECT day, source, SUM(credits), COUNT(*) FROM (
                    SELECT {self.day_sql} AS day, e.source AS source,
                           MAX({self.credits_sql}) AS credits
                      FROM recent e JOIN deliveries d ON d.event_id = e.id
                     WHERE d.payload IS NOT NULL
                     GROUP BY e.id, e.source, e.received_at) sent
                 WHERE credits IS NOT NULL
                 GROUP BY day, source ORDER BY day, source""", (credits_since,)).fetchall()
        return Summary(
            since=since,
            events=[(row[0], int(row[1]), int(row[2])) for row in events],
            deliveries=[(row[0], row[1], row[2], int(row[3])) for row in deliveries],
            dead_letters={row[0]: int(row[1]) for row in dead},
            credits=[(_day(row[0]), row[1], float(row[2]), int(row[3])) for row in credits])

    def totals(self) -> Totals:
        with self.transaction() as cur:
            events = self.execute(cur, "SELECT source, status, COUNT(*) FROM events "
                                       "GROUP BY source, status").fetchall()
            deliveries = self.execute(cur, "SELECT destination, state, COUNT(*) FROM deliveries "
                                           "GROUP BY destination, state").fetchall()
            pending = self.execute(cur, """
                SELECT destination, COUNT(*), MIN(round_started_at) FROM deliveries
                 WHERE state = 'pending' GROUP BY destination""").fetchall()
        return Totals(events={(row[0], row[1]): int(row[2]) for row in events},
                      deliveries={(row[0], row[1]): int(row[2]) for row in deliveries},
                      pending={row[0]: (int(row[1]), float(row[2])) for row in pending})

    def delivery_payloads(self, event_id: str) -> dict[int, str | None]:
        with self.transaction() as cur:
            rows = self.execute(cur, "SELECT id, payload FROM deliveries WHERE event_id = ?",
                                (event_id,)).fetchall()
        return {row[0]: row[1] for row in rows}


_RESTART = """UPDATE deliveries
                 SET state = 'pending', attempts = 0, next_attempt_at = ?,
                     round_started_at = ?, leased_by = NULL, updated_at = ?"""


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


def _event(row: tuple) -> Event:
    return Event(id=row[0], source=row[1], event_type=row[2], dedup_key=row[3],
                 body=bytes(row[4]), headers=json.loads(row[5]), remote_addr=row[6],
                 received_at=row[7], duplicates=row[8], last_duplicate_at=row[9])


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _day(number: Any) -> str:
    return datetime.fromtimestamp(int(number) * 86400, UTC).strftime("%Y-%m-%d")


def _reason(err: BaseException) -> str:
    return f"database unavailable: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
