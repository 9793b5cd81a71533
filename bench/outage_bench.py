#!/usr/bin/env python
"""Outage benchmark: N signed callbacks (default 100,000) accepted while the destination is
down (connection refused), then the destination comes back.

Measured: the memory of the bridge processes during the outage (VmRSS from
/proc/<pid>/status of the gunicorn master and of each worker, sampled every second;
the target is on their sum), and the time to deliver all N once the destination is back.

Set-up: ``bridge serve`` (gunicorn, default 2 workers x 4 threads, delivering in the web
process) with a temp bridge.yaml and SQLite file; one ``http`` destination on a loopback
port nothing listens on, with a compressed retry schedule (schedule [1s, 2s], repeat 2s,
max_age 1d) so retries go on during the whole outage, and a rate limit high enough not to
be the bottleneck (--rate-limit). Senders: Python processes (--processes x --senders
keep-alive connections, closed loop), each callback signed and with a unique job_id.
When all N are accepted, a fast receiver starts in its own process on the destination's
port; the drain time runs from then until the store shows every delivery done.

    .venv/bin/python bench/outage_bench.py                       # 100,000 events
    .venv/bin/python bench/outage_bench.py --events 20000 --markdown outage.md

Target: RSS (sum of master and workers) grows <= 20 % from the end of the warm-up (the
first --warmup events) to the end of the outage. The drain time is reported (no target).
Exit status 0 when the target is met, 1 when not, 2 when events were lost or not drained.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

GROWTH_TARGET = 0.20


def rss(server: common.Server) -> dict[int, int]:
    """KiB per process: the master first, then each worker."""
    sizes = {}
    for pid in [server.pid, *server.worker_pids()]:
        kib = common.rss_kib(pid)
        if kib is not None:
            sizes[pid] = kib
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=None,
                        help="events before the baseline sample (default 5 %% of --events)")
    parser.add_argument("--processes", type=int, default=2, help="sender processes")
    parser.add_argument("--senders", type=int, default=8, help="connections per process")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rate-limit", type=float, default=100000,
                        help="the destination's rate_limit (per second)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="the destination's concurrency (per worker process)")
    parser.add_argument("--drain-timeout", type=float, default=1800.0, help="seconds")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy on the workers for 15 s after the warm-up and for the "
                             "first 15 s of the drain; prints where the threads spend time")
    parser.add_argument("--markdown", type=Path, help="also write a Markdown report here")
    parser.add_argument("--bridge-path", help="benchmark the bridge package in this folder")
    args = parser.parse_args(argv)
    common.BRIDGE_PATH = args.bridge_path
    warmup = args.warmup if args.warmup is not None else max(500, args.events // 20)

    info = common.machine()
    print(common.machine_line(info))
    work = Path(tempfile.mkdtemp(prefix="outage-bench-"))
    cleanup = common.Cleanup()
    secret = common.new_secret()
    port = common.free_port()  # the destination's port: nothing listens there yet
    extra = (f"    timeout: 5s\n    rate_limit: {args.rate_limit:g}\n"
             f"    concurrency: {args.concurrency}\n"
             "    retry: {schedule: [1s, 2s], repeat: 2s, max_age: 1d}\n")
    samples: list[tuple[float, int, dict[int, int]]] = []  # (seconds, events sent, rss)
    marks: dict[str, int] = {}
    out: dict = {}
    spies: dict[str, list] = {}
    try:
        bridge = cleanup.add(common.start_bridge(
            work, secret, args.workers, args.threads, in_web=True,
            destination_url=f"http://127.0.0.1:{port}/hook", destination_extra=extra))
        print(f"bridge serve: {args.workers} workers x {args.threads} threads, delivering in "
              f"the web process; destination 127.0.0.1:{port} (down), rate_limit "
              f"{args.rate_limit:g}/s, concurrency {args.concurrency}, retry [1s, 2s] then "
              f"every 2s; senders {args.processes} processes x {args.senders} connections")
        print(f"RSS at start: {_fmt(rss(bridge))}")
        progress = multiprocessing.get_context("spawn").Value("q", 0)
        result: dict = {}

        def send() -> None:
            try:
                result["load"] = common.run_python_load(
                    bridge.url, secret, "outage", args.processes, args.senders,
                    count=args.events, progress=progress, resend=(503,))
            except BaseException as err:  # noqa: BLE001 - reported by the main thread
                result["error"] = err

        t0 = time.monotonic()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        last_print = 0.0
        while sender.is_alive():
            time.sleep(1.0)
            now, sent = time.monotonic() - t0, progress.value
            samples.append((now, sent, rss(bridge)))
            if "warm" not in marks and sent >= warmup:
                marks["warm"] = len(samples) - 1
                if args.profile:
                    spies["outage"] = common.start_profiles(bridge.worker_pids(), 15, work)
            if now - last_print >= 15:
                last_print = now
                print(f"  {now:5.0f} s: {sent:>7} accepted, RSS {_fmt(samples[-1][2])}",
                      flush=True)
        sender.join()
        if "error" in result:
            raise result["error"]
        load: common.Load = result["load"]
        stored = common.settle(bridge.db)
        samples.append((time.monotonic() - t0, progress.value, rss(bridge)))
        marks["end"] = len(samples) - 1
        marks.setdefault("warm", 0)
        outage_seconds = time.monotonic() - t0
        attempts = common.count_rows(bridge.db, "SELECT COUNT(*) FROM attempts")
        retried = common.count_rows(bridge.db, "SELECT COUNT(*) FROM deliveries WHERE "
                                               "state = 'pending' AND attempts > 0")
        max_tries = common.count_rows(bridge.db, "SELECT MAX(attempts) FROM deliveries")
        print(f"outage: {load.accepted} accepted of {load.requests} sent in "
              f"{load.seconds:.0f} s ({load.rps:.0f}/s; p50 {load.p50_ms:.1f} ms, p99 "
              f"{load.p99_ms:.1f} ms); {stored} events stored; {attempts} delivery attempts "
              f"failed meanwhile ({retried} deliveries retried, up to {max_tries} tries each)")

        # the destination comes back
        if "outage" in spies:
            out["profile_outage"] = common.finish_profiles(spies.pop("outage"))
        receiver = cleanup.add(common.Receiver(port=port))
        t1 = time.monotonic()
        if args.profile:
            drain_dir = work / "drain-spy"
            drain_dir.mkdir()
            spies["drain"] = common.start_profiles(bridge.worker_pids(), 15, drain_dir)
        done = 0
        drain_samples: list[dict[int, int]] = []
        last_print = 0.0
        while time.monotonic() - t1 < args.drain_timeout:
            time.sleep(0.5)
            done = common.count_rows(bridge.db, "SELECT COUNT(*) FROM deliveries WHERE "
                                                "state = 'done'")
            drain_samples.append(rss(bridge))
            now = time.monotonic() - t1
            if done >= stored:
                break
            if now - last_print >= 15:
                last_print = now
                print(f"  drain {now:5.0f} s: {done:>7} delivered", flush=True)
        drain_seconds = time.monotonic() - t1
        if "drain" in spies:
            out["profile_drain"] = common.finish_profiles(spies.pop("drain"))
        dead = common.count_rows(bridge.db, "SELECT COUNT(*) FROM deliveries WHERE "
                                            "state = 'dead'")
        out.update(load=load, stored=stored, attempts=attempts, retried=retried,
                   max_tries=max_tries, outage_seconds=outage_seconds, done=done,
                   drain_seconds=drain_seconds, dead=dead, received=receiver.total.value,
                   distinct=receiver.distinct.value, drain_samples=drain_samples)
    finally:
        for started in spies.values():
            common.finish_profiles(started)
        cleanup.close()
        shutil.rmtree(work, ignore_errors=True)

    return report(args, info, samples, marks, out, warmup)


def profiles(out: dict) -> str:
    """Where the request threads and the delivery threads spend their (wall-clock) time."""
    lines = []
    for key, when in (("profile_outage", "15 s of the outage"),
                      ("profile_drain", "the first 15 s of the drain")):
        stacks = out.get(key)
        if not stacks:
            continue
        for within, who in (("handle_request", "request threads"),
                            ("Lane.", "delivery threads (lanes and their send pools)")):
            total, top = common.inclusive(stacks, within)
            if not total:
                continue
            lines.append(f"py-spy, {when}, {who}: share of their samples (waits included) "
                         "in each bridge function")
            lines += [f"  {n / total:6.1%}  {name}" for name, n in top]
            lines.append("")
    return "\n".join(lines).rstrip()


def _others(load: common.Load) -> str:
    parts = [f"{n} x {status}" + (" (sent again)" if status == "HTTP 503" else "")
             for status, n in load.extra.get("statuses", {}).items()]
    if load.errors:
        parts.append(f"{load.errors} connection errors (sent again)")
    return f" (other answers: {', '.join(parts)})" if parts else ""


def _fmt(sizes: dict[int, int]) -> str:
    parts = [f"{kib / 1024:.1f}" for kib in sizes.values()]
    return f"{sum(sizes.values()) / 1024:.1f} MiB (" + " + ".join(parts) + ")"


def report(args, info, samples, marks, out, warmup) -> int:
    warm, end = samples[marks["warm"]], samples[marks["end"]]
    base, last = sum(warm[2].values()), sum(end[2].values())
    peak = max(sum(s[2].values()) for s in samples[marks["warm"]:marks["end"] + 1])
    drain_peak = max((sum(s.values()) for s in out["drain_samples"]), default=0)
    growth = last / base - 1
    verdict = "PASS" if growth <= GROWTH_TARGET else "MISS"
    load: common.Load = out["load"]
    complete = out["done"] >= out["stored"] == args.events and load.accepted == args.events
    header = ("process", f"RSS after warm-up ({warm[1]} events)", f"RSS at end of outage "
              f"({end[1]} events)", "growth", "peak during outage")
    rows = []
    pids = list(warm[2])
    for i, pid in enumerate(pids):
        label = "gunicorn master" if i == 0 else f"worker {i}"
        a, b = warm[2].get(pid), end[2].get(pid)
        top = max(s[2].get(pid, 0) for s in samples[marks["warm"]:marks["end"] + 1])
        rows.append((label, f"{a / 1024:.1f} MiB" if a else "-",
                     f"{b / 1024:.1f} MiB" if b else "gone",
                     f"{b / a - 1:+.1%}" if a and b else "-", f"{top / 1024:.1f} MiB"))
    rows.append(("sum", f"{base / 1024:.1f} MiB", f"{last / 1024:.1f} MiB", f"{growth:+.1%}",
                 f"{peak / 1024:.1f} MiB"))
    drain_rate = out["done"] / out["drain_seconds"] if out["drain_seconds"] else 0
    facts = [
        f"events: {args.events} signed callbacks sent, {load.accepted} answered 200 accepted, "
        f"{out['stored']} stored{_others(load)}; ingest during the outage {load.rps:.0f}/s "
        f"(p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms), outage lasted "
        f"{out['outage_seconds']:.0f} s",
        f"retries during the outage: {out['attempts']} failed attempts recorded, "
        f"{out['retried']} deliveries retried, up to {out['max_tries']} tries each",
        f"drain: {out['done']} of {out['stored']} delivered in {out['drain_seconds']:.1f} s "
        f"after the destination came back ({drain_rate:.0f} events/s); the receiver got "
        f"{out['received']} requests for {out['distinct']} distinct events; {out['dead']} "
        f"dead letters; peak RSS during the drain {drain_peak / 1024:.1f} MiB",
    ]
    verdicts = [(f"RSS growth <= {GROWTH_TARGET:.0%} (sum of master and workers, after "
                 f"{warm[1]} events to the end of the outage)", verdict, f"{growth:+.1%}"),
                ("every event accepted, stored and delivered", "PASS" if complete else "FAIL",
                 f"{load.accepted} accepted, {out['stored']} stored, {out['done']} delivered")]
    print()
    print(common.text_table(header, rows, right=range(1, 5)))
    print()
    for fact in facts:
        print(fact)
    for name, v, detail in verdicts:
        print(f"{v}  {name}: {detail}")
    profile_text = profiles(out)
    if profile_text:
        print("\n" + profile_text)
    if args.markdown:
        lines = [
            "## Outage",
            "",
            f"{args.events} events accepted by `bridge serve` ({args.workers} workers x "
            f"{args.threads} threads, delivering in the web process, SQLite) while its one "
            "`http` destination refused connections (retry schedule [1s, 2s], repeat 2s, "
            f"max_age 1d; rate_limit {args.rate_limit:g}/s, concurrency {args.concurrency}); "
            "then a fast receiver (own process) started on the destination's port. RSS is "
            "VmRSS from /proc/<pid>/status, sampled every second; the target is on the sum "
            f"of the master and the workers. Senders: {args.processes} Python processes x "
            f"{args.senders} keep-alive connections.",
            "",
            common.machine_line(info) + ".",
            "",
            common.markdown_table(header, rows, right=range(1, 5)),
            "",
            *[f"- {fact}" for fact in facts],
            *[f"- **{v}** {name}: {detail}" for name, v, detail in verdicts],
            "",
        ]
        if profile_text:
            lines += ["```", profile_text, "```", ""]
        args.markdown.write_text("\n".join(lines), encoding="utf-8")
        print(f"wrote {args.markdown}")
    if not complete:
        return 2
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
