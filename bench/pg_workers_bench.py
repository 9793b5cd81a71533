#!/usr/bin/env python
"""PostgreSQL worker-scaling benchmark: do 2 and 3 ``bridge worker`` processes drain one
queue faster than 1?

A fresh schema on the PostgreSQL server (created here, dropped at the end) holds N events
(default 600) from one source routed to one ``http`` destination (concurrency 4 per
process, like the defaults; a rate limit high enough never to be the limit; the default
batch of 20). The destination is a receiver in its own process (asyncio, any number of
concurrent keep-alive connections) that answers every POST after 50 ms, as a real
catch-hook would; it records when the first request arrived, when the last answer went out,
and the distinct ``Idempotency-Key`` values.

Each run: the queue is refilled with every delivery held back (due in an hour); 1, 2 or 3
real ``bridge worker`` processes start and report ready; then one UPDATE makes every
delivery due at once and the clock starts. Throughput = N / (last answer - first
request) at the receiver; the store-side time (from the release until the database shows
every delivery done) is printed too. Runs are interleaved (1w, 2w, 3w, 1w, …) so drift
hits every worker count alike; the table shows the median and the min-max.

    .venv/bin/python bench/pg_workers_bench.py
    .venv/bin/python bench/pg_workers_bench.py --events 1200 --runs 5 --markdown pg.md

Targets: 2 workers >= 1.6x one worker, 3 workers >= 2.2x. Exit status 0 when both are met,
1 when not, 2 on an error (an event not delivered, a worker that died).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
import yaml  # noqa: E402

from bridge.events import NewEvent  # noqa: E402
from bridge.store.postgres import PostgresStore  # noqa: E402

DEFAULT_URL = os.environ.get("BRIDGE_TEST_DATABASE_URL") or \
    "postgresql://postgres@127.0.0.1:5432/test"
SAMPLE = REPO / "bridge" / "samples" / "ratioready" / "wall_art_completed.json"
MAPPING = REPO / "mappings" / "ratioready.yaml"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 34\r\n"
            b"\r\n" b'{"message":"Workflow was started"}')
READY = re.compile(r"delivery worker \S+ started")


# -- the receiver (its own process) ---------------------------------------------------------

def _serve(pipe, delay: float, stats) -> None:
    """stats: [requests, distinct keys, first request (time.time), last answer]."""
    seen: set[bytes] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrived = time.time()
                length, key = 0, None
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"idempotency-key":
                        key = value.strip()
                if length:
                    await reader.readexactly(length)
                if stats[2] == 0.0:
                    stats[2] = arrived
                stats[0] += 1
                if key is not None and key not in seen:
                    seen.add(key)
                    stats[1] += 1
                await asyncio.sleep(delay)
                writer.write(RESPONSE)
                await writer.drain()
                stats[3] = time.time()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
        pipe.send(server.sockets[0].getsockname()[1])
        while True:  # commands from the bench: "reset" (a new run), "stop"
            command = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
            if command == "stop":
                return
            seen.clear()
            for index in range(4):
                stats[index] = 0.0
            pipe.send("ok")

    asyncio.run(main())


class Receiver:
    def __init__(self, delay: float):
        context = multiprocessing.get_context("spawn")
        self.stats = context.Array("d", 4, lock=False)
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, delay, self.stats),
                                       daemon=True)
        self.process.start()
        if not self.pipe.poll(20):
            raise RuntimeError("the receiver did not start")
        self.port = self.pipe.recv()

    def reset(self) -> None:
        self.pipe.send("reset")
        if not self.pipe.poll(10) or self.pipe.recv() != "ok":
            raise RuntimeError("the receiver does not answer")

    @property
    def requests(self) -> int:
        return int(self.stats[0])

    @property
    def distinct(self) -> int:
        return int(self.stats[1])

    @property
    def window(self) -> float:
        return self.stats[3] - self.stats[2]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.send("stop")
        self.process.join(3)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(3)


# -- the database ----------------------------------------------------------------------------

def with_schema(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


def fill(store: PostgresStore, url: str, events: int) -> None:
    """Empty the tables, then ``events`` distinct completed jobs, each with one delivery
    held back (due in an hour) until the workers are ready."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE attempts, deliveries, events, lanes")
    base = json.loads(SAMPLE.read_bytes())
    now = time.time()
    for n in range(events):
        body = json.dumps({**base, "job_id": f"rr_job_pgbench_{n:06d}"}).encode()
        store.add_event(NewEvent("ratioready", "completed", f"pgbench-{n}", body, {},
                                 "127.0.0.1", now), ["bench"])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE deliveries SET next_attempt_at = %s", (now + 3600,))


def release(url: str) -> float:
    """Make every delivery due now; the time it happened."""
    with psycopg.connect(url, autocommit=True) as conn:
        now = time.time()
        conn.execute("UPDATE deliveries SET next_attempt_at = %s", (now,))
    return now


def done_count(conn) -> int:
    return conn.execute("SELECT COUNT(*) FROM deliveries WHERE state = 'done'").fetchone()[0]


# -- the workers -----------------------------------------------------------------------------

def write_config(folder: Path, url: str, receiver_port: int, concurrency: int, rate: float,
                 batch: int) -> Path:
    data = {
        "database_url": url,
        "sources": {"ratioready": {"profile": "ratioready",
                                   "secrets": ["${RATIOREADY_WEBHOOK_SECRET}"],
                                   "mapping": str(MAPPING)}},
        "destinations": {"bench": {"kind": "http",
                                   "url": f"http://127.0.0.1:{receiver_port}/bench",
                                   "timeout": "10s", "rate_limit": rate,
                                   "concurrency": concurrency}},
        "routes": [{"from": "ratioready", "to": "bench"}],
        "delivery": {"in_web": False, "batch": batch, "poll_interval": "0.1s"},
    }
    path = folder / "bridge.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def bridge_command() -> list[str]:
    script = Path(sys.executable).with_name("bridge")
    if script.exists():
        return [str(script), "worker"]
    return [sys.executable, "-c", "from bridge.cli import main; main()", "worker"]


class Workers:
    """``count`` `bridge worker` processes, each in its own process group."""

    def __init__(self, count: int, folder: Path, config: Path):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BRIDGE_") and k != "DATABASE_URL"}
        env.update(BRIDGE_CONFIG=str(config), RATIOREADY_WEBHOOK_SECRET="pg-bench-secret",
                   BRIDGE_LOG_LEVEL="INFO")  # the default: a line per delivery, as deployed
        self.logs = [folder / f"worker{n + 1}.log" for n in range(count)]
        self.processes: list[subprocess.Popen] = []
        for log in self.logs:
            with open(log, "wb") as out:
                self.processes.append(subprocess.Popen(
                    bridge_command(), cwd=folder, env=env, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True))

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            if all(READY.search(log.read_text(errors="replace")) for log in self.logs):
                return
            time.sleep(0.05)
        raise RuntimeError(f"workers not ready after {timeout} s:\n{self.output()}")

    def check_alive(self) -> None:
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                raise RuntimeError(f"a worker exited ({process.returncode}):\n"
                                   f"{log.read_text(errors='replace')[-2000:]}")

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}"
                         for log in self.logs)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)


# -- one run ---------------------------------------------------------------------------------

def run_once(count: int, args, url: str, store: PostgresStore, receiver: Receiver,
             work: Path, label: str) -> tuple[float, float, float]:
    """(events/s at the receiver, its window in s, release → all done in s)."""
    fill(store, url, args.events)
    receiver.reset()
    folder = work / label
    folder.mkdir()
    config = write_config(folder, url, receiver.port, args.concurrency, args.rate, args.batch)
    workers = Workers(count, folder, config)
    try:
        workers.wait_ready()
        with psycopg.connect(url, autocommit=True) as conn:
            released = release(url)
            deadline = time.monotonic() + args.timeout
            while done_count(conn) < args.events:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: {done_count(conn)} of {args.events} done "
                                       f"after {args.timeout} s\n{workers.output()}")
                workers.check_alive()
                time.sleep(0.02)
            store_seconds = time.time() - released
        time.sleep(0.1)  # the last answers' timestamps are written
        if receiver.distinct != args.events:
            raise RuntimeError(f"{label}: the receiver saw {receiver.distinct} distinct events "
                               f"of {args.events}")
        window = receiver.window
        return args.events / window, window, store_seconds
    finally:
        workers.stop()


# -- main ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=600)
    parser.add_argument("--runs", type=int, default=3, help="runs per worker count")
    parser.add_argument("--workers", default="1,2,3", help="worker counts (1 must be first)")
    parser.add_argument("--delay", type=float, default=0.05, help="receiver answer delay (s)")
    parser.add_argument("--concurrency", type=int, default=4, help="per worker process")
    parser.add_argument("--rate", type=float, default=100000, help="rate_limit (per second)")
    parser.add_argument("--batch", type=int, default=20, help="delivery.batch")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per run at most")
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help="PostgreSQL server (default: BRIDGE_TEST_DATABASE_URL or the "
                             "local test database)")
    parser.add_argument("--target2", type=float, default=1.6, help="2 workers / 1 worker")
    parser.add_argument("--target3", type=float, default=2.2, help="3 workers / 1 worker")
    parser.add_argument("--markdown", type=Path, help="also write a Markdown report here")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.workers.split(",")]
    if counts[0] != 1:
        parser.error("--workers must start with 1 (the ratios are against one worker)")

    try:
        psycopg.connect(args.database_url, connect_timeout=5).close()
    except psycopg.Error as err:
        print(f"no PostgreSQL server at {args.database_url}: {err}", file=sys.stderr)
        return 2

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = with_schema(args.database_url, schema)
    store = PostgresStore(url)
    receiver = Receiver(args.delay)
    work = Path(tempfile.mkdtemp(prefix="pg-workers-bench-"))
    load = os.getloadavg()[0]
    results: dict[int, list[tuple[float, float, float]]] = {c: [] for c in counts}
    try:
        store.migrate()
        print(f"PostgreSQL {server_version(args.database_url)}, schema {schema} (dropped at "
              f"the end); machine: {os.cpu_count()} CPUs, load average {load:.2f} before")
        print(f"{args.events} events; destination: concurrency {args.concurrency} per "
              f"worker, rate_limit {args.rate:g}/s, batch {args.batch}; receiver (own "
              f"process) answers after {args.delay * 1000:.0f} ms; "
              f"one worker's ceiling ~{args.concurrency / args.delay:.0f} events/s")
        for run in range(1, args.runs + 1):
            for count in counts:
                label = f"run{run}-{count}w"
                rate, window, store_seconds = run_once(count, args, url, store, receiver,
                                                       work, label)
                results[count].append((rate, window, store_seconds))
                print(f"run {run}, {count} worker(s): {rate:6.1f} events/s "
                      f"(first request → last answer {window:.2f} s; release → all done "
                      f"in the store {store_seconds:.2f} s)", flush=True)
    except RuntimeError as err:
        print(f"ERROR: {err}", file=sys.stderr)
        return 2
    finally:
        receiver.close()
        store.close()
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        import shutil

        shutil.rmtree(work, ignore_errors=True)

    medians = {c: statistics.median(r[0] for r in results[c]) for c in counts}
    targets = {2: args.target2, 3: args.target3}
    rows = []
    verdicts = []
    for count in counts:
        rates = [r[0] for r in results[count]]
        stores = [r[2] for r in results[count]]
        ratio = medians[count] / medians[1]
        target = targets.get(count)
        verdict = ""
        if target is not None:
            verdict = "PASS" if ratio >= target else "MISS"
            verdicts.append(verdict)
        rows.append((count, medians[count], min(rates), max(rates),
                     statistics.median(stores), ratio, target, verdict))

    print()
    header = (f"{'workers':>7}  {'events/s median':>15}  {'min-max':>13}  "
              f"{'store s (median)':>16}  {'ratio':>5}  {'target':>6}  verdict")
    print(header)
    print("-" * len(header))
    for count, median, low, high, store_s, ratio, target, verdict in rows:
        target_text = f">={target:.1f}" if target is not None else ""
        print(f"{count:>7}  {median:>15.1f}  {f'{low:.1f}-{high:.1f}':>13}  "
              f"{store_s:>16.2f}  {ratio:>4.2f}x  {target_text:>6}  {verdict}")
    overall = "PASS" if verdicts and all(v == "PASS" for v in verdicts) else "MISS"
    print(f"\noverall: {overall} ({args.runs} runs per worker count, {args.events} events)")

    if args.markdown:
        lines = [
            "# PostgreSQL worker scaling",
            "",
            f"{args.events} events queued for one `http` destination (concurrency "
            f"{args.concurrency} per worker, rate_limit {args.rate:g}/s, batch {args.batch}); "
            f"a receiver in its own process answers after {args.delay * 1000:.0f} ms. "
            f"PostgreSQL {server_version(args.database_url)}, Python "
            f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {load:.2f} "
            f"before the runs. Events/s = events / (last answer − first request) at the "
            f"receiver; {args.runs} interleaved runs per worker count.",
            "",
            "| workers | events/s (median) | min–max | release → all done, s (median) "
            "| ratio to 1 worker | target | verdict |",
            "|---:|---:|---:|---:|---:|---:|---|",
            *[f"| {count} | {median:.1f} | {low:.1f}–{high:.1f} | {store_s:.2f} | "
              f"{ratio:.2f}x | {f'≥ {target:.1f}' if target is not None else ''} | "
              f"{verdict} |"
              for count, median, low, high, store_s, ratio, target, verdict in rows],
            "",
            f"Overall: **{overall}**.",
            "",
        ]
        args.markdown.write_text("\n".join(lines), encoding="utf-8")
        print(f"wrote {args.markdown}")
    return 0 if overall == "PASS" else 1


def server_version(url: str) -> str:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SHOW server_version").fetchone()[0].split()[0]


if __name__ == "__main__":
    sys.exit(main())
