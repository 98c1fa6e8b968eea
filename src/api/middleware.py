"""Pure ASGI middleware: request ids and access metrics, the upload size limit, and notes on a response."""

from __future__ import annotations

import contextvars
import time
import uuid
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from loguru import logger
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asr_server.errors import InternalError, PayloadTooLarge, ServiceError
from asr_server.logger import request_id_var
from asr_server.metrics import Metrics

# Multipart overhead allowed on top of MAX_UPLOAD_MB before the body is cut off.
MULTIPART_SLACK_BYTES = 64 * 1024
AUDIO_WARNING_HEADER = b"x-audio-warning"


@dataclass
class ResponseNotes:
    """What a handler learnt that the response's headers should say, whatever formats the body."""

    audio_warning: str | None = None


# Holds one mutable ResponseNotes per request: a handler fills it in, RequestContext reads it when headers go out.
response_notes_var: contextvars.ContextVar[ResponseNotes | None] = contextvars.ContextVar(
    "response_notes", default=None
)


def note_audio_warning(warning: str) -> None:
    """Send `X-Audio-Warning: <warning>` with the current request's response (truncated or damaged audio)."""
    notes = response_notes_var.get()
    if notes is not None:
        notes.audio_warning = warning


class BodySizeLimit:
    """Refuse request bodies beyond a limit while they stream in, before they are buffered whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_error(send, PayloadTooLarge(_too_large_message(self.max_bytes)))
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(_too_large_message(self.max_bytes))
            return message

        await self.app(scope, limited_receive, send)


def _too_large_message(max_bytes: int) -> str:
    return f"the request body is larger than {max_bytes / 1024 / 1024:.0f} MiB (MAX_UPLOAD_MB)"


async def _send_error(send: Send, error: ServiceError) -> None:
    response = JSONResponse(error.envelope(), status_code=error.status_code, headers=error.headers)
    await response({"type": "http"}, _never_receive, send)


async def _never_receive() -> Message:  # pragma: no cover - JSONResponse does not read
    return {"type": "http.disconnect"}


class RequestContext:
    """Pure ASGI middleware: a request id on every log line and in `X-Request-ID`, plus an access log.

    Pure ASGI rather than BaseHTTPMiddleware so handlers still see the client's disconnect message.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex[:16]
        token = request_id_var.set(rid)
        notes = ResponseNotes()
        notes_token = response_notes_var.set(notes)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(b"x-request-id", rid.encode("latin-1"))]
                if notes.audio_warning:
                    extra.append((AUDIO_WARNING_HEADER, notes.audio_warning.encode("latin-1", "replace")))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Answered here, inside the request's context, so that even a 500 carries X-Request-ID and its log
            # line names the request; Starlette's own last-resort handler runs outside every middleware.
            if scope["type"] != "http" or status:
                raise  # the response has started (or a WebSocket): nothing more can be said to the client
            logger.opt(exception=exc).error("unhandled error on {} {}", scope.get("method"), scope.get("path"))
            await _send_error(send_with_id, InternalError(f"internal server error (request id {rid})"))
        finally:
            elapsed = time.perf_counter() - started
            if self.metrics is not None and scope["type"] == "http":
                # The route template, not the raw path, keeps label cardinality bounded.
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                self.metrics.requests.labels(route, str(status)).inc()
                self.metrics.request_seconds.labels(route).observe(elapsed)
            logger.info(
                "{} {} -> {} in {:.1f} ms",
                scope.get("method", "WS"),
                scope.get("path", ""),
                status,
                elapsed * 1000,
            )
            response_notes_var.reset(notes_token)
            request_id_var.reset(token)
