"""What the dashboard and the JSON API show and do, in one place: both call these and only
differ in how they render the answer (HTML or JSON)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..errors import MappingError
from ..mapping import iso_time
from ..store.base import EVENT_STATUSES, EventSummary, event_status

log = logging.getLogger("bridge.admin")

STATUS_FILTERS = (*EVENT_STATUSES, "duplicate")
STATUS_ALIASES = {"accepted": "queued"}  # what ingest answered; not sent anywhere yet
PAGE_SIZE = 50
MAX_PAGE = 200
MAX_TEXT = 200


class BadRequest(ValueError):
    """A filter or a field the caller must fix (HTTP 400)."""


@dataclass(frozen=True)
class Filters:
    source: str | None = None
    status: str | None = None
    text: str | None = None
    before: str | None = None
    limit: int = PAGE_SIZE

    def query(self, **changes: Any) -> dict[str, Any]:
        """These filters as URL query arguments (empty ones left out)."""
        values = {"source": self.source, "status": self.status, "q": self.text,
                  "before": self.before}
        values.update(changes)
        return {k: v for k, v in values.items() if v}


def parse_filters(args: Mapping[str, str]) -> Filters:
    status = (args.get("status") or "").strip().lower() or None
    status = STATUS_ALIASES.get(status, status) if status else None
    if status and status not in STATUS_FILTERS:
        raise BadRequest(f"unknown status '{status[:40]}': use one of "
                         f"{', '.join(STATUS_FILTERS)}")
    text = (args.get("q") or "").strip()[:MAX_TEXT] or None
    try:
        limit = int(args.get("limit") or PAGE_SIZE)
    except ValueError:
        raise BadRequest("limit must be a number") from None
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequest(f"limit must be between 1 and {MAX_PAGE}")
    return Filters(source=(args.get("source") or "").strip() or None, status=status,
                   text=text, before=(args.get("before") or "").strip() or None, limit=limit)


def list_events(bridge: Any, filters: Filters) -> tuple[list[EventSummary], str | None]:
    """One page of events newest first, and the cursor of the next page (None: the last)."""
    rows = bridge.store.search_events(source=filters.source, status=filters.status,
                                      text=filters.text, before=filters.before,
                                      limit=filters.limit + 1)
    page = rows[:filters.limit]
    return page, (page[-1].id if len(rows) > filters.limit else None)


def event_row(row: EventSummary) -> dict[str, Any]:
    return {"id": row.id, "source": row.source, "event_type": row.event_type,
            "dedup_key": row.dedup_key, "received_at": iso(row.received_at),
            "duplicates": row.duplicates, "last_duplicate_at": iso(row.last_duplicate_at),
            "status": row.status}


def event_detail(bridge: Any, event_id: str) -> dict[str, Any] | None:
    """One event: its payload, its headers, each delivery with every try."""
    event = bridge.store.get_event(event_id)
    if event is None:
        return None
    deliveries = bridge.store.deliveries_of(event_id)
    sent = bridge.store.delivery_payloads(event_id)
    payload, payload_text = _json_or_text(event.body)
    return {
        "id": event.id, "source": event.source, "event_type": event.event_type,
        "dedup_key": event.dedup_key, "received_at": iso(event.received_at),
        "duplicates": event.duplicates, "last_duplicate_at": iso(event.last_duplicate_at),
        "remote_addr": event.remote_addr, "headers": event.headers,
        "status": event_status(deliveries),
        "payload": payload, "payload_text": payload_text,
        "deliveries": [_delivery(bridge, d, sent.get(d.id)) for d in deliveries],
    }


def _delivery(bridge: Any, delivery: Any, sent: str | None) -> dict[str, Any]:
    status = delivery.state
    if delivery.state == "pending":
        status = "failing" if delivery.attempts else "queued"
    return {
        "id": delivery.id, "destination": delivery.destination, "state": delivery.state,
        "status": status, "tries_this_round": delivery.attempts,
        "total_tries": delivery.total_attempts,
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.state == "pending"
        else None,
        "in_flight": delivery.leased_by is not None and delivery.state == "pending",
        "last_status": delivery.last_status, "last_error": delivery.last_error,
        "sent": _json_or_text(sent.encode("utf-8"))[0] if sent else None,
        "attempts": [{"number": a.number, "started_at": iso(a.started_at),
                      "http_status": a.http_status, "duration_ms": a.duration_ms,
                      "response_excerpt": a.response_excerpt, "error": a.error,
                      "state": a.state}
                     for a in bridge.store.attempts_of(delivery.id)],
    }


def replay_event(bridge: Any, event_id: str) -> int | None:
    """Send the event again with the current mapping; how many deliveries (None: no event)."""
    event = bridge.store.get_event(event_id)
    if event is None:
        return None
    count = bridge.store.replay(event_id, bridge.settings.destinations_for(event.source),
                                time.time())
    _wake(bridge)
    log.info("admin: replayed event %s (%s deliveries)", event_id, count,
             extra={"event_id": event_id, "source": event.source, "status": "replayed"})
    return count


def replay_dead(bridge: Any, source: str | None, since: float | None) -> int:
    count = bridge.store.replay_dead(time.time(), source=source, since=since)
    _wake(bridge)
    log.info("admin: %d dead letter(s) queued again (source %s, since %s)", count,
             source or "any", iso(since) or "any time",
             extra={"source": source, "status": "replayed", "count": count})
    return count


def _wake(bridge: Any) -> None:
    if bridge.worker is not None:
        bridge.worker.notify()


def preview(bridge: Any, event_id: str) -> dict[str, Any] | None:
    """The flat event the stored payload becomes with the mapping as it is now (nothing
    is stored or sent). None if there is no such event."""
    event = bridge.store.get_event(event_id)
    if event is None:
        return None
    mapping = bridge.mappings.get(event.source)
    answer: dict[str, Any] = {"event_id": event.id, "source": event.source,
                              "mapping": mapping.file if mapping else None, "outcome": None,
                              "rule": None, "tried": [], "event": None, "error": None,
                              "mapping_error": bridge.mappings.errors.get(event.source)}
    if mapping is None:
        answer.update(outcome="failed", error=f"source '{event.source}' has no mapping; "
                                              f"create mappings/{event.source}.yaml")
        return answer
    try:
        result = mapping.apply(json.loads(event.body), event.id, event.source,
                               event.received_at)
    except (MappingError, ValueError) as err:
        answer.update(outcome="failed", error=str(err))
        return answer
    answer.update(outcome="mapped" if result.event is not None else "filtered",
                  rule=result.rule, tried=list(result.tried), event=result.event)
    return answer


def summary(bridge: Any, hours: float = 24, days: int = 7,
            now: float | None = None) -> dict[str, Any]:
    """The last ``hours``: events per source, deliveries per source and destination with
    the success rate; dead letters waiting; credits per day over the last ``days``."""
    now = time.time() if now is None else now
    since = now - hours * 3600
    today = int(now // 86400)
    data = bridge.store.summary(since, credits_since=(today - days + 1) * 86400)
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    per_destination: dict[str, dict[str, Any]] = {}
    for source, destination, status, count in data.deliveries:
        for key, table in (((source, destination), pairs), (destination, per_destination)):
            row = table.setdefault(key, _counts(source, destination))
            row[status] = row.get(status, 0) + count
            row["total"] += count
    for row in per_destination.values():
        row.pop("source")
    return {
        "since": iso(since), "hours": hours,
        "events": [{"source": s, "events": n, "duplicates": d} for s, n, d in data.events],
        "events_total": sum(n for _, n, _ in data.events),
        "deliveries": [_rate(row) for _, row in sorted(pairs.items())],
        "destinations": [_rate(row) for _, row in sorted(per_destination.items())],
        "dead_letters": data.dead_letters,
        "dead_letters_total": sum(data.dead_letters.values()),
        "credits": [{"day": day, "source": source, "credits": credits, "events": n}
                    for day, source, credits, n in data.credits],
        "credits_days": days,
        "worker_in_this_process": bridge.worker is not None,
        "mapping_errors": dict(bridge.mappings.errors),
    }


def _counts(source: str, destination: str) -> dict[str, Any]:
    return {"source": source, "destination": destination, "queued": 0, "failing": 0,
            "done": 0, "dead": 0, "filtered": 0, "total": 0}


def _rate(row: dict[str, Any]) -> dict[str, Any]:
    """Success rate: delivered among those that were sent and came to something (done,
    dead, or failing for now); None when none was."""
    tried = row["done"] + row["dead"] + row["failing"]
    row["success_rate"] = round(row["done"] / tried, 4) if tried else None
    return row


def parse_since(text: str | float | int | None) -> float | None:
    """A date (2026-11-20), a date and time (2026-11-20T10:00, UTC unless it says), or Unix
    seconds."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str):
        raise BadRequest("since must be a date like 2026-11-20 or 2026-11-20T10:00")
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"since: '{text[:40]}' is not a date like 2026-11-20 or "
                         "2026-11-20T10:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(timestamp: float | None) -> str | None:
    return iso_time(timestamp) if timestamp is not None else None


def _json_or_text(body: bytes) -> tuple[Any, str]:
    """The parsed JSON (None if it is not JSON) and a text to show (pretty if JSON)."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None, body.decode("utf-8", errors="replace")
    return value, json.dumps(value, indent=2, ensure_ascii=False)
