#!/usr/bin/env python
"""Drain benchmark: how many events per second one delivery worker delivers.

A fast receiver runs in its own process (an asyncio HTTP/1.1 server with keep-alive that
answers every POST with 200), so it does not share the GIL with the worker. Each run gets
a fresh SQLite store holding N events from one source routed to one ``http`` destination
with a high rate limit; ``Worker.run_burst()`` then runs until every delivery is done.
The time counted is from the first claim to the last delivery recorded (mapping, HTTP and
SQLite included; filling the store is not counted).

    .venv/bin/python bench/drain_bench.py                       # 5000 events, 3 runs
    .venv/bin/python bench/drain_bench.py --events 2000 --runs 5 --markdown bench.md
    .venv/bin/python bench/drain_bench.py --profile             # + where the time goes

Exit status 0 when the median meets the target (default 1,000 events/s), 1 when not.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import multiprocessing
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.config import load_mappings, load_settings  # noqa: E402
from bridge.events import NewEvent  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from bridge.worker import Worker  # noqa: E402

SECRET_VAR = "RATIOREADY_WEBHOOK_SECRET"
SAMPLE = REPO / "bridge" / "samples" / "ratioready" / "wall_art_completed.json"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 36\r\n"
            b"\r\n" b'{"message":"Workflow was started"}\r\n')


# -- the receiver (a separate process) -------------------------------------------------------

def _serve(port_pipe, counter) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                counter.value += 1  # one thread in this process: no lock needed
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=512)
        port_pipe.send(server.sockets[0].getsockname()[1])
        port_pipe.close()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Receiver:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.counter = context.Value("q", 0, lock=False)
        parent, child = context.Pipe(duplex=False)
        self.process = context.Process(target=_serve, args=(child, self.counter), daemon=True)
        self.process.start()
        if not parent.poll(20):
            raise RuntimeError("the receiver did not start")
        self.port = parent.recv()

    @property
    def received(self) -> int:
        return self.counter.value

    def close(self) -> None:
        self.process.terminate()
        self.process.join(5)


# -- one run -------------------------------------------------------------------------------

def write_config(folder: Path, url: str, rate: float, concurrency: int, batch: int) -> Path:
    mapping = REPO / "mappings" / "ratioready.yaml"
    text = f"""
database_url: sqlite:///{folder / 'bridge.db'}
sources:
  ratioready:
    profile: ratioready
    secrets: ["${{{SECRET_VAR}}}"]
    mapping: {mapping}
destinations:
  bench:
    kind: http
    url: {url}
    timeout: 10s
    rate_limit: {rate}
    concurrency: {concurrency}
routes:
  - {{from: ratioready, to: [bench]}}
delivery:
  in_web: false
  batch: {batch}
"""
    path = folder / "bridge.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def fill(db: Path, events: int) -> None:
    """A store with ``events`` distinct completed jobs, each with one pending delivery."""
    store = SqliteStore(str(db))
    store.migrate()
    base = json.loads(SAMPLE.read_bytes())
    now = time.time()
    for n in range(events):
        body = json.dumps({**base, "job_id": f"rr_job_bench_{n:06d}"}).encode()
        store.add_event(NewEvent("ratioready", "completed", f"bench-{n}", body, {},
                                 "127.0.0.1", now), ["bench"])
    store.close()


def drain(config: Path, events: int, profile: bool = False) -> tuple[float, float, int]:
    """Deliver everything; (wall seconds, CPU seconds of this process, deliveries done)."""
    settings = load_settings(str(config), environ={SECRET_VAR: "bench-secret"})
    mappings = load_mappings(settings)
    store = SqliteStore(settings.database_url[len("sqlite:///"):])
    worker = Worker(settings, store, mappings)
    profiles: list[cProfile.Profile] = []
    if profile:
        threading.setprofile(_thread_profiler(profiles))
    started, cpu = time.perf_counter(), time.process_time()
    while True:
        worker.run_burst()
        done = len(store.list_deliveries(state="done", limit=events + 1))
        pending = len(store.list_deliveries(state="pending", limit=1))
        if done >= events or not pending:
            break
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    worker.stop(timeout=5)
    store.close()
    if profile:
        threading.setprofile(None)
        _merge(profiles)
    return elapsed, cpu, done


def _thread_profiler(profiles: list[cProfile.Profile]):
    """A hook for threading.setprofile: every new thread (lanes, send pools) gets its
    own cProfile.Profile measuring that thread's CPU time (time.thread_time, so waiting
    on a socket or a lock counts nothing), merged after the run."""

    def start(*_args) -> None:
        sys.setprofile(None)
        current = cProfile.Profile(time.thread_time)
        profiles.append(current)
        current.enable()

    return start


_MERGED: list[pstats.Stats] = []


def _merge(profiles: list[cProfile.Profile]) -> None:
    stats = None
    for each in profiles:
        each.disable()
        try:
            if stats is None:
                stats = pstats.Stats(each)
            else:
                stats.add(each)
        except TypeError:  # a thread that recorded nothing
            continue
    if stats is not None:
        _MERGED.append(stats)


# -- main ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=100000, help="rate_limit (per second)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=20, help="delivery.batch (default 20, "
                                                              "the bridge's default)")
    parser.add_argument("--target", type=float, default=1000.0, help="events/s to meet")
    parser.add_argument("--markdown", type=Path, help="also write a Markdown table here")
    parser.add_argument("--profile", action="store_true",
                        help="profile one extra run (every thread, cProfile) and print the "
                             "functions taking the most time")
    args = parser.parse_args(argv)

    import logging
    logging.basicConfig(level=logging.ERROR)  # the worker logs every delivery at INFO

    receiver = Receiver()
    url = f"http://127.0.0.1:{receiver.port}/bench"
    work = Path(tempfile.mkdtemp(prefix="drain-bench-"))
    results: list[tuple[int, float, float, int, float]] = []
    load = os.getloadavg()[0]
    try:
        template = work / "template.db"
        t0 = time.perf_counter()
        fill(template, args.events)
        print(f"filled a store with {args.events} events in {time.perf_counter() - t0:.1f} s "
              f"(not counted)")
        print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f} before the runs "
              "(other processes compete for the CPUs)")
        print(f"receiver: separate process, 127.0.0.1:{receiver.port}; destination: "
              f"rate_limit {args.rate:g}/s, concurrency {args.concurrency}, batch {args.batch}")
        for run in range(1, args.runs + (2 if args.profile else 1)):
            profiling = args.profile and run == args.runs + 1
            folder = work / f"run{run}"
            folder.mkdir()
            shutil.copy(template, folder / "bridge.db")
            config = write_config(folder, url, args.rate, args.concurrency, args.batch)
            before = receiver.received
            elapsed, cpu, done = drain(config, args.events, profiling)
            sent = receiver.received - before
            rate = done / elapsed
            if profiling:
                print(f"profiled run: {done} delivered in {elapsed:.2f} s = {rate:.0f} "
                      "events/s (slower: profiling)")
                continue
            results.append((run, elapsed, rate, sent, cpu / elapsed))
            print(f"run {run}: {done} delivered in {elapsed:.2f} s = {rate:.0f} events/s "
                  f"(receiver got {sent}; worker CPU {cpu:.2f} s = {cpu / elapsed:.0%} of one "
                  f"core, {cpu / done * 1000:.2f} ms per delivery)")
            if done != args.events or sent < done:
                print(f"run {run}: ERROR: {done} of {args.events} done, {sent} received")
                return 2
    finally:
        receiver.close()
        shutil.rmtree(work, ignore_errors=True)

    rates = [r[2] for r in results]
    median = statistics.median(rates)
    verdict = "PASS" if median >= args.target else "MISS"
    summary = (f"median {median:.0f} events/s (min {min(rates):.0f}, max {max(rates):.0f}) "
               f"over {len(rates)} runs of {args.events} events; target {args.target:.0f} "
               f"events/s: {verdict}")
    print(summary)
    if _MERGED:
        out = io.StringIO()
        _MERGED[0].stream = out
        _MERGED[0].sort_stats("tottime").print_stats(25)
        ours = r"bridge/|requests/(sessions|adapters)|sqlite"
        _MERGED[0].sort_stats("cumulative").print_stats(ours, 25)
        print("\nwhere the CPU time goes (every worker thread, by own CPU time, top 25):")
        print(out.getvalue())
    if args.markdown:
        lines = [
            "# Drain benchmark",
            "",
            f"{args.events} events, one `http` destination (rate_limit {args.rate:g}/s, "
            f"concurrency {args.concurrency}, batch {args.batch}), SQLite, "
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
            f"{load:.2f} before the runs. The receiver runs in its own process.",
            "",
            "| run | seconds | events/s | received | worker CPU (one core) |",
            "|---:|---:|---:|---:|---:|",
            *[f"| {run} | {elapsed:.2f} | {rate:.0f} | {sent} | {busy:.0%} |"
              for run, elapsed, rate, sent, busy in results],
            f"| **median** | | **{median:.0f}** | | |",
            "",
            f"Target {args.target:.0f} events/s: **{verdict}** "
            f"(min {min(rates):.0f}, max {max(rates):.0f}).",
            "",
        ]
        args.markdown.write_text("\n".join(lines), encoding="utf-8")
        print(f"wrote {args.markdown}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
