"""The ONNX Runtime audio encoder matches the PyTorch one it replaces: numbers, tokens and transcripts."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from asr_server.cli import main as cli_main
from asr_server.config import Settings
from asr_server.engines.onnx_encoder import (
    OnnxAudioEncoder,
    install_onnx_encoder,
    open_session,
    plan_encoder_inputs,
    windowed_reference,
)
from asr_server.errors import EngineUnavailable
from asr_server.server import create_app

from support import encode, noise, running_server

pytestmark = pytest.mark.slow
FRAMES = [37, 100, 150, 800, 1001, 2345]  # < 1 chunk, exact chunks, a tail, one window, > 8 s windows


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exported(tiny_asr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`asr-server export-encoder` on the tiny checkpoint; its printed report."""
    out = tmp_path_factory.mktemp("encoder")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert cli_main(["export-encoder", "--model", str(tiny_asr_dir), "--out", str(out)]) == 0
    return out, json.loads(buffer.getvalue())


def _load(model_dir: Path, max_new_tokens: int = 12) -> Any:
    from qwen_asr import Qwen3ASRModel

    return Qwen3ASRModel.from_pretrained(
        str(model_dir), dtype=torch.float32, device_map="cpu", max_new_tokens=max_new_tokens
    )


def test_export_report_and_files(exported: tuple[Path, dict]) -> None:
    out, report = exported
    assert (out / "encoder.onnx").is_file() and json.loads((out / "encoder.json").read_text())["n_window"] == 50
    assert report["max_abs_diff_full"] < 1e-5 and report["max_abs_diff_windowed"] < 1e-5


def test_numerical_parity_in_both_attention_layouts(tiny_asr_dir: Path, exported: tuple[Path, dict]) -> None:
    tower = _load(tiny_asr_dir).model.thinker.audio_tower
    session = open_session(exported[0], ["CPUExecutionProvider"])
    cfg = tower.config
    for frames in FRAMES:
        features = torch.randn(cfg.num_mel_bins, frames, generator=torch.Generator().manual_seed(frames))
        with torch.no_grad():
            full = tower(features, feature_lens=torch.tensor([frames])).last_hidden_state.numpy()
            windowed = windowed_reference(tower, features)
        for reference, is_windowed in ((full, False), (windowed, True)):
            plan = plan_encoder_inputs(
                features.numpy(), n_window=cfg.n_window, n_window_infer=cfg.n_window_infer, windowed=is_windowed
            )
            got = session.run(None, plan)[0]
            assert got.shape == reference.shape
            assert np.abs(got - reference).max() < 1e-5, (frames, is_windowed)
        # Beyond one 8 s window the two layouts really differ: matching the replaced path matters.
        assert (np.abs(full - windowed).max() > 1e-3) == (frames > 800)


def test_substituted_encoder_gives_identical_tokens(tiny_asr_dir: Path, exported: tuple[Path, dict]) -> None:
    asr = _load(tiny_asr_dir)
    clips = [noise(0.7, seed=1), noise(3.0, seed=2), noise(12.0, seed=3)]
    prompts = [asr._build_text_prompt(context="", force_language=lang) for lang in (None, "English", "Chinese")]
    inputs = asr.processor(text=prompts, audio=clips, return_tensors="pt", padding=True)
    before = asr.model.generate(**inputs, max_new_tokens=12).sequences
    texts_before = [r.text for r in asr.transcribe(audio=[(c, 16_000) for c in clips])]
    encoder = install_onnx_encoder(asr.model, exported[0], device="cpu", threads=1)
    assert isinstance(asr.model.thinker.audio_tower, OnnxAudioEncoder) and not encoder.windowed
    assert torch.equal(asr.model.generate(**inputs, max_new_tokens=12).sequences, before)
    assert [r.text for r in asr.transcribe(audio=[(c, 16_000) for c in clips])] == texts_before
    assert encoder.calls == 6 and encoder.provider == "CPUExecutionProvider"


def test_an_encoder_from_another_model_is_refused(
    tiny_asr_dir: Path, exported: tuple[Path, dict], tmp_path: Path
) -> None:
    for name in ("encoder.onnx", "encoder.json"):
        shutil.copy(exported[0] / name, tmp_path / name)
    meta = json.loads((tmp_path / "encoder.json").read_text())
    (tmp_path / "encoder.json").write_text(json.dumps({**meta, "d_model": 896, "model": "other"}))
    with pytest.raises(EngineUnavailable, match="another model"):
        install_onnx_encoder(_load(tiny_asr_dir).model, tmp_path, device="cpu")


@pytest.fixture(scope="module")
def onnx_url(hello_asr_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from transformers import AutoModel

    from asr_server.engines.onnx_encoder import export_encoder

    out = tmp_path_factory.mktemp("hello-encoder")
    export_encoder(AutoModel.from_pretrained(str(hello_asr_dir)).thinker.audio_tower, out)
    settings = Settings(
        asr_engine="transformers",
        model_id=str(hello_asr_dir),
        onnx_encoder_path=out,
        forced_aligner_id="",
        device="cpu",
        cpu_threads=1,
        max_new_tokens=12,
        log_level="WARNING",
        preload=True,
    )
    with running_server(create_app(settings)) as url:
        yield url


def test_the_service_runs_on_the_onnx_encoder(onnx_url: str) -> None:
    response = httpx.post(f"{onnx_url}/transcribe", files={"file": ("a.wav", encode(noise(4.0, seed=5)))}, timeout=120)
    assert response.status_code == 200 and response.json()["text"] == "hello world"
    ready = httpx.get(f"{onnx_url}/ready").json()
    assert ready["path"] == "transformers+onnx-encoder"
    assert ready["audio_encoder"] == "onnxruntime/CPUExecutionProvider"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("tensorrt", [False, True])
def test_gpu_providers_match_pytorch(tiny_asr_dir: Path, exported: tuple[Path, dict], tensorrt: bool) -> None:
    import onnxruntime as ort

    wanted = "TensorrtExecutionProvider" if tensorrt else "CUDAExecutionProvider"
    if wanted not in ort.get_available_providers():
        pytest.skip(f"onnxruntime has no {wanted} here")
    asr = _load(tiny_asr_dir)
    features = torch.randn(128, 1001)
    with torch.no_grad():
        reference = asr.model.thinker.audio_tower(features, feature_lens=torch.tensor([1001])).last_hidden_state
    encoder = install_onnx_encoder(asr.model, exported[0], device="cuda", tensorrt=tensorrt)
    assert encoder.provider == wanted
    got = encoder(features.cuda(), torch.tensor([1001])).last_hidden_state.cpu()
    assert (got - reference).abs().max() < 1e-4
