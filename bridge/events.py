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
