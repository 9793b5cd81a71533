"""``POST /hooks/<source>``: verify, store, answer. No network I/O on this path.

The order matters: the signature is checked on the raw body bytes before anything reads
the payload; the event is committed before the provider hears 200 (listingrva never
retries, so an event acknowledged but not stored would be lost).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from . import metrics
from .config import Source
from .errors import PayloadError, SignatureError, StoreUnavailable
from .events import NewEvent
from .signatures import verify

log = logging.getLogger("bridge.ingest")
bp = Blueprint("ingest", __name__)

# Headers kept with the event: enough to understand a delivery later, never a
# signature, cookie or authorization (those are never stored or logged).
KEPT_HEADERS = ("Content-Type", "User-Agent", "X-Request-Id", "X-Forwarded-For")


@bp.post("/hooks/<source_name>")
def receive(source_name: str) -> tuple[Response, int]:
    bridge = current_app.extensions["bridge"]
    source: Source | None = bridge.settings.sources.get(source_name)
    if source is None:
        return _reject(404, source_name, f"unknown source '{source_name}': the URL must be "
                       "/hooks/<source> with a source named in bridge.yaml")
    if source.disabled_reason:
        return _reject(503, source_name, f"source '{source_name}' is not ready: "
                       f"{source.disabled_reason}, then restart the bridge")
    body = request.get_data(cache=False)  # raw bytes; 413 past the limit (Flask)
    try:
        verify(source.profile.scheme, source.secrets, request.headers, body)
        payload = _parse(body)
    except SignatureError as err:
        return _reject(401, source_name, str(err))
    except PayloadError as err:
        return _reject(400, source_name, str(err))
    event = NewEvent(
        source=source_name,
        event_type=source.profile.event_type_of(payload, request.headers),
        dedup_key=source.profile.dedup_key_of(payload, request.headers, body),
        body=body,
        headers=_kept_headers(source),
        remote_addr=request.remote_addr,
        received_at=time.time(),
    )
    try:
        stored = bridge.store.add_event(event, bridge.settings.destinations_for(source_name))
    except StoreUnavailable as err:
        log.error("event from %s not stored: %s", source_name, err,
                  extra={"source": source_name, "status": "unavailable", "http_status": 503})
        metrics.event_received(source_name, "unavailable")
        return _error(503, "storage is unavailable; the event was not stored, send it again")
    status = "duplicate" if stored.duplicate else "accepted"
    if not stored.duplicate and bridge.worker is not None:
        bridge.worker.notify()
    metrics.event_received(source_name, status)
    log.info("%s %s event %s (%s)", status, source_name, stored.event_id, event.event_type,
             extra={"source": source_name, "event_id": stored.event_id, "status": status,
                    "event_type": event.event_type, "http_status": 200})
    return jsonify(status=status, event_id=stored.event_id), 200


def _parse(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise PayloadError("the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise PayloadError("the body must be a JSON object ({...})")
    return payload


def _kept_headers(source: Source) -> dict[str, str]:
    names = list(KEPT_HEADERS)
    rule = source.profile.scheme.timestamp
    if rule and rule.header:
        names.append(rule.header)
    kept = {}
    for name in names:
        value = request.headers.get(name)
        if value is not None:
            kept[name] = value[:500]
    return kept


def _reject(status: int, source: str, reason: str) -> tuple[Response, int]:
    log.warning("rejected %s callback from %s: %s (%d)", source[:64], request.remote_addr,
                reason, status, extra={"source": source[:64], "status": f"rejected_{status}",
                                       "http_status": status,
                                       "remote_addr": request.remote_addr})
    # a source that is not configured is counted as "unknown": no label per made-up name
    metrics.event_received(source if status != 404 else "unknown", f"rejected_{status}")
    return _error(status, reason)


def _error(status: int, reason: str) -> tuple[Response, int]:
    return jsonify(error=reason), status
