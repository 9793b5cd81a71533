"""HMAC signature verification for every provider, driven by data (a profile).

A scheme says where the signature is (a header, maybe one part of it), how it is encoded,
what exact bytes were signed (the raw body, or a template such as ``{timestamp}.{body}``),
and whether a timestamp must be fresh. The same two functions serve every provider:
``verify`` for callbacks coming in and ``sign`` for ``bridge send-test``.

Rules that never change: the message is built from the raw body bytes, never from
re-serialised JSON; digests are compared with ``hmac.compare_digest``; a missing secret
accepts nothing; an error message never contains a secret or the expected signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import SignatureError

ALGORITHMS = ("sha256", "sha1", "sha512")
ENCODINGS = ("hex", "base64")
SECRET_ENCODINGS = ("raw", "base64")
MAX_HEADER_LENGTH = 4096  # a longer signature header is refused before any work
_PLACEHOLDER = re.compile(r"\{(body|timestamp|header:[A-Za-z0-9_-]+)\}")
_HEX = re.compile(r"[0-9a-fA-F]*")  # only hex digits: bytes.fromhex would skip spaces


@dataclass(frozen=True)
class Parts:
    """A header made of several parts, like Stripe's ``t=…,v1=…`` (separator ",",
    pair "=") or Standard Webhooks' ``v1,<sig> v1,<sig>`` (separator " ", pair ",")."""

    separator: str
    pair: str
    key: str                     # the key whose values are signatures (v1)
    timestamp_key: str | None = None  # the key whose value is the timestamp (t)


@dataclass(frozen=True)
class TimestampRule:
    header: str | None = None    # the timestamp comes from this header …
    part: str | None = None      # … or from this part of the signature header
    tolerance: int = 300         # seconds either way from the bridge's clock
    required: bool = False


@dataclass(frozen=True)
class Scheme:
    header: str
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""             # e.g. "sha256=", stripped when present
    parts: Parts | None = None
    signed: str = "{body}"       # template of the signed bytes
    secret_prefix: str = ""      # e.g. "whsec_", stripped from the secret
    secret_encoding: str = "raw"  # "base64": the secret (after its prefix) is base64
    timestamp: TimestampRule | None = None


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works for plain dicts too."""
    value = headers.get(name)
    if value is None and isinstance(headers, dict):
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                return candidate
    return value


def verify(scheme: Scheme, secrets: Sequence[str], headers: Mapping[str, str], body: bytes,
           now: float | None = None) -> None:
    """Return if ``body`` carries a valid signature from any of ``secrets``; else raise
    SignatureError with a reason that is safe to show to the caller."""
    if not secrets:
        raise SignatureError("no signing secret is configured for this source")
    raw = header_value(headers, scheme.header)
    if raw is None or not raw.strip():
        raise SignatureError(f"missing signature header {scheme.header}")
    if len(raw) > MAX_HEADER_LENGTH:
        raise SignatureError(f"signature header {scheme.header} is too long")
    candidates, part_timestamp = _candidates(scheme, raw)
    digests = [d for d in (_decode(scheme, c) for c in candidates) if d is not None]
    if not digests:
        raise SignatureError(f"signature header {scheme.header} is not a {scheme.encoding} "
                             f"{scheme.algorithm} signature")
    timestamp_text = _timestamp_text(scheme, headers, part_timestamp)
    message = _message(scheme, headers, body, timestamp_text or "")
    if not any(_matches(scheme, secret, message, digests) for secret in secrets):
        raise SignatureError("signature does not match: check that the secret configured for "
                             "this source is the one shown in the provider's dashboard")
    _check_fresh(scheme, timestamp_text, time.time() if now is None else now)


def sign(scheme: Scheme, secret: str, body: bytes, headers: Mapping[str, str] | None = None,
         now: float | None = None) -> dict[str, str]:
    """The headers a provider using ``scheme`` would send with ``body`` (for send-test)."""
    headers = dict(headers or {})
    timestamp = str(int(time.time() if now is None else now))
    for name in _header_placeholders(scheme.signed):
        if header_value(headers, name) is None:  # e.g. webhook-id: stable per body
            headers[name] = "msg_" + hashlib.sha256(body).hexdigest()[:24]
    rule = scheme.timestamp
    if rule and rule.header:
        headers[rule.header] = timestamp
    message = _message(scheme, headers, body, timestamp)
    digest = hmac.new(_key(scheme, secret), message, scheme.algorithm).digest()
    encoded = digest.hex() if scheme.encoding == "hex" else base64.b64encode(digest).decode()
    value = scheme.prefix + encoded
    if scheme.parts:
        items = []
        if rule and rule.part:
            items.append(f"{rule.part}{scheme.parts.pair}{timestamp}")
        items.append(f"{scheme.parts.key}{scheme.parts.pair}{value}")
        value = scheme.parts.separator.join(items)
    headers[scheme.header] = value
    return headers


def _candidates(scheme: Scheme, raw: str) -> tuple[list[str], str | None]:
    if scheme.parts is None:
        return [raw.strip()], None
    signatures, timestamp = [], None
    for item in raw.split(scheme.parts.separator):
        key, sep, value = item.strip().partition(scheme.parts.pair)
        if not sep:
            continue
        if key == scheme.parts.key:
            signatures.append(value.strip())
        elif scheme.parts.timestamp_key and key == scheme.parts.timestamp_key:
            timestamp = value.strip()
    return signatures, timestamp


def _decode(scheme: Scheme, candidate: str) -> bytes | None:
    if scheme.prefix and candidate[: len(scheme.prefix)].lower() == scheme.prefix.lower():
        candidate = candidate[len(scheme.prefix):]
    try:
        if scheme.encoding == "hex":
            return bytes.fromhex(candidate) if _HEX.fullmatch(candidate) else None
        return base64.b64decode(candidate, validate=True)
    except (ValueError, binascii.Error):
        return None


def _key(scheme: Scheme, secret: str) -> bytes:
    if scheme.secret_prefix and secret.startswith(scheme.secret_prefix):
        secret = secret[len(scheme.secret_prefix):]
    if scheme.secret_encoding == "base64":
        try:
            return base64.b64decode(secret, validate=True)
        except (ValueError, binascii.Error):
            pass  # not base64 after all: use the text itself, it will simply not match
    return secret.encode("utf-8")


def _matches(scheme: Scheme, secret: str, message: bytes, digests: list[bytes]) -> bool:
    expected = hmac.new(_key(scheme, secret), message, scheme.algorithm).digest()
    matched = False
    for digest in digests:  # no early exit: the time taken does not depend on the position
        matched |= hmac.compare_digest(expected, digest)
    return matched


def _header_placeholders(template: str) -> list[str]:
    return [m.group(1)[7:] for m in _PLACEHOLDER.finditer(template)
            if m.group(1).startswith("header:")]


def _message(scheme: Scheme, headers: Mapping[str, str], body: bytes, timestamp: str) -> bytes:
    if scheme.signed == "{body}":
        return body
    pieces: list[bytes] = []
    position = 0
    for match in _PLACEHOLDER.finditer(scheme.signed):
        pieces.append(scheme.signed[position:match.start()].encode("utf-8"))
        name = match.group(1)
        if name == "body":
            pieces.append(body)
        elif name == "timestamp":
            pieces.append(timestamp.encode("utf-8"))
        else:
            pieces.append((header_value(headers, name[7:]) or "").encode("utf-8"))
        position = match.end()
    pieces.append(scheme.signed[position:].encode("utf-8"))
    return b"".join(pieces)


def _timestamp_text(scheme: Scheme, headers: Mapping[str, str],
                    part_timestamp: str | None) -> str | None:
    rule = scheme.timestamp
    if rule is None:
        return None
    text = part_timestamp if rule.part else header_value(headers, rule.header or "")
    if text is None or not text.strip():
        if rule.required:
            where = f"header {rule.header}" if rule.header else f"'{rule.part}=' part"
            raise SignatureError(f"missing timestamp ({where})")
        return None
    return text.strip()


def _check_fresh(scheme: Scheme, text: str | None, now: float) -> None:
    if text is None or scheme.timestamp is None:
        return
    when = parse_timestamp(text)
    if when is None:
        raise SignatureError("the timestamp is not a Unix time or ISO 8601 date")
    drift = when - now
    if abs(drift) > scheme.timestamp.tolerance:
        direction = "old" if drift < 0 else "in the future"
        raise SignatureError(
            f"stale timestamp: {abs(drift):.0f} s {direction}, more than the "
            f"{scheme.timestamp.tolerance} s allowed (a replay, or the bridge's clock is wrong)")


def parse_timestamp(text: str) -> float | None:
    """Unix seconds, Unix milliseconds, or an ISO 8601 date; None if none of these."""
    if len(text) > 64:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return value / 1000 if value > 1e11 else value
