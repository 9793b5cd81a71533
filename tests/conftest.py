"""Shared fixtures: secrets, bridge.yaml files, an app over a real SQLite file, and
signatures computed here with hmac/hashlib (never with bridge.signatures.sign)."""

from __future__ import annotations

import hashlib
import hmac
import secrets as secrets_module
import socket
import sys
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import pytest

from bridge.app import create_app
from bridge.config import Settings, load_settings
from bridge.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "bridge.yaml"

PROVIDERS = ("ratioready", "zupertry", "posternity", "upscale", "listingrva")

# Written by hand from PROVIDERS.md, not read from the profiles under test.
SIGNATURE_HEADERS = {
    "ratioready": "X-RatioReady-Signature",
    "zupertry": "X-Zupertry-Signature",
    "posternity": "X-Posternity-Signature",
    "upscale": "Upscale-Signature",
    "listingrva": "X-Webhook-Signature",
}


def secret_var(provider: str) -> str:
    return f"{provider.upper()}_WEBHOOK_SECRET"


def sign(secret: str | bytes, body: bytes) -> str:
    """HMAC-SHA256 of ``body`` in lowercase hex, computed by the test itself."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def free_port() -> int:
    """A loopback port that nothing listens on (as of now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bridge_command() -> list[str]:
    """The installed ``bridge`` console script, beside this Python."""
    script = Path(sys.executable).with_name("bridge")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from bridge.cli import main; main()"]


def line_with(text: str, needle: str) -> int:
    """The 1-based number of the only line of ``text`` containing ``needle``."""
    lines = [n for n, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(lines) == 1, f"{needle!r} is on lines {lines}"
    return lines[0]


def assert_error(response, status: int, forbidden: Iterable[str] = ()) -> str:
    """The response is ``status`` with a JSON ``{"error": "..."}`` that shows none of
    ``forbidden`` (secrets, signatures) in any case; returns the error text."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    assert list(response.get_json()) == ["error"]
    text = response.get_data(as_text=True)
    for value in forbidden:
        assert value.lower() not in text.lower()
    return response.get_json()["error"]


@pytest.fixture
def secrets() -> dict[str, str]:
    """One random secret per provider."""
    return {provider: secrets_module.token_hex(20) for provider in PROVIDERS}


@pytest.fixture
def previous_secrets() -> dict[str, str]:
    """The secret each provider used before a rotation (``*_WEBHOOK_SECRET_PREVIOUS``)."""
    return {provider: secrets_module.token_hex(20) for provider in PROVIDERS}


@pytest.fixture
def environ(secrets, previous_secrets) -> dict[str, str]:
    """The environment the shipped bridge.yaml reads: current and previous secrets."""
    env = {secret_var(p): s for p, s in secrets.items()}
    env.update({secret_var(p) + "_PREVIOUS": s for p, s in previous_secrets.items()})
    return env


@pytest.fixture
def write_config(tmp_path) -> Callable[..., Path]:
    """Write (dedented) YAML text as a file in tmp_path and return its path."""

    def write(text: str, name: str = "bridge.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def load_config(write_config) -> Callable[..., Settings]:
    """Write YAML text as bridge.yaml and load it with an explicit environment."""

    def load(text: str, environ: Mapping[str, str] | None = None) -> Settings:
        return load_settings(str(write_config(text)), environ=dict(environ or {}))

    return load


@pytest.fixture
def shipped_settings(environ) -> Settings:
    """The repository's own bridge.yaml, with every secret set."""
    return load_settings(str(SHIPPED_CONFIG), environ=environ)


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "bridge.db"


@pytest.fixture
def make_store(db_path):
    stores = []

    def make(busy_timeout_ms: int = 5000) -> SqliteStore:
        store = SqliteStore(str(db_path), busy_timeout_ms=busy_timeout_ms)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store) -> SqliteStore:
    return make_store()


@pytest.fixture
def make_app(store):
    """The Flask app for ``settings``, over the tmp SQLite file unless a store is given."""

    def make(settings: Settings, store_: SqliteStore | None = None):
        return create_app(settings, store_ or store)

    return make


@pytest.fixture
def app(make_app, shipped_settings):
    return make_app(shipped_settings)


@pytest.fixture
def client(app):
    return app.test_client()


# -- PostgreSQL -----------------------------------------------------------------------------
# Tests that need PostgreSQL use BRIDGE_TEST_DATABASE_URL, else the local default; each
# test gets its own schema, dropped afterwards. No server: the tests are skipped, saying why.
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    import os

    psycopg = pytest.importorskip("psycopg")
    url = os.environ.get("BRIDGE_TEST_DATABASE_URL") or DEFAULT_PG_URL
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        pytest.skip(f"no PostgreSQL server answers at {url} ({reason}); set "
                    "BRIDGE_TEST_DATABASE_URL to run the PostgreSQL tests")
    return url


@pytest.fixture
def pg_url(pg_server_url) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh, empty schema."""
    import uuid

    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in pg_server_url else "?"
    yield f"{pg_server_url}{separator}options=-csearch_path%3D{schema}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
