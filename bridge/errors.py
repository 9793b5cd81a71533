"""Errors the bridge raises, as one small tree.

    BridgeError
    ├── ConfigError        a bad bridge.yaml, profile or mapping (carries file and line)
    ├── SignatureError     a callback whose signature cannot be trusted (answered 401)
    ├── PayloadError       a verified body that is not a JSON object (answered 400)
    ├── MappingError       a mapping that failed for one event at run time
    └── StoreUnavailable   the database cannot be reached or written (answered 503)

Each is raised where it happens and turned into an HTTP answer (``bridge.ingest``)
or a CLI message (``bridge.cli``) in one place each.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class: catch this to catch everything the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A problem in a configuration file, reported as ``file:line: message (hint)``."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.hint = hint

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{self.message}{hint}"


class ConfigErrors(BridgeError):
    """Several configuration problems found in one pass, so the user fixes them all at once."""

    def __init__(self, errors: list[ConfigError]):
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


class SignatureError(BridgeError):
    """The callback's signature is missing, wrong or stale. The message is safe to show:
    it never contains a secret or the expected signature."""


class PayloadError(BridgeError):
    """A verified body that the bridge cannot read as a JSON object."""


class StoreUnavailable(BridgeError):
    """The store cannot be reached or written; nothing was half-written."""


class MappingError(BridgeError):
    """A mapping failed for one event at run time (an expression met an unexpected type).
    The event is kept, marked with this reason, and can be re-run once the YAML is fixed."""
