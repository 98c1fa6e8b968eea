"""The server side of one live-stream WebSocket, shared by `/ws/transcribe` and `/v1/realtime`.

Whatever the client does, a stream keeps its deadlines, frees its slot and leaves the event loop to others:

- Reads happen in the background into a small inbox: while the handler is busy, the inbox fills, reading
  stops and TCP slows the client down. At most STREAM_MAX_MESSAGES_PER_SECOND are read (a token bucket);
  beyond it the reader pauses, so a flood of tiny frames costs a bounded amount of CPU, and a client kept
  over the rate for FLOOD_GRACE_S is closed (its backlog would otherwise outlive it by minutes).
- Every send is bounded by STREAM_SEND_TIMEOUT and by the stream's idle and session deadlines: a client
  that does not read its events (its TCP window stays full) is dropped instead of holding the slot.
- A client that left, or was dropped, ends the stream quietly (`ClientGone`), never with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from fastapi import WebSocket
from loguru import logger
from starlette.websockets import WebSocketDisconnect, WebSocketState

from asr_server.config import Settings

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008  # idle timeout, session too long (a bad API key is refused earlier, by APIKeyAuth)
CLOSE_TRY_AGAIN = 1013  # too many streams, the model cannot keep up
ECHO_CHARS = 64  # how much of a client's bad value an error message repeats: errors must not amplify input
FLOOD_GRACE_S = 1.0  # a client held back by the message rate this long without a pause is closed
_FLOODING = "stream.flooding"  # the reader's own inbox message: the client kept over the rate


class StreamClosing(Exception):
    """End a stream: finalise what was heard (unless `finish=False`), send an error event, close."""

    def __init__(
        self,
        code: int,
        reason: str,
        error_code: str | None = None,
        message: str = "",
        *,
        finish: bool = True,
        handshake: bool = True,
    ) -> None:
        super().__init__(reason)
        self.code, self.reason, self.error_code, self.message, self.finish = code, reason, error_code, message, finish
        # False: no closing handshake. Waiting for the peer's close frame means reading (and parsing) all
        # it sends meanwhile, which a flooding client makes expensive.
        self.handshake = handshake


class ClientGone(Exception):
    """The client closed the socket or stopped reading it: end the stream without sending anything more."""


def parse_json(text: str) -> Any:
    """`json.loads`, with deeply nested input (which overflows the parser's recursion) refused as invalid."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def echo(value: object) -> str:
    """A client's value quoted in an error message, shortened."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 3] + "..."


class StreamConnection:
    """One accepted live-stream socket: bounded reads, bounded sends and the stream's deadlines."""

    def __init__(self, websocket: WebSocket, settings: Settings) -> None:
        self.ws = websocket
        self._settings = settings
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=4)
        self._send_lock = asyncio.Lock()
        self._gone = asyncio.Event()
        self._gone_waiter = asyncio.ensure_future(self._gone.wait())
        self._session_deadline = time.monotonic() + settings.stream_max_session_seconds
        self.last_audio = time.monotonic()
        self._rate = float(settings.stream_max_messages_per_second)
        self._tokens = self._rate  # a second's worth of burst
        self._refilled = time.monotonic()
        self.throttled = 0  # times the reader paused for the message rate
        self._throttled_since: float | None = None  # start of the current run of pauses
        self._reader = asyncio.create_task(self._read())

    # --- deadlines ---------------------------------------------------------------------------
    def audio_arrived(self) -> None:
        self.last_audio = time.monotonic()

    @property
    def deadline(self) -> float:
        """The monotonic time the stream must end by, unless audio arrives first."""
        return min(self.last_audio + self._settings.stream_idle_timeout, self._session_deadline)

    def seconds_left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)

    def _deadline_passed(self) -> StreamClosing:
        settings = self._settings
        # Decide by which deadline was nearer, not by re-reading the clock: timers may fire a hair early.
        if self._session_deadline <= self.last_audio + settings.stream_idle_timeout:
            limit = f"STREAM_MAX_SESSION_SECONDS={settings.stream_max_session_seconds:g}"
            return StreamClosing(
                CLOSE_POLICY, "maximum session length", "session_too_long", f"the stream reached {limit}"
            )
        idle = f"no audio for {settings.stream_idle_timeout:g} s (STREAM_IDLE_TIMEOUT)"
        return StreamClosing(CLOSE_POLICY, "idle timeout", "idle_timeout", idle)

    # --- inbound -----------------------------------------------------------------------------
    async def get(self) -> dict[str, Any]:
        """The next ASGI message. Raises StreamClosing when a deadline passes first, ClientGone when the
        client was dropped. Messages already waiting are handed out even past the idle deadline (audio may
        be among them), never past the session deadline."""
        message = await self._next()
        if message["type"] == _FLOODING:
            rate = f"STREAM_MAX_MESSAGES_PER_SECOND={self._rate:g}"
            message = f"over {rate} for {FLOOD_GRACE_S:g} s"
            raise StreamClosing(
                CLOSE_POLICY, "too many messages", "rate_limited", message, finish=False, handshake=False
            )
        return message

    async def _next(self) -> dict[str, Any]:
        if self._gone.is_set():
            raise ClientGone
        if not self._queue.empty():
            if time.monotonic() >= self._session_deadline:
                raise self._deadline_passed()
            return self._queue.get_nowait()
        getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait(
            {getter, self._gone_waiter}, timeout=self.seconds_left(), return_when=asyncio.FIRST_COMPLETED
        )
        if getter in done:
            return getter.result()
        getter.cancel()  # asyncio.Queue keeps an item whose getter was cancelled
        if self._gone.is_set():
            raise ClientGone
        raise self._deadline_passed()

    async def _read(self) -> None:
        """Move client messages into the inbox; blocks (and so stops reading the socket) when it is full."""
        while True:
            try:
                message = await self.ws.receive()
            except Exception:
                message = {"type": "websocket.disconnect"}
            if message["type"] == "websocket.receive" and not await self._take_token():
                await self._queue.put({"type": _FLOODING})
                return
            await self._queue.put(message)
            if message["type"] == "websocket.disconnect":
                return
            # uvicorn hands over queued frames without yielding: a flood must not keep the loop to itself.
            await asyncio.sleep(0)

    async def _take_token(self) -> bool:
        """Wait for the message rate to allow one more message; False once the client kept over it too long."""
        now = time.monotonic()
        self._tokens = min(self._rate, self._tokens + (now - self._refilled) * self._rate)
        self._refilled = now
        if self._tokens >= self._rate / 2:  # the client paused: it is not flooding
            self._throttled_since = None
        if self._tokens < 1.0:
            if self._throttled_since is None:
                self._throttled_since = now
            elif now - self._throttled_since > FLOOD_GRACE_S:
                logger.info("closing a live stream over STREAM_MAX_MESSAGES_PER_SECOND={:g}", self._rate)
                return False
            self.throttled += 1
            await asyncio.sleep((1.0 - self._tokens) / self._rate)
            self._tokens, self._refilled = 1.0, time.monotonic()
        self._tokens -= 1.0
        return True

    # --- outbound ----------------------------------------------------------------------------
    async def send_text(self, text: str) -> None:
        """Send one message within STREAM_SEND_TIMEOUT and before the stream's deadline (a send that starts
        past it, while closing, gets the send timeout): a client that does not read in time is dropped."""
        if self._gone.is_set():
            raise ClientGone
        limit = self._settings.stream_send_timeout
        left = self.deadline - time.monotonic()
        if left > 0:
            limit = min(limit, left)
        try:
            await asyncio.wait_for(self._send_locked(text), limit)
        except TimeoutError:
            logger.info("dropped a live-stream client that did not read its events for {:.1f} s", limit)
            self.drop()
            raise ClientGone from None
        except (WebSocketDisconnect, RuntimeError, OSError):  # closed under us: RuntimeError once closed
            self.drop()
            raise ClientGone from None

    async def _send_locked(self, text: str) -> None:
        async with self._send_lock:
            await self.ws.send_text(text)

    async def close(self, closing: StreamClosing) -> None:
        """Send the close frame (bounded like any send), or just drop the client; quiet when it is gone."""
        if not closing.handshake:
            self.drop()
        if self._gone.is_set() or self.ws.client_state != WebSocketState.CONNECTED:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(closing.code, closing.reason), self._settings.stream_send_timeout)

    def drop(self) -> None:
        """Give up on the client: every wait on it ends with ClientGone."""
        self._gone.set()

    @property
    def gone(self) -> bool:
        return self._gone.is_set()

    async def aclose(self) -> None:
        """Stop reading; the handler returns next, and the server closes the socket."""
        for task in (self._reader, self._gone_waiter):
            task.cancel()
        for task in (self._reader, self._gone_waiter):
            with contextlib.suppress(asyncio.CancelledError):
                await task
