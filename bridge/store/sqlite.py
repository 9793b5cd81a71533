"""SQLite store: the embedded default, for local runs and one machine with a disk.
WAL lets readers work while one writer commits; ``synchronous=FULL`` makes every
acknowledged event survive a power cut, not only a crash of the bridge."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: SQLite's busy handler only
    fcntl = None

from ..errors import StoreUnavailable
from ..events import NewEvent, Stored
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
        self._writer = threading.Lock()
        self._lock_file: tuple[int, int] | None = None  # (pid, fd)
        self._group = GroupCommit(self.add_events)

    def add_event(self, event: NewEvent, destinations: Sequence[str] = ()) -> Stored:
        # callbacks arriving together share one transaction: one fsync for all of them,
        # and each answer still waits for its own commit
        return self._group.submit((event, destinations))

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Writers queue for the database, threads of this process on a lock, processes on
        an flock of ``<db>-lock``: SQLite's own busy handler polls with sleeps, which
        under load leaves the database idle between writers."""
        with self._writer:
            fd = self._lock_fd()
            if fd is None:
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_fd(self) -> int | None:
        if fcntl is None or self.path == ":memory:":
            return None
        if self._lock_file is None or self._lock_file[0] != os.getpid():  # opened after fork
            try:
                fd = os.open(f"{self.path}-lock", os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as err:
                raise StoreUnavailable(f"database unavailable: cannot open {self.path}-lock "
                                       f"({err.strerror})") from None
            self._lock_file = (os.getpid(), fd)
        return self._lock_file[1]

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

    def close(self) -> None:
        super().close()
        if self._lock_file is not None and self._lock_file[0] == os.getpid():
            with self._writer, contextlib.suppress(OSError):
                os.close(self._lock_file[1])
        self._lock_file = None

    def __repr__(self) -> str:
        return f"SqliteStore({os.fspath(self.path)!r})"


class GroupCommit:
    """Runs concurrent submissions in batches: the first caller leads and runs everything
    waiting (``run(items) -> results``) in one go; the others wait for their result. A
    leader runs one batch, then hands the lead to the next caller waiting, so no caller
    works for long on others' behalf."""

    def __init__(self, run: Callable[[list], list]):
        self._run = run
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._leading = False

    def submit(self, item: Any) -> Any:
        slot = _Slot(item)
        with self._lock:
            self._waiting.append(slot)
            lead, self._leading = not self._leading, True
        if not lead:
            slot.ready.wait()
            if not slot.promoted:
                return slot.outcome()
        with self._lock:
            batch, self._waiting = self._waiting, []
        try:
            results = self._run([s.item for s in batch])
        except BaseException as err:  # noqa: BLE001 - every caller of the batch gets it
            for waiting in batch:
                waiting.finish(error=err)
        else:
            for waiting, result in zip(batch, results, strict=True):
                waiting.finish(result=result)
        with self._lock:
            if self._waiting:
                self._waiting[0].promote()
            else:
                self._leading = False
        return slot.outcome()


class _Slot:
    __slots__ = ("item", "ready", "promoted", "result", "error")

    def __init__(self, item: Any):
        self.item = item
        self.ready = threading.Event()
        self.promoted = False
        self.result: Any = None
        self.error: BaseException | None = None

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.ready.set()

    def promote(self) -> None:
        self.promoted = True
        self.ready.set()

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result
