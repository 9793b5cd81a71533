"""SQLite store: the embedded default, for local runs and one machine with a disk.
WAL lets readers work while one writer commits; ``synchronous=FULL`` makes every
acknowledged event survive a power cut, not only a crash of the bridge."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from .sql import EVENT_STATUS, SqlStore

BUSY_TIMEOUT_MS = 5000


class SqliteStore(SqlStore):
    driver_errors = (sqlite3.Error,)
    migrations = ((  # version 1
        """CREATE TABLE IF NOT EXISTS events (
               id TEXT PRIMARY KEY,
               source TEXT NOT NULL,
               event_type TEXT,
               dedup_key TEXT NOT NULL,
               body BLOB NOT NULL,
               headers TEXT NOT NULL,
               remote_addr TEXT,
               received_at REAL NOT NULL,
               duplicates INTEGER NOT NULL DEFAULT 0,
               last_duplicate_at REAL,
               UNIQUE (source, dedup_key))""",
        "CREATE INDEX IF NOT EXISTS events_source_id ON events (source, id)",
        """CREATE TABLE IF NOT EXISTS deliveries (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               event_id TEXT NOT NULL REFERENCES events (id),
               destination TEXT NOT NULL,
               state TEXT NOT NULL,
               attempts INTEGER NOT NULL DEFAULT 0,
               total_attempts INTEGER NOT NULL DEFAULT 0,
               next_attempt_at REAL NOT NULL,
               round_started_at REAL NOT NULL,
               leased_by TEXT,
               last_status INTEGER,
               last_error TEXT,
               payload TEXT,
               created_at REAL NOT NULL,
               updated_at REAL NOT NULL,
               UNIQUE (event_id, destination))""",
        """CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries
               (destination, next_attempt_at) WHERE state = 'pending'""",
        "CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, id)",
        """CREATE TABLE IF NOT EXISTS attempts (
               id INTEGER PRIMARY KEY AUTOINCREMENT,
               delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
               number INTEGER NOT NULL,
               started_at REAL NOT NULL,
               duration_ms REAL,
               http_status INTEGER,
               response_excerpt TEXT,
               error TEXT,
               state TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id, number)",
        """CREATE TABLE IF NOT EXISTS lanes (
               destination TEXT PRIMARY KEY,
               next_slot REAL NOT NULL)""",
    ), (  # version 2: the event status the admin dashboard filters on, and its indexes
        "ALTER TABLE events ADD COLUMN status TEXT NOT NULL DEFAULT 'stored'",
        f"UPDATE events SET status = {EVENT_STATUS}",
        "CREATE INDEX IF NOT EXISTS events_status_id ON events (status, id)",
        "CREATE INDEX IF NOT EXISTS events_source_status_id ON events (source, status, id)",
        "CREATE INDEX IF NOT EXISTS events_duplicated ON events (id) WHERE duplicates > 0",
        "CREATE INDEX IF NOT EXISTS events_received ON events (received_at)",
        "CREATE INDEX IF NOT EXISTS events_search ON events (id, dedup_key)",
        "CREATE INDEX IF NOT EXISTS deliveries_destination_state ON deliveries "
        "(destination, state)",
    ),)

    def __init__(self, path: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS):
        super().__init__()
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms

    def connect(self) -> Any:
        if self.path != ":memory:":
            directory = Path(self.path).parent
            if not directory.is_dir():
                raise sqlite3.OperationalError(f"folder {directory} does not exist")
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                               isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def begin(self, cursor: Any, write: bool) -> None:
        # IMMEDIATE takes the write lock up front: no deadlock upgrading a read lock
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")

    def __repr__(self) -> str:
        return f"SqliteStore({os.fspath(self.path)!r})"
