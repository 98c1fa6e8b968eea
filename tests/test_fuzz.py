"""Fuzzing: schemathesis against the service's own OpenAPI schema, plus malformed multipart bodies.

No generated request may produce a 5xx or break the server: every answer is a 2xx or a 4xx envelope.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr_server.config import Settings
from asr_server.server import create_app

from llm_stub import LLMStub
from support import running_server, wav_bytes


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    llm = LLMStub().start()  # /translate is fuzzed end to end against a scripted LLM
    settings = Settings(
        asr_engine="fake",
        log_level="ERROR",
        max_upload_mb=1,
        max_audio_seconds=30,
        openai_base_url=llm.base_url,
        translate_model="correct",
        data_dir=tmp_path_factory.mktemp("jobs"),  # the jobs routes are fuzzed too
    )
    with running_server(create_app(settings)) as url:
        yield url
    llm.stop()


def test_no_generated_request_causes_a_server_error(base_url: str) -> None:
    api = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 6

    for operation in operations:

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def call(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(base_url=base_url, timeout=30)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
            if response.status_code >= 400 and "application/json" in str(response.headers.get("content-type")):
                assert "error" in response.json()

        call()


MULTIPART_PIECES = st.lists(
    st.sampled_from(
        [
            b"--b\r\n",
            b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n',
            b'Content-Disposition: form-data; name="language"\r\n',
            b"Content-Type: audio/wav\r\n",
            b"\r\n",
            b"--b--\r\n",
            b"RIFF\x00\x00\x00\x00WAVEfmt ",
            b"\xff\xfe\x00\x01" * 8,
            b"en",
            b"--b",
        ]
    )
    | st.binary(max_size=64),
    max_size=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(pieces=MULTIPART_PIECES, boundary=st.sampled_from(["b", "", "x" * 200, "b; charset=utf-8"]))
def test_malformed_multipart_is_a_4xx(base_url: str, pieces: list[bytes], boundary: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/audio/transcriptions",
        content=b"".join(pieces),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        timeout=30,
    )
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()


def test_server_still_serves_after_the_fuzzing(base_url: str) -> None:
    response = httpx.post(f"{base_url}/transcribe", files={"file": ("a.wav", wav_bytes())}, data={"prompt": "alive"})
    assert response.json()["text"] == "alive"
