"""API-key authentication and per-key concurrency, as pure ASGI middleware.

HTTP: `Authorization: Bearer KEY` or `X-API-Key: KEY`. WebSocket: the same headers, the `api_key` query
parameter, or the `openai-insecure-api-key.KEY` subprotocol browsers use; checked BEFORE the socket is
accepted. A refused handshake gets a plain HTTP answer with the JSON envelope where the server supports the
ASGI "websocket.http.response" extension (uvicorn does): 401 for a bad key, 429 with Retry-After for too many
in flight. Elsewhere it is closed before acceptance (the server answers 403) with code 1008 or 1013.
Keys are compared in constant time and never logged: the log and the per-key counters use a short hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs

from fastapi.responses import JSONResponse
from loguru import logger
from starlette.types import ASGIApp, Receive, Scope, Send

from asr_server.config import Settings
from asr_server.errors import QueueFull, ServiceError, Unauthorized

WS_POLICY_VIOLATION = 1008
WS_TRY_AGAIN_LATER = 1013
_SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
KEY_ID_STATE = "api_key_id"  # the request's key id in `request.state` (unset when no keys are configured)


def load_api_keys(settings: Settings) -> list[bytes]:
    """Keys from API_KEYS and, one per line, from API_KEYS_FILE (blank lines and # comments ignored)."""
    keys = [key.get_secret_value().encode() for key in settings.api_keys]
    if settings.api_keys_file is not None:
        for line in Path(settings.api_keys_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line.encode())
    return keys


def key_id(key: bytes) -> str:
    """A stable, non-reversible label for a key, safe for logs and metrics."""
    return hashlib.sha256(key).hexdigest()[:8]


def _presented_key(scope: Scope) -> bytes | None:
    headers = dict(scope.get("headers") or [])
    authorization = headers.get(b"authorization", b"")
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    if b"x-api-key" in headers:
        return headers[b"x-api-key"].strip()
    if scope["type"] == "websocket":
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("api_key"):
            return query["api_key"][0].encode()
        for protocol in headers.get(b"sec-websocket-protocol", b"").decode("latin-1").split(","):
            protocol = protocol.strip()
            if protocol.startswith(_SUBPROTOCOL_PREFIX):
                return protocol[len(_SUBPROTOCOL_PREFIX) :].encode()
    return None


class APIKeyAuth:
    """Refuse requests without a valid key, except on open paths; bound concurrent requests per key."""

    def __init__(self, app: ASGIApp, keys: list[bytes], open_paths: set[str], max_per_key: int = 0) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = open_paths
        self.max_per_key = max_per_key
        self._in_flight: Counter[str] = Counter()

    def _match(self, presented: bytes | None) -> bytes | None:
        if presented is None:
            return None
        found = None
        for key in self.keys:  # compare against every key: timing does not reveal which one matched
            if hmac.compare_digest(presented, key):
                found = key
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.keys or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        key = self._match(_presented_key(scope))
        if key is None:
            logger.warning("refused {} {}: missing or invalid API key", scope["type"], scope.get("path"))
            await self._refuse(scope, send, Unauthorized("missing or invalid API key"))
            return
        label = key_id(key)
        if self.max_per_key and self._in_flight[label] >= self.max_per_key:
            await self._refuse(
                scope,
                send,
                QueueFull(
                    f"this API key already has {self.max_per_key} requests in flight (MAX_CONCURRENT_PER_KEY)",
                    code="too_many_concurrent_requests",
                    headers={"Retry-After": "1"},
                ),
            )
            return
        scope.setdefault("state", {})[KEY_ID_STATE] = label  # whose jobs a request may see (request.state)
        self._in_flight[label] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._in_flight[label] -= 1
            if self._in_flight[label] <= 0:
                del self._in_flight[label]

    @staticmethod
    async def _refuse(scope: Scope, send: Send, error: ServiceError) -> None:
        headers = dict(error.headers)
        if isinstance(error, Unauthorized):
            headers["WWW-Authenticate"] = "Bearer"
        if scope["type"] == "websocket":
            await _refuse_handshake(scope, send, error, headers)
            return
        response = JSONResponse(error.envelope(), status_code=error.status_code, headers=headers)
        await response(scope, _no_receive, send)


async def _refuse_handshake(scope: Scope, send: Send, error: ServiceError, headers: dict[str, str]) -> None:
    """Answer a WebSocket handshake with the HTTP status and envelope, so "too many" differs from "wrong key"."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = json.dumps(error.envelope()).encode()
        raw_headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        raw_headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "websocket.http.response.start", "status": error.status_code, "headers": raw_headers})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    # Without the extension, closing before accepting makes the server answer 403; the code tells them apart
    # for servers that pass it on.
    code = WS_TRY_AGAIN_LATER if isinstance(error, QueueFull) else WS_POLICY_VIOLATION
    await send({"type": "websocket.close", "code": code, "reason": error.message})


async def _no_receive() -> dict[str, str]:  # pragma: no cover - JSONResponse never reads
    return {"type": "http.disconnect"}
