"""``GET /metrics`` in the Prometheus text format.

Two kinds of numbers, so that several gunicorn processes and machines never disagree:

- computed from the store at every scrape (``StoreCollector``), the same whichever
  process answers: ``bridge_queue_depth`` (pending deliveries per destination),
  ``bridge_oldest_pending_age_seconds``, ``bridge_deliveries`` (per destination and
  state), ``bridge_events`` (per source and status), ``bridge_dead_letters``,
  ``bridge_store_up``;
- counted in this process since it started (counters and a histogram: sum them over
  processes in PromQL, e.g. ``sum by (source, outcome) (rate(...[5m]))``):
  ``bridge_events_received_total`` (source, outcome: accepted, duplicate, rejected_400,
  rejected_401, rejected_404, rejected_413, rejected_503, unavailable),
  ``bridge_deliveries_total`` (destination, outcome: done, retry, dead, filtered) and
  ``bridge_delivery_duration_seconds`` (destination). A separate ``bridge worker``
  process counts its deliveries in its own memory, which no scrape reads: its queue is
  seen through the store gauges.

Protected by the admin token (``Authorization: Bearer <BRIDGE_ADMIN_TOKEN>``) unless
``BRIDGE_METRICS_PUBLIC=true``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .errors import StoreUnavailable
from .store import Store

log = logging.getLogger("bridge.metrics")
bp = Blueprint("metrics", __name__)

# -- counted in this process ------------------------------------------------------------------
PROCESS = CollectorRegistry()
EVENTS_RECEIVED = Counter(
    "bridge_events_received", "Callbacks received by this process, by source and outcome "
    "(a source that is not configured is counted as 'unknown').",
    ["source", "outcome"], registry=PROCESS)
DELIVERIES = Counter(
    "bridge_deliveries", "Delivery tries made by this process, by destination and outcome "
    "(done, retry, dead, filtered).", ["destination", "outcome"], registry=PROCESS)
DELIVERY_SECONDS = Histogram(
    "bridge_delivery_duration_seconds", "Time from sending a delivery to its answer "
    "(this process).", ["destination"], registry=PROCESS,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30))
OUTCOMES = {"pending": "retry", "done": "done", "dead": "dead", "filtered": "filtered"}


def event_received(source: str, outcome: str) -> None:
    EVENTS_RECEIVED.labels(source, outcome).inc()


def delivery_tried(destination: str, state: str, duration_ms: float | None = None) -> None:
    """Count one try that left the delivery in ``state`` (pending counts as a retry)."""
    DELIVERIES.labels(destination, OUTCOMES.get(state, state)).inc()
    if duration_ms is not None:
        DELIVERY_SECONDS.labels(destination).observe(duration_ms / 1000)


# -- computed from the store at scrape time ------------------------------------------------------
class StoreCollector(Collector):
    """Gauges read from the store at each scrape: right across processes and machines."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("bridge_store_up", "1 if the store answered this scrape.")
        try:
            totals = self.store.totals()
        except StoreUnavailable as err:
            log.warning("metrics: %s", err)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        now = self.clock()
        depth = GaugeMetricFamily("bridge_queue_depth", "Deliveries waiting to be sent "
                                  "(pending), per destination.", labels=["destination"])
        oldest = GaugeMetricFamily("bridge_oldest_pending_age_seconds", "Age of the oldest "
                                   "pending delivery's current round, per destination.",
                                   labels=["destination"])
        destinations = {d for d, _ in totals.deliveries} | set(totals.pending)
        for destination in sorted(destinations):
            count, started = totals.pending.get(destination, (0, now))
            depth.add_metric([destination], count)
            oldest.add_metric([destination], max(0.0, now - started) if count else 0.0)
        states = GaugeMetricFamily("bridge_deliveries", "Stored deliveries by destination "
                                   "and state.", labels=["destination", "state"])
        dead = GaugeMetricFamily("bridge_dead_letters", "Dead letters waiting for a replay, "
                                 "per destination.", labels=["destination"])
        for (destination, state), count in sorted(totals.deliveries.items()):
            states.add_metric([destination, state], count)
        for destination in sorted(destinations):
            dead.add_metric([destination], totals.deliveries.get((destination, "dead"), 0))
        events = GaugeMetricFamily("bridge_events", "Stored events by source and status.",
                                   labels=["source", "status"])
        for (source, status), count in sorted(totals.events.items()):
            events.add_metric([source, status], count)
        yield from (depth, oldest, states, dead, events)


class _ProcessCollector(Collector):
    def collect(self):
        return PROCESS.collect()


def registry_for(store: Store) -> CollectorRegistry:
    """A registry with this process's counters and the store's gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ProcessCollector())
    registry.register(StoreCollector(store))
    return registry


@bp.get("/metrics")
def metrics() -> Response:
    from .admin.auth import bearer_refusal  # the admin token guards metrics too

    bridge = current_app.extensions["bridge"]
    if not bridge.metrics_public:
        refused = bearer_refusal(bridge, "metrics")
        if refused is not None:
            return refused
    registry = current_app.extensions["bridge.metrics"]
    # the format the scraper asks for (Accept): text 0.0.4 by default, or OpenMetrics
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = Response(encode(registry), mimetype=None)
    response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "no-store"
    return response


def _count_refused_bodies(response: Response) -> Response:
    # 413 is raised by Flask while ingest reads the body: counted here
    if request.blueprint == "ingest" and response.status_code == 413:
        source = (request.view_args or {}).get("source_name", "")
        known = source in current_app.extensions["bridge"].settings.sources
        event_received(source if known else "unknown", "rejected_413")
    return response


def init_app(app: Flask) -> None:
    disable_created_metrics()  # no *_created series: noise for every counter
    bridge = app.extensions["bridge"]
    app.extensions["bridge.metrics"] = registry_for(bridge.store)
    app.register_blueprint(bp)
    app.after_request(_count_refused_bodies)
