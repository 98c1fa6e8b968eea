"""Gateway mode: the model in a supervised worker process that survives SIGKILL, with the real engine."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from asr_server.config import Settings
from asr_server.server import create_app

from support import encode, noise, running_server

pytestmark = pytest.mark.slow


def _settings(model_dir: Path, **overrides: object) -> Settings:
    return Settings(
        gateway_mode=True,
        asr_engine="transformers",
        model_id=str(model_dir),
        forced_aligner_id="",
        device="cpu",
        max_new_tokens=12,
        log_level="WARNING",
        **overrides,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _worker_pid(url: str) -> int:
    return httpx.get(f"{url}/ready", timeout=10).json()["worker_pid"]


def test_worker_sigkill_under_load(hello_asr_dir: Path) -> None:
    with running_server(create_app(_settings(hello_asr_dir, preload=True))) as url:
        first_pid = _worker_pid(url)
        clip = encode(noise(8.0, seed=1))

        async def load_and_kill() -> tuple[list[int], list[int]]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as http:

                async def upload() -> int:
                    response = await http.post("/transcribe", files={"file": ("a.wav", clip)})
                    if response.status_code == 503:
                        assert response.json()["error"]["code"] == "worker_restarting"
                    else:
                        assert response.json()["text"] == "hello world"
                    return response.status_code

                tasks = [asyncio.create_task(upload()) for _ in range(24)]
                await asyncio.sleep(0.3)
                os.kill(first_pid, signal.SIGKILL)
                health = []
                for _ in range(10):  # the gateway keeps answering while the worker restarts
                    health.append((await http.get("/health")).status_code)
                    await asyncio.sleep(0.05)
                return await asyncio.gather(*tasks), health

        statuses, health = asyncio.run(asyncio.wait_for(load_and_kill(), 180))
        assert set(statuses) <= {200, 503}
        assert statuses.count(200) >= 1, statuses
        assert health == [200] * 10
        # the worker is back (a new process) and serves
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/ready").json().get("worker_pid") in (None, first_pid):
            assert time.monotonic() < deadline, "the worker process was not restarted"
            time.sleep(0.2)
        ready = httpx.get(f"{url}/ready").json()
        assert ready["worker_restarts"] == 1
        after = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", clip)}, timeout=60)
        assert after.json()["text"] == "hello world"


def test_idle_timeout_stops_the_worker_and_the_next_request_restarts_it(hello_asr_dir: Path) -> None:
    with running_server(create_app(_settings(hello_asr_dir, idle_timeout=1.0))) as url:
        clip = encode(noise(2.0, seed=2))
        assert httpx.post(f"{url}/transcribe", files={"file": ("a.wav", clip)}, timeout=60).status_code == 200
        pid = _worker_pid(url)
        deadline = time.monotonic() + 30
        while _worker_pid(url) is not None:
            assert time.monotonic() < deadline, "the idle worker process was not stopped"
            time.sleep(0.2)
        while _alive(pid):  # really gone: its memory is freed
            assert time.monotonic() < deadline, "the idle worker process did not exit"
            time.sleep(0.2)
        response = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", clip)}, timeout=60)
        assert response.json()["text"] == "hello world"
        assert _worker_pid(url) not in (None, pid)


def test_settings_given_in_code_reach_the_worker_process(hello_asr_dir: Path) -> None:
    """QUANTIZE set on the Settings object (not in the environment) is what the worker process loads with."""
    assert "QUANTIZE" not in os.environ
    with running_server(create_app(_settings(hello_asr_dir, quantize="int8", preload=True))) as url:
        ready = httpx.get(f"{url}/ready", timeout=30).json()
        response = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", encode(noise(1.0)))}, timeout=60)
    assert ready["quantize"]["mode"] == "int8", ready
    assert response.status_code == 200
    assert response.json()["text"] == "hello world"


def test_the_gateway_keeps_as_many_batches_in_flight_as_the_worker_engine_takes() -> None:
    from asr_server.engines.gateway.engine import remote_concurrency, worker_environment

    vllm = Settings(gateway_mode=True, use_vllm=True, max_batch_size=8, vllm_max_num_seqs=64, api_keys=["k"])
    assert remote_concurrency(vllm) == 8
    assert remote_concurrency(Settings(gateway_mode=True, asr_engine="transformers")) == 1
    env = worker_environment(vllm)
    assert env["USE_VLLM"] == "1" and env["VLLM_MAX_NUM_SEQS"] == "64" and env["GATEWAY_MODE"] == "0"
    assert "API_KEYS" not in env or env["API_KEYS"] == os.environ.get("API_KEYS")  # keys stay in the gateway


def test_requests_arriving_while_the_worker_restarts_wait_for_it(hello_asr_dir: Path) -> None:
    """Two SIGKILLs 1.2 s apart (the second hits the new process while it loads) under steady load: only the jobs
    running on a killed process may fail; everything queued or arriving meanwhile runs on the new worker."""
    with running_server(create_app(_settings(hello_asr_dir, preload=True, max_batch_size=4, queue_max=512))) as url:
        clip = encode(noise(2.0, seed=3))

        async def steady_load_with_two_kills() -> list[tuple[float, int, str]]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as http:

                async def upload() -> tuple[float, int, str]:
                    sent = time.monotonic()
                    response = await http.post("/transcribe", files={"file": ("a.wav", clip)})
                    body = response.json()
                    return sent, response.status_code, body.get("text") or body["error"]["code"]

                tasks: list[asyncio.Task[tuple[float, int, str]]] = []
                kills: list[float] = []
                started = time.monotonic()
                while time.monotonic() - started < 6.0:  # a new upload every 100 ms for 6 s
                    tasks.append(asyncio.create_task(upload()))
                    elapsed = time.monotonic() - started
                    if (elapsed > 1.0 and not kills) or (len(kills) == 1 and elapsed > 2.2):
                        pid = (await http.get("/ready")).json().get("worker_pid")
                        if pid is not None:
                            os.kill(pid, signal.SIGKILL)
                            kills.append(elapsed)
                    await asyncio.sleep(0.1)
                assert len(kills) == 2, kills
                return await asyncio.gather(*tasks)

        results = asyncio.run(asyncio.wait_for(steady_load_with_two_kills(), 240))
        failed = [r for r in results if r[1] != 200]
        assert all(r[2] == "hello world" for r in results if r[1] == 200)
        # At most one batch (4 jobs) was running on each killed process.
        assert len(failed) <= 8, f"{len(failed)} of {len(results)} failed: {sorted({(r[1], r[2]) for r in failed})}"
        assert {(status, code) for _, status, code in failed} <= {(503, "worker_restarting")}
        assert httpx.get(f"{url}/ready", timeout=10).json()["worker_restarts"] >= 2


def _watchers() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "worker-watch" and t.is_alive()]


def test_the_worker_watch_thread_lives_from_load_to_unload() -> None:
    from asr_server.engines import create_engine

    engine = create_engine(Settings(gateway_mode=True, asr_engine="fake", log_level="WARNING"))
    assert _watchers() == []  # built but never loaded: nothing runs
    engine.load()
    try:
        assert engine.loaded and _watchers() == ["worker-watch"]
    finally:
        engine.unload()
    assert _watchers() == [] and engine.pid is None
