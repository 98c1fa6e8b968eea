"""Loguru configuration, run when the app is created (never at import).

Standard-library logging (uvicorn, transformers, httpx) is routed into loguru, and every line carries
the request id of the request being served (a contextvar set by the gateway's middleware).
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import sys
from pathlib import Path
from typing import Any

from loguru import logger

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

_TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "<cyan>{extra[request_id]}</cyan> | {name}:{line} - <level>{message}</level>"
)


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


def _add_request_id(record: dict[str, Any]) -> None:
    record["extra"].setdefault("request_id", request_id_var.get())


def configure_logging(level: str = "INFO", json_lines: bool = False, log_file: Path | None = None) -> None:
    """(Re)configure loguru sinks and intercept standard logging. Safe to call more than once."""
    for _ in range(16):
        # A file sink that cannot flush on close (disk full) raises after being detached; go on with the rest.
        try:
            logger.remove()
            break
        except OSError:
            continue
    logger.configure(patcher=_add_request_id)
    logger.add(sys.stderr, level=level, serialize=json_lines, format=_TEXT_FORMAT, backtrace=False)
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
