"""vLLM engine: vLLM's own Qwen3-ASR model (vllm >= 0.16) behind its async engine.

vLLM batches continuously: a request joins the running batch at the next decoding step instead of
waiting for the batch before it to finish. To use that from the worker's synchronous engine calls,
the engine runs vLLM's event loop in a background thread ("vllm-loop"); `transcribe()` submits every
item of its batch to that loop at once and waits for their results. The worker calls `transcribe()`
from `concurrency` threads (see `ModelWorker`), so several batches (uploads, stream partials) are in
vLLM together, bounded by VLLM_MAX_NUM_SEQS.

Neither qwen_asr nor its transformers pin is needed: the prompt is the published chat template's
rendering and the output parsing is a copy of qwen-asr's (a test checks both against qwen-asr), so the
results are in the same format as the transformers engine's. Each request asks for `logprobs=0` (the
sampled token's log-probability only), so transcripts carry their text tokens and scores; the tokenizer
that tells the text tokens apart comes from the engine (`get_tokenizer()`, as vLLM's own OpenAI server
gets it). vllm is imported in `load()` only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import inspect
import itertools
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from loguru import logger

from asr_server.config import Settings
from asr_server.engines.base import Abandoned, AlignedUnit, AlignItem, Engine, TranscribeItem, Transcript
from asr_server.engines.quantization import vllm_quantization
from asr_server.engines.token_text import GeneratedRow, TokenText
from asr_server.errors import EngineUnavailable
from asr_server.media import SAMPLE_RATE

MAX_PIECE_SECONDS = 1200  # qwen-asr's MAX_ASR_INPUT_SECONDS: longer audio is transcribed in pieces
ABANDON_POLL_S = 0.1  # how often a running batch checks for clients that left
AUDIO_TOKENS_PER_SECOND = 13  # 100 mel frames -> 13 encoder outputs
PROMPT_ALLOWANCE = 1024  # chat template plus context text, in tokens
CPU_KV_CACHE_GIB = 4.0  # VLLM_KV_CACHE_GIB's default on a CPU
_ASR_TEXT = "<asr_text>"
_PROMPT = (
    "<|im_start|>system\n{context}<|im_end|>\n<|im_start|>user\n"
    "<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n<|im_start|>assistant\n"
)


def build_prompt(context: str, language: str | None) -> str:
    """The prompt qwen-asr builds from the published chat template; a forced language asks for text only."""
    prompt = _PROMPT.format(context=context or "")
    return prompt + f"language {language}{_ASR_TEXT}" if language else prompt


def vllm_batches_in_flight(settings: Settings) -> int:
    """transcribe() calls the worker keeps in flight: enough batches to fill vLLM's VLLM_MAX_NUM_SEQS slots."""
    return max(1, -(-settings.vllm_max_num_seqs // settings.max_batch_size))


class VllmEngine(Engine):
    name = "vllm"

    def __init__(self, settings: Settings, *, engine_factory: Callable[[], Any] | None = None) -> None:
        """`engine_factory` (tests) returns a stand-in for vLLM's AsyncLLM; by default vLLM is loaded."""
        self._settings = settings
        self._model_id = self.model_id = settings.resolved_model_id()
        self._factory = engine_factory
        self._llm: Any = None
        self._sampling: Any = None
        self._token_text: TokenText | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._request_ids = itertools.count()
        self._facts: dict[str, object] = {}
        self._aligner_id = settings.forced_aligner_id or None
        self._aligner: Any = None  # a VllmAligner once loaded
        self.concurrency = vllm_batches_in_flight(settings)

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def load(self) -> None:
        if self._factory is None:
            try:
                import vllm  # noqa: F401
            except ImportError as exc:
                raise EngineUnavailable(
                    f"USE_VLLM=1 needs the 'vllm' extra: pip install 'qwen3-asr-server[vllm]': {exc}",
                    code="missing_dependency",
                ) from exc
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="vllm-loop", daemon=True)
        thread.start()
        try:
            self._llm, self._sampling, self._token_text = asyncio.run_coroutine_threadsafe(self._start(), loop).result()
        except Exception as exc:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()
            if isinstance(exc, EngineUnavailable):
                raise
            raise EngineUnavailable(f"vLLM cannot load {self._model_id!r}: {exc}", code="model_load_failed") from exc
        self._loop, self._thread = loop, thread
        logger.info("vLLM engine ready: {}", self.describe())

    async def _start(self) -> tuple[Any, Any, TokenText]:
        """Create the async engine inside its own loop (it binds its output handler to the running loop)."""
        s = self._settings
        if self._factory is not None:
            llm = self._factory()
            sampling: Any = {"temperature": 0.0, "max_tokens": s.max_new_tokens, "logprobs": 0}
            return llm, sampling, TokenText(await _engine_tokenizer(llm, self._model_id))
        from vllm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams

        seconds = min(s.max_audio_seconds, MAX_PIECE_SECONDS)
        args = AsyncEngineArgs(
            model=self._model_id,
            max_model_len=int(seconds * AUDIO_TOKENS_PER_SECOND) + s.max_new_tokens + PROMPT_ALLOWANCE,
            quantization=vllm_quantization(s),
            **engine_options(s),
        )
        llm = AsyncLLMEngine.from_engine_args(args)
        self._facts = _engine_facts(llm)
        if self._aligner_id is not None:
            from asr_server.engines.vllm_aligner import VllmAligner

            aligner = VllmAligner(s, self._aligner_id)
            try:
                await aligner.start()
            except Exception:
                llm.shutdown()
                raise
            self._aligner = aligner
            self._facts["forced_aligner"] = self._aligner_id
        sampling = SamplingParams(temperature=0.0, max_tokens=s.max_new_tokens, logprobs=0)
        return llm, sampling, TokenText(await _engine_tokenizer(llm, self._model_id))

    def unload(self) -> None:
        llm, loop, thread, aligner = self._llm, self._loop, self._thread, self._aligner
        self._llm = self._loop = self._thread = self._aligner = None
        self._token_text = None
        if aligner is not None:
            try:
                aligner.shutdown()
            except Exception as exc:
                logger.warning("vLLM aligner shutdown: {}: {}", type(exc).__name__, exc)
        if llm is not None and hasattr(llm, "shutdown"):
            try:
                llm.shutdown()  # stops vLLM's engine-core process and frees the GPU
            except Exception as exc:  # a dead engine core may fail its own shutdown
                logger.warning("vLLM shutdown: {}: {}", type(exc).__name__, exc)
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
            loop.close()
        gc.collect()

    # --- inference ---------------------------------------------------------------------------
    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        return self._run_all([self._transcribe_one(item) for item in items])

    def transcribe_abandonable(self, items: list[TranscribeItem], abandoned: Abandoned) -> list[Transcript]:
        return self._run_all([self._transcribe_one(item) for item in items], abandoned)

    @property
    def supports_alignment(self) -> bool:
        return self._aligner_id is not None

    def align(self, items: list[AlignItem]) -> list[list[AlignedUnit]]:
        aligner = self._aligner
        if aligner is None:
            raise EngineUnavailable(
                "no forced aligner is configured (FORCED_ALIGNER_ID)" if self._aligner_id is None else "not loaded"
            )
        return self._run_all([aligner.align_one(item) for item in items])

    def _run_all(self, coroutines: list[Any], abandoned: Abandoned | None = None) -> list[Any]:
        """Run the coroutines on vLLM's loop at once (they join its running batch) and wait for all. A request
        whose client left (`abandoned(i)`) is cancelled, which makes vLLM abort it and free its batch slot."""
        loop = self._loop
        if self._llm is None or loop is None:
            for coroutine in coroutines:
                coroutine.close()
            raise EngineUnavailable("the model is not loaded")
        futures = [asyncio.run_coroutine_threadsafe(coroutine, loop) for coroutine in coroutines]
        try:
            return self._results(futures, abandoned)
        except BaseException as exc:
            for future in futures:
                future.cancel()  # vLLM aborts the cancelled requests
            if self._engine_died(exc):
                # vLLM's engine-core process is gone and the engine never recovers by itself: this batch gets
                # a 503, and the worker loads a new engine for the next one (`loaded` is False from now).
                logger.error("vLLM's engine core stopped ({}); the engine restarts on the next request", exc)
                self.unload()
                raise EngineUnavailable(
                    "vLLM's engine core stopped; the engine restarts for the next request", code="engine_died"
                ) from exc
            raise

    @staticmethod
    def _results(futures: list[concurrent.futures.Future[Any]], abandoned: Abandoned | None) -> list[Any]:
        pending = set(range(len(futures)))
        dropped: set[int] = set()
        while pending:
            if abandoned is not None:
                for i in [i for i in pending if abandoned(i)]:
                    futures[i].cancel()
                    dropped.add(i)
                    pending.discard(i)
            concurrent.futures.wait([futures[i] for i in pending], timeout=ABANDON_POLL_S if abandoned else None)
            pending -= {i for i in pending if futures[i].done()}
        # A dropped item's result is never read (the worker skips answered jobs): an empty stand-in keeps the order.
        return [Transcript(text="", language="") if i in dropped else f.result() for i, f in enumerate(futures)]

    def _engine_died(self, exc: BaseException) -> bool:
        aligner_dead = self._aligner is not None and self._aligner.errored
        return type(exc).__name__ == "EngineDeadError" or bool(getattr(self._llm, "errored", False)) or aligner_dead

    async def _transcribe_one(self, item: TranscribeItem) -> Transcript:
        language = _normalize_language(item.language)
        step = MAX_PIECE_SECONDS * SAMPLE_RATE
        pieces = [item.audio[i : i + step] for i in range(0, max(len(item.audio), 1), step)]
        raw = await asyncio.gather(*(self._generate(piece, item.context, language) for piece in pieces))
        parsed = [parse_asr_output(text, language) for text, _ in raw]
        text = "".join(t for _, t in parsed)
        languages = merge_languages([lang for lang, _ in parsed])
        token_text = self._token_text
        if token_text is None:  # unloaded meanwhile
            return Transcript(text=text, language=languages)
        parts = [
            token_text.text_part(row, language is not None) if piece_text else GeneratedRow([], [])
            for (_, row), (_, piece_text) in zip(raw, parsed, strict=True)
        ]
        return token_text.transcript(text, languages, parts)

    async def _generate(self, audio: np.ndarray, context: str, language: str | None) -> tuple[str, GeneratedRow]:
        """The raw output text, and its token ids with the sampled tokens' log-probabilities."""
        request = {
            "prompt": build_prompt(context, language),
            "multi_modal_data": {"audio": (np.asarray(audio, dtype=np.float32), SAMPLE_RATE)},
        }
        final: Any = None
        async for output in self._llm.generate(request, self._sampling, f"asr-{next(self._request_ids)}"):
            final = output
        if final is None or not final.outputs:
            return "", GeneratedRow([], [])
        output = final.outputs[0]
        token_ids = [int(t) for t in output.token_ids]
        # One {token id: Logprob} per position; with logprobs=0 it holds the sampled token only.
        entries = output.logprobs or []
        logprobs = [float(entry[t].logprob) for entry, t in zip(entries, token_ids, strict=False) if t in entry]
        return output.text, GeneratedRow(token_ids, logprobs if len(logprobs) == len(token_ids) else [])

    def describe(self) -> dict[str, object]:
        """What the loaded engine reports of itself (device, dtype, threads, KV cache), not what was asked for."""
        return {
            "engine": self.name,
            "path": "vllm",
            "model": self._model_id,
            "dtype": self._settings.dtype,
            "max_num_seqs": self._settings.vllm_max_num_seqs,
            "batches_in_flight": self.concurrency,
            **self._facts,
        }


def engine_options(settings: Settings) -> dict[str, Any]:
    """The AsyncEngineArgs every engine of the service shares (the ASR model's and the aligner's). The KV cache:
    VLLM_KV_CACHE_GIB, else 4 GiB on a CPU; on a GPU unset, so vLLM sizes it from the memory share."""
    from vllm.platforms import current_platform

    gib = settings.vllm_kv_cache_gib or (CPU_KV_CACHE_GIB if current_platform.is_cpu() else None)
    return {
        "dtype": settings.dtype,
        "gpu_memory_utilization": settings.vllm_gpu_memory_utilization,
        "kv_cache_memory_bytes": None if gib is None else int(gib * 2**30),
        "max_num_seqs": settings.vllm_max_num_seqs,
        "enforce_eager": settings.vllm_enforce_eager,
        "limit_mm_per_prompt": {"audio": 1},
    }


def _engine_facts(llm: Any) -> dict[str, object]:
    """Device, dtype, threads and KV-cache size as the started vLLM engine has them."""
    from vllm.platforms import current_platform

    facts: dict[str, object] = {"device": str(current_platform.device_type)}
    config = getattr(llm, "vllm_config", None)
    if config is None:
        return facts
    facts["dtype"] = str(config.model_config.dtype).removeprefix("torch.")
    cache = config.cache_config
    if cache.kv_cache_memory_bytes:
        facts["kv_cache_gib"] = round(cache.kv_cache_memory_bytes / 2**30, 3)
    if current_platform.is_cpu():
        bind = os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")
        facts["cpu_threads_bind"] = bind
        facts["cpu_cores"] = len(os.sched_getaffinity(0))
    return facts


async def _engine_tokenizer(llm: Any, model_id: str) -> Any:
    """The engine's own tokenizer (`get_tokenizer()`, a coroutine on AsyncLLM); the model's from transformers
    where an engine version has no such call."""
    getter = getattr(llm, "get_tokenizer", None)
    if getter is not None:
        tokenizer = getter()
        return await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_id)


# ------------------------------------------------------------------ output parsing (copy of qwen-asr's)
def _normalize_language(language: str | None) -> str | None:
    if language is None or not str(language).strip():
        return None
    s = str(language).strip()
    return s[:1].upper() + s[1:].lower()


def merge_languages(languages: list[str]) -> str:
    """Per-piece languages, consecutive duplicates and empties dropped, comma-joined."""
    out: list[str] = []
    for lang in (x.strip() for x in languages if x):
        if lang and (not out or out[-1] != lang):
            out.append(lang)
    return ",".join(out)


def _fix_char_repeats(s: str, threshold: int) -> str:
    out, i = [], 0
    while i < len(s):
        n = 1
        while i + n < len(s) and s[i + n] == s[i]:
            n += 1
        out.append(s[i] if n > threshold else s[i : i + n])
        i += n
    return "".join(out)


def _fix_pattern_repeats(s: str, threshold: int, max_len: int = 20) -> str:
    """A pattern of up to `max_len` characters repeated `threshold`+ times in a row is kept once."""
    n = len(s)
    if n < threshold * 2:
        return s
    out, i = [], 0
    while i <= n - threshold * 2:
        for k in range(1, max_len + 1):
            if i + k * threshold > n:
                break
            pattern = s[i : i + k]
            if all(s[i + r * k : i + r * k + k] == pattern for r in range(1, threshold)):
                end = i + threshold * k
                while end + k <= n and s[end : end + k] == pattern:
                    end += k
                return "".join(out) + pattern + _fix_pattern_repeats(s[end:], threshold, max_len)
        out.append(s[i])
        i += 1
    return "".join(out) + s[i:]


def parse_asr_output(raw: str | None, forced_language: str | None = None, threshold: int = 20) -> tuple[str, str]:
    """(language, text) from "language X<asr_text>text", as qwen_asr.inference.utils.parse_asr_output."""
    s = str(raw or "").strip()
    if not s:
        return "", ""
    s = _fix_pattern_repeats(_fix_char_repeats(s, threshold), threshold)
    if forced_language:
        return forced_language, s
    if _ASR_TEXT not in s:
        return "", s.strip()
    meta, text = s.split(_ASR_TEXT, 1)
    if "language none" in meta.lower():
        return "", text.strip()
    language = ""
    for line in (x.strip() for x in meta.splitlines()):
        if line.lower().startswith("language "):
            language = _normalize_language(line[len("language ") :]) or ""
            break
    return language, text.strip()
