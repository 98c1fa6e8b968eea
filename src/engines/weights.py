"""Model weights: a local directory is used as is; a hub id is downloaded on first use.

The download goes through huggingface_hub's `snapshot_download`, which resumes interrupted files and
honours HF_HUB_OFFLINE / HF_HOME. Its progress is written to the log (one line per 10% per file) rather
than as terminal progress bars, so operators see it in `docker logs` and log files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loguru import logger

from asr_server.errors import EngineUnavailable

_LOG_EVERY = 0.10


def _logging_tqdm() -> type:
    from tqdm.auto import tqdm

    class LoggingTqdm(tqdm):  # type: ignore[misc, valid-type]
        """tqdm that reports to the log every 10% instead of drawing a bar."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True  # no terminal bar; `update` below still counts
            super().__init__(*args, **kwargs)
            self._logged = 0.0

        def update(self, n: float | None = 1) -> bool | None:
            self.n += n or 0
            if self.total:
                done = self.n / self.total
                if done - self._logged >= _LOG_EVERY or done >= 1.0 > self._logged:
                    self._logged = done
                    logger.info("downloading {}: {:.0%} of {:.1f} MB", self.desc or "weights", done, self.total / 1e6)
            return None

    return LoggingTqdm


def resolve_weights(model_id: str) -> str:
    """A local path to the model's files: `model_id` itself if it is a directory, else a hub download."""
    if Path(model_id).is_dir():
        return model_id
    if Path(model_id).is_absolute() or model_id.startswith((".", "~")):
        raise EngineUnavailable(f"model directory {model_id!r} does not exist", code="model_load_failed")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    logger.info("fetching {} from the hub (cached under HF_HOME; interrupted downloads resume)", model_id)
    try:
        return snapshot_download(model_id, tqdm_class=_logging_tqdm())
    except (HFValidationError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise EngineUnavailable(f"cannot download model {model_id!r}: {exc}", code="model_load_failed") from exc
