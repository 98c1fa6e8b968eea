#!/usr/bin/env python3
"""qwen-asr's own forced alignment, as JSON: the reference the vLLM aligner is checked against.

Runs where qwen-asr is installed (.venv); the vLLM venv's parity test calls it with that Python::

    python scripts/aligner_reference.py ALIGNER_DIR CASES.json   # prints [[{text, start, end}, ...], ...]

CASES.json: [{"audio": "path/to/float32.npy", "text": "...", "language": "English"}, ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    from qwen_asr import Qwen3ForcedAligner

    aligner_dir, cases_path = argv
    cases = json.loads(Path(cases_path).read_text(encoding="utf-8"))
    aligner = Qwen3ForcedAligner.from_pretrained(aligner_dir, device_map="cpu")
    results = []
    for case in cases:  # one at a time: padding in a batch would be a difference of its own
        audio = np.load(case["audio"])
        (result,) = aligner.align(audio=[(audio, 16_000)], text=[case["text"]], language=[case["language"]])
        results.append([{"text": i.text, "start": i.start_time, "end": i.end_time} for i in result.items])
    print(json.dumps(results, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
