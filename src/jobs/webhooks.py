"""Webhooks: a job's JSON POSTed to the caller's URL when the job ends, signed, retried with backoff.

- Signature (`X-ASR-Signature: t=<unix seconds>,v1=<hex>`): HMAC-SHA256 with the job's secret over
  `f"{t}."` followed by the exact body bytes, made afresh at each attempt. The receiver recomputes it with
  `verify` (constant-time compare) and rejects a timestamp further than `tolerance_s` from its clock, so a
  captured delivery cannot be replayed later. Several `v1=` values are accepted (any one matching), for
  secret rotation.
- Delivery: any 2xx is success. Connection errors, timeouts, 5xx and 429 are retried after
  `backoff_s * 2**(attempt-1)` seconds (capped at `max_backoff_s`, up to 10% less at random so that many
  jobs failing together do not retry together); a numeric `Retry-After` is honoured, capped the same way.
  Other 4xx and redirects (never followed) are permanent failures. `deliver` never raises for a delivery
  problem: it returns a `Delivery`; cancellation and the `on_attempt` callback's own errors propagate.
- The receiver's answer body is never read, and never reported back: the error strings name only the status
  or the kind of transport failure, so a webhook pointed at an internal service cannot be used to read it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = [
    "ATTEMPT_HEADER",
    "DEFAULT_TOLERANCE_S",
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "USER_AGENT",
    "Delivery",
    "check_webhook_url",
    "deliver",
    "encode_body",
    "retry_delay",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-ASR-Signature"
EVENT_HEADER = "X-ASR-Event"
ATTEMPT_HEADER = "X-ASR-Delivery-Attempt"
USER_AGENT = "asr-server-webhook"
DEFAULT_TOLERANCE_S = 300

_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_RETRY_AFTER = re.compile(r"[0-9]{1,10}(\.[0-9]{1,6})?")
_JITTER = 0.1


# ---------------------------------------------------------------------------------------------------- signing


def _digest(secret: bytes, body: bytes, timestamp: int) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The `X-ASR-Signature` header value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={int(timestamp)},v1={_digest(secret, body, int(timestamp))}"


def verify(
    secret: bytes,
    body: bytes,
    header: str,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether `header` (an `X-ASR-Signature` value) signs `body` with `secret`, at a timestamp within
    `tolerance_s` of `now` (default: the clock). False, never an exception, for a malformed header."""
    if not isinstance(header, str) or not isinstance(body, bytes | bytearray):
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not _TIMESTAMP.fullmatch(value):
                return False
            timestamp = int(value)
        elif key == "v1":
            if not _HEX_DIGEST.fullmatch(value):
                return False
            candidates.append(value.lower())
        # other keys (a future scheme, v2=...) are ignored
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if not abs(current - timestamp) <= tolerance_s:  # also False for a NaN
        return False
    expected = _digest(secret, bytes(body), timestamp)
    # compare every candidate, so the time taken does not depend on which one matched
    return sum(hmac.compare_digest(expected, candidate) for candidate in candidates) > 0


# ---------------------------------------------------------------------------------------------------- URLs


def check_webhook_url(url: str) -> str:
    """`url` if it is an absolute http(s) URL with a host; otherwise a ValueError that says what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("the webhook URL is empty")
    if url != url.strip() or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise ValueError("the webhook URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in 0..65535
    except ValueError as exc:
        raise ValueError(f"the webhook URL is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        shown = f"{parts.scheme!r}" if parts.scheme else "none"
        raise ValueError(f"the webhook URL must start with http:// or https:// (scheme: {shown})")
    if not host:
        raise ValueError("the webhook URL has no host (expected e.g. https://example.com/hook)")
    try:
        httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ValueError(f"the webhook URL is not a valid URL: {exc}") from None
    return url


# ---------------------------------------------------------------------------------------------------- delivery


@dataclass(frozen=True)
class Delivery:
    """How a delivery ended."""

    delivered: bool
    attempts: int
    status: int | None  # the last attempt's HTTP status; None when it got no answer
    error: str | None  # why the last attempt failed; None when delivered


def encode_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes POSTed (and signed): compact JSON, UTF-8, non-ASCII kept as is."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def retry_delay(attempt: int, *, backoff_s: float, max_backoff_s: float, retry_after_s: float | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): `backoff_s * 2**(attempt-1)`, capped
    at `max_backoff_s`, minus up to 10% at random; at least `retry_after_s` when the receiver sent one, also
    capped at `max_backoff_s`."""
    exponent = min(max(attempt - 1, 0), 64)  # 2**64 seconds is already far beyond any cap
    delay = min(backoff_s * 2.0**exponent, max_backoff_s) * (1.0 - random.uniform(0.0, _JITTER))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_backoff_s))
    return max(delay, 0.0)


def _retry_after(value: str | None) -> float | None:
    """A numeric Retry-After (delay-seconds); None for an HTTP date or anything else."""
    if value is None or not _RETRY_AFTER.fullmatch(value.strip()):
        return None
    seconds = float(value.strip())
    return seconds if math.isfinite(seconds) else None


@dataclass(frozen=True)
class _Outcome:
    status: int | None
    error: str | None
    retry: bool
    retry_after_s: float | None = None


def _transport_error(exc: BaseException, timeout_s: float) -> _Outcome:
    if isinstance(exc, httpx.TimeoutException | asyncio.TimeoutError):
        return _Outcome(None, f"timed out after {timeout_s:g} s", retry=True)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return _Outcome(None, f"invalid webhook URL: {exc}", retry=False)
    detail = str(exc).strip()
    name = type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return _Outcome(
            None, f"connection failed ({name}: {detail})" if detail else f"connection failed ({name})", True
        )
    if isinstance(exc, httpx.TransportError | OSError):
        return _Outcome(None, f"{name}: {detail}" if detail else name, retry=True)
    return _Outcome(None, f"{name}: {detail}" if detail else name, retry=False)


def _status_outcome(status: int, retry_after: str | None) -> _Outcome:
    if 200 <= status < 300:
        return _Outcome(status, None, retry=False)
    if status == 429 or 500 <= status < 600:
        return _Outcome(status, f"HTTP {status}", retry=True, retry_after_s=_retry_after(retry_after))
    if 300 <= status < 400:
        return _Outcome(status, f"HTTP {status}: redirects are not followed", retry=False)
    return _Outcome(status, f"HTTP {status} (not retried)", retry=False)


async def _attempt(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], timeout_s: float
) -> _Outcome:
    async def post() -> tuple[int, str | None]:
        # streamed and never read: only the status line and headers matter
        async with client.stream(
            "POST", url, content=body, headers=headers, timeout=timeout_s, follow_redirects=False
        ) as response:
            return response.status_code, response.headers.get("retry-after")

    try:
        check_webhook_url(url)
    except ValueError as exc:
        return _Outcome(None, str(exc), retry=False)
    try:
        # httpx's timeout bounds each phase; this bounds the whole exchange (a receiver that trickles bytes)
        status, retry_after = await asyncio.wait_for(post(), timeout_s)
    except Exception as exc:  # every delivery problem becomes an outcome (CancelledError is not an Exception)
        return _transport_error(exc, timeout_s)
    return _status_outcome(status, retry_after)


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    payload: dict[str, Any],
    *,
    event: str,
    secret: bytes | None,
    max_attempts: int = 5,
    backoff_s: float = 1.0,
    max_backoff_s: float = 60.0,
    timeout_s: float = 10.0,
    on_attempt: Callable[[int, str | None], Awaitable[None]] | None = None,
) -> Delivery:
    """POST `payload` as JSON to `url` until a 2xx answer, a permanent failure or `max_attempts` attempts.

    Headers: `Content-Type: application/json`, `X-ASR-Event: <event>`, `User-Agent: asr-server-webhook`,
    `X-ASR-Delivery-Attempt: <n>` and, when `secret` is given, `X-ASR-Signature` (signed at each attempt).
    `on_attempt(n, error or None)` is awaited after each attempt, before any wait."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    body = encode_body(payload)
    outcome = _Outcome(None, "not attempted", retry=False)
    attempt = 0
    for attempt in range(1, max_attempts + 1):
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: event,
            ATTEMPT_HEADER: str(attempt),
        }
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(secret, body, int(time.time()))
        outcome = await _attempt(client, url, body, headers, timeout_s)
        if on_attempt is not None:
            await on_attempt(attempt, outcome.error)
        if outcome.error is None or not outcome.retry or attempt == max_attempts:
            break
        await asyncio.sleep(
            retry_delay(attempt, backoff_s=backoff_s, max_backoff_s=max_backoff_s, retry_after_s=outcome.retry_after_s)
        )
    return Delivery(delivered=outcome.error is None, attempts=attempt, status=outcome.status, error=outcome.error)
