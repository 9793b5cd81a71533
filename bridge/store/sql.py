"""What the SQL stores share: the schema, the queries, one transaction helper.
Subclasses give only what differs: how to connect, the placeholder, the driver errors."""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import StoreUnavailable
from ..events import Attempt, AttemptResult, Claim, Delivery, Event, NewEvent, Stored
from .base import Store

EVENT_COLUMNS = ("id, source, event_type, dedup_key, body, headers, remote_addr, received_at, "
                 "duplicates, last_duplicate_at")
DELIVERY_COLUMNS = ("d.id, d.event_id, d.destination, d.state, d.attempts, d.total_attempts, "
                    "d.next_attempt_at, d.last_status, d.last_error, d.leased_by, d.created_at, "
                    "d.updated_at, e.source, e.event_type")
ATTEMPT_COLUMNS = ("delivery_id, number, started_at, duration_ms, http_status, "
                   "response_excerpt, error, state")
RATE_WINDOW = 1.0  # a claim hands out at most the sends that fit in the next second


class SqlStore(Store):
    # Schema versions: migrations[0] makes version 1, migrations[1] version 2, …; a new
    # version is a new entry at the end (never edit one that has shipped).
    migrations: tuple[tuple[str, ...], ...] = ()
    migration_lock: tuple[str, ...] = ()  # PostgreSQL: one migrating process at a time
    driver_errors: tuple[type[BaseException], ...] = ()
    lock_rows = ""  # PostgreSQL: " FOR UPDATE SKIP LOCKED"

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

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Any]:
        """One transaction: commit on success, roll back on any error; driver errors
        become StoreUnavailable (the connection is dropped and reopened next time)."""
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
        event = event.with_id()
        with self.transaction(write=True) as cur:
            row = self.execute(cur, """
                INSERT INTO events (id, source, event_type, dedup_key, body, headers,
                                    remote_addr, received_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (source, dedup_key) DO UPDATE
                   SET duplicates = events.duplicates + 1,
                       last_duplicate_at = excluded.received_at
                RETURNING id""",
                (event.id, event.source, event.event_type, event.dedup_key, event.body,
                 json.dumps(event.headers), event.remote_addr, event.received_at)).fetchone()
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
            return self.execute(cur, f"{_RESTART} WHERE event_id = ?",
                                (now, now, now, event_id)).rowcount

    def replay_dead(self, now: float, source: str | None = None,
                    since: float | None = None) -> int:
        clauses, params = ["state = 'dead'"], []
        if source or since is not None:
            inner, inner_params = [], []
            if source:
                inner.append("source = ?")
                inner_params.append(source)
            if since is not None:
                inner.append("received_at >= ?")
                inner_params.append(since)
            clauses.append(f"event_id IN (SELECT id FROM events WHERE {' AND '.join(inner)})")
            params += inner_params
        with self.transaction(write=True) as cur:
            return self.execute(cur, f"{_RESTART} WHERE {' AND '.join(clauses)}",
                                (now, now, now, *params)).rowcount

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

    def next_due(self, destination: str) -> float | None:
        with self.transaction() as cur:
            row = self.execute(cur, "SELECT MIN(next_attempt_at) FROM deliveries "
                                    "WHERE destination = ? AND state = 'pending'",
                               (destination,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()


_RESTART = """UPDATE deliveries
                 SET state = 'pending', attempts = 0, next_attempt_at = ?,
                     round_started_at = ?, leased_by = NULL, updated_at = ?"""


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


def _event(row: tuple) -> Event:
    return Event(id=row[0], source=row[1], event_type=row[2], dedup_key=row[3],
                 body=bytes(row[4]), headers=json.loads(row[5]), remote_addr=row[6],
                 received_at=row[7], duplicates=row[8], last_duplicate_at=row[9])


def _reason(err: BaseException) -> str:
    return f"database unavailable: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
