"""The gateway stays small: building the app and answering /health imports no ML stack."""

from __future__ import annotations

import json
import subprocess
import sys

# openai: the SDK is loaded only once translation is configured (OPENAI_BASE_URL), ~30 MB otherwise idle.
HEAVY = ["torch", "transformers", "qwen_asr", "nagisa", "librosa", "onnxruntime", "openai"]

PROBE = """
import json, sys
from fastapi.testclient import TestClient
from asr_server.config import Settings
from asr_server.server import create_app

app = create_app(Settings(asr_engine="transformers", model_id="/nonexistent/model", log_level="ERROR"))
with TestClient(app) as client:
    health = client.get("/health").status_code
    ready = client.get("/ready").status_code
print(json.dumps({"health": health, "ready": ready, "loaded": sorted(m for m in %r if m in sys.modules)}))
"""


def test_app_and_health_import_no_ml_stack() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["health"] == 200
    assert result["ready"] == 200  # lazy loading: nothing has failed yet
    assert result["loaded"] == []


def test_language_table_matches_qwen_asr() -> None:
    """Our copy of the supported languages (kept to avoid importing qwen_asr) must not drift."""
    from qwen_asr.inference.utils import SUPPORTED_LANGUAGES

    from asr_server.text.languages import LANGUAGE_BY_CODE

    assert sorted(LANGUAGE_BY_CODE.values()) == sorted(SUPPORTED_LANGUAGES)


def test_floating_point_env_is_restored_after_importing_qwen_asr() -> None:
    """nagisa (imported by qwen_asr) turns on flush-to-zero; reset_floating_point_env (run by the engine) undoes it."""
    code = (
        "import qwen_asr\n"
        "from asr_server.engines.fpenv import reset_floating_point_env, subnormals_flushed\n"
        "before = subnormals_flushed()\n"
        "reset_floating_point_env()\n"
        "print(before, subnormals_flushed())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "False"]
