"""Peak resident memory and wall time of the server for feature-length files (issue 17), whole vs piece by piece.

Each case runs against a fresh `asr-server serve` (fake engine, fast subtitle timing, so the VAD runs on every
piece and timing is real work); reported: the server's idle RSS after one small request, its peak (VmHWM)
above that while it makes an SRT of the file, and the wall time.

- `whole`: LONG_AUDIO_SECONDS past the file, QUEUE_MAX 1000: what the server did before (the file decoded into
  one array and all its pieces queued at once; the default QUEUE_MAX of 64 refused a 2-hour file with 429).
- `pieces`: the defaults (audio past 20 minutes decoded progressively, PIECES_IN_FLIGHT pieces at a time).
- `job`: the same file as POST /v1/jobs, waited for, then its SRT fetched.

The media: tone-word speech (tests/tone_words.py) as 16 kHz FLAC, written in blocks.

    .venv/bin/python bench/long_media_memory.py [--hours 1,2,4] [--cases whole,pieces,job]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from server_process import ServerProcess, serve_cli  # noqa: E402
from tone_words import script, write_flac  # noqa: E402

CASES = {
    "whole": {"LONG_AUDIO_SECONDS": "14400", "QUEUE_MAX": "1000"},
    "pieces": {},
    "job": {},
}


def _warm(server: ServerProcess, sample: Path) -> None:
    with sample.open("rb") as media:
        httpx.post(
            f"{server.url}/v1/audio/transcriptions",
            files={"file": ("warm.flac", media)},
            data={"response_format": "srt", "subtitle_mode": "fast"},
            timeout=120,
        ).raise_for_status()


def run_case(case: str, media: Path, sample: Path, data_dir: Path) -> dict[str, float]:
    env = {"DATA_DIR": str(data_dir), "DEVICE": "cpu", "REQUEST_TIMEOUT": "7200", **CASES[case]}
    with serve_cli(env) as server:
        _warm(server, sample)
        idle = server.status_kib("VmRSS") / 1024
        started = time.perf_counter()
        with media.open("rb") as upload:
            files = {"file": (media.name, upload)}
            form = {"response_format": "srt", "subtitle_mode": "fast"}
            if case == "job":
                job = httpx.post(f"{server.url}/v1/jobs", files=files, data=form, timeout=600).json()
                while (state := httpx.get(f"{server.url}/v1/jobs/{job['id']}").json())["status"] != "succeeded":
                    assert state["status"] in ("queued", "running"), state
                    time.sleep(0.5)
                response = httpx.get(f"{server.url}/v1/jobs/{job['id']}/result", timeout=600)
            else:
                response = httpx.post(f"{server.url}/v1/audio/transcriptions", files=files, data=form, timeout=7200)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            return {"status": response.status_code, "idle_mb": idle, "error": response.text[:200]}  # type: ignore[dict-item]
        peak = server.status_kib("VmHWM") / 1024
        after = server.status_kib("VmRSS") / 1024
    return {
        "idle_mb": round(idle),
        "peak_above_idle_mb": round(peak - idle),
        "after_mb": round(after),
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", default="1,2,4")
    parser.add_argument("--cases", default="whole,pieces,job")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        sample = write_flac(root / "sample.flac", script(30.0, piece_seconds=60.0), 30.0)
        rows = []
        for hours in [float(h) for h in args.hours.split(",")]:
            seconds = hours * 3600
            media = write_flac(root / f"{hours:g}h.flac", script(seconds, piece_seconds=60.0, seed=1), seconds)
            for case in args.cases.split(","):
                result = run_case(case, media, sample, root / f"data-{case}-{hours:g}")
                row = {"hours": hours, "case": case, "flac_mb": round(media.stat().st_size / 2**20), **result}
                print(json.dumps(row), flush=True)
                rows.append(row)
            media.unlink()
    print("\n| hours | case | FLAC | idle RSS | peak above idle | RSS after | wall |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if "peak_above_idle_mb" in row:
            print(
                f"| {row['hours']:g} | {row['case']} | {row['flac_mb']} MB | {row['idle_mb']} MB | "
                f"{row['peak_above_idle_mb']} MB | {row['after_mb']} MB | {row['seconds']} s |"
            )
        else:
            failure = f"{row['status']}: {row['error']}"
            print(f"| {row['hours']:g} | {row['case']} | {row['flac_mb']} MB | - | {failure} | - | - |")


if __name__ == "__main__":
    main()
