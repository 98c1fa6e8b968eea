"""Audio-encoder time: PyTorch (the path qwen-asr runs) vs the exported encoder on ONNX Runtime.

A random-weight Qwen3-ASR audio encoder of the real 0.6B or 1.7B dimensions (compute does not depend
on the weights' values) is exported with `export_encoder`, then both run the same clips in one process,
interleaved (paired comparison; this machine is noisy). The ONNX encoder runs the attention layout of
the encoder it replaces: full attention here (CPU/sdpa); `--windowed` times the 8 s-window layout
(what replaces a flash_attention_2 encoder) against the PyTorch encoder with its window mask.

    .venv/bin/python bench/encoder.py --dims 0.6b [--clips 5,10,30] [--repeat 5] [--threads 2] [--device cpu]

On a GPU add `--device cuda` (PyTorch in fp32 on CUDA vs ONNX Runtime's CUDA provider) or
`--device cuda --tensorrt` (TensorRT provider, engine built on the first call and cached).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr_server.engines.onnx_encoder import (
    TRT_CACHE_DIR,
    export_encoder,
    open_session,
    plan_encoder_inputs,
    providers_for,
    windowed_reference,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import make_tiny_checkpoint as mtc  # noqa: E402 - the script is not a package


def random_encoder(dims: str) -> torch.nn.Module:
    """The audio tower of a random Qwen3-ASR of `dims` ("0.6b", "1.7b"), fp32, without its decoder."""
    from qwen_asr.core.transformers_backend.modeling_qwen3_asr import Qwen3ASRAudioEncoder

    torch.manual_seed(0)
    config = mtc._config(dims, aligner=False).thinker_config.audio_config  # the published dimensions
    config._attn_implementation = "sdpa"
    return Qwen3ASRAudioEncoder(config).eval()


def _paired(run_a: Any, run_b: Any, repeat: int) -> tuple[list[float], list[float]]:
    """Milliseconds of `run_a` and `run_b`, alternated so that load from other processes hits both alike."""
    run_a(), run_b()  # warm-up (allocations, ORT's first-run planning)
    a_ms, b_ms = [], []
    for _ in range(repeat):
        for fn, out in ((run_a, a_ms), (run_b, b_ms)):
            started = time.perf_counter()
            fn()
            out.append((time.perf_counter() - started) * 1000)
    return a_ms, b_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", choices=["tiny", "0.6b", "1.7b"], default="0.6b")
    parser.add_argument("--clips", default="5,10,30", help="clip lengths in seconds")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tensorrt", action="store_true")
    parser.add_argument("--windowed", action="store_true", help="time the 8 s-window layout")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tower = random_encoder(args.dims)
    params = sum(p.numel() for p in tower.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        onnx_file = export_encoder(tower, tmp)
        print(f"{args.dims} encoder: {params / 1e6:.0f} M parameters; export {time.perf_counter() - started:.1f} s")
        providers = providers_for(args.device, tensorrt=args.tensorrt, cache_dir=Path(tmp) / TRT_CACHE_DIR, fp16=False)
        session = open_session(onnx_file, providers, threads=args.threads)
        tower = tower.to(args.device)
        cfg = tower.config
        print(f"torch {torch.__version__}, {args.threads} threads, ORT provider {session.get_providers()[0]}")
        print("| clip | PyTorch ms, median (min) | ONNX Runtime ms, median (min) | speed-up | max abs diff |")
        print("|---|---|---|---|---|")
        for seconds in (float(s) for s in args.clips.split(",")):
            frames = int(seconds * 100)
            features = torch.randn(cfg.num_mel_bins, frames, generator=torch.Generator().manual_seed(frames))
            on_device = features.to(args.device)
            lens = torch.tensor([frames], device=args.device)

            def run_torch(features: torch.Tensor = on_device, lens: torch.Tensor = lens) -> np.ndarray:
                with torch.no_grad():
                    if args.windowed:
                        return windowed_reference(tower, features)
                    out = tower(features, feature_lens=lens).last_hidden_state
                if out.is_cuda:
                    torch.cuda.synchronize()
                return out.cpu().numpy()

            plan = plan_encoder_inputs(
                features.numpy(), n_window=cfg.n_window, n_window_infer=cfg.n_window_infer, windowed=args.windowed
            )

            def run_onnx(plan: dict[str, np.ndarray] = plan) -> np.ndarray:
                return session.run(None, plan)[0]

            diff = float(np.abs(run_torch() - run_onnx()).max())
            t_ms, o_ms = _paired(run_torch, run_onnx, args.repeat)
            ratio = statistics.median(t / o for t, o in zip(t_ms, o_ms, strict=True))
            t_med, o_med = statistics.median(t_ms), statistics.median(o_ms)
            row = f"| {seconds:g} s | {t_med:.0f} ({min(t_ms):.0f}) | {o_med:.0f} ({min(o_ms):.0f}) | {ratio:.2f}×"
            print(f"{row} | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
