"""The store contract: everything the bridge keeps goes through these methods.

Implementations: ``SqliteStore`` (embedded default) and, later, ``PostgresStore``; both
pass the same contract tests (tests/test_store.py). Every method either completes or
raises ``StoreUnavailable`` having changed nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..events import Event, NewEvent, Stored


class Store(ABC):
    @abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema; safe to call from several processes at once."""

    @abstractmethod
    def add_event(self, event: NewEvent) -> Stored:
        """Store ``event`` in one short transaction, unless an event with the same
        ``(source, dedup_key)`` is already stored, however long ago: then count the
        duplicate and return the first event's id with ``duplicate=True``."""

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
