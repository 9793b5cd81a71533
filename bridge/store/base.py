"""The store contract: everything the bridge keeps goes through these methods.

Implementations: ``SqliteStore`` (embedded default) and, later, ``PostgresStore``; both
pass the same contract tests (tests/test_store.py). Every method either completes or
raises ``StoreUnavailable`` having changed nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from ..events import Attempt, AttemptResult, Claim, Delivery, Event, NewEvent, Stored


class Store(ABC):
    @abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema; safe to call from several processes at once."""

    @abstractmethod
    def add_event(self, event: NewEvent, destinations: Sequence[str] = ()) -> Stored:
        """Store ``event`` and one pending delivery per destination, in one short
        transaction, unless an event with the same ``(source, dedup_key)`` is already
        stored, however long ago: then count the duplicate, create nothing, and return
        the first event's id with ``duplicate=True``."""

    @abstractmethod
    def get_event(self, event_id: str) -> Event | None:
        """The stored event, or None."""

    @abstractmethod
    def list_events(self, source: str | None = None, limit: int = 50,
                    before: str | None = None) -> list[Event]:
        """Newest first; ``before`` is an event id to page from (exclusive)."""

    @abstractmethod
    def ping(self) -> None:
        """Return if the store answers a query; raise StoreUnavailable if not."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store may be used again (it reconnects)."""

    # -- deliveries ------------------------------------------------------------------
    @abstractmethod
    def claim(self, destination: str, worker: str, limit: int, rate: float, lease: float,
              now: float) -> list[Claim]:
        """Take up to ``limit`` due pending deliveries of ``destination`` for ``worker``,
        holding each for ``lease`` seconds (after that another worker may take it again:
        a crashed worker loses nothing). Safe with any number of workers at once.

        ``rate`` (per second) is shared by every worker through the store: each claim
        gets a ``send_at`` slot, and no more is handed out than fits in the next second."""

    @abstractmethod
    def record(self, worker: str, results: Sequence[AttemptResult], now: float) -> None:
        """Write what tries came to, in one transaction: the delivery's new state and one
        attempt row per try that was sent. A delivery no longer held by ``worker`` keeps
        its state (another worker took it over) but the attempt is still recorded."""

    @abstractmethod
    def release(self, worker: str, delivery_ids: Sequence[int], now: float) -> None:
        """Give back claimed deliveries that were not tried (shutdown): due again now."""

    @abstractmethod
    def replay(self, event_id: str, destinations: Sequence[str], now: float) -> int | None:
        """Send the event again: every delivery of it (and any missing one for
        ``destinations``) becomes pending now, in a new round. None if no such event."""

    @abstractmethod
    def replay_dead(self, now: float, source: str | None = None,
                    since: float | None = None) -> int:
        """Every dead letter (of ``source``, of events received since ``since``) becomes
        pending now, in a new round; returns how many."""

    @abstractmethod
    def list_deliveries(self, state: str | None = None, source: str | None = None,
                        destination: str | None = None, limit: int = 100) -> list[Delivery]:
        """Newest first. ``state`` may also be ``failed``: pending after a failed try."""

    @abstractmethod
    def deliveries_of(self, event_id: str) -> list[Delivery]:
        """The deliveries of one event."""

    @abstractmethod
    def attempts_of(self, delivery_id: int) -> list[Attempt]:
        """Every try of one delivery, oldest first."""

    # -- the admin dashboard, API and metrics --------------------------------------------
    # Every method that changes a delivery's state also refreshes its event's ``status``
    # (see ``EVENT_STATUSES``) in the same transaction, so these read it from an index.
    @abstractmethod
    def search_events(self, source: str | None = None, status: str | None = None,
                      text: str | None = None, before: str | None = None,
                      limit: int = 50) -> list[EventSummary]:
        """Events newest first, without their bodies. ``status`` is one of
        ``EVENT_STATUSES`` or ``duplicate`` (received more than once); ``text`` is found
        anywhere in the dedup key (which holds the provider's job id) or the event id;
        ``before`` is an event id to page from (exclusive). Each page is a short index
        walk however many events are stored, except a ``text`` search, which may scan."""

    @abstractmethod
    def summary(self, since: float, credits_since: float | None = None) -> Summary:
        """Counts over the events received since ``since``: events per source, their
        deliveries per source, destination and status; dead letters waiting now (all
        time); and the credits of the events mapped and sent since ``credits_since``
        (default ``since``) per UTC day and source, counted once per event."""

    @abstractmethod
    def totals(self) -> Totals:
        """What a metrics scrape reports (all time, computed now): events per source and
        status, deliveries per destination and state, and per destination the pending
        deliveries with the start of the oldest one's current round."""

    @abstractmethod
    def delivery_payloads(self, event_id: str) -> dict[int, str | None]:
        """The last flat event sent (JSON text) of each delivery of the event, by
        delivery id; None for a delivery not sent yet."""


# An event's status, from its deliveries, highest first: any dead → dead; any pending
# after a failed try → failing; any pending → queued; any done → delivered; the rest
# filtered (no mapping rule matched); no delivery at all (no route) → stored.
EVENT_STATUSES = ("dead", "failing", "queued", "delivered", "filtered", "stored")


def event_status(deliveries: Sequence[Delivery]) -> str:
    """The status of an event with these deliveries (what the store keeps in SQL)."""
    states = {d.state for d in deliveries}
    if "dead" in states:
        return "dead"
    if any(d.state == "pending" and d.attempts > 0 for d in deliveries):
        return "failing"
    if "pending" in states:
        return "queued"
    if "done" in states:
        return "delivered"
    return "filtered" if deliveries else "stored"


@dataclass(frozen=True)
class EventSummary:
    """One row of the events list: an event without its body, with its status."""

    id: str
    source: str
    event_type: str | None
    dedup_key: str
    received_at: float
    duplicates: int
    last_duplicate_at: float | None
    status: str


@dataclass(frozen=True)
class Summary:
    since: float
    events: list[tuple[str, int, int]]            # (source, events, duplicates received)
    deliveries: list[tuple[str, str, str, int]]   # (source, destination, status, count)
    dead_letters: dict[str, int]                  # destination → dead letters waiting
    credits: list[tuple[str, str, float, int]]    # (UTC day, source, credits, events)


@dataclass(frozen=True)
class Totals:
    events: dict[tuple[str, str], int]            # (source, status) → events
    deliveries: dict[tuple[str, str], int]        # (destination, state) → deliveries
    pending: dict[str, tuple[int, float]]         # destination → (pending, oldest round start)
