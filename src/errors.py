"""Errors that cross layers with their HTTP status, and the one JSON error envelope.

The engine and queue raise these; the gateway turns them into
`{"error": {"message", "type", "code", "param"}}` (OpenAI's shape). Anything else that escapes is
logged with the request id and answered with one generic 500.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An error with a status and a machine-readable code, safe to show to the client."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}
        # Fields added beside "error" in the body, e.g. the transcript when translation failed.
        self.extra: dict[str, Any] = {}

    def envelope(self) -> dict[str, Any]:
        return {**error_envelope(self.message, self.error_type, self.code, self.param), **self.extra}


def error_envelope(message: str, error_type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "code": code, "param": param}}


class InvalidRequest(ServiceError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class InvalidField(InvalidRequest):
    """A field with a value the API does not accept: 400, as OpenAI answers (the SDKs map 400 to
    BadRequestError; a 422 would surface as UnprocessableEntityError and break litellm's mapping)."""

    code = "invalid_value"


class NotFound(InvalidRequest):
    """What the request names does not exist (OpenAI answers an unknown model id so)."""

    status_code = 404
    code = "not_found"


class AudioDecodeError(InvalidRequest):
    status_code = 400
    code = "invalid_audio"


class UnsupportedMediaType(InvalidRequest):
    status_code = 415
    code = "unsupported_format"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    code = "too_large"


class Unauthorized(ServiceError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class QueueFull(ServiceError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"


class JobTimeout(ServiceError):
    status_code = 504
    error_type = "timeout_error"
    code = "timeout"


class EngineUnavailable(ServiceError):
    """The model cannot be loaded or the engine is not ready."""

    status_code = 503
    error_type = "server_error"
    code = "engine_unavailable"


class EngineRestarting(EngineUnavailable):
    """The engine is being restarted and the work was not started: the worker puts the jobs back in the
    queue, where they wait (within their deadline) for the new engine. Never sent to a client as such."""

    code = "engine_restarting"


class UpstreamError(ServiceError):
    """An external service (the translation LLM) failed."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_failed"


class InternalError(ServiceError):
    """A bug: something raised that no layer turned into a ServiceError. Details go to the log only."""


class InferenceError(ServiceError):
    """The engine raised while running a batch; the message is generic, details go to the log."""

    status_code = 500
    error_type = "server_error"
    code = "inference_failed"
