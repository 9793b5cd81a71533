#!/usr/bin/env python
"""Isolation benchmark: does a slow or dead destination slow down the acknowledgements?

The same ingest measurement as bench/ingest_bench.py (signed callbacks, unique job_ids,
closed-loop senders, fixed duration) while the destination answers after 3 s, and while
it is down (connection refused: a loopback port nothing listens on), for:

- the bridge: ``bridge serve`` delivering in the web process (delivery.in_web true), one
  ``http`` destination routed from the source, every other setting the default;
- the naive relay users write: a Flask app that verifies the HMAC, then ``requests.post``
  to the destination inside the request handler, then answers (an unreachable destination
  raises: Flask answers 500), under the same gunicorn settings;
- and, as references, the bridge with no destination (its plain ingest number) and the
  naive relay with a fast destination.

Every scenario gets fresh servers (and a fresh SQLite file). The destinations are
receivers in their own process.

    .venv/bin/python bench/isolation_bench.py                     # 3 runs x 12 s, 8 senders
    .venv/bin/python bench/isolation_bench.py --runs 1 --seconds 10 --markdown iso.md

Targets: the bridge's p99 acknowledgement with a slow or dead destination is unchanged
from its plain ingest p99 (median ratio <= 1.5, a noise allowance on a shared machine);
naive p99 / bridge p99 >= 100x. Exit status 0 when all are met, 1 when not.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import med, spread  # noqa: E402

UNCHANGED = 1.5     # "unchanged": p99 within 1.5x of the plain ingest p99 of the same run
RATIO_TARGET = 100.0
SCENARIOS = (("bridge", None), ("bridge", "slow"), ("bridge", "down"),
             ("naive", "fast"), ("naive", "slow"), ("naive", "down"))


def scenario_name(app: str, dest: str | None, delay: float) -> str:
    who = "bridge" if app == "bridge" else "naive relay"
    what = {None: "no destination (plain ingest)", "fast": "destination fast",
            "slow": f"destination answers after {delay:g} s",
            "down": "destination down (refused)"}[dest]
    return f"{who}, {what}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0, help="per scenario")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent senders")
    parser.add_argument("--delay", type=float, default=3.0, help="the slow destination's delay")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--bodies", type=int, default=30000,
                        help="signed bodies pre-computed per scenario (wrk)")
    parser.add_argument("--loadgen", choices=("wrk", "python"), default=common.default_loadgen())
    parser.add_argument("--markdown", type=Path, help="also write a Markdown report here")
    parser.add_argument("--bridge-path", help="benchmark the bridge package in this folder")
    args = parser.parse_args(argv)
    common.BRIDGE_PATH = args.bridge_path

    info = common.machine()
    print(common.machine_line(info))
    print(f"gunicorn: {args.workers} workers x {args.threads} threads (gthread); "
          f"{args.concurrency} concurrent senders; load generator {args.loadgen}; "
          f"{args.runs} runs x {args.seconds:g} s per scenario\n")
    work = Path(tempfile.mkdtemp(prefix="isolation-bench-"))
    cleanup = common.Cleanup()
    secret = common.new_secret()
    results: dict[tuple[str, str | None], list[common.Load]] = {}
    problems: list[str] = []
    try:
        fast = cleanup.add(common.Receiver())
        slow = cleanup.add(common.Receiver(delay=args.delay))
        down_url = f"http://127.0.0.1:{common.free_port()}/hook"  # nothing listens there
        urls = {"fast": fast.url, "slow": slow.url, "down": down_url}
        for run in range(1, args.runs + 1):
            order = SCENARIOS if run % 2 else SCENARIOS[::-1]  # alternate the order
            for app, dest in order:
                name = scenario_name(app, dest, args.delay)
                folder = work / f"run{run}-{app}-{dest}"
                url = urls.get(dest)
                if app == "bridge":
                    server = common.start_bridge(folder, secret, args.workers, args.threads,
                                                 destination_url=url, in_web=True)
                else:
                    server = common.start_app("naive", folder, secret, args.workers,
                                              args.threads, destination=url)
                cleanup.add(server)
                try:
                    tag = f"r{run}{app}{dest}"
                    received = {"fast": fast, "slow": slow}.get(dest)
                    before = received.total.value if received else 0
                    bodies = common.write_bodies(folder, tag, args.bodies, 1, secret) \
                        if args.loadgen == "wrk" else None
                    load = common.measure(server.url, args.concurrency, args.seconds,
                                          loadgen=args.loadgen, folder=folder, secret=secret,
                                          tag=tag, bodies=bodies)
                    if received:
                        load.extra["received"] = received.total.value - before
                    if app == "bridge":
                        stored = common.settle(server.db)
                        load.extra["rows"] = stored
                        load.extra["tries"] = common.count_rows(
                            server.db, "SELECT COUNT(*) FROM attempts")
                        if not load.accepted <= stored <= load.accepted + args.concurrency:
                            problems.append(f"run {run}, {name}: {load.accepted} accepted but "
                                            f"{stored} rows stored")
                        if load.other or load.errors or load.wraps or load.duplicate:
                            problems.append(f"run {run}, {name}: {load.other} other answers, "
                                            f"{load.errors} errors, {load.wraps} body wraps")
                finally:
                    server.stop()
                    cleanup.items.remove(server)
                results.setdefault((app, dest), []).append(load)
                print(f"run {run}: {name:44} {load.rps:7.1f}/s  200 accepted "
                      f"{load.accepted:>6} of {load.requests:<6} p50 {load.p50_ms:8.2f}  "
                      f"p99 {load.p99_ms:8.2f} ms{_deliveries(load)}", flush=True)
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        cleanup.close()
        shutil.rmtree(work, ignore_errors=True)

    plain = results[SCENARIOS[0]]
    header = ("scenario", "req/s", "answered 200 accepted", "p50 ms", "p99 ms",
              "p99 / bridge plain p99")
    table = []
    for app, dest in SCENARIOS:
        name = scenario_name(app, dest, args.delay)
        loads = results[(app, dest)]
        ok = sum(r.accepted for r in loads)
        total = sum(r.requests for r in loads)
        ratios = [r.p99_ms / p.p99_ms for r, p in zip(loads, plain, strict=True)]
        table.append((name, spread([r.rps for r in loads], "{:.1f}"),
                      f"{ok / total:.0%} of {total}" if total else "-",
                      spread([r.p50_ms for r in loads], "{:.2f}"),
                      spread([r.p99_ms for r in loads], "{:.1f}"),
                      spread(ratios, "{:.2f}")))
    verdicts = []
    for dest, label in (("slow", f"answers after {args.delay:g} s"), ("down", "down")):
        bridge = results[("bridge", dest)]
        naive = results[("naive", dest)]
        same = [b.p99_ms / p.p99_ms for b, p in zip(bridge, plain, strict=True)]
        verdicts.append((f"bridge p99 unchanged (<= {UNCHANGED}x plain) while the destination "
                         f"{label}", "PASS" if med(same) <= UNCHANGED else "MISS",
                         f"{med(same):.2f}x ({med([b.p99_ms for b in bridge]):.1f} ms vs "
                         f"{med([p.p99_ms for p in plain]):.1f} ms)"))
        ratio = [n.p99_ms / b.p99_ms for n, b in zip(naive, bridge, strict=True)]
        ratio50 = [n.p50_ms / b.p50_ms for n, b in zip(naive, bridge, strict=True)]
        accepted = sum(n.accepted for n in naive) / max(1, sum(n.requests for n in naive))
        verdicts.append((f"naive p99 / bridge p99 >= {RATIO_TARGET:g}x while the destination "
                         f"{label}", "PASS" if med(ratio) >= RATIO_TARGET else "MISS",
                         f"{med(ratio):.1f}x (min {min(ratio):.1f}, max {max(ratio):.1f}; "
                         f"p50 ratio {med(ratio50):.1f}x); the naive relay answered 200 "
                         f"to {accepted:.0%} of its requests"))

    print()
    print(common.text_table(header, table, right=range(1, 6)))
    print("\nmedian of the runs (min–max); ratios are taken within each run")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    for name, verdict, detail in verdicts:
        print(f"{verdict}  {name}: {detail}")
    if args.markdown:
        lines = [
            "## Isolation",
            "",
            f"{args.concurrency} concurrent senders for {args.seconds:g} s per scenario, "
            f"{args.runs} runs, fresh servers per scenario; gunicorn {args.workers} workers x "
            f"{args.threads} threads (gthread) for both apps; load generator {args.loadgen}. "
            f"Slow destination: answers after {args.delay:g} s; down: connection refused. "
            "The bridge delivers in the web process (delivery.in_web true), default "
            "`http` destination settings (timeout 15 s, rate_limit 20/s, concurrency 4, "
            "default retry schedule).",
            "",
            common.machine_line(info) + ".",
            "",
            common.markdown_table(header, table, right=range(1, 6)),
            "",
            "Median of the runs (min–max); ratios are taken within each run.",
            "",
            *[f"- **{verdict}** {name}: {detail}" for name, verdict, detail in verdicts],
            *[f"- PROBLEM: {p}" for p in problems],
            "",
        ]
        args.markdown.write_text("\n".join(lines), encoding="utf-8")
        print(f"wrote {args.markdown}")
    if problems:
        return 2
    return 1 if any(v[1] == "MISS" for v in verdicts) else 0


def _deliveries(load: common.Load) -> str:
    """What reached the destination meanwhile (and, for the bridge, its recorded tries)."""
    parts = []
    if "tries" in load.extra:
        parts.append(f"{load.extra['tries']} delivery tries recorded")
    if "received" in load.extra:
        parts.append(f"destination got {load.extra['received']}")
    return f"  ({'; '.join(parts)})" if parts else ""


if __name__ == "__main__":
    sys.exit(main())
