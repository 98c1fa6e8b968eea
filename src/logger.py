"""Loguru configuration, run when the app is created (never at import).

Standard-library logging (uvicorn, transformers, httpx) is routed into loguru, and every line carries
the request id of the request being served (a contextvar set by the gateway's middleware). Credentials are
redacted from every line, whoever logs it: uvicorn prints a WebSocket's path with its query (`?api_key=`).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from loguru import logger

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "<cyan>{extra[request_id]}</cyan> | {name}:{line} - <level>{message}</level>"
)

REDACTED = "[redacted]"
# How clients send keys (see asr_server.api.security): query parameters, Authorization and X-API-Key headers, and the
# OpenAI Realtime subprotocol. Each pattern keeps its name and replaces the value.
_CREDENTIAL_PATTERNS = (
    re.compile(r"(?i)((?:api[_-]?key|access[_-]?token)=)[^\s&\"'#]+"),
    re.compile(r"(?i)(\bbearer\s+)[^\s\"',;]+"),
    re.compile(r"(?i)(x-api-key[\"']?\s*[:=,]\s*[\"']?(?:b[\"'])?)[^\s\"',;)]+"),
    re.compile(r"(?i)(openai-insecure-api-key\.)[^\s\"',;]+"),
)


def redactor(secrets: Iterable[str] = ()) -> Callable[[str], str]:
    """A function that removes credentials from a log message: known key values and any key-shaped field."""
    values = sorted({secret for secret in secrets if len(secret) >= 4}, key=len, reverse=True)
    literal = re.compile("|".join(re.escape(value) for value in values)) if values else None

    def redact(message: str) -> str:
        if literal is not None:
            message = literal.sub(REDACTED, message)
        for pattern in _CREDENTIAL_PATTERNS:
            message = pattern.sub(lambda match: match.group(1) + REDACTED, message)
        return message

    return redact


class InterceptHandler(logging.Handler):
    """Send standard-library log records to loguru, keeping the caller's location."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = inspect.currentframe(), 0
        while frame and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def _patcher(redact: Callable[[str], str]) -> Callable[[Any], None]:
    def patch(record: Any) -> None:
        # A client's X-Request-ID is echoed on every line: it could be anything, a key included.
        record["extra"]["request_id"] = redact(str(record["extra"].get("request_id", request_id_var.get())))
        record["message"] = redact(record["message"])

    return patch


def configure_logging(
    level: str = "INFO", json_lines: bool = False, log_file: Path | None = None, secrets: Iterable[str] = ()
) -> None:
    """(Re)configure loguru sinks and intercept standard logging. Safe to call more than once.

    `secrets` (API keys, the LLM's key) never appear in a line; key-shaped fields are redacted whatever their value.
    """
    for _ in range(16):
        # A file sink that cannot flush on close (disk full) raises after being detached; go on with the rest.
        try:
            logger.remove()
            break
        except OSError:
            continue
    logger.configure(patcher=_patcher(redactor(secrets)))
    # diagnose=False: loguru would print the values of local variables in tracebacks, keys included.
    logger.add(sys.stderr, level=level, serialize=json_lines, format=_TEXT_FORMAT, backtrace=False, diagnose=False)
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            # enqueue: writes happen on loguru's thread, so a slow or full disk never blocks a request.
            logger.add(
                log_file,
                level=level,
                serialize=json_lines,
                format=_TEXT_FORMAT,
                rotation="50 MB",
                retention="7 days",
                enqueue=True,
                catch=True,
                diagnose=False,
            )
        except OSError as exc:
            logger.error("cannot open log file {}: {}; logging to stderr only", log_file, exc)
    # The standard loggers filter at the same level: at level 0, websockets (under uvicorn) formats a debug
    # record for every frame and uvicorn wraps the app in its per-message TRACE logger, only for loguru to
    # drop them; a flood of tiny WebSocket frames then stalls the event loop for whole seconds.
    logging.basicConfig(handlers=[InterceptHandler()], level=logger.level(level).no, force=True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        std_logger = logging.getLogger(name)
        std_logger.handlers = [InterceptHandler()]
        std_logger.propagate = False
    # One line per HTTP call to the LLM or the worker process is noise at INFO.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logger.level(level).no))
