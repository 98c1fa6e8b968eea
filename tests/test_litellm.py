"""litellm's OpenAI provider against a real server: transcription, its response shapes, and error mapping."""

from __future__ import annotations

import asyncio
import importlib.util
import io
from collections.abc import Iterator
from typing import Any

import pytest

from asr_server.config import Settings
from asr_server.server import create_app

from support import running_server, wav_bytes

pytestmark = pytest.mark.skipif(importlib.util.find_spec("litellm") is None, reason="litellm is not installed")


@pytest.fixture(scope="module")
def litellm_module() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its bundled price list: no download on import
        import litellm

        yield litellm


@pytest.fixture(scope="module")
def api_base() -> Iterator[str]:
    with running_server(create_app(Settings(asr_engine="fake", log_level="WARNING"))) as url:
        yield f"{url}/v1"


def _file(seconds: float = 2.0) -> io.BytesIO:
    upload = io.BytesIO(wav_bytes(seconds))
    upload.name = "clip.wav"
    return upload


def test_litellm_transcription(litellm_module: Any, api_base: str) -> None:
    result = litellm_module.transcription(
        model="openai/whisper-1", file=_file(), api_base=api_base, api_key="unused", prompt="through litellm"
    )
    assert result.text == "through litellm"
    verbose = litellm_module.transcription(
        model="openai/whisper-1",
        file=_file(3.0),
        api_base=api_base,
        api_key="unused",
        prompt="verbose words",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert verbose.text == "verbose words"
    assert [w["word"] for w in verbose["words"]] == ["verbose", "words"]
    assert verbose["segments"][0]["tokens"] and verbose["duration"] == pytest.approx(3.0)


def test_litellm_maps_a_bad_language_to_bad_request(litellm_module: Any, api_base: str) -> None:
    import openai

    arguments = {"model": "openai/whisper-1", "api_base": api_base, "api_key": "unused", "language": "klingon"}
    # litellm's async call maps provider errors to its own types; the 400 becomes its BadRequestError.
    with pytest.raises(litellm_module.BadRequestError) as raised:
        asyncio.run(litellm_module.atranscription(file=_file(), **arguments))
    assert "language" in str(raised.value) and raised.value.status_code == 400
    # Its sync call (litellm 1.110) passes the openai SDK's own BadRequestError through unmapped.
    with pytest.raises(openai.BadRequestError) as sync_raised:
        litellm_module.transcription(file=_file(), **arguments)
    assert sync_raised.value.status_code == 400 and sync_raised.value.body["param"] == "language"
