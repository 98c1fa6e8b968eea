"""A request whose client leaves is aborted inside vLLM: its slot in the running batch is freed at once.

The random-weight tiny checkpoint rarely emits EOS, so each request decodes up to MAX_NEW_TOKENS and runs for
seconds; the service's own `asr_inference_seconds` (the engine time of each batch) shows whether the abandoned
request ran to the end or was stopped when its client left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asr_server.config import Settings
from asr_server.server import create_app

from support import encode, noise, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tiny_vllm_asr_dir: Path) -> Iterator[str]:
    settings = Settings(use_vllm=True, model_id=str(tiny_vllm_asr_dir), forced_aligner_id="", dtype="float32",
                        vllm_kv_cache_gib=0.5, vllm_enforce_eager=True, vllm_max_num_seqs=4, max_new_tokens=1500,
                        max_audio_seconds=30, max_batch_size=1, preload=True, log_level="WARNING")  # fmt: skip
    with running_server(create_app(settings)) as base:
        deadline = time.monotonic() + 300
        while httpx.get(f"{base}/ready", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the vLLM engine did not become ready"
            time.sleep(1)
        yield base


def _engine_time(url: str) -> tuple[float, float]:
    """(batches, total engine seconds) of transcription so far, from /metrics."""
    count = total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        if family.name == "asr_inference_seconds":
            for sample in family.samples:
                if sample.labels.get("kind") == "transcribe":
                    count += sample.value if sample.name.endswith("_count") else 0.0
                    total += sample.value if sample.name.endswith("_sum") else 0.0
    return count, total


def test_a_request_whose_client_left_is_aborted(url: str) -> None:
    clip = encode(noise(2.0, seed=5))
    started = time.perf_counter()
    full = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", clip)}, timeout=300)
    full_seconds = time.perf_counter() - started
    assert full.status_code == 200
    assert full_seconds > 4, f"the checkpoint stopped after {full_seconds:.1f} s: too short to show an abort"

    batches, engine_seconds = _engine_time(url)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1 s and closes its connection
        httpx.post(f"{url}/transcribe", files={"file": ("b.wav", clip)}, timeout=httpx.Timeout(30, read=1.0))
    deadline = time.monotonic() + full_seconds * 2
    while _engine_time(url)[0] == batches:
        assert time.monotonic() < deadline, "the abandoned request's batch never finished"
        time.sleep(0.1)
    abandoned_seconds = _engine_time(url)[1] - engine_seconds
    assert abandoned_seconds < full_seconds / 2, (
        f"the abandoned request ran {abandoned_seconds:.1f} s of the {full_seconds:.1f} s a full one takes"
    )
    # The service keeps serving, and vLLM's scheduler is not left holding the aborted sequence.
    results: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                httpx.post(f"{url}/transcribe", files={"file": ("c.wav", clip)}, timeout=300).status_code
            )
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200, 200]
