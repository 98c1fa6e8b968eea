"""The engine contract: what the worker calls, and the plain data that crosses it.

Engines are synchronous and not thread-safe; the worker calls them from one dedicated thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from asr_server.engines.special_tokens import neutralize_special_tokens
from asr_server.media import SAMPLE_RATE

# The shortest clip an engine is given: 0.1 s at 16 kHz, OpenAI's minimum upload. The feature extractor
# cannot frame fewer than 201 samples at all (its STFT pads 200 on each side).
MIN_AUDIO_SAMPLES = SAMPLE_RATE // 10


@dataclass(frozen=True)
class TranscribeItem:
    """One clip to transcribe: 16 kHz mono float32 audio, a forced language name or None, context text."""

    audio: np.ndarray
    language: str | None = None
    context: str = ""

    def __post_init__(self) -> None:
        # Built here, the one place every path (HTTP, streams, worker process, Ray) constructs an item.
        object.__setattr__(self, "context", neutralize_special_tokens(self.context))


@dataclass(frozen=True)
class Transcript:
    """One clip's result. The token fields cover the transcript text only (what the model generated after
    `<asr_text>`: no language prefix, no special tokens), in order; they are empty when an engine cannot
    report them. `token_bytes[i]` is token i's UTF-8 bytes (a character may span tokens), `logprobs[i]` its
    natural-log probability under the model."""

    text: str
    language: str  # the model's language name ("English"); "" when the model said none
    tokens: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    token_bytes: tuple[bytes, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        """JSON-safe form for the gateway's worker process (bytes as lists of ints)."""
        return {
            "text": self.text,
            "language": self.language,
            "tokens": list(self.tokens),
            "logprobs": list(self.logprobs),
            "token_bytes": [list(b) for b in self.token_bytes],
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Transcript:
        return cls(
            text=data["text"],
            language=data["language"],
            tokens=tuple(data.get("tokens", ())),
            logprobs=tuple(data.get("logprobs", ())),
            token_bytes=tuple(bytes(b) for b in data.get("token_bytes", ())),
        )


@dataclass(frozen=True)
class AlignItem:
    audio: np.ndarray
    text: str
    language: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", neutralize_special_tokens(self.text))


@dataclass(frozen=True)
class AlignedUnit:
    """A word (or CJK character) with its time in seconds from the start of the aligned clip."""

    text: str
    start: float
    end: float


# Asked from the engine thread while a batch runs: has the client of item i gone (its result will be dropped)?
Abandoned = Callable[[int], bool]


class Engine(ABC):
    """A loaded-on-demand speech model. `load` may be slow and may raise; `unload` frees memory."""

    name: str = "engine"
    # The served model's id, resolved once when the engine is built (never re-read from the hardware per request):
    # what /v1/models lists. Engines hosted elsewhere replace it with what their host loaded.
    model_id: str = ""
    # Batches the worker may keep in flight at once. 1 for engines that are not thread-safe (all but vLLM,
    # whose own scheduler batches continuously across concurrent calls).
    concurrency: int = 1

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def unload(self) -> None: ...

    @property
    @abstractmethod
    def loaded(self) -> bool: ...

    def warmup(self) -> None:
        """Run one short silent clip so the first real request pays no one-off costs."""
        self.transcribe([TranscribeItem(audio=np.zeros(SAMPLE_RATE, dtype=np.float32), language="English")])

    @abstractmethod
    def transcribe(self, items: list[TranscribeItem]) -> list[Transcript]:
        """Transcribe a batch; one result per item, in order."""

    def transcribe_abandonable(self, items: list[TranscribeItem], abandoned: Abandoned) -> list[Transcript]:
        """`transcribe`, where an engine that can stop one request of a running batch (vLLM aborts it) stops
        item i once `abandoned(i)` is true (its client left); that item's result is then dropped. Engines that
        run a batch as one tensor computation cannot, and finish it."""
        return self.transcribe(items)

    @property
    def supports_alignment(self) -> bool:
        return False

    def align(self, items: list[AlignItem]) -> list[list[AlignedUnit]]:
        """Word/character timestamps for text known to be spoken in each clip."""
        raise NotImplementedError(f"engine {self.name} has no forced aligner")

    def describe(self) -> dict[str, object]:
        """What /ready and the logs report about this engine."""
        return {"engine": self.name}
