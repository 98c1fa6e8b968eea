"""What the OpenAI segment fields cost: the log-probability probe on `generate` and the VAD pass for no_speech_prob.

1. The transformers engine with its probe (the logits processor that reads off each chosen token's
   log-probability) against the same engine with qwen-asr's plain `generate`, batches run alternately.
2. Silero's frame probabilities per minute of audio: what accurate-mode verbose_json now adds per chunk
   (fast mode computed them already and now reuses them for its speech regions).

usage: python bench/token_scores_overhead.py [--model DIR] [--batch 8] [--seconds 10] [--rounds 12]
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import bench_checkpoint, noise_clips

from asr_server.config import Settings
from asr_server.engines import TranscribeItem
from asr_server.engines.transformers_engine import TransformersEngine
from asr_server.media.vad import frame_probabilities, load_vad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="checkpoint folder (default: the tiny 'hello' one)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    model_dir = args.model or str(bench_checkpoint("hello-asr", "--hello"))
    settings = Settings(
        asr_engine="transformers", model_id=model_dir, forced_aligner_id="", device="cpu", max_new_tokens=32
    )
    engine = TransformersEngine(settings)
    engine.load()
    items = [TranscribeItem(clip) for clip in noise_clips(args.batch, args.seconds)]
    generator = engine._model.model  # the object whose `generate` the probe wraps
    probed = generator.generate
    engine.transcribe(items)  # warm-up
    times: dict[str, list[float]] = {"with probe": [], "plain generate": []}
    for _ in range(args.rounds):
        for label in times:
            if label == "plain generate":
                del generator.generate  # the class's own generate again
            started = time.perf_counter()
            engine.transcribe(items)
            times[label].append(time.perf_counter() - started)
            generator.generate = probed
    for label, values in times.items():
        print(f"{label}: median {statistics.median(values) * 1000:.1f} ms, min {min(values) * 1000:.1f} ms per batch")
    minute = noise_clips(1, 60.0, seed=1)[0]
    vad = load_vad()
    spans = []
    for _ in range(3):
        started = time.perf_counter()
        frame_probabilities(minute, vad)
        spans.append(time.perf_counter() - started)
    print(f"{type(vad).__name__} frame probabilities: {statistics.median(spans):.2f} s per minute of audio")


if __name__ == "__main__":
    main()
