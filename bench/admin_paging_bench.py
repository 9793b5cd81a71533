#!/usr/bin/env python3
"""Benchmark: the admin dashboard's queries on a SQLite store holding 100,000 events. Not a
test; run it by hand:

    .venv/bin/python bench/admin_paging_bench.py                  # 100,000 events
    .venv/bin/python bench/admin_paging_bench.py --events 20000 --runs 5 --keep /tmp/b.db
    .venv/bin/python bench/admin_paging_bench.py --url postgresql://postgres@127.0.0.1/test
      (PostgreSQL: in a new schema, dropped afterwards)

The store is filled with one bulk insert (events spread over 30 days, five sources, two
deliveries each in a realistic mix of states, some duplicates, the flat event sent with
its credits), through the store's own schema (``migrate()``), then the status column is
recomputed the way migration version 2 does. Each query runs ``--runs`` times; the table
shows the median and the slowest run in milliseconds, and how many rows came back.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.events import new_event_id  # noqa: E402
from bridge.store.base import event_status  # noqa: E402
from bridge.store.sql import EVENT_STATUS, SqlStore  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402

SOURCES = ("ratioready", "zupertry", "posternity", "upscale", "listingrva")
DESTINATIONS = ("make", "n8n")
BODY = (REPO / "bridge" / "samples" / "ratioready" / "wall_art_completed.json").read_bytes()
# (status of the event, state of each delivery, attempts of each delivery), by weight
MIX = [(85, ("done", "done"), (1, 1)), (5, ("filtered", "filtered"), (0, 0)),
       (4, ("dead", "done"), (1, 1)), (3, ("pending", "done"), (2, 1)),
       (2, ("pending", "pending"), (0, 0)), (1, (), ())]


def fill(store: SqlStore, count: int, now: float, rng: random.Random) -> list[str]:
    """Insert ``count`` events (oldest first) with their deliveries; their ids."""
    weights = [w for w, _, _ in MIX]
    start = now - 30 * 86400
    events, deliveries, ids = [], [], []
    for n in range(count):
        received = start + (now - start) * n / count
        event_id = new_event_id(received)
        ids.append(event_id)
        source = SOURCES[n % len(SOURCES)]
        _, states, attempts = rng.choices(MIX, weights)[0]
        duplicates = rng.randint(1, 3) if rng.random() < 0.03 else 0
        events.append((event_id, source, "completed", f"{source}_job_{n:07d}:completed", BODY,
                       "{}", "203.0.113.7", received, duplicates,
                       received + 60 if duplicates else None))
        # no states: a source with no route (stored)
        for destination, state, tries in zip(DESTINATIONS, states, attempts, strict=False):
            payload = (json.dumps({"event_id": event_id, "job_id": f"job_{n}",
                                   "credits": rng.choice((1, 2, 5, 89))})
                       if state in ("done", "dead") or tries else None)
            deliveries.append((event_id, destination, state, tries, tries,
                               received + 600 if state == "pending" else received,
                               received, 200 if state == "done" else 503, payload,
                               received, received))
    with store.transaction(write=True) as cur:
        cur.executemany(store.sql("""INSERT INTO events (id, source, event_type, dedup_key,
                           body, headers, remote_addr, received_at, duplicates, last_duplicate_at)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""), events)
        cur.executemany(store.sql("""INSERT INTO deliveries (event_id, destination, state, attempts,
                           total_attempts, next_attempt_at, round_started_at, last_status,
                           payload, created_at, updated_at)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""), deliveries)
    return ids


def timed(runs: int, query: Callable[[], object]) -> tuple[float, float, int]:
    """(median ms, slowest ms, rows) over ``runs`` runs."""
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = query()
        times.append((time.perf_counter() - started) * 1000)
    rows = len(result) if isinstance(result, list) else 1
    return statistics.median(times), max(times), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--page", type=int, default=50)
    parser.add_argument("--keep", type=Path, help="Write the SQLite database here (kept).")
    parser.add_argument("--url", help="A PostgreSQL URL instead of SQLite.")
    args = parser.parse_args()
    rng = random.Random(7)
    folder = tempfile.TemporaryDirectory()
    path = args.keep or Path(folder.name) / "bench.db"
    schema = None
    if args.url:
        store, schema = postgres_store(args.url)
    else:
        path.unlink(missing_ok=True)
        store = SqliteStore(str(path))
    store.migrate()
    now = time.time()

    started = time.perf_counter()
    ids = fill(store, args.events, now, rng)
    filled = time.perf_counter() - started
    started = time.perf_counter()
    with store.transaction(write=True) as cur:  # as migration version 2 fills the column
        cur.execute(f"UPDATE events SET status = {EVENT_STATUS}")
        cur.execute("ANALYZE")
    backfill = time.perf_counter() - started
    size = f"{path.stat().st_size / 1e6:.0f} MB" if schema is None else f"schema {schema}"
    sample = ids[len(ids) // 3]
    assert store.search_events(text=sample)[0].status == event_status(
        store.deliveries_of(sample)), "the SQL status and the Python status disagree"
    print(f"{args.events:,} events, {len(DESTINATIONS)} deliveries each: inserted in "
          f"{filled:.1f} s, status computed for all in {backfill:.1f} s "
          f"({store!r}, {size})\n")

    page, newest = args.page, ids[::-1]
    middle, last = newest[len(newest) // 2], newest[-page]  # page before it: the last one
    job = f"upscale_job_{len(ids) // 2 - (len(ids) // 2) % 5 + 3:07d}"
    cases: list[tuple[str, Callable[[], object]]] = [
        ("events, first page", lambda: store.search_events(limit=page)),
        ("events, middle page", lambda: store.search_events(before=middle, limit=page)),
        ("events, last page", lambda: store.search_events(before=last, limit=page)),
        ("source=zupertry, first page", lambda: store.search_events("zupertry", limit=page)),
        ("source=zupertry, middle page",
         lambda: store.search_events("zupertry", before=middle, limit=page)),
    ]
    for status in ("queued", "failing", "dead", "delivered", "filtered", "stored",
                   "duplicate"):
        cases.append((f"status={status}, first page",
                       lambda s=status: store.search_events(status=s, limit=page)))
        cases.append((f"status={status}, middle page",
                      lambda s=status: store.search_events(status=s, before=middle,
                                                           limit=page)))
    cases += [
        ("source=upscale + status=dead",
         lambda: store.search_events("upscale", "dead", limit=page)),
        (f"text: one job id ({job})", lambda: store.search_events(text=job, limit=page)),
        ("text: an event id", lambda: store.search_events(text=sample, limit=page)),
        ("text: no match", lambda: store.search_events(text="no-such-job", limit=page)),
        ("text: common (job_00), first page",
         lambda: store.search_events(text="job_00", limit=page)),
        ("summary, last 24 h + 7 days of credits",
         lambda: store.summary(now - 86400, credits_since=now - 7 * 86400)),
        ("totals (a /metrics scrape)", lambda: store.totals()),
        ("one event: event + deliveries + attempts",
         lambda: [store.get_event(sample), store.deliveries_of(sample),
                  store.delivery_payloads(sample)]),
    ]
    width = max(len(name) for name, _ in cases)
    print(f"{'query':<{width}}  {'median ms':>9}  {'max ms':>8}  {'rows':>5}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 8}  {'-' * 5}")
    for name, query in cases:
        median, slowest, rows = timed(args.runs, query)
        print(f"{name:<{width}}  {median:>9.2f}  {slowest:>8.2f}  {rows:>5}")
    store.close()
    folder.cleanup()
    if schema:
        import psycopg

        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def postgres_store(url: str) -> tuple[SqlStore, str]:
    """A PostgresStore working in a new schema of its own."""
    import psycopg

    from bridge.store.postgres import PostgresStore

    schema = f"bench_{int(time.time())}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in url else "?"
    return PostgresStore(f"{url}{separator}options=-csearch_path%3D{schema}"), schema


if __name__ == "__main__":
    main()
