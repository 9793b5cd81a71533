"""Logging, configured in one place: ``setup_logging()`` (called by the ``bridge`` command
group, again once bridge.yaml is loaded, and by the gunicorn server for its own loggers).

``BRIDGE_LOG_FORMAT=json``: one JSON object per line (``time``, ``level``, ``logger``,
``message``, plus the structured fields a call passes with ``extra=``: ``source``,
``event_id``, ``destination``, ``status``, ``http_status``, ``duration_ms``…). Otherwise
readable text. ``BRIDGE_LOG_LEVEL`` sets the level (INFO).

Secrets, signatures and auth headers are never logged by the bridge; as a safety net,
``RedactSecrets`` replaces every configured secret value (source secrets, destination
header values and signing secrets, the admin token, the database password) with ``***``
in every record that reaches the bridge's handler, whoever logged it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MIN_SECRET_LENGTH = 6  # shorter values are no secret, and hiding them would garble lines
MASK = "***"
# the attributes every LogRecord has: anything else on a record came with extra=
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class RedactSecrets(logging.Filter):
    """Replace every configured secret with ``***`` in the final message, the traceback
    and any text field passed with ``extra=``."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def protect(self, values: Iterable[str | None]) -> None:
        """Add secret values to hide (longest first, so a secret containing another one
        is hidden whole)."""
        with self._lock:
            known = set(self._secrets)
            known.update(v for v in values if v and len(v) >= MIN_SECRET_LENGTH)
            self._secrets = tuple(sorted(known, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: log what was given
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, then the
    record's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
                            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


REDACTOR = RedactSecrets()  # one per process: every handler of the bridge uses it
_handler: logging.Handler | None = None


def setup_logging(settings: Any = None, environ: Mapping[str, str] | None = None,
                  stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record to one handler on stderr (or ``stream``), as JSON or text,
    through the redaction filter; hide the secrets of ``settings`` (a loaded bridge.yaml)
    and the admin token. Calling it again replaces the bridge's handler."""
    global _handler
    environ = os.environ if environ is None else environ
    fmt = (environ.get("BRIDGE_LOG_FORMAT") or "text").strip().lower()
    handler = logging.StreamHandler(stream) if stream is not None else StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(REDACTOR)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    _handler = handler
    level = (environ.get("BRIDGE_LOG_LEVEL") or "INFO").strip().upper()
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")
    protect(environ.get("BRIDGE_ADMIN_TOKEN"))
    if settings is not None:
        protect(*secrets_of(settings))
    if fmt not in LOG_FORMATS:
        logging.getLogger("bridge").warning("BRIDGE_LOG_FORMAT=%s is not one of %s: using "
                                            "text", fmt[:20], ", ".join(LOG_FORMATS))
    return handler


def handler() -> logging.Handler:
    """The bridge's handler (set up with the defaults if nothing has set it up yet)."""
    return _handler or setup_logging()


def protect(*values: str | None) -> None:
    """Hide these values in every log line from now on."""
    REDACTOR.protect(values)


def secrets_of(settings: Any) -> list[str]:
    """Every secret value a loaded bridge.yaml holds."""
    values: list[str] = []
    for source in settings.sources.values():
        values += source.secrets
    for destination in settings.destinations.values():
        values += destination.headers.values()
        if destination.signing_secret:
            values.append(destination.signing_secret)
    scheme, sep, rest = settings.database_url.partition("://")
    credentials = rest.rpartition("@")[0] if sep else ""
    if ":" in credentials:
        values.append(credentials.split(":", 1)[1])
    return values
