"""Ray mode: the same service as a Ray Serve application, its model on replicas across GPUs and machines.

Two deployments:

- `Gateway` (ingress, RAY_INGRESS_REPLICAS): the whole single-process app from `create_app`, so
  validation, auth, formats, error envelopes, the queue, priorities and batching are the same code.
  Its engine is a `RayEngine`, which sends each batch to a model replica.
- `ModelReplica` (RAY_MIN_REPLICAS..RAY_MAX_REPLICAS, RAY_GPUS_PER_REPLICA each): builds the real
  engine with `create_engine` from the driver's settings, loads and warms it up before Ray routes
  anything to it, and runs engine calls on one engine thread, like gateway mode's worker process.

A WebSocket stream is one ASGI connection held by one gateway replica for its whole life, so its
session state never moves; each utterance decode is a stateless batch any model replica may run.

    asr-server serve --ray                                   # RAY_ADDRESS, or a new local cluster
    serve run asr_server.engines.ray.serve:app_builder model_id=...  # Ray's own CLI, on the cluster it finds
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from loguru import logger
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from asr_server.config import Settings
from asr_server.engines import create_engine
from asr_server.engines.hosting import EngineExecutor, engine_error
from asr_server.engines.ray.engine import (
    APP_NAME,
    REPLICA_DEPLOYMENT,
    RayEngine,
    ReplicaReply,
    per_replica_in_flight,
)
from asr_server.errors import ServiceError
from asr_server.logger import configure_logging

GATEWAY_DEPLOYMENT = "Gateway"
SHUTDOWN_TIMEOUT_S = 30.0  # for removing the application at exit
# Requests a gateway replica takes on beyond its own limits (queue, streams): /health, /ready, /metrics,
# uploads still being decoded. The gateway answers 429/1013 itself; Ray's limit must never bind first.
GATEWAY_SLACK_REQUESTS = 256


class ModelReplica:
    """One model per replica (one per GPU): the `Engine` calls of the gateway's batches."""

    async def __init__(self, settings: Settings) -> None:
        from ray import serve

        # The replica runs the real engine; the Ray and gateway-mode flags belong to the gateway.
        self._settings = settings.model_copy(update={"use_ray": False, "gateway_mode": False})
        configure_logging(settings.log_level, settings.log_json, settings.log_file)
        self._engine = create_engine(self._settings)
        self._executor = EngineExecutor(self._engine)
        self._id = serve.get_replica_context().replica_tag
        # Loading here, in the constructor, means Ray routes nothing to a replica before its model is ready.
        await self._run(self._engine.load)
        if self._settings.warmup:
            await self._run(self._engine.warmup)
        logger.info("model replica {} (pid {}) ready: {}", self._id, os.getpid(), self._engine.describe())

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._executor.run(fn, *args)

    def _reply(self, results: list[Any] | None = None, error: ServiceError | None = None) -> ReplicaReply:
        return ReplicaReply(replica=self._id, pid=os.getpid(), results=results or [], error=error)

    async def info(self) -> ReplicaReply:
        info = {"loaded": self._engine.loaded, "supports_alignment": self._engine.supports_alignment}
        return self._reply([{**info, "model_id": self._engine.model_id, **self._engine.describe()}])

    async def transcribe(self, items: list[Any]) -> ReplicaReply:
        return await self._serve("transcribe", self._engine.transcribe, items)

    async def align(self, items: list[Any]) -> ReplicaReply:
        return await self._serve("align", self._engine.align, items)

    async def _serve(self, kind: str, fn: Callable[[list[Any]], list[Any]], items: list[Any]) -> ReplicaReply:
        # Errors travel as values: the gateway raises them as single-process mode would (same message,
        # same code), and its ModelWorker retries a failed batch job by job as usual.
        try:
            return self._reply(await self._run(fn, items))
        except ServiceError as exc:
            return self._reply(error=exc)
        except Exception as exc:  # an out-of-memory keeps its code: the gateway retries that batch in halves
            return self._reply(error=engine_error(exc, kind))

    def check_health(self) -> None:
        """Called by Ray periodically; raising makes Ray replace this replica."""
        if not self._engine.loaded:
            raise RuntimeError("the model is not loaded")


class Gateway:
    """The ingress deployment: the single-process app, its engine forwarding batches to the model replicas."""

    def __init__(self, settings: Settings, replicas: Any) -> None:
        self._settings = settings
        self._replicas = replicas  # a DeploymentHandle to ModelReplica (Ray resolves the bound deployment)

    def __serve_build_asgi_app__(self) -> Any:
        from asr_server.server import create_app

        engine = RayEngine(self._settings, self._replicas)
        app = create_app(self._settings, engine=engine)
        app.state.services.metrics.registry.register(_ReplicaCollector(engine))
        app.add_middleware(_ProxyAddsRequestId)  # outermost
        return app


class _ProxyAddsRequestId:
    """Drop the app's `X-Request-ID` response header: Serve's proxy adds its own, with the same value
    (the proxy sets the request's header first, and the app echoes it), so clients see one as usual."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_without_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
            await send(message)

        await self.app(scope, receive, send_without_id if scope["type"] == "http" else send)


class _ReplicaCollector(Collector):
    """Per-replica counters on /metrics, read from the engine at scrape time."""

    def __init__(self, engine: RayEngine) -> None:
        self._engine = engine

    def collect(self) -> Iterable[CounterMetricFamily]:
        batches = CounterMetricFamily(
            "asr_ray_replica_batches", "Batches run by each model replica", labels=["replica"]
        )
        items = CounterMetricFamily("asr_ray_replica_items", "Jobs run by each model replica", labels=["replica"])
        for replica, counts in self._engine.replica_stats().items():
            batches.add_metric([replica], counts["batches"])
            items.add_metric([replica], counts["items"])
        failures = CounterMetricFamily(
            "asr_ray_replica_failures",
            "Batches lost because their model replica stopped",
            value=self._engine.replica_failures,
        )
        return [batches, items, failures]


# --- building and running the application ------------------------------------------------------
def resolve_settings(settings: Settings, cluster: dict[str, float]) -> Settings:
    """Fill in what depends on the cluster (GPUs per replica, most replicas); reject impossible values."""
    gpus = settings.ray_gpus_per_replica
    if gpus is None:
        gpus = 1.0 if cluster.get("GPU", 0.0) >= 1 else 0.0
    most = settings.ray_max_replicas
    if most is None:
        fit = int(cluster.get("GPU", 0.0) // gpus) if gpus > 0 else 1
        most = max(1, fit, settings.ray_min_replicas)
    if most < max(1, settings.ray_min_replicas):
        raise ValueError(f"RAY_MAX_REPLICAS={most} is below RAY_MIN_REPLICAS={settings.ray_min_replicas} (or 1)")
    return settings.model_copy(update={"ray_gpus_per_replica": gpus, "ray_max_replicas": most, "use_ray": True})


def build_application(settings: Settings) -> Any:
    """The Serve application (gateway bound to the model replicas) for resolved settings."""
    from ray import serve

    replica_options: dict[str, Any] = {
        "name": REPLICA_DEPLOYMENT,
        "ray_actor_options": {"num_gpus": settings.ray_gpus_per_replica, "num_cpus": settings.ray_cpus_per_replica},
        "max_ongoing_requests": per_replica_in_flight(settings),
    }
    if settings.ray_min_replicas == settings.ray_max_replicas:
        replica_options["num_replicas"] = settings.ray_max_replicas
    else:
        # Ray counts each replica's batches, running and waiting (at it or in the handle's queue), and
        # scales to keep them at the target; the gateway keeps target x max batches in flight when busy.
        replica_options["autoscaling_config"] = {
            "min_replicas": settings.ray_min_replicas,
            "max_replicas": settings.ray_max_replicas,
            "target_ongoing_requests": settings.ray_target_queued_per_replica,
        }
    # The gateway writes its own access log (with the request id); Ray's would repeat every call.
    quiet = {"enable_access_log": False}
    replicas = serve.deployment(ModelReplica, logging_config=quiet, **replica_options)
    gateway = serve.deployment(
        serve.ingress()(Gateway),
        name=GATEWAY_DEPLOYMENT,
        num_replicas=settings.ray_ingress_replicas,
        # The gateway is I/O and light decoding; a reserved CPU would keep a one-machine cluster from
        # fitting its model replicas.
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=settings.queue_max + settings.stream_max_concurrent + GATEWAY_SLACK_REQUESTS,
        logging_config=quiet,
    )
    return gateway.bind(settings, replicas.bind(settings))


def app_builder(args: dict[str, str]) -> Any:
    """For Ray's CLI and config files (`serve run asr_server.engines.ray.serve:app_builder key=value ...`):
    settings from the environment, overridden by the arguments."""
    import ray

    cluster = ray.cluster_resources() if ray.is_initialized() else {}
    return build_application(resolve_settings(Settings(**args), cluster))


def serve_on_ray(settings: Settings) -> int:
    """`asr-server serve --ray`: deploy on the cluster RAY_ADDRESS names (or a new local one) and stay
    in the foreground; Ctrl-C or SIGTERM removes the application."""
    import ray
    from ray import serve

    ray.init()  # reads RAY_ADDRESS itself; without it, starts a local cluster
    # After ray.init, which installs its own SIGTERM handler (it would end the process without clean-up).
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        try:
            resolved = resolve_settings(settings, ray.cluster_resources())
        except ValueError as exc:
            print(f"asr-server: {exc}", file=sys.stderr)
            return 2
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_application(resolved), name=APP_NAME, route_prefix="/")
        logger.info(
            "asr-server on Ray at http://{}:{}: {}..{} model replicas, {} GPU each",
            settings.host,
            settings.port,
            resolved.ray_min_replicas,
            resolved.ray_max_replicas,
            resolved.ray_gpus_per_replica,
        )
        while not stop.wait(1.0):
            pass
        # Bounded: a SIGTERM sent to the whole process group also stops the local cluster under us.
        deleting = threading.Thread(target=serve.delete, args=(APP_NAME,), daemon=True)
        deleting.start()
        deleting.join(SHUTDOWN_TIMEOUT_S)
        return 0
    finally:
        ray.shutdown()
