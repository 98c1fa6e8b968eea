"""Webhook deliveries against a real HTTP receiver on a loopback port: signatures, retries, backoff, failures."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest

from asr_server.jobs.webhooks import (
    DEFAULT_TOLERANCE_S,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    Delivery,
    check_webhook_url,
    deliver,
    retry_delay,
    sign,
    verify,
)

from support import free_port
from webhook_receiver import Receiver

SECRET = b"receiver-and-server-share-this"
PAYLOAD = {"id": "job_123", "status": "succeeded", "text": 'héllo 你好 — "quoted"', "segments": [1, 2.5, None]}


# ---------------------------------------------------------------------------------------------------- receiver


class Attempts:
    """An `on_attempt` callback that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str | None]] = []

    async def __call__(self, attempt: int, error: str | None) -> None:
        self.calls.append((attempt, error))


async def _deliver(url: str, **kwargs: object) -> Delivery:
    options: dict[str, object] = {"event": "job.succeeded", "secret": SECRET, "backoff_s": 0.01, "timeout_s": 5.0}
    options.update(kwargs)
    async with httpx.AsyncClient() as client:
        return await deliver(client, url, PAYLOAD, **options)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- signing


async def test_delivery_is_signed_and_the_receiver_can_verify_it(receiver: Receiver) -> None:
    attempts = Attempts()
    result = await _deliver(receiver.url, on_attempt=attempts)
    assert result == Delivery(delivered=True, attempts=1, status=200, error=None)
    assert attempts.calls == [(1, None)]
    [request] = receiver.requests
    assert request.path == "/hook"
    assert json.loads(request.body.decode()) == PAYLOAD
    assert request.body == json.dumps(PAYLOAD, separators=(",", ":"), ensure_ascii=False).encode()
    assert "你好".encode() in request.body  # UTF-8, not \u escapes
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "asr-server-webhook"
    assert request.headers[EVENT_HEADER.lower()] == "job.succeeded"
    assert request.headers["x-asr-delivery-attempt"] == "1"

    header = request.headers[SIGNATURE_HEADER.lower()]
    timestamp = int(header.split(",")[0].removeprefix("t="))
    assert abs(time.time() - timestamp) < 5
    assert verify(SECRET, request.body, header)
    assert not verify(b"another secret", request.body, header)
    assert not verify(SECRET, request.body.replace(b"succeeded", b"failed"), header)
    assert not verify(SECRET, request.body + b" ", header)


def test_signature_format_and_replay_window() -> None:
    body = b'{"id":"job_1"}'
    header = sign(SECRET, body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify(SECRET, body, header, now=1_700_000_000)
    assert verify(SECRET, body, header, now=1_700_000_000 + DEFAULT_TOLERANCE_S - 1)
    assert verify(SECRET, body, header, now=1_700_000_000 - DEFAULT_TOLERANCE_S + 1)
    assert not verify(SECRET, body, header, now=1_700_000_000 + DEFAULT_TOLERANCE_S + 1)  # replayed later
    assert not verify(SECRET, body, header, now=1_700_000_000 - DEFAULT_TOLERANCE_S - 1)  # from the future
    assert not verify(SECRET, body, header, now=1_700_000_000 + 60, tolerance_s=30)
    assert not verify(SECRET, body, header)  # the real clock: 2023 is long past
    # the timestamp is signed: moving it into the window breaks the signature
    moved = header.replace("t=1700000000", f"t={int(time.time())}")
    assert not verify(SECRET, body, moved)
    # a second v1 (secret rotation) is accepted when one of them matches
    rotated = f"{header},v1={sign(b'old secret', body, 1_700_000_000).split('v1=')[1]}"
    assert verify(SECRET, body, rotated, now=1_700_000_000)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "t=,v1=",
        "t=abc,v1=" + "0" * 64,
        "v1=" + "0" * 64,  # no timestamp
        "t=1700000000",  # no signature
        "t=1700000000,v1=xyz",
        "t=1700000000,v1=" + "é" * 64,  # non-ASCII: compare_digest would raise on it
        "t=-5,v1=" + "0" * 64,
        "t=1700000000,t=1700000000,v1=" + "0" * 64,
        "t=1e9,v1=" + "0" * 64,
    ],
)
def test_malformed_signature_headers_are_rejected(header: str) -> None:
    assert verify(SECRET, b"{}", header, now=1_700_000_000) is False


def test_verify_never_raises_on_wrong_types() -> None:
    assert verify(SECRET, b"{}", None, now=0) is False  # type: ignore[arg-type]
    assert verify(SECRET, "{}", sign(SECRET, b"{}", 0), now=0) is False  # type: ignore[arg-type]


async def test_no_secret_means_no_signature_header(receiver: Receiver) -> None:
    result = await _deliver(receiver.url, secret=None, event="job.failed")
    assert result.delivered
    [request] = receiver.requests
    assert SIGNATURE_HEADER.lower() not in request.headers
    assert request.headers[EVENT_HEADER.lower()] == "job.failed"


# ---------------------------------------------------------------------------------------------------- retries


async def test_5xx_and_dropped_connections_are_retried_then_succeed(receiver: Receiver) -> None:
    receiver.script = [503, "drop", 500]
    attempts = Attempts()
    result = await _deliver(receiver.url, on_attempt=attempts)
    assert result == Delivery(delivered=True, attempts=4, status=200, error=None)
    assert [a for a, _ in attempts.calls] == [1, 2, 3, 4]
    assert attempts.calls[0] == (1, "HTTP 503")
    assert attempts.calls[1][1] is not None and "HTTP" not in attempts.calls[1][1]  # no answer at all
    assert attempts.calls[2] == (3, "HTTP 500")
    assert attempts.calls[3] == (4, None)
    assert [r.headers["x-asr-delivery-attempt"] for r in receiver.requests] == ["1", "2", "3", "4"]
    # every attempt carries the same body and its own valid signature
    assert all(r.body == receiver.requests[0].body for r in receiver.requests)
    assert all(verify(SECRET, r.body, r.headers[SIGNATURE_HEADER.lower()]) for r in receiver.requests)


async def test_gives_up_after_max_attempts_and_reports_the_last_status(receiver: Receiver) -> None:
    receiver.script = [502, 503, 504]
    attempts = Attempts()
    result = await _deliver(receiver.url, max_attempts=3, on_attempt=attempts)
    assert result == Delivery(delivered=False, attempts=3, status=504, error="HTTP 504")
    assert attempts.calls == [(1, "HTTP 502"), (2, "HTTP 503"), (3, "HTTP 504")]
    assert len(receiver.requests) == 3


async def test_connection_refused_is_retried_max_attempts_times() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    attempts = Attempts()
    start = time.monotonic()
    result = await _deliver(url, max_attempts=3, backoff_s=0.05, on_attempt=attempts)
    elapsed = time.monotonic() - start
    assert not result.delivered
    assert result.attempts == 3
    assert result.status is None
    assert result.error is not None and "connection failed" in result.error
    assert [a for a, _ in attempts.calls] == [1, 2, 3]
    assert all(error == result.error for _, error in attempts.calls)
    assert elapsed >= (0.05 + 0.1) * 0.9  # backed off twice: 0.05 then 0.1 s, minus at most 10% jitter


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_4xx_is_permanent_and_not_retried(receiver: Receiver, status: int) -> None:
    receiver.script = [status]
    attempts = Attempts()
    result = await _deliver(receiver.url, on_attempt=attempts)
    assert result == Delivery(delivered=False, attempts=1, status=status, error=f"HTTP {status} (not retried)")
    assert attempts.calls == [(1, f"HTTP {status} (not retried)")]
    assert len(receiver.requests) == 1
    assert "private answer" not in (result.error or "")  # the receiver's body is never read back


async def test_timeout_is_retried(receiver: Receiver) -> None:
    receiver.script = [("slow", 1.5)]
    attempts = Attempts()
    start = time.monotonic()
    result = await _deliver(receiver.url, timeout_s=0.3, on_attempt=attempts)
    assert time.monotonic() - start < 1.4
    assert result == Delivery(delivered=True, attempts=2, status=200, error=None)
    assert attempts.calls == [(1, "timed out after 0.3 s"), (2, None)]
    assert len(receiver.requests) == 2


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_not_followed(receiver: Receiver, status: int) -> None:
    receiver.script = [(status, {"Location": receiver.url.replace("/hook", "/elsewhere")})]
    async with httpx.AsyncClient(follow_redirects=True) as client:  # even on a client that would follow
        result = await deliver(client, receiver.url, PAYLOAD, event="job.succeeded", secret=SECRET, backoff_s=0.01)
    assert result == Delivery(
        delivered=False, attempts=1, status=status, error=f"HTTP {status}: redirects are not followed"
    )
    assert [r.path for r in receiver.requests] == ["/hook"]


async def test_retry_after_is_honoured(receiver: Receiver) -> None:
    receiver.script = [(429, {"Retry-After": "1"}), (503, {"Retry-After": "0"})]
    result = await _deliver(receiver.url, backoff_s=0.01)
    assert result == Delivery(delivered=True, attempts=3, status=200, error=None)
    first, second, third = (r.at for r in receiver.requests)
    assert second - first >= 0.95  # waited as told, not backoff_s
    assert third - second < 0.5


async def test_retry_after_is_capped_and_dates_fall_back_to_backoff(receiver: Receiver) -> None:
    receiver.script = [(429, {"Retry-After": "3600"}), (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})]
    start = time.monotonic()
    result = await _deliver(receiver.url, backoff_s=0.01, max_backoff_s=0.2)
    assert result.delivered and result.attempts == 3
    assert time.monotonic() - start < 1.5
    first, second, _ = (r.at for r in receiver.requests)
    assert 0.15 <= second - first < 1.0


def test_backoff_doubles_is_capped_and_jittered_by_at_most_10_percent() -> None:
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (7, 60.0), (500, 60.0)]:
        delays = [retry_delay(attempt, backoff_s=1.0, max_backoff_s=60.0) for _ in range(200)]
        assert all(base * 0.9 <= d <= base for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert retry_delay(1, backoff_s=1.0, max_backoff_s=60.0, retry_after_s=30) == 30
    assert retry_delay(1, backoff_s=1.0, max_backoff_s=60.0, retry_after_s=600) == 60


# ------------------------------------------------------------------------------------ callback and cancellation


async def test_on_attempt_errors_propagate(receiver: Receiver) -> None:
    receiver.script = [503]

    async def failing(attempt: int, error: str | None) -> None:
        raise RuntimeError("the store is down")

    with pytest.raises(RuntimeError, match="the store is down"):
        await _deliver(receiver.url, on_attempt=failing)
    assert len(receiver.requests) == 1  # stopped at once


async def test_cancellation_propagates_during_backoff() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    attempts = Attempts()
    task = asyncio.create_task(_deliver(url, backoff_s=30.0, on_attempt=attempts))
    while not attempts.calls:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(attempts.calls) == 1


async def test_cancellation_propagates_during_a_request(receiver: Receiver) -> None:
    receiver.script = [("slow", 1.0)]
    task = asyncio.create_task(_deliver(receiver.url))
    while not receiver.requests:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_invalid_url_fails_at_once_without_raising() -> None:
    attempts = Attempts()
    result = await _deliver("ftp://example.com/hook", on_attempt=attempts)
    assert not result.delivered and result.attempts == 1 and result.status is None
    assert result.error is not None and "http" in result.error
    assert attempts.calls == [(1, result.error)]


# ---------------------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url", ["https://example.com/hook", "http://127.0.0.1:8080/x?token=a", "HTTPS://Example.COM", "http://[::1]:9/"]
)
def test_check_webhook_url_accepts_http_and_https(url: str) -> None:
    assert check_webhook_url(url) == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("http://", "no host"),
        ("https:///path", "no host"),
        ("http://:80/x", "no host"),
        ("", "empty"),
        ("   ", "empty"),
        ("not a url", "whitespace"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com/\r\nX-Injected: 1", "whitespace"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://example.com:port/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
    ],
)
def test_check_webhook_url_rejects_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_webhook_url(url)
