"""Storage: one interface (``Store``), one implementation per database."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Store

__all__ = ["Store", "open_store", "describe_url"]


def open_store(url: str) -> Store:
    """The store for a ``DATABASE_URL``: ``sqlite:///path`` (default ``sqlite:///bridge.db``)
    or ``postgres://…`` / ``postgresql://…``."""
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///"):])
    if url.startswith(("postgres://", "postgresql://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(f"DATABASE_URL must start with sqlite:/// or postgresql://, "
                      f"not '{describe_url(url)}'")


def describe_url(url: str) -> str:
    """The URL without its password, safe to print and log."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
