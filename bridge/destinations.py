"""Destinations: where job events go (Make, n8n, Zapier, any HTTP endpoint), how each is
sent, and what each answer means.

``classify`` is the one place that turns an answer into done / retry / dead with a reason
a person can act on. Kind defaults (rate limits below each tool's documented limit, the
answers that mean "try again later") are data in ``KINDS``.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from . import __version__
from .signatures import Scheme, sign

USER_AGENT = f"bridge/{__version__} (webhook bridge; +https://github.com/)"
SIGNATURE = Scheme(header="X-Bridge-Signature", prefix="sha256=")
EXCERPT = 500  # characters of a response kept with each attempt
DEFAULT_SCHEDULE = (10, 60, 300, 1800, 7200, 21600, 43200)  # then every 12 h …
DEFAULT_REPEAT = 43200
DEFAULT_MAX_AGE = 3 * 86400  # … up to 3 days, then dead letter
MAX_RETRY_AFTER = 86400
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Answer:
    """An answer that means "retry" for one kind although its status says otherwise."""

    status: int
    body_contains: str
    reason: str


@dataclass(frozen=True)
class Kind:
    rate_limit: float        # requests per second (shared by every worker process)
    concurrency: int         # requests in flight at once, per worker process
    timeout: float           # seconds
    retry_answers: tuple[Answer, ...] = ()


KINDS: dict[str, Kind] = {
    # Make: about 30 requests/s per hook (unverified); a full hook queue refuses.
    "make": Kind(rate_limit=10, concurrency=2, timeout=20, retry_answers=(
        Answer(400, "queue is full", "Make's webhook queue is full; the scenario is behind"),
    )),
    # n8n: the production URL answers 404 "not registered" while the workflow is inactive.
    "n8n": Kind(rate_limit=20, concurrency=4, timeout=20, retry_answers=(
        Answer(404, "is not registered", "workflow inactive: activate the workflow in n8n "
               "(its production URL only works while it is active)"),
    )),
    # Zapier: 429 past about 30 requests/s per hook and 10,000 per 5 minutes per account.
    "zapier": Kind(rate_limit=10, concurrency=2, timeout=20),
    "http": Kind(rate_limit=20, concurrency=4, timeout=15),
}


@dataclass(frozen=True)
class RetryPolicy:
    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    repeat: float = DEFAULT_REPEAT
    max_age: float = DEFAULT_MAX_AGE
    jitter: float = 0.2  # ± this fraction, so retries of a burst do not arrive together

    def next_delay(self, attempts: int, age: float, rng: random.Random | None = None
                   ) -> float | None:
        """Seconds until the next try after ``attempts`` failed tries in this round, or
        None when the delivery should give up (its round is older than ``max_age``)."""
        base = self.schedule[attempts - 1] if attempts <= len(self.schedule) else self.repeat
        spread = (rng or random).uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        delay = max(0.0, base * (1 + spread))
        if age + delay > self.max_age:
            return None
        return delay


@dataclass(frozen=True)
class Destination:
    name: str
    kind: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    signing_secret: str | None = None
    timeout: float = 15
    rate_limit: float = 10
    concurrency: int = 2
    retry: RetryPolicy = RetryPolicy()

    def request(self, event: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one delivery of ``event``."""
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "Idempotency-Key": str(event.get("event_id", ""))}
        headers.update(self.headers)
        if self.signing_secret:
            headers = sign(SIGNATURE, self.signing_secret, body, headers)
        return body, headers


@dataclass(frozen=True)
class Outcome:
    """What an attempt came to: ``done``, ``retry`` or ``dead``, and why."""

    verdict: str
    reason: str | None = None
    retry_after: float | None = None


def classify(kind: str, status: int | None, body: str, headers: Mapping[str, str],
             error: str | None = None, now: float | None = None) -> Outcome:
    """The one place that decides what an answer means.

    Network errors and timeouts, 408, 425, 429 and 5xx are retried (honouring
    Retry-After); a kind's known "not now" answers are retried with their reason; any
    other answer below 200 or from 300 up is a dead letter at once, with the reason."""
    if status is None:
        return Outcome("retry", error or "no answer")
    if 200 <= status < 300:
        return Outcome("done")
    lowered = body.lower()
    for answer in KINDS.get(kind, KINDS["http"]).retry_answers:
        if status == answer.status and answer.body_contains in lowered:
            return Outcome("retry", answer.reason, retry_after(headers, now))
    if status in RETRY_STATUSES or status >= 500:
        return Outcome("retry", f"HTTP {status}{_said(body)}", retry_after(headers, now))
    return Outcome("dead", f"HTTP {status}{_said(body)}: refused; fix the destination, "
                           "then replay")


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds asked for by a Retry-After header (seconds or an HTTP date), capped at a day."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return min(float(value), MAX_RETRY_AFTER)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None or moment.tzinfo is None:
        return None
    seconds = moment.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _said(body: str) -> str:
    text = " ".join(body.split())[:120]
    return f" ({text})" if text else ""


def parse_duration(value: Any) -> float | None:
    """``90``, ``"10s"``, ``"5m"``, ``"2h"``, ``"3d"`` → seconds; None if not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", value)
    if not match:
        return None
    number = float(match.group(1))
    unit = match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def excerpt(text: str, limit: int = EXCERPT) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
