"""Ray mode: the service as a Ray Serve application on a local cluster, two model replicas, on CPU.

One local Ray cluster for the module (starting one takes ~10 s); the fake-engine application and the
tiny "hello world" checkpoint application are deployed on it in turn under the same name. The first
two tests need no Ray: the default modes must work without it installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from asr_server.config import Settings
from asr_server.engines import Engine, TranscribeItem, Transcript
from asr_server.engines.fake import FakeEngine
from asr_server.server import create_app

from support import encode, free_port, noise, running_server, tone

KEY = "ray-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
NO_RAY = "import sys; sys.modules['ray'] = None\n"  # any `import ray` now fails, as without the extra


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_ray_flag_without_the_extra_fails_at_start_naming_it() -> None:
    code = NO_RAY + "from asr_server.cli import main; sys.exit(main(['serve', '--ray', '--engine', 'fake']))"
    result = _python(code)
    assert result.returncode == 2, result.stderr
    assert "ray" in result.stderr and "extra" in result.stderr


def test_single_process_mode_needs_no_ray(tmp_path: Path) -> None:
    code = NO_RAY + (
        "import httpx\n"
        "from asr_server.config import Settings\n"
        "from asr_server.server import create_app\n"
        "from asr_server.testing import running_server\n"
        "with running_server(create_app(Settings(asr_engine='fake', warmup=False))) as url:\n"
        "    r = httpx.post(url + '/transcribe', files={'file': open(sys.argv[1], 'rb')}, timeout=30)\n"
        "    assert r.status_code == 200, r.text\n"
    )
    wav = tmp_path / "a.wav"
    wav.write_bytes(encode(tone(0.5)))
    result = subprocess.run(
        [sys.executable, "-c", code, str(wav)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_replica_settings_follow_the_cluster() -> None:
    from asr_server.engines.ray.engine import RayEngine
    from asr_server.engines.ray.serve import resolve_settings

    def resolved(cluster: dict[str, float], **values: Any) -> tuple[Any, ...]:
        s = resolve_settings(Settings(asr_engine="fake", **values), cluster)
        return s.ray_gpus_per_replica, s.ray_min_replicas, s.ray_max_replicas

    assert resolved({"GPU": 4.0, "CPU": 32.0}) == (1.0, 1, 4)  # one replica per GPU
    assert resolved({"GPU": 4.0}, ray_gpus_per_replica=0.5) == (0.5, 1, 8)
    assert resolved({"CPU": 2.0}) == (0.0, 1, 1)  # no GPUs: one CPU replica unless told
    assert resolved({"CPU": 2.0}, ray_min_replicas=2) == (0.0, 2, 2)
    assert resolved({"GPU": 2.0}, ray_min_replicas=0, ray_max_replicas=6) == (1.0, 0, 6)
    with pytest.raises(ValueError, match="RAY_MAX_REPLICAS"):
        resolve_settings(Settings(ray_min_replicas=3, ray_max_replicas=2), {})
    # The gateway keeps the target number of batches in flight for each possible replica.
    settings = resolve_settings(Settings(asr_engine="fake", ray_target_queued_per_replica=3), {"GPU": 4.0})
    assert RayEngine(settings, handle=object()).concurrency == 12


class _Fragile(FakeEngine):
    """Runs out of memory on any batch of two or more holding a "big" clip; raises on a "crash" clip."""

    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        if len(items) > 1 and any(item.context.startswith("big") for item in items):
            raise MemoryError
        if any(item.context == "crash" for item in items):
            raise RuntimeError("boom")
        return super().transcribe(items)


class _LocalHandle:
    """Stands in for the replicas' DeploymentHandle: calls a ModelReplica in this process."""

    def __init__(self, replica: Any, fail: BaseException | None = None) -> None:
        self._replica, self._fail = replica, fail

    def __getattr__(self, method: str) -> Any:
        handle = self

        class Response:
            def __init__(self, *args: Any) -> None:
                self._args = args

            def result(self, timeout_s: float | None = None) -> Any:
                if handle._fail is not None:
                    raise handle._fail
                return asyncio.run(getattr(handle._replica, method)(*self._args))

        return type("Method", (), {"remote": staticmethod(Response)})


def _local_replica(engine: Engine) -> Any:
    from asr_server.engines.hosting import EngineExecutor
    from asr_server.engines.ray.serve import ModelReplica

    replica = ModelReplica.__new__(ModelReplica)  # the constructor needs a Ray replica context
    replica._engine, replica._id = engine, "local"
    replica._executor = EngineExecutor(engine)
    engine.load()
    return replica


def test_errors_cross_the_replica_boundary_as_in_single_process_mode() -> None:
    pytest.importorskip("ray")
    from ray.exceptions import ActorDiedError

    from asr_server.engines.ray.engine import RayEngine

    settings = Settings(asr_engine="fake", warmup=False, max_batch_size=4, batch_wait_ms=200, log_level="ERROR")
    prompts = ["big one", "crash", "fine", "big two"]

    def answers(engine: Engine) -> list[tuple[int, Any]]:
        with running_server(create_app(settings, engine=engine)) as url:
            responses = asyncio.run(_uploads(url, [{"model": "m", "prompt": p} for p in prompts], {}))
        return [(r.status_code, r.json()) for r in responses]

    expected = answers(_Fragile())
    assert [status for status, _ in expected] == [200, 500, 200, 200]  # halved on out-of-memory, crash alone
    assert answers(RayEngine(settings, _LocalHandle(_local_replica(_Fragile())))) == expected

    dead = RayEngine(settings, _LocalHandle(_local_replica(_Fragile()), fail=ActorDiedError()))
    dead._loaded = True  # as if a replica had answered before dying
    for status, body in answers(dead):
        assert status == 503 and body["error"]["code"] == "replica_failed"


# --- on a local Ray cluster ----------------------------------------------------------------------
Deploy = Callable[[Settings], str]


def _fake_settings() -> Settings:
    return Settings(
        asr_engine="fake",
        warmup=False,
        stream_vad="energy",
        log_level="WARNING",
        api_keys=KEY,
        max_batch_size=2,  # many small batches, so both replicas get some
        ray_min_replicas=2,
        ray_max_replicas=2,
        ray_cpus_per_replica=0,
    )


def _hello_settings(model_dir: Path) -> Settings:
    return Settings(
        asr_engine="transformers",
        model_id=str(model_dir),
        forced_aligner_id="",
        device="cpu",
        cpu_threads=1,
        max_new_tokens=12,
        log_level="WARNING",
        ray_min_replicas=2,
        ray_max_replicas=2,
        ray_cpus_per_replica=0,
        request_timeout=240,
        # The killed-replica test sends 96 uploads at once: the default queue (64) plus the batches in flight
        # is exactly that, so a 429 could answer part of the wave; this test is about replica failure.
        queue_max=128,
    )


@pytest.fixture(scope="module")
def deploy() -> Iterator[Deploy]:
    """Deploy settings as the application (replacing the one deployed before) and return its base URL."""
    ray = pytest.importorskip("ray")
    from ray import serve

    from asr_server.engines.ray.engine import APP_NAME
    from asr_server.engines.ray.serve import build_application, resolve_settings

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deployed: dict[str, str] = {}

    def run(settings: Settings) -> str:
        key = settings.model_dump_json()
        if deployed.get("key") != key:
            serve.run(build_application(resolve_settings(settings, ray.cluster_resources())), name=APP_NAME)
            deployed["key"] = key
        return f"http://127.0.0.1:{port}"

    try:
        yield run
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def single_process() -> Iterator[str]:
    """The fake-engine settings in single-process mode: the reference answers."""
    with running_server(create_app(_fake_settings())) as url:
        yield url


def _replicas(url: str) -> dict[str, dict[str, int]]:
    return httpx.get(f"{url}/ready", timeout=30).json()["ray_replicas"]


async def _uploads(url: str, requests: list[dict[str, Any]], headers: dict[str, str]) -> list[httpx.Response]:
    clip = encode(tone(1.0))
    async with httpx.AsyncClient(base_url=url, timeout=240, headers=headers) as http:
        return await asyncio.gather(
            *(http.post("/v1/audio/transcriptions", files={"file": ("a.wav", clip)}, data=r) for r in requests)
        )


def _same(ray_response: httpx.Response, reference: httpx.Response) -> None:
    assert ray_response.status_code == reference.status_code, ray_response.text
    assert ray_response.headers["content-type"] == reference.headers["content-type"]
    assert ray_response.text == reference.text
    assert len(ray_response.headers.get_list("x-request-id")) == 1


@pytest.mark.slow
def test_uploads_spread_over_both_replicas_and_match_single_process_mode(deploy: Deploy, single_process: str) -> None:
    url = deploy(_fake_settings())
    formats = ["json", "verbose_json", "text", "srt", "vtt"]
    requests = [
        {"model": "qwen3-asr", "prompt": f"clip number {i}", "response_format": formats[i % len(formats)]}
        for i in range(40)
    ]
    for _ in range(3):  # the router picks replicas at random: a round may, rarely, use only one
        got = asyncio.run(_uploads(url, requests, AUTH))
        expected = asyncio.run(_uploads(single_process, requests, AUTH))
        for ray_response, reference in zip(got, expected, strict=True):
            _same(ray_response, reference)
        if len(_replicas(url)) == 2:
            break
    served = _replicas(url)
    assert len(served) == 2 and all(counts["items"] > 0 for counts in served.values()), served
    metrics = httpx.get(f"{url}/metrics", headers=AUTH, timeout=30).text
    assert metrics.count("asr_ray_replica_items_total{replica=") == 2


@pytest.mark.slow
def test_errors_and_auth_are_the_same_as_single_process(deploy: Deploy, single_process: str) -> None:
    url = deploy(_fake_settings())
    clip = encode(tone(0.5))
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/transcribe", {"files": {"file": ("a.wav", clip)}}),  # no key
        ("POST", "/transcribe", {"headers": {"Authorization": "Bearer wrong"}, "files": {"file": ("a.wav", clip)}}),
        ("POST", "/transcribe", {"headers": AUTH}),  # no file
        ("POST", "/transcribe", {"headers": AUTH, "files": {"file": ("a.wav", b"not audio")}}),
        ("POST", "/transcribe", {"headers": AUTH, "files": {"file": ("a.wav", clip)}, "data": {"language": "xx"}}),
        ("GET", "/transcribe", {"headers": AUTH}),
        ("GET", "/nowhere", {"headers": AUTH}),
        ("GET", "/v1/models", {"headers": AUTH}),
        ("GET", "/health", {}),
    ]
    for method, path, kwargs in cases:
        _same(
            httpx.request(method, url + path, timeout=60, **kwargs),
            httpx.request(method, single_process + path, timeout=60, **kwargs),
        )


def _pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def _stream(url: str, prompt: str) -> list[dict[str, Any]]:
    silence = np.zeros(16_000, np.float32)
    audio = np.concatenate([silence, tone(1.0), silence, tone(1.5, freq=300.0), silence])
    async with websockets.connect(url.replace("http", "ws") + f"/ws/transcribe?api_key={KEY}") as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "start", "prompt": prompt}))
        for offset in range(0, audio.size, 3200):
            await ws.send(_pcm(audio[offset : offset + 3200]))
        await ws.send(json.dumps({"type": "stop"}))
        events = []
        async for message in ws:
            events.append(json.loads(message))
        return events


@pytest.mark.slow
def test_a_stream_through_the_ingress(deploy: Deploy, single_process: str) -> None:
    url = deploy(_fake_settings())

    def finals(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(e["segment_id"], e["text"], e["start"], e["end"]) for e in events if e["type"] == "final"]

    got = asyncio.run(asyncio.wait_for(_stream(url, "streamed through ray"), 120))
    expected = asyncio.run(asyncio.wait_for(_stream(single_process, "streamed through ray"), 120))
    assert [e for e in got if e["type"] == "error"] == []
    assert finals(got) == finals(expected)
    assert [text for _, text, _, _ in finals(got)] == ["streamed through ray"] * 2


@pytest.mark.slow
def test_tiny_checkpoint_on_two_replicas_survives_a_killed_replica(deploy: Deploy, hello_asr_dir: Path) -> None:
    url = deploy(_hello_settings(hello_asr_dir))
    clip = encode(noise(20.0, seed=3))
    expected = {
        "text": "hello world",
        "language": "english",
        "language_code": "en",
        "duration": 20.0,
        "usage": {"type": "duration", "seconds": 20},
    }

    async def uploads(n: int, kill: str | None = None) -> tuple[list[httpx.Response], list[int]]:
        """n concurrent uploads; with `kill`, SIGKILL that replica once it is running this wave's batches."""
        async with httpx.AsyncClient(base_url=url, timeout=240) as http:
            before = (await http.get("/ready")).json()["ray_replicas"]
            tasks = [asyncio.create_task(http.post("/transcribe", files={"file": ("a.wav", clip)})) for _ in range(n)]
            health = []
            if kill is not None:
                while (await http.get("/ready")).json()["ray_replicas"][kill]["batches"] == before[kill]["batches"]:
                    await asyncio.sleep(0.02)
                os.kill(before[kill]["pid"], signal.SIGKILL)
                for _ in range(10):  # the gateway keeps answering
                    health.append((await http.get("/health")).status_code)
                    await asyncio.sleep(0.05)
            return await asyncio.gather(*tasks), health

    responses, _ = asyncio.run(uploads(8))
    assert [r.json() for r in responses] == [expected] * 8
    for _ in range(3):
        if len(_replicas(url)) == 2:
            break
        asyncio.run(uploads(8))
    served = _replicas(url)
    assert len(served) == 2, served

    victim = next(iter(served))
    responses, health = asyncio.run(asyncio.wait_for(uploads(96, kill=victim), 240))
    assert health == [200] * 10
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 48, statuses  # the other replica's work, at least
    for response in responses:
        body = response.json()
        assert body == expected if response.status_code == 200 else body["error"]["code"] == "replica_failed"
    failures = httpx.get(f"{url}/ready", timeout=30).json()["ray_replica_failures"]
    assert (statuses.count(503) > 0) == (failures > 0), (statuses, failures)
    print(f"with a replica killed: {statuses.count(200)} answered, {statuses.count(503)} got 503 ({failures} batches)")

    # Ray replaces the replica; every request is answered meanwhile, and the new replica takes work.
    deadline = time.monotonic() + 240
    while True:
        responses, _ = asyncio.run(uploads(8))
        assert [r.json() for r in responses] == [expected] * 8
        now = _replicas(url)
        if len(set(now) - {victim}) == 2:
            break
        assert time.monotonic() < deadline, f"no replacement replica served: {now}"
        time.sleep(1.0)
