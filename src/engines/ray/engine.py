"""Ray mode's engine: the gateway's batches go to the model replicas of a Ray Serve deployment.

The queue, priorities, batching, validation and formats stay in the gateway (the `ModelWorker` drives
this engine like any other); a replica only runs `Engine` calls, like the worker process of gateway
mode. `concurrency` keeps enough batches in flight for every replica: Ray counts them (running and
waiting) per replica, which is what its autoscaler scales on.

A replica that dies fails the batch it was running with 503 `replica_failed`; batches on the other
replicas go on, and Ray starts a replacement.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from asr_server.config import Settings
from asr_server.engines.base import AlignedUnit, AlignItem, Engine, TranscribeItem, Transcript
from asr_server.engines.hosting import aligner_expected
from asr_server.errors import EngineUnavailable, ServiceError

APP_NAME = "asr-server"  # the Serve application
REPLICA_DEPLOYMENT = "ModelReplica"  # its model deployment, one model per replica
LOAD_TIMEOUT_S = 3600.0  # the first replica may be downloading weights


class ReplicaFailed(EngineUnavailable):
    code = "replica_failed"


@dataclass(frozen=True)
class ReplicaReply:
    """What a replica answers: its results, or the error the engine raised, and who ran it."""

    replica: str
    pid: int
    results: list[Any] = field(default_factory=list)
    error: ServiceError | None = None  # a ServiceError as raised, or InferenceError naming the type


def batches_in_flight(settings: Settings) -> int:
    """Batches one gateway keeps in flight: RAY_TARGET_QUEUED_PER_REPLICA for each of RAY_MAX_REPLICAS."""
    return max(1, (settings.ray_max_replicas or 1) * per_replica_in_flight(settings))


def per_replica_in_flight(settings: Settings) -> int:
    """Batches a replica accepts at once (one runs, the rest wait there so the model never idles)."""
    return max(1, math.ceil(settings.ray_target_queued_per_replica))


class RayEngine(Engine):
    name = "ray"

    def __init__(self, settings: Settings, handle: Any = None) -> None:
        """`handle`: the replicas' DeploymentHandle; None looks the running application's up on load."""
        self._settings = settings
        self._handle = handle
        self.concurrency = batches_in_flight(settings)
        self._loaded = False
        # Known for sure only once a replica answered; the subtitle pipeline asks before that.
        self._supports_alignment = aligner_expected(settings)
        self._describe: dict[str, Any] = {"engine": f"{settings.asr_engine.value} (ray)"}
        self.model_id = settings.resolved_model_id()  # until a replica says what it loaded
        self._lock = threading.Lock()  # engine threads update the counters concurrently
        self._served: dict[str, dict[str, int]] = {}
        self.replica_failures = 0

    def _replicas(self) -> Any:
        if self._handle is None:
            from ray import serve

            self._handle = serve.get_deployment_handle(REPLICA_DEPLOYMENT, app_name=APP_NAME)
        return self._handle

    def _call(self, method: str, *args: Any, timeout: float) -> ReplicaReply:
        from ray.exceptions import RayActorError  # ActorDiedError, ActorUnavailableError

        response = getattr(self._replicas(), method).remote(*args)
        try:
            reply: ReplicaReply = response.result(timeout_s=timeout)
        except RayActorError as exc:
            with self._lock:
                self.replica_failures += 1
            logger.error("a model replica failed while running a batch: {}", type(exc).__name__)
            raise ReplicaFailed("the model replica serving this request stopped; retry") from exc
        except TimeoutError as exc:
            response.cancel()
            raise ReplicaFailed(f"no model replica answered within {timeout:g} s") from exc
        if reply.error is not None:
            raise reply.error
        return reply

    def _count(self, reply: ReplicaReply, items: int) -> None:
        with self._lock:
            served = self._served.setdefault(reply.replica, {"pid": reply.pid, "batches": 0, "items": 0})
            served["batches"] += 1
            served["items"] += items

    # --- the Engine contract -----------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Replicas load (and warm up) their model when Ray starts them; this waits for one to answer."""
        try:
            reply = self._call("info", timeout=LOAD_TIMEOUT_S)
        except EngineUnavailable:
            raise
        except Exception as exc:  # no application deployed, Ray not reachable, ...
            raise EngineUnavailable(f"the Ray model replicas are not reachable: {type(exc).__name__}: {exc}") from exc
        info: dict[str, Any] = reply.results[0]
        self._supports_alignment = bool(info.get("supports_alignment"))
        self._describe = {k: v for k, v in info.items() if k not in ("loaded", "supports_alignment", "engine")}
        self._describe["engine"] = f"{info.get('engine', '?')} (ray)"
        self.model_id = str(info.get("model_id") or self.model_id)
        self._loaded = True

    def unload(self) -> None:
        """Replicas keep their model while they live; Ray's autoscaler (RAY_MIN_REPLICAS=0) frees them."""
        self._loaded = False

    def warmup(self) -> None:
        """Each replica warms up when it starts."""

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        reply = self._call("transcribe", items, timeout=self._settings.request_timeout)
        self._count(reply, len(items))
        return reply.results

    @property
    def supports_alignment(self) -> bool:
        return self._supports_alignment

    def align(self, items: list[AlignItem]) -> list[list[AlignedUnit]]:
        reply = self._call("align", items, timeout=self._settings.request_timeout)
        self._count(reply, len(items))
        return reply.results

    def replica_stats(self) -> dict[str, dict[str, int]]:
        """Batches and items each replica has run for this gateway, by replica id (with its pid)."""
        with self._lock:
            return {replica: dict(counts) for replica, counts in self._served.items()}

    def describe(self) -> dict[str, object]:
        return {**self._describe, "ray_replicas": self.replica_stats(), "ray_replica_failures": self.replica_failures}
