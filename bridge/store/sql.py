"""What the SQL stores share: the schema, the queries, one transaction helper.
Subclasses give only what differs: how to connect, the placeholder, the driver errors."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import StoreUnavailable
from ..events import Event, NewEvent, Stored
from .base import Store

EVENT_COLUMNS = ("id, source, event_type, dedup_key, body, headers, remote_addr, received_at, "
                 "duplicates, last_duplicate_at")


class SqlStore(Store):
    ddl: tuple[str, ...] = ()
    driver_errors: tuple[type[BaseException], ...] = ()

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
            for statement in self.ddl:
                self.execute(cur, statement)

    def add_event(self, event: NewEvent) -> Stored:
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
        return Stored(event_id=row[0], duplicate=row[0] != event.id)

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

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()


def _event(row: tuple) -> Event:
    return Event(id=row[0], source=row[1], event_type=row[2], dedup_key=row[3],
                 body=bytes(row[4]), headers=json.loads(row[5]), remote_addr=row[6],
                 received_at=row[7], duplicates=row[8], last_duplicate_at=row[9])


def _reason(err: BaseException) -> str:
    return f"database unavailable: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
