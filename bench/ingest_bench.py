#!/usr/bin/env python
"""Ingest benchmark: verified + stored acknowledgements per second, and p50/p99 latency,
at 1, 8 and 32 concurrent senders: the bridge vs a bare Flask app (the ceiling).

Both run under the same gunicorn settings in the same run, measured one after the other:
the real ``bridge serve`` (bridge.yaml and SQLite in a temp folder, the secret in the
environment, no destination, so only ingest is measured) and a Flask app that reads the
body and answers 200, started through the bridge's own ``run_gunicorn`` (same workers,
threads, gthread, keep-alive, access log). Every request carries a correct HMAC signature
(X-RatioReady-Signature, hex, computed here) and a unique job_id, so each is a real
accepted insert; at the end the rows in the store are counted.

The load generator is ``wrk`` (apt-get install -y wrk) in its own process, cycling through
signed bodies pre-computed here; without wrk, a Python generator (--loadgen python).

    .venv/bin/python bench/ingest_bench.py                        # 3 runs x 10 s per point
    .venv/bin/python bench/ingest_bench.py --runs 5 --markdown ingest.md
    .venv/bin/python bench/ingest_bench.py --profile              # + py-spy: where time goes

Targets: bridge >= 0.7x bare Flask throughput (each concurrency); bridge p99 <= 15 ms at
32 concurrent senders. Exit status 0 when both are met, 1 when not, 2 on a bad run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import med, spread  # noqa: E402

RATIO_TARGET = 0.7
P99_TARGET_MS = 15.0
P99_AT = 32


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (bridge "
                        "serve's default, WEB_CONCURRENCY)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker")
    parser.add_argument("--bodies", type=int, default=30000,
                        help="signed bodies pre-computed per measurement (wrk)")
    parser.add_argument("--loadgen", choices=("wrk", "python"), default=common.default_loadgen())
    parser.add_argument("--profile", action="store_true",
                        help="profile one more bridge measurement at the highest concurrency "
                             "with py-spy (also done when a target is missed)")
    parser.add_argument("--no-profile", action="store_true", help="never profile")
    parser.add_argument("--markdown", type=Path, help="also write a Markdown report here")
    parser.add_argument("--bridge-path", help="benchmark the bridge package found in this "
                        "folder (another checkout) instead of the installed one")
    args = parser.parse_args(argv)
    common.BRIDGE_PATH = args.bridge_path
    levels = [int(c) for c in args.concurrency.split(",")]

    info = common.machine()
    print(common.machine_line(info))
    print(f"gunicorn: {args.workers} workers x {args.threads} threads (gthread); load "
          f"generator: {args.loadgen}; {args.runs} runs x {args.seconds:g} s per point\n")
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    cleanup = common.Cleanup()
    secret = common.new_secret()
    results: dict[tuple[str, int], list[common.Load]] = {}
    problems: list[str] = []
    rows_checked = accepted_total = 0
    stacks: dict[str, int] = {}
    try:
        for run in range(1, args.runs + 1):
            folder = work / f"run{run}"
            bridge = cleanup.add(common.start_bridge(folder / "bridge", secret, args.workers,
                                                     args.threads))
            bare = cleanup.add(common.start_app("bare", folder / "bare", secret, args.workers,
                                                args.threads))
            servers = [bare, bridge] if run % 2 else [bridge, bare]  # alternate the order
            warm = common.write_bodies(folder, "warm", 4000, 1, secret) \
                if args.loadgen == "wrk" else None
            for server in servers:  # warm-up: not counted
                common.measure(server.url, 8, 2, loadgen=args.loadgen, folder=folder,
                               secret=secret, tag=f"warm{run}{server.name}", bodies=warm)
            rows = common.settle(bridge.db)
            for level in levels:
                bodies = common.write_bodies(folder, f"r{run}c{level}", args.bodies, 1,
                                             secret) if args.loadgen == "wrk" else None
                line = [f"run {run}, {level:>2} concurrent:"]
                for server in servers:
                    load = common.measure(server.url, level, args.seconds,
                                          loadgen=args.loadgen, folder=folder, secret=secret,
                                          tag=f"r{run}c{level}{server.name}", bodies=bodies)
                    results.setdefault((server.name, level), []).append(load)
                    line.append(f"{server.name} {load.rps:6.0f}/s p50 {load.p50_ms:6.2f} "
                                f"p99 {load.p99_ms:7.2f} ms")
                    bad = load.other + load.errors + load.duplicate
                    if server is bridge:
                        now = common.settle(bridge.db)
                        added, rows = now - rows, now
                        accepted_total += load.accepted
                        rows_checked += added
                        # requests still in flight when wrk stops are stored, not counted
                        if not load.accepted <= added <= load.accepted + level:
                            problems.append(f"run {run}, {level} concurrent: {load.accepted} "
                                            f"accepted but {added} rows added")
                        if load.wraps:
                            problems.append(f"run {run}, {level} concurrent: the {args.bodies} "
                                            "bodies ran out (duplicates sent): raise --bodies")
                    if bad:
                        problems.append(f"run {run}, {level} concurrent, {server.name}: "
                                        f"{load.other} other answers, {load.duplicate} "
                                        f"duplicates, {load.errors} errors")
                print("  ".join(line), flush=True)
                if bodies:
                    for each in bodies.parent.glob(bodies.name + ".*"):
                        each.unlink()
            bare.stop()
            bridge.stop()
            shutil.rmtree(folder, ignore_errors=True)

        table, verdicts = summarise(results, levels)
        missed = [v for v in verdicts if v[1] == "MISS"]
        if (args.profile or missed) and not args.no_profile:
            stacks = profile(work, secret, args, max(levels))
    finally:
        cleanup.close()
        shutil.rmtree(work, ignore_errors=True)

    header = ("senders", "bare Flask req/s", "bridge req/s", "bridge/bare",
              "bare p50 / p99 ms", "bridge p50 ms", "bridge p99 ms")
    print()
    print(common.text_table(header, table, right=range(1, 7)))
    print("\nmedian of the runs (min–max); bridge/bare is the ratio within each run")
    print(f"acknowledgements: {accepted_total} bridge answers counted '200 accepted', "
          f"{rows_checked} rows added to the stores "
          f"(the difference: requests in flight when the load generator stopped)")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    for name, verdict, detail in verdicts:
        print(f"{verdict}  {name}: {detail}")
    breakdown = report_profile(stacks) if stacks else ""
    if breakdown:
        print("\n" + breakdown)
    if args.markdown:
        write_markdown(args, info, header, table, verdicts, problems, accepted_total,
                       rows_checked, breakdown)
        print(f"wrote {args.markdown}")
    if problems:
        return 2
    return 1 if any(v[1] == "MISS" for v in verdicts) else 0


def summarise(results, levels):
    table, verdicts = [], []
    for level in levels:
        bare, bridge = results[("bare", level)], results[("bridge", level)]
        ratios = [b.rps / a.rps for a, b in zip(bare, bridge, strict=True)]
        table.append((
            str(level), spread([r.rps for r in bare]), spread([r.rps for r in bridge]),
            spread(ratios, "{:.2f}"),
            f"{med([r.p50_ms for r in bare]):.2f} / {med([r.p99_ms for r in bare]):.1f}",
            spread([r.p50_ms for r in bridge], "{:.2f}"),
            spread([r.p99_ms for r in bridge], "{:.1f}")))
        verdicts.append((f"throughput at {level} concurrent >= {RATIO_TARGET}x bare Flask",
                         "PASS" if med(ratios) >= RATIO_TARGET else "MISS",
                         f"{med(ratios):.2f}x"))
    if P99_AT in levels:
        p99s = [r.p99_ms for r in results[("bridge", P99_AT)]]
        bare99 = med([r.p99_ms for r in results[("bare", P99_AT)]])
        verdicts.append((f"p99 at {P99_AT} concurrent <= {P99_TARGET_MS:g} ms",
                         "PASS" if med(p99s) <= P99_TARGET_MS else "MISS",
                         f"{med(p99s):.1f} ms (bare Flask: {bare99:.1f} ms)"))
    return table, verdicts


def profile(work: Path, secret: str, args, level: int) -> dict[str, int]:
    """One more bridge measurement with py-spy recording every gunicorn worker."""
    if not common.py_spy():
        print("\nno py-spy: not profiled (.venv/bin/pip install py-spy)")
        return {}
    folder = work / "profile"
    bridge = common.start_bridge(folder, secret, args.workers, args.threads)
    try:
        bodies = common.write_bodies(folder, "prof", args.bodies, 1, secret) \
            if args.loadgen == "wrk" else None
        common.measure(bridge.url, 8, 2, loadgen=args.loadgen, folder=folder, secret=secret,
                       tag="profwarm", bodies=common.write_bodies(folder, "pw", 4000, 1, secret)
                       if bodies else None)
        started = common.start_profiles(bridge.worker_pids(), args.seconds, folder)
        time.sleep(0.5)
        load = common.measure(bridge.url, level, args.seconds, loadgen=args.loadgen,
                              folder=folder, secret=secret, tag="prof", bodies=bodies)
        stacks = common.finish_profiles(started)
        print(f"\nprofiled run ({level} concurrent, py-spy on {len(started)} workers): "
              f"{load.rps:.0f}/s, p99 {load.p99_ms:.1f} ms (slower: sampling)")
        return stacks
    finally:
        bridge.stop()


def report_profile(stacks: dict[str, int]) -> str:
    phases = common.phases(stacks)
    total = sum(n for _, n in phases)
    if not total:
        return ""
    lines = ["Where a request thread's time goes (py-spy, wall-clock samples of the threads "
             "handling a request, waits included):", ""]
    lines += [f"  {n / total:6.1%}  {name}" for name, n in phases]
    lines += ["", "Top leaf frames (same samples):", ""]
    lines += [f"  {n / total:6.1%}  {frame}" for frame, n in common.leaves(stacks)]
    return "\n".join(lines)


def write_markdown(args, info, header, table, verdicts, problems, accepted, rows,
                   breakdown) -> None:
    lines = [
        "## Ingest",
        "",
        f"`bridge serve` (SQLite, no destination) vs a bare Flask app answering 200, both "
        f"under gunicorn {args.workers} workers x {args.threads} threads (gthread), same "
        f"options; load generator {args.loadgen} (closed loop, one request in flight per "
        f"sender); {args.runs} runs x {args.seconds:g} s per point; every request to the "
        "bridge signed, with a unique job_id.",
        "",
        common.machine_line(info) + ".",
        "",
        common.markdown_table(header, table, right=range(1, 7)),
        "",
        "Median of the runs (min–max). bridge/bare is the ratio of the two measured "
        "one after the other in the same run.",
        "",
        f"Acknowledgements: {accepted} bridge answers were `200 accepted`; {rows} rows were "
        "added to the stores (the difference: requests in flight when wrk stopped).",
        "",
        *[f"- **{verdict}** {name}: {detail}" for name, verdict, detail in verdicts],
        *[f"- PROBLEM: {p}" for p in problems],
        "",
    ]
    if breakdown:
        lines += ["```", breakdown, "```", ""]
    args.markdown.write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
