"""The delivery worker: claim due deliveries, map, send, record. Nothing else.

One lane per destination, each with its own threads, so a slow or dead destination never
delays the others. A lane's loop: claim a batch (the store hands out rate-limited send
slots and a lease), send each claim when its slot comes, record the batch in one
transaction, repeat; while idle, wait for a wake-up or the poll interval. One bad item or
a database outage never stops the loop.

Shutdown: in-flight requests finish; claims not yet started are released at once (and a
crashed worker's claims come back by themselves when their lease ends).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass

import urllib3

from . import metrics
from .config import Settings
from .destinations import Destination, Outcome, classify, excerpt
from .errors import MappingError, StoreUnavailable
from .events import AttemptResult, Claim
from .mapping import Mappings
from .store import Store

log = logging.getLogger("bridge.worker")
LEASE_MARGIN = 5.0    # seconds added to the worst-case time a batch can take
MAX_BACKOFF = 30.0    # longest wait after a database error


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(2).hex()}"


@dataclass
class Options:
    batch: int = 20          # most claims taken at once per destination
    poll_interval: float = 1.0


class Worker:
    def __init__(self, settings: Settings, store: Store, mappings: Mappings,
                 clock: Callable[[], float] = time.time, options: Options | None = None):
        self.settings = settings
        self.store = store
        self.mappings = mappings
        self.clock = clock
        self.options = options or Options(batch=settings.batch,
                                          poll_interval=settings.poll_interval)
        self.id = worker_id()
        self.stopping = threading.Event()
        self.lanes = [Lane(self, d) for d in settings.destinations.values()]
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Run every lane in background threads until ``stop``."""
        for lane in self.lanes:
            thread = threading.Thread(target=lane.run, name=f"deliver-{lane.destination.name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("delivery worker %s started: %s", self.id,
                 ", ".join(lane.destination.name for lane in self.lanes) or "no destinations")

    def stop(self, timeout: float = 30.0) -> None:
        """Finish in-flight requests, release the rest, and return (at most ``timeout``)."""
        self.stopping.set()
        self.notify()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for lane in self.lanes:
            lane.pool.shutdown(wait=False, cancel_futures=True)
        self._threads = []

    def notify(self) -> None:
        """Something new may be due: wake idle lanes now instead of at the next poll."""
        for lane in self.lanes:
            lane.wake.set()

    def run_burst(self) -> int:
        """Deliver everything that is due now (each destination in its own thread), then
        return how many deliveries were claimed."""
        counts = [0] * len(self.lanes)

        def drain(index: int) -> None:
            while not self.stopping.is_set():
                claimed = self.lanes[index].step()
                counts[index] += claimed
                if claimed == 0:
                    return

        threads = [threading.Thread(target=drain, args=(i,), daemon=True)
                   for i in range(len(self.lanes))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sum(counts)


class Lane:
    """Everything for one destination: its threads, its HTTP sessions, its loop."""

    def __init__(self, worker: Worker, destination: Destination):
        self.worker = worker
        self.destination = destination
        self.pool = ThreadPoolExecutor(destination.concurrency,
                                       thread_name_prefix=f"send-{destination.name}")
        self.wake = threading.Event()
        # one pool per lane, as many connections as requests in flight; proxies from the
        # environment are never used (a PoolManager does not read them)
        self.http = urllib3.PoolManager(num_pools=2, maxsize=destination.concurrency,
                                        block=False)

    def run(self) -> None:
        backoff = 0.0
        while not self.worker.stopping.is_set():
            try:
                claimed = self.step()
                backoff = 0.0
            except StoreUnavailable as err:
                backoff = min(MAX_BACKOFF, max(1.0, backoff * 2))
                log.error("%s: database unavailable, retrying in %.0f s: %s",
                          self.destination.name, backoff, err)
                self.worker.stopping.wait(backoff)
                continue
            except Exception:  # noqa: BLE001 - the loop must survive anything
                log.exception("%s: unexpected error in the delivery loop", self.destination.name)
                self.worker.stopping.wait(1.0)
                continue
            if claimed == 0:
                self.wake.wait(self.worker.options.poll_interval)
                self.wake.clear()

    def step(self) -> int:
        """Claim one batch, deliver it, record it; returns how many were claimed."""
        worker, dest = self.worker, self.destination
        limit = worker.options.batch
        lease = (limit / dest.rate_limit + dest.timeout * math.ceil(limit / dest.concurrency)
                 + LEASE_MARGIN)
        claims = worker.store.claim(dest.name, worker.id, limit, dest.rate_limit, lease,
                                    worker.clock())
        if not claims:
            return 0
        futures = [self.pool.submit(self.deliver, claim) for claim in claims]
        results, untried = [], []
        for claim, future in zip(claims, futures, strict=True):
            try:
                result = future.result()
            except CancelledError:
                result = None
            if result is None:
                untried.append(claim.delivery_id)
            else:
                results.append(result)
        worker.store.record(worker.id, results, worker.clock())
        worker.store.release(worker.id, untried, worker.clock())
        return len(claims)

    def deliver(self, claim: Claim) -> AttemptResult | None:
        """One try of one claim; None if the worker is stopping before it started."""
        wait = claim.send_at - self.worker.clock()
        if self.worker.stopping.wait(wait) if wait > 0 else self.worker.stopping.is_set():
            return None  # not started: released for another try
        try:
            result = self._deliver(claim)
        except Exception as err:  # noqa: BLE001 - one bad item never stops the loop
            log.exception("unexpected error delivering %s", claim.event_id)
            result = self._failed(claim, self.worker.clock(), f"internal error: {err}")
        metrics.delivery_tried(self.destination.name, result.state, result.duration_ms)
        return result

    def _deliver(self, claim: Claim) -> AttemptResult:
        started = self.worker.clock()
        try:
            event = self._map(claim)
        except MappingError as err:
            return self._failed(claim, started, f"mapping failed: {err}")
        if event is None:
            return AttemptResult(claim.delivery_id, "filtered", started, attempted=False,
                                 error="filtered: no mapping rule matched")
        if not self.worker.settings.forwards(claim.source, self.destination.name,
                                             event["event_type"]):
            return AttemptResult(claim.delivery_id, "filtered", started, attempted=False,
                                 error=f"filtered: the route to {self.destination.name} does "
                                       f"not take {event['event_type']}")
        body, headers = self.destination.request(event)
        status, text, answer_headers, error, elapsed = self._post(body, headers)
        outcome = classify(self.destination.kind, status, text, answer_headers, error,
                           now=self.worker.clock())
        return self._result(claim, started, outcome, status, text, elapsed,
                            body.decode("utf-8"))

    def _map(self, claim: Claim) -> dict | None:
        mapping = self.worker.mappings.get(claim.source)
        if mapping is None:
            raise MappingError(f"source '{claim.source}' has no mapping; create "
                               f"mappings/{claim.source}.yaml")
        try:
            payload = json.loads(claim.body)
        except ValueError as err:  # verified at ingest, so only a damaged row lands here
            raise MappingError(f"stored body is not JSON: {err}") from None
        return mapping.apply(payload, claim.event_id, claim.source, claim.received_at).event

    def _post(self, body: bytes, headers: dict[str, str]
              ) -> tuple[int | None, str, dict[str, str], str | None, float]:
        """POST with the lane's connection pool (urllib3, which requests is built on: the
        request-building layer of requests was most of the worker's time per delivery)."""
        dest = self.destination
        start = time.perf_counter()
        try:
            response = self.http.request(
                "POST", dest.url, body=body, headers=headers, redirect=False, retries=False,
                timeout=urllib3.Timeout(connect=min(5.0, dest.timeout), read=dest.timeout))
            text = response.data.decode("utf-8", errors="replace")
            status, answer_headers, error = response.status, dict(response.headers), None
            if 300 <= status < 400:
                text = f"redirected to {response.headers.get('Location', '?')}; put the final " \
                       f"URL in bridge.yaml. {text}"
        except urllib3.exceptions.TimeoutError as err:
            status, text, answer_headers = None, "", {}
            error = f"timeout: no answer within {dest.timeout:g} s"
            if isinstance(err, urllib3.exceptions.NewConnectionError):  # a subclass, oddly
                error = f"connection failed: {_connection_error(err)}"
        except urllib3.exceptions.HTTPError as err:
            status, text, answer_headers = None, "", {}
            error = f"connection failed: {_connection_error(err)}"
        return status, text, answer_headers, error, (time.perf_counter() - start) * 1000

    def _result(self, claim: Claim, started: float, outcome: Outcome, status: int | None,
                text: str, elapsed: float, payload: str) -> AttemptResult:
        state, next_at, reason = self._next_state(claim, outcome)
        name = self.destination.name
        fields = _log_fields(claim, name, state, status, elapsed)
        if state == "done":
            log.info("delivered %s to %s: HTTP %s in %.0f ms (try %d)", claim.event_id, name,
                     status, elapsed, claim.total_attempts + 1, extra=fields)
        elif state == "pending":
            log.warning("retry %s to %s in %.0f s: %s", claim.event_id, name,
                        next_at - self.worker.clock(), reason, extra=fields)
        else:
            log.error("dead letter %s to %s: %s", claim.event_id, name, reason, extra=fields)
        return AttemptResult(claim.delivery_id, state, started, next_attempt_at=next_at,
                             http_status=status, duration_ms=round(elapsed, 1),
                             response_excerpt=excerpt(text) if text else None,
                             error=None if state == "done" else reason, payload=payload)

    def _next_state(self, claim: Claim, outcome: Outcome) -> tuple[str, float | None, str | None]:
        if outcome.verdict == "done":
            return "done", None, None
        if outcome.verdict == "dead":
            return "dead", None, outcome.reason
        now = self.worker.clock()
        policy = self.destination.retry
        age = now - claim.round_started_at
        delay = policy.next_delay(claim.attempts + 1, age)
        if outcome.retry_after is not None:
            delay = outcome.retry_after if age + outcome.retry_after <= policy.max_age else None
        if delay is None:
            return "dead", None, (f"gave up after {claim.attempts + 1} tries over "
                                  f"{_duration(age)}; last: {outcome.reason}")
        return "pending", now + delay, outcome.reason

    def _failed(self, claim: Claim, started: float, reason: str) -> AttemptResult:
        state, next_at, reason = self._next_state(claim, Outcome("retry", reason))
        log.error("%s to %s: %s", claim.event_id, self.destination.name, reason,
                  extra=_log_fields(claim, self.destination.name, state))
        return AttemptResult(claim.delivery_id, state, started, next_attempt_at=next_at,
                             error=reason)


def _log_fields(claim: Claim, destination: str, state: str, http_status: int | None = None,
                duration_ms: float | None = None) -> dict:
    """The structured fields of an attempt's log line (JSON logs)."""
    return {"event_id": claim.event_id, "source": claim.source, "destination": destination,
            "status": metrics.OUTCOMES.get(state, state), "http_status": http_status,
            "duration_ms": None if duration_ms is None else round(duration_ms, 1),
            "attempt": claim.total_attempts + 1}


def _connection_error(err: Exception) -> str:
    reason = getattr(err, "reason", None) or err  # ProtocolError / NewConnectionError
    text = str(reason)
    if "Connection refused" in text:
        return "connection refused (is the destination up? is the URL right?)"
    return _first_line(reason if isinstance(reason, Exception) else err)


def _first_line(err: Exception) -> str:
    text = str(err)
    return text.splitlines()[0][:300] if text else type(err).__name__


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
