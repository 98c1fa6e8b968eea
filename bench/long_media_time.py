"""Wall time per hour of audio for a long file as a job, fast and accurate subtitle timing, on this CPU.

The server runs the transformers engine with the tiny "hello" Qwen3-ASR (every piece reads "hello world", so
transcription costs next to nothing and what is left is the pipeline: decoding, cutting, the VAD for fast
timing) and a forced aligner of the published Qwen3-ForcedAligner-0.6B dimensions (random weights: one forward
pass per piece, so it costs what the trained one does). Transcription at real size is in the engine table of
improvements.md; add it per hour of audio for the whole.

    .venv/bin/python bench/long_media_time.py [--minutes 10] [--modes fast,accurate]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import ROOT, bench_checkpoint

sys.path.insert(0, str(ROOT / "tests"))
from server_process import serve_cli
from tone_words import script, write_flac


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--modes", default="fast,accurate")
    args = parser.parse_args()
    hello = bench_checkpoint("hello-asr", "--hello")
    aligner = bench_checkpoint("aligner-0.6b", "--aligner", "--dims", "0.6b")
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as folder:
        media = write_flac(Path(folder) / "talk.flac", script(seconds, piece_seconds=60.0, seed=1), seconds)
        env = {
            "ASR_ENGINE": "transformers",
            "MODEL_ID": str(hello),
            "FORCED_ALIGNER_ID": str(aligner),
            "DEVICE": "cpu",
            "MAX_NEW_TOKENS": "12",
            "PRELOAD": "1",
            "DATA_DIR": folder,
            "REQUEST_TIMEOUT": "7200",
        }
        with serve_cli(env) as server:
            dtype = httpx.get(f"{server.url}/ready", timeout=600).json().get("dtype")
            for mode in args.modes.split(","):
                started = time.perf_counter()
                with media.open("rb") as upload:
                    job = httpx.post(
                        f"{server.url}/v1/jobs",
                        files={"file": (media.name, upload)},
                        data={"response_format": "srt", "subtitle_mode": mode},
                        timeout=600,
                    ).json()
                while (state := httpx.get(f"{server.url}/v1/jobs/{job['id']}").json())["status"] != "succeeded":
                    assert state["status"] in ("queued", "running"), state
                    time.sleep(0.5)
                elapsed = time.perf_counter() - started
                row = {
                    "mode": mode,
                    "audio_minutes": args.minutes,
                    "aligner_dtype": dtype,
                    "wall_s": round(elapsed, 1),
                    "wall_s_per_audio_hour": round(elapsed * 3600 / seconds, 1),
                }
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
