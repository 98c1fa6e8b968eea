"""Gateway mode's engine: batches go to a supervised worker process that holds the model.

The worker process (`asr_server.engines.gateway.process`) is started on the first load and watched by a thread.
If it dies (crash, SIGKILL, out of GPU memory), the batch in flight fails at once with 503, and a new
process is started (and the model reloaded) right away when the model was loaded, so queued jobs run
on it. `unload()` stops the process, which frees all of its GPU memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from enum import Enum
from pathlib import Path
from typing import Any

import httpx
from loguru import logger
from pydantic import SecretStr

from asr_server.config import Settings
from asr_server.engines.base import AlignedUnit, AlignItem, Engine, TranscribeItem, Transcript
from asr_server.engines.hosting import aligner_expected
from asr_server.errors import EngineRestarting, EngineUnavailable, InferenceError

START_TIMEOUT_S = 120.0
LOAD_TIMEOUT_S = 3600.0  # first load may download weights
# A worker process that dies this many times in a row before it finishes loading is broken, not unlucky: from
# then on its load failure is reported (503) instead of jobs waiting for a restart that never succeeds.
MAX_START_ATTEMPTS = 3


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the gateway dies, so a killed gateway leaves no orphan holding a GPU."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class WorkerProcessDied(EngineUnavailable):
    """The worker process died while it ran this batch: the batch's jobs fail (503)."""

    code = "worker_restarting"


class WorkerProcessNotRunning(EngineRestarting):
    """The worker process is down or starting: the batch was never sent, so its jobs wait in the queue."""


# Always handed to the worker process, whatever the gateway's settings came from ("" = unset).
_ALWAYS_PASSED = ("asr_engine", "model_id", "forced_aligner_id", "device", "dtype", "max_new_tokens", "max_batch_size")


def worker_environment(settings: Settings) -> dict[str, str]:
    """The worker process's environment: the gateway's, plus every setting given in code or on the command
    line (QUANTIZE, USE_VLLM, ...), so both processes build the engine from the same settings. Lists and
    secrets (API keys, CORS origins) concern the gateway only and are not passed."""
    env = dict(os.environ)
    for name in (*_ALWAYS_PASSED, *sorted(settings.model_fields_set)):
        value = getattr(settings, name)
        if isinstance(value, list | dict | SecretStr):
            continue
        if value is None:
            if name in _ALWAYS_PASSED:
                env[name.upper()] = ""
            else:
                env.pop(name.upper(), None)
            continue
        if isinstance(value, Enum):
            value = value.value
        env[name.upper()] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    env["GATEWAY_MODE"] = "0"
    return env


def remote_concurrency(settings: Settings) -> int:
    """Batches the worker process's engine runs at once, known from the settings it is started with."""
    if settings.uses_vllm:
        from asr_server.engines.vllm_engine import vllm_batches_in_flight  # light: vllm loads in load()

        return vllm_batches_in_flight(settings)
    return 1


class RemoteEngine(Engine):
    name = "remote"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._socket_dir = Path(tempfile.mkdtemp(prefix="asr-worker-"))
        self._socket = self._socket_dir / "worker.sock"
        self._lock = threading.RLock()
        self._process: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None
        self._loaded = False
        self._want_loaded = False
        self._supports_alignment = aligner_expected(settings)
        self._describe: dict[str, Any] = {"engine": f"{settings.asr_engine.value} (worker process)"}
        self.model_id = settings.resolved_model_id()  # until the worker process says what it loaded
        # The engine in the worker process takes this many batches at once (vLLM: several; others: 1); the
        # gateway's worker must keep as many in flight, and the httpx client is safe to share across threads.
        self.concurrency = remote_concurrency(settings)
        self.restarts = 0
        self._failed_starts = 0  # consecutive starts that died before the model was loaded
        # Watches the process from load() to unload(): an engine that was never loaded runs no thread.
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- process management ------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process and self._process.poll() is None else None

    def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._socket.unlink()
        env = worker_environment(self._settings)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "asr_server.engines.gateway.process", "--uds", str(self._socket)],
            env=env,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self._client = httpx.Client(transport=httpx.HTTPTransport(uds=str(self._socket)), base_url="http://worker")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise WorkerProcessDied(f"the worker process exited at start (code {self._process.returncode})")
            try:
                self._client.get("/health", timeout=1.0)
                logger.info("worker process {} started", self._process.pid)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise EngineUnavailable("the worker process did not start in time")

    def _stop_process(self) -> None:
        process, self._process = self._process, None
        if self._client is not None:
            self._client.close()
            self._client = None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def _reap_if_died(self) -> bool:
        """Under the lock: notice a worker process that died on its own (not stopped by us)."""
        process = self._process
        if process is None or process.poll() is None:
            return False
        logger.error("worker process {} died (exit code {})", process.pid, process.returncode)
        self._process, self._loaded = None, False
        self.restarts += 1
        return True

    def _watch(self) -> None:
        """Restart a worker process that died while it should be serving."""
        while not self._stopping.wait(0.2):
            with self._lock:
                if self._reap_if_died() and self._want_loaded:
                    try:
                        self._start_and_load()
                    except EngineUnavailable as exc:
                        logger.error("restarting the worker process failed: {}", exc.message)

    def _start_and_load(self) -> None:
        try:
            if self._process is None or self._process.poll() is not None:
                self._spawn()
            response = self._post(
                "/load", timeout=LOAD_TIMEOUT_S, params={"warmup": str(self._settings.warmup).lower()}
            )
        except WorkerProcessDied as exc:  # killed while starting: try again, unless it keeps dying
            self._stop_process()  # cleared here, so the watcher does not reap (and count) it a second time
            self._failed_starts += 1
            self.restarts += 1
            if self._failed_starts >= MAX_START_ATTEMPTS:
                raise EngineUnavailable(
                    f"the worker process died {self._failed_starts} times in a row while starting: {exc.message}",
                    code="worker_failed",
                ) from exc
            raise WorkerProcessNotRunning(f"the worker process is restarting ({exc.message})") from exc
        self._failed_starts = 0
        body = response.json()
        self._supports_alignment = bool(body.get("supports_alignment"))
        self._describe = {k: v for k, v in body.items() if k not in ("loaded", "supports_alignment")}
        self._describe["engine"] = f"{body.get('engine', '?')} (worker process)"
        self.model_id = str(body.get("model_id") or self.model_id)
        self._loaded = True

    def _post(self, path: str, *, timeout: float, **kwargs: Any) -> httpx.Response:
        client = self._client
        if client is None:
            raise WorkerProcessNotRunning("the model worker process is not running; it is being restarted")
        try:
            response = client.post(path, timeout=timeout, **kwargs)
        except httpx.ConnectError as exc:  # nothing reached the process: the work did not start
            raise WorkerProcessNotRunning("the model worker process is down; it is being restarted") from exc
        except httpx.TransportError as exc:
            raise WorkerProcessDied("the model worker process stopped while serving this request; retry") from exc
        if response.status_code >= 400:
            body = response.json()
            error_type = EngineUnavailable if response.status_code == 503 else InferenceError
            raise error_type(body.get("message", "worker error"), code=body.get("code"))
        return response

    # --- the Engine contract -----------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._loaded and self.pid is not None

    def load(self) -> None:
        with self._lock:
            self._reap_if_died()
            self._want_loaded = True
            if self._watcher is None or not self._watcher.is_alive():
                self._stopping.clear()
                self._watcher = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
                self._watcher.start()
            try:
                self._start_and_load()
            except EngineRestarting:
                raise  # the next load (a queued job's) starts a fresh process; _want_loaded stays set
            except EngineUnavailable:
                self._want_loaded = False
                self._stop_process()
                raise

    def unload(self) -> None:
        with self._lock:
            self._want_loaded = False
            self._loaded = False
            self._stop_process()
            watcher, self._watcher = self._watcher, None
            self._stopping.set()
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5)  # outside the lock: the watcher takes it on each round

    def warmup(self) -> None:
        """The worker process warms up inside /load."""

    @staticmethod
    def _multipart(audios: list[Any], meta: list[dict[str, Any]]) -> dict[str, Any]:
        files = [
            ("audio", (f"{i}.f32", a.astype("<f4").tobytes(), "application/octet-stream"))
            for i, a in enumerate(audios)
        ]
        return {"files": files, "data": {"meta": json.dumps(meta)}}

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        payload = self._multipart(
            [i.audio for i in items], [{"language": i.language, "context": i.context} for i in items]
        )
        response = self._post("/transcribe", timeout=self._settings.request_timeout, **payload)
        return [Transcript.from_wire(r) for r in response.json()]

    @property
    def supports_alignment(self) -> bool:
        return self._supports_alignment

    def align(self, items: list[AlignItem]) -> list[list[AlignedUnit]]:
        payload = self._multipart([i.audio for i in items], [{"text": i.text, "language": i.language} for i in items])
        response = self._post("/align", timeout=self._settings.request_timeout, **payload)
        return [[AlignedUnit(text=t, start=s, end=e) for t, s, e in units] for units in response.json()]

    def describe(self) -> dict[str, object]:
        return {**self._describe, "worker_pid": self.pid, "worker_restarts": self.restarts}
