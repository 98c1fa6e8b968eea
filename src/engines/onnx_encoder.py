"""The Qwen3-ASR audio encoder on ONNX Runtime (CPU, CUDA or TensorRT), swapped in at load time.

Exporting `Qwen3ASRAudioEncoder` as it is fails: it splits the mel frames into 100-frame chunks with
data-dependent Python (`split`, `pad_sequence`) and builds its attention windows from Python lists. Here
all of that indexing is computed with numpy *outside* the graph (`plan_encoder_inputs`), and the graph
holds only tensor maths: the three convolutions over the padded chunks, a gather of the valid frames,
the transformer layers over attention windows given as a padded `[windows, length]` index, and the
output projection. The same graph serves both attention layouts:

* full attention over the whole clip (one window): what the PyTorch encoder does with `sdpa`/`eager`,
  i.e. on CPU, because it never passes its window mask to those kernels;
* 8 s windows (`n_window_infer` frames): what it does with `flash_attention_2` (and what vLLM does).

`install_onnx_encoder` picks the layout of the encoder it replaces, so transcripts do not change.

Imported only when an ONNX/TensorRT encoder is configured or exported (it imports torch).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from asr_server.errors import EngineUnavailable

ENCODER_FILE = "encoder.onnx"
META_FILE = "encoder.json"
TRT_CACHE_DIR = "trt-cache"
OPSET = 17
_NEG = -1e9  # additive mask for padded keys; finite so a row never becomes NaN


def _conv_len(n: int) -> int:
    """Frames left after the three stride-2, padding-1, kernel-3 convolutions."""
    for _ in range(3):
        n = (n - 1) // 2 + 1
    return n


def resolve_encoder_file(path: str | Path) -> Path:
    """`path` may name the .onnx file or the folder `export-encoder` wrote."""
    p = Path(path)
    return p / ENCODER_FILE if p.is_dir() else p


# --------------------------------------------------------------------------------------------- planning
def plan_encoder_inputs(
    features: np.ndarray, *, n_window: int, n_window_infer: int, windowed: bool
) -> dict[str, np.ndarray]:
    """The graph's inputs for one clip's mel features `[mel_bins, frames]`, exactly as the PyTorch
    encoder would chunk, pad, select and window them."""
    mel_bins, frames = features.shape
    chunk = 2 * n_window
    lengths = [chunk] * (frames // chunk) + ([frames % chunk] if frames % chunk else [])
    width = max(lengths)  # pad_sequence pads to the longest chunk, not always to `chunk`
    chunks = np.zeros((len(lengths), mel_bins, width), dtype=np.float32)
    for i, n in enumerate(lengths):
        chunks[i, :, :n] = features[:, i * chunk : i * chunk + n]
    after = _conv_len(width)
    positions = np.concatenate([i * after + np.arange(_conv_len(n)) for i, n in enumerate(lengths)])
    total = len(positions)
    # Window size as the encoder computes it: the padded post-CNN chunk length times chunks per window.
    size = after * (n_window_infer // chunk) if windowed else total
    starts = list(range(0, total, size))
    span = min(size, total)
    window_index = np.zeros((len(starts), span), dtype=np.int64)
    window_bias = np.full((len(starts), span), _NEG, dtype=np.float32)
    for w, start in enumerate(starts):
        n = min(span, total - start)
        window_index[w, :n] = np.arange(start, start + n)
        window_bias[w, :n] = 0.0
    output_index = (np.arange(total) // span) * span + np.arange(total) % span
    return {
        "chunks": chunks,
        "positions": positions.astype(np.int64),
        "window_index": window_index,
        "window_bias": window_bias,
        "output_index": output_index.astype(np.int64),
    }


# --------------------------------------------------------------------------------------------- export
class _ExportableEncoder(nn.Module):
    """The encoder's maths over pre-planned indices; shares (does not copy) the tower's weights."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.heads = tower.config.encoder_attention_heads

    def _attention(self, layer: nn.Module, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        w, n, d = h.shape
        q, k, v = (p(h).reshape(w, n, self.heads, -1).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        scores = torch.matmul(q, k.transpose(2, 3)) * attn.scaling + bias
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return attn.out_proj(out.transpose(1, 2).reshape(w, n, d))

    def forward(
        self,
        chunks: torch.Tensor,  # [N, mel, T] float
        positions: torch.Tensor,  # [S] flat index into N*T' of the valid post-CNN frames
        window_index: torch.Tensor,  # [W, L] index into S (padding points anywhere)
        window_bias: torch.Tensor,  # [W, L] 0 for real keys, -1e9 for padding
        output_index: torch.Tensor,  # [S] index into W*L
    ) -> torch.Tensor:
        t = self.tower
        x = F.gelu(t.conv2d1(chunks.unsqueeze(1)))
        x = F.gelu(t.conv2d2(x))
        x = F.gelu(t.conv2d3(x))
        n, c, f, frames = x.shape
        x = t.conv_out(x.permute(0, 3, 1, 2).reshape(n, frames, c * f))
        x = x + t.positional_embedding.positional_embedding[:frames].unsqueeze(0)
        h = x.reshape(-1, x.shape[-1]).index_select(0, positions)
        w, span = window_index.shape
        h = h.index_select(0, window_index.reshape(-1)).reshape(w, span, -1)
        bias = window_bias[:, None, None, :]
        for layer in t.layers:
            h = h + self._attention(layer, layer.self_attn_layer_norm(h), bias)
            h = h + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(h))))
        h = t.proj2(t.act(t.proj1(t.ln_post(h))))
        return h.reshape(w * span, -1).index_select(0, output_index)


def export_encoder(tower: nn.Module, out_dir: str | Path, *, model_id: str = "", opset: int = OPSET) -> Path:
    """Export `tower` (a Qwen3ASRAudioEncoder, converted to fp32 on CPU here) to `out_dir/encoder.onnx`
    with dynamic lengths, plus `encoder.json` describing it. Returns the .onnx path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tower = tower.float().cpu().eval()
    cfg = tower.config
    # Two full chunks and a tail, two windows: every dynamic axis differs from 1 while tracing.
    plan = plan_encoder_inputs(
        np.random.default_rng(0).standard_normal((cfg.num_mel_bins, 230)).astype(np.float32),
        n_window=cfg.n_window,
        n_window_infer=cfg.n_window * 2 * 2,
        windowed=True,
    )
    names = list(plan)
    dynamic = {
        "chunks": {0: "chunks", 2: "frames"},
        "positions": {0: "tokens"},
        "window_index": {0: "windows", 1: "span"},
        "window_bias": {0: "windows", 1: "span"},
        "output_index": {0: "tokens"},
        "audio_embeds": {0: "tokens"},
    }
    target = out / ENCODER_FILE
    with torch.no_grad():
        torch.onnx.export(
            _ExportableEncoder(tower),
            tuple(torch.from_numpy(plan[k]) for k in names),
            str(target),
            input_names=names,
            output_names=["audio_embeds"],
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,  # the TorchScript exporter needs only `onnx`, not onnxscript
        )
    meta = {
        "format": 1,
        "model": model_id,
        "d_model": cfg.d_model,
        "output_dim": cfg.output_dim,
        "num_mel_bins": cfg.num_mel_bins,
        "encoder_layers": cfg.encoder_layers,
        "n_window": cfg.n_window,
        "n_window_infer": cfg.n_window_infer,
        "opset": opset,
        "dtype": "float32",
        "torch": torch.__version__,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return target


# --------------------------------------------------------------------------------------------- runtime
def trt_profile(*, n_window: int, n_window_infer: int, mel_bins: int, windowed: bool, max_seconds: float) -> dict:
    """TensorRT optimisation-profile shapes covering clips up to `max_seconds` (without them TensorRT
    rebuilds its engine whenever a longer clip arrives). Full attention is one window of every token;
    windowed attention is many windows of at most one window's tokens."""
    chunk = 2 * n_window
    chunks = -(-int(max_seconds * 100) // chunk)
    tokens = chunks * _conv_len(chunk)
    window = _conv_len(chunk) * (n_window_infer // chunk)
    shapes = {  # input: (min, opt, max) dims
        "chunks": ((1, mel_bins, 1), (30, mel_bins, chunk), (chunks, mel_bins, chunk)),
        "positions": ((1,), (390,), (tokens,)),
        "output_index": ((1,), (390,), (tokens,)),
    }
    span = ((1, 1), (4, window), (-(-tokens // window), window)) if windowed else ((1, 1), (1, 390), (1, tokens))
    shapes.update(window_index=span, window_bias=span)
    return {
        f"trt_profile_{kind}_shapes": ",".join(f"{name}:{'x'.join(map(str, dims[i]))}" for name, dims in shapes.items())
        for i, kind in enumerate(("min", "opt", "max"))
    }


def providers_for(
    device: str, *, tensorrt: bool, cache_dir: Path, fp16: bool, profile: dict[str, str] | None = None
) -> list[Any]:
    """ONNX Runtime execution providers, best first: TensorRT (engines cached in `cache_dir`), CUDA, CPU."""
    if not device.startswith("cuda"):
        if tensorrt:
            raise EngineUnavailable("TRT_ENCODER_PATH needs a CUDA device (DEVICE=cuda)", code="no_gpu")
        return ["CPUExecutionProvider"]
    gpu = int(device.split(":")[1]) if ":" in device else 0
    chain: list[Any] = [("CUDAExecutionProvider", {"device_id": gpu}), "CPUExecutionProvider"]
    if tensorrt:
        cache_dir.mkdir(parents=True, exist_ok=True)
        trt = {
            "device_id": gpu,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache_dir),
            "trt_fp16_enable": fp16,
            **(profile or {}),
        }
        chain.insert(0, ("TensorrtExecutionProvider", trt))
    return chain


def open_session(path: str | Path, providers: list[Any], *, threads: int = 0) -> Any:
    """An InferenceSession that really runs on the first provider asked for (ORT would silently fall back)."""
    import onnxruntime as ort

    file = resolve_encoder_file(path)
    if not file.is_file():
        raise EngineUnavailable(f"no exported encoder at {file} (run: asr-server export-encoder)", code="bad_config")
    wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if wanted not in ort.get_available_providers():
        raise EngineUnavailable(
            f"onnxruntime has no {wanted} here (installed: {ort.get_available_providers()}); "
            "GPU providers need the 'gpu' extra: pip install 'qwen3-asr-server[gpu]'",
            code="missing_dependency",
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # ORT's pool spins after each run by default; the decoder's torch threads run right after the
    # encoder on the same cores, so idle spinning would steal their time.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(file), sess_options=options, providers=providers)
    if session.get_providers()[0] != wanted:
        raise EngineUnavailable(f"onnxruntime could not start {wanted} for {file}", code="missing_dependency")
    return session


class OnnxAudioEncoder(nn.Module):
    """Drop-in for `thinker.audio_tower`: same call (`features [mel, frames]`, `feature_lens [1]`), same
    output (`last_hidden_state [tokens, output_dim]`), computed by an ONNX Runtime session."""

    def __init__(
        self, session: Any, *, n_window: int, n_window_infer: int, windowed: bool, device: str, dtype: torch.dtype
    ) -> None:
        super().__init__()
        self.session = session
        self.n_window, self.n_window_infer, self.windowed = n_window, n_window_infer, windowed
        self.out_device, self.out_dtype = torch.device(device), dtype
        self.provider = session.get_providers()[0]
        self.calls = 0
        self.seconds = 0.0

    def forward(self, input_features: torch.Tensor, feature_lens: torch.Tensor, aftercnn_lens: Any = None) -> Any:
        from transformers.modeling_outputs import BaseModelOutput

        started = time.perf_counter()
        frames = int(feature_lens.reshape(-1)[0])
        features = input_features[:, :frames].detach().float().cpu().numpy()
        plan = plan_encoder_inputs(
            features, n_window=self.n_window, n_window_infer=self.n_window_infer, windowed=self.windowed
        )
        (embeds,) = self.session.run(None, plan)
        out = torch.from_numpy(embeds).to(self.out_device, self.out_dtype)
        self.calls += 1
        self.seconds += time.perf_counter() - started
        return BaseModelOutput(last_hidden_state=out)


def install_onnx_encoder(
    model: Any, path: str | Path, *, device: str, tensorrt: bool = False, threads: int = 0, max_seconds: float = 1200
) -> OnnxAudioEncoder:
    """Replace `model.thinker.audio_tower` (a loaded Qwen3ASRForConditionalGeneration) by the exported
    encoder at `path`, once. The attention layout follows the encoder being replaced."""
    thinker = model.thinker
    tower = thinker.audio_tower
    cfg = tower.config
    file = resolve_encoder_file(path)
    meta_path = file.with_name(META_FILE)
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        mismatched = [k for k in ("d_model", "output_dim", "encoder_layers") if meta.get(k) != getattr(cfg, k)]
        if mismatched:
            raise EngineUnavailable(
                f"the encoder at {file} was exported from another model ({meta.get('model')!r}): "
                f"{', '.join(mismatched)} differ",
                code="bad_config",
            )
    dtype = next(thinker.parameters()).dtype
    windowed = cfg._attn_implementation == "flash_attention_2"
    profile = trt_profile(
        n_window=cfg.n_window,
        n_window_infer=cfg.n_window_infer,
        mel_bins=cfg.num_mel_bins,
        windowed=windowed,
        max_seconds=min(max_seconds, 1200),
    )
    fp16 = dtype in (torch.float16, torch.bfloat16)
    cache = file.parent / TRT_CACHE_DIR
    session = open_session(
        file, providers_for(device, tensorrt=tensorrt, cache_dir=cache, fp16=fp16, profile=profile), threads=threads
    )
    encoder = OnnxAudioEncoder(
        session, n_window=cfg.n_window, n_window_infer=cfg.n_window_infer, windowed=windowed, device=device, dtype=dtype
    )
    thinker.audio_tower = encoder  # the PyTorch encoder's weights are freed with it
    return encoder


def export_from_checkpoint(model_id: str, out_dir: str | Path, *, tensorrt: bool = False) -> dict[str, Any]:
    """What `asr-server export-encoder` does: load the model (fp32, CPU), export its encoder, check the
    ONNX output against PyTorch on a 20 s random clip in both attention layouts, optionally build the
    TensorRT engine (GPU). Returns a report."""
    import qwen_asr  # noqa: F401 - registers the qwen3_asr model type with transformers
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_id, dtype=torch.float32, device_map="cpu").eval()
    tower = model.thinker.audio_tower
    file = export_encoder(tower, out_dir, model_id=model_id)
    session = open_session(file, ["CPUExecutionProvider"])
    features = torch.randn(tower.config.num_mel_bins, 2000)
    report: dict[str, Any] = {"onnx": str(file), "bytes": sum(p.stat().st_size for p in file.parent.glob("encoder*"))}
    with torch.no_grad():
        full = tower(features, feature_lens=torch.tensor([2000])).last_hidden_state.numpy()
        windowed_ref = windowed_reference(tower, features)
    for name, ref, is_windowed in (("max_abs_diff_full", full, False), ("max_abs_diff_windowed", windowed_ref, True)):
        plan = plan_encoder_inputs(
            features.numpy(), n_window=tower.config.n_window, n_window_infer=tower.config.n_window_infer,
            windowed=is_windowed,
        )  # fmt: skip
        report[name] = float(np.abs(session.run(None, plan)[0] - ref).max())
    if tensorrt:
        cache = file.parent / TRT_CACHE_DIR
        cfg = tower.config
        for windowed in (True, False):  # one engine per attention layout, built now and cached
            profile = trt_profile(
                n_window=cfg.n_window, n_window_infer=cfg.n_window_infer, mel_bins=cfg.num_mel_bins,
                windowed=windowed, max_seconds=1200,
            )  # fmt: skip
            trt = open_session(file, providers_for("cuda", tensorrt=True, cache_dir=cache, fp16=False, profile=profile))
            plan = plan_encoder_inputs(
                features.numpy(), n_window=cfg.n_window, n_window_infer=cfg.n_window_infer, windowed=windowed
            )
            reference = windowed_ref if windowed else full
            report[f"tensorrt_max_abs_diff_{'windowed' if windowed else 'full'}"] = float(
                np.abs(trt.run(None, plan)[0] - reference).max()
            )
        report["tensorrt_cache"] = str(cache)
    return report


def windowed_reference(tower: nn.Module, features: torch.Tensor) -> np.ndarray:
    """The PyTorch encoder's output with its 8 s windows honoured on any attention kernel (what
    flash_attention_2 computes): the layers run with the tower's own block-diagonal mask."""
    frames = features.shape[1]
    captured: dict[str, Any] = {}

    def grab(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden, cu_seqlens = args[0], args[1]
        if "mask" not in captured:
            captured["mask"] = tower._prepare_attention_mask(hidden, cu_seqlens)
        return args, {**kwargs, "attention_mask": captured["mask"]}

    handles = [layer.register_forward_pre_hook(grab, with_kwargs=True) for layer in tower.layers]
    try:
        return tower(features, feature_lens=torch.tensor([frames])).last_hidden_state.numpy()
    finally:
        for handle in handles:
            handle.remove()
