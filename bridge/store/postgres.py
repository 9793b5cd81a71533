"""PostgreSQL store (psycopg 3): for Heroku and Render, whose disks are wiped at every
restart, and for several web and worker processes on any number of machines sharing
one queue. Claims use ``FOR UPDATE SKIP LOCKED``; a lost connection (restart, failover)
becomes StoreUnavailable and the next call reconnects."""

from __future__ import annotations

import select
from typing import Any

try:
    import psycopg
except ImportError as err:  # pragma: no cover - psycopg is a dependency
    raise ImportError('PostgreSQL needs psycopg: run "pip install psycopg[binary]"') from err

from .sql import EVENT_STATUS, SqlStore

CONNECT_TIMEOUT = 5  # seconds
MIGRATION_LOCK = 0x6272696467  # pg_advisory_xact_lock key: one migrating process at a time


class PostgresStore(SqlStore):
    driver_errors = (psycopg.Error,)
    lock_rows = " FOR UPDATE OF d SKIP LOCKED"
    like = "ILIKE"
    day_sql = "CAST(FLOOR(e.received_at / 86400) AS BIGINT)"
    credits_sql = ("CASE WHEN jsonb_typeof(d.payload::jsonb -> 'credits') = 'number' "
                   "THEN (d.payload::jsonb ->> 'credits')::double precision END")
    migration_lock = (f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})",)
    migrations = ((  # version 1
        """CREATE TABLE IF NOT EXISTS events (
               id TEXT PRIMARY KEY,
               source TEXT NOT NULL,
               event_type TEXT,
               dedup_key TEXT NOT NULL,
               body BYTEA NOT NULL,
               headers TEXT NOT NULL,
               remote_addr TEXT,
               received_at DOUBLE PRECISION NOT NULL,
               duplicates INTEGER NOT NULL DEFAULT 0,
               last_duplicate_at DOUBLE PRECISION,
               UNIQUE (source, dedup_key))""",
        "CREATE INDEX IF NOT EXISTS events_source_id ON events (source, id)",
        """CREATE TABLE IF NOT EXISTS deliveries (
               id BIGSERIAL PRIMARY KEY,
               event_id TEXT NOT NULL REFERENCES events (id),
               destination TEXT NOT NULL,
               state TEXT NOT NULL,
               attempts INTEGER NOT NULL DEFAULT 0,
               total_attempts INTEGER NOT NULL DEFAULT 0,
               next_attempt_at DOUBLE PRECISION NOT NULL,
               round_started_at DOUBLE PRECISION NOT NULL,
               leased_by TEXT,
               last_status INTEGER,
               last_error TEXT,
               payload TEXT,
               created_at DOUBLE PRECISION NOT NULL,
               updated_at DOUBLE PRECISION NOT NULL,
               UNIQUE (event_id, destination))""",
        """CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries
               (destination, next_attempt_at) WHERE state = 'pending'""",
        "CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries (state, id)",
        """CREATE TABLE IF NOT EXISTS attempts (
               id BIGSERIAL PRIMARY KEY,
               delivery_id BIGINT NOT NULL REFERENCES deliveries (id),
               number INTEGER NOT NULL,
               started_at DOUBLE PRECISION NOT NULL,
               duration_ms DOUBLE PRECISION,
               http_status INTEGER,
               response_excerpt TEXT,
               error TEXT,
               state TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts (delivery_id, number)",
        """CREATE TABLE IF NOT EXISTS lanes (
               destination TEXT PRIMARY KEY,
               next_slot DOUBLE PRECISION NOT NULL)""",
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

    def __init__(self, url: str):
        super().__init__()
        self.url = url

    def connect(self) -> Any:
        # keepalives and tcp_user_timeout: a network that silently drops packets fails a
        # query within about 30 s instead of hanging a web thread or a lane for hours
        return psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT,
                               application_name="bridge", keepalives=1, keepalives_idle=30,
                               keepalives_interval=10, keepalives_count=3,
                               tcp_user_timeout=30000)

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and _closed_by_server(conn):
            self._drop_connection()  # restarted or failed over since its last use
        return super()._connection()

    def sql(self, query: str) -> str:
        return query.replace("?", "%s")

    def __repr__(self) -> str:
        from . import describe_url

        return f"PostgresStore({describe_url(self.url)!r})"


def _closed_by_server(conn: Any) -> bool:
    """Has the server closed this idle connection since its last use (a restart, a
    failover, a cut)? An idle session is sent nothing else, so a readable socket means it
    is gone; looking costs no round trip. Without this, the first call on each kept
    connection after a restart failed (a 503 to a provider that may never retry)."""
    if conn.closed:
        return True
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(conn.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (OSError, ValueError, psycopg.Error):
        return True
