"""Fixtures of the end-to-end tests: the delivery tests' loopback ``receiver`` (a real HTTP
server recording every request) and ``spawn`` (subprocesses in their own process group,
killed at the end), shared as they are."""

from ..delivery.conftest import receiver, spawn  # noqa: F401 - fixtures, used by name
