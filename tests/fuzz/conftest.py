"""Shared by the fuzzers: how many cases each runs, and the figures they report.

``BRIDGE_FUZZ_EXAMPLES`` is the number of cases for all the fuzzers of this folder
together (default 3,000, under a minute); each fuzzer takes a fixed share of it
(``SHARES``). ``BRIDGE_FUZZ_EXAMPLES=100000`` is the long mode. Each fuzz test counts the
cases it really ran and what they came to; the counts are printed at the end of the run
and written to artifacts/fuzz.json.
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from pathlib import Path

from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TOTAL = 3000
TOTAL = int(os.environ.get("BRIDGE_FUZZ_EXAMPLES") or DEFAULT_TOTAL)

# the share of the total each fuzzer gets (the shares add up to 1)
SHARES = {
    "signatures": 0.40,   # split evenly over the nine profiles
    "mappings": 0.35,
    "config": 0.25,
}

# per fuzzer, per test: counters ("cases" and whatever the test counts)
STATS: dict[str, dict[str, collections.Counter]] = collections.defaultdict(
    lambda: collections.defaultdict(collections.Counter))
_STARTED = time.time()


def examples(fuzzer: str, part: float = 1.0) -> int:
    """The number of examples of one test: ``part`` of its fuzzer's share of the total."""
    return max(10, math.ceil(TOTAL * SHARES[fuzzer] * part))


def fuzz_settings(fuzzer: str, part: float = 1.0) -> settings:
    """Hypothesis settings of a fuzz test: no deadline, no example database (every run
    explores afresh; a failure prints its reproducing example), the health checks that
    only complain about slow or big examples turned off."""
    return settings(max_examples=examples(fuzzer, part), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture],
                    print_blob=True)


FAILURES = ("wrongly_accepted", "http_500", "escaped_exceptions")


def count(fuzzer: str, test: str, *keys: str) -> None:
    counter = STATS[fuzzer][test]
    counter["cases"] += 1
    for key in keys:
        counter[key] += 1


def _figures() -> dict:
    fuzzers = {}
    for fuzzer, tests in sorted(STATS.items()):
        total = collections.Counter()
        for counter in tests.values():
            total.update(counter)
        fuzzers[fuzzer] = {"cases": total["cases"],
                           # what must stay 0 (a test fails at the first one)
                           "failures": {key: total[key] for key in FAILURES},
                           "totals": dict(sorted(total.items())),
                           "tests": {name: dict(sorted(c.items()))
                                     for name, c in sorted(tests.items())}}
    return {"fuzz_examples_setting": TOTAL,
            "cases": sum(f["cases"] for f in fuzzers.values()),
            "seconds": round(time.time() - _STARTED, 1), "fuzzers": fuzzers}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not STATS:
        return
    figures = _figures()
    out = terminalreporter
    out.section("fuzz figures")
    out.write_line(f"BRIDGE_FUZZ_EXAMPLES={TOTAL}: {figures['cases']} cases in all")
    for fuzzer, data in figures["fuzzers"].items():
        extra = {k: v for k, v in data["totals"].items() if k != "cases"}
        out.write_line(f"  {fuzzer}: {data['cases']} cases, failures {json.dumps(data['failures'])}"
                       f"  {json.dumps(extra)}")
    path = REPO / "artifacts" / "fuzz.json"
    try:
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        out.write_line(f"  written to {path.relative_to(REPO)}")
    except OSError as err:  # a read-only checkout still runs the tests
        out.write_line(f"  not written: {err}")
