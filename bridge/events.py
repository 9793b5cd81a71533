"""What the bridge keeps of a received callback."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_event_id(now: float | None = None) -> str:
    """``evt_`` + a ULID: 48 bits of milliseconds then 80 random bits, in Crockford base32,
    so ids sort by arrival time and never collide between processes."""
    millis = int((time.time() if now is None else now) * 1000)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "evt_" + "".join(reversed(chars))


@dataclass(frozen=True)
class NewEvent:
    """A verified callback, ready to store."""

    source: str
    event_type: str | None
    dedup_key: str
    body: bytes
    headers: dict[str, str]
    remote_addr: str | None
    received_at: float
    id: str = ""

    def with_id(self) -> NewEvent:
        if self.id:
            return self
        return NewEvent(self.source, self.event_type, self.dedup_key, self.body, self.headers,
                        self.remote_addr, self.received_at, new_event_id(self.received_at))


@dataclass(frozen=True)
class Event:
    """A stored event."""

    id: str
    source: str
    event_type: str | None
    dedup_key: str
    body: bytes
    headers: dict[str, str]
    remote_addr: str | None
    received_at: float
    duplicates: int = 0
    last_duplicate_at: float | None = None


@dataclass(frozen=True)
class Stored:
    """The answer of ``Store.add_event``: the event's id, and whether it was already there
    (then ``event_id`` is the id of the first copy)."""

    event_id: str
    duplicate: bool


# -- deliveries ---------------------------------------------------------------------------
# States: pending (waiting for its first or next try; "failed" when attempts > 0),
# done, dead (a dead letter: replayable), filtered (no mapping rule matched).


@dataclass(frozen=True)
class Claim:
    """A delivery a worker holds for a while (its lease), with what it needs to send it."""

    delivery_id: int
    event_id: str
    destination: str
    source: str
    body: bytes
    received_at: float
    attempts: int             # failed tries in this round (the retry schedule's position)
    total_attempts: int       # every try ever, across replays
    round_started_at: float   # when this round began (creation or last replay)
    send_at: float            # not before: the destination's rate limit slot


@dataclass(frozen=True)
class AttemptResult:
    """What one try of a claimed delivery came to, as the worker records it."""

    delivery_id: int
    state: str                # the delivery's new state: pending, done, dead, filtered
    started_at: float
    next_attempt_at: float | None = None
    http_status: int | None = None
    duration_ms: float | None = None
    response_excerpt: str | None = None
    error: str | None = None
    attempted: bool = True    # False for filtered: nothing was sent
    payload: str | None = None  # the flat event sent (JSON), kept for the dashboard


@dataclass(frozen=True)
class Delivery:
    id: int
    event_id: str
    destination: str
    state: str
    attempts: int
    total_attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    leased_by: str | None
    created_at: float
    updated_at: float
    source: str = ""
    event_type: str | None = None


@dataclass(frozen=True)
class Attempt:
    delivery_id: int
    number: int
    started_at: float
    duration_ms: float | None
    http_status: int | None
    response_excerpt: str | None
    error: str | None
    state: str
