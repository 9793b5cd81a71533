#!/usr/bin/env python3
"""Benchmark: time to map one event (``Mapping.apply``) for each shipped mapping and each
of its shipped samples. Not a test; run it by hand:

    .venv/bin/python bench/mapping_bench.py                 # 20 rounds x 2000 calls
    .venv/bin/python bench/mapping_bench.py --markdown bench.md --rounds 10 --calls 1000

Each round times ``--calls`` back-to-back calls with timeit (garbage collection off, as
timeit does) and divides by the number of calls; the table shows the median (p50) of the
rounds and the fastest and slowest round, in microseconds per event. The target is a p50
of at most 50 µs per event: PASS or MISS per row. A filtered sample (no rule matched) is
timed too: the bridge maps every callback it stores.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridge.mapping import Mapping, load_mapping  # noqa: E402

TARGET_US = 50.0
RECEIVED_AT = 1795263015.25


def measure(mapping: Mapping, payload: dict, source: str, rounds: int,
            calls: int) -> tuple[float, float, float]:
    """(p50, min, max) over the rounds of the per-call time, in microseconds."""
    def one() -> None:
        mapping.apply(payload, "evt_bench", source, RECEIVED_AT)

    timer = timeit.Timer(one)
    timer.timeit(number=max(1, calls // 10))  # warm up
    per_call = [total / calls * 1e6 for total in timer.repeat(repeat=rounds, number=calls)]
    return statistics.median(per_call), min(per_call), max(per_call)


def rows(rounds: int, calls: int, only: str | None) -> list[dict]:
    results = []
    for path in sorted((REPO / "mappings").glob("*.yaml")):
        source = path.stem
        if only and source != only:
            continue
        mapping = load_mapping(path)
        for sample in sorted((REPO / "bridge" / "samples" / source).glob("*.json")):
            payload = json.loads(sample.read_text(encoding="utf-8"))
            outcome = mapping.apply(payload, "evt_bench", source, RECEIVED_AT)
            p50, low, high = measure(mapping, payload, source, rounds, calls)
            results.append({
                "mapping": f"mappings/{path.name}",
                "sample": sample.stem,
                "result": outcome.event["event_type"] if outcome.event else "filtered",
                "p50": p50, "min": low, "max": high,
                "verdict": "PASS" if p50 <= TARGET_US else "MISS",
            })
    return results


def text_table(results: list[dict]) -> str:
    header = ("mapping", "sample", "result", "p50 µs", "min–max µs", "≤50 µs")
    body = [(r["mapping"], r["sample"], r["result"], f"{r['p50']:.1f}",
             f"{r['min']:.1f}–{r['max']:.1f}", r["verdict"]) for r in results]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    right = {3, 4}

    def line(row: tuple) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                         for i, cell in enumerate(row)).rstrip()

    return "\n".join([line(header), line(tuple("-" * w for w in widths)),
                      *(line(row) for row in body)])


def markdown_table(results: list[dict], rounds: int, calls: int) -> str:
    lines = [f"Mapping.apply, per event: {rounds} rounds x {calls} calls, Python "
             f"{platform.python_version()} on {platform.machine()}; target p50 ≤ "
             f"{TARGET_US:.0f} µs.", "",
             "| mapping | sample | result | p50 µs | min–max µs | ≤50 µs |",
             "|---|---|---|---:|---:|---|"]
    lines += [f"| {r['mapping']} | {r['sample']} | {r['result']} | {r['p50']:.1f} | "
              f"{r['min']:.1f}–{r['max']:.1f} | {r['verdict']} |" for r in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument("--calls", type=int, default=2000,
                        help="calls per round (default 2000)")
    parser.add_argument("--mapping", help="only this mapping (e.g. ratioready)")
    parser.add_argument("--markdown", type=Path,
                        help="write the Markdown table here instead of printing it")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be at least 1")

    results = rows(args.rounds, args.calls, args.mapping)
    if not results:
        parser.error(f"no mapping named '{args.mapping}' with samples")
    print(f"Mapping.apply per event, {args.rounds} rounds x {args.calls} calls "
          f"(p50 and min–max of the per-call time of each round)\n")
    print(text_table(results))
    missed = [r for r in results if r["verdict"] == "MISS"]
    summary = f"\n{len(results) - len(missed)} of {len(results)} rows within {TARGET_US:.0f} µs p50"
    if missed:
        summary += "; MISS: " + ", ".join(f"{r['mapping']} {r['sample']}" for r in missed)
    print(summary)
    markdown = markdown_table(results, args.rounds, args.calls)
    if args.markdown:
        args.markdown.write_text(markdown, encoding="utf-8")
        print(f"wrote {args.markdown}")
    else:
        print()
        print(markdown, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
