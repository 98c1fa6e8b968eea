"""Pure functions on diarizer output (no torch): which speaker said a span, and the speakers' public labels.

Public labels are "A", "B", ... in order of first appearance ("AA", "AB", ... past 26), or the name of a
reference clip whose speaker embedding matches the cluster's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from asr_server.diarization.base import SpeakerTurn

NEAREST_TURN_MAX_GAP_S = 1.0


def letter_label(index: int) -> str:
    """0 -> "A", 25 -> "Z", 26 -> "AA", 27 -> "AB", ... (spreadsheet columns)."""
    if index < 0:
        raise ValueError("index must be >= 0")
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors; 0 when either is all zeros."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / norms) if norms > 0 else 0.0


def speaker_for_span(
    start: float, end: float, turns: Sequence[SpeakerTurn], *, max_gap: float = NEAREST_TURN_MAX_GAP_S
) -> str | None:
    """The speaker whose turns cover most of [start, end] (a zero-length span: the turn containing it); when
    no turn overlaps, the speaker of the nearest turn within `max_gap` seconds; else None. Ties go to the
    earlier turn."""
    if end < start:
        start, end = end, start
    covered: dict[str, float] = {}
    for turn in turns:
        overlap = min(end, turn.end) - max(start, turn.start)
        if overlap > 0 or (overlap == 0 and start == end and turn.start <= start <= turn.end):
            covered[turn.speaker] = covered.get(turn.speaker, 0.0) + max(overlap, 0.0)
    if covered:
        return max(covered, key=lambda speaker: covered[speaker])  # max keeps the first of equals
    best: tuple[float, str] | None = None
    for turn in turns:
        gap = max(turn.start - end, start - turn.end)
        if gap <= max_gap and (best is None or gap < best[0]):
            best = (gap, turn.speaker)
    return best[1] if best else None


def speakers_in_order(turns: Sequence[SpeakerTurn]) -> list[str]:
    """Backend labels in order of first appearance (by start time)."""
    return list(dict.fromkeys(turn.speaker for turn in sorted(turns, key=lambda t: (t.start, t.end))))


def match_references(
    clusters: Sequence[str],
    turn_embeddings: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    threshold: float,
) -> dict[str, str]:
    """Cluster label -> reference name: the most similar (cluster, reference) pair first, each used once,
    while the similarity is at least `threshold`. Clusters without an embedding match nothing."""
    pairs = sorted(
        (
            (cosine(turn_embeddings[cluster], embedding), order, name_order, cluster, name)
            for order, cluster in enumerate(clusters)
            if cluster in turn_embeddings
            for name_order, (name, embedding) in enumerate(references.items())
        ),
        key=lambda pair: (-pair[0], pair[1], pair[2]),
    )
    matched: dict[str, str] = {}
    used: set[str] = set()
    for similarity, _, _, cluster, name in pairs:
        if similarity < threshold:
            break
        if cluster not in matched and name not in used:
            matched[cluster] = name
            used.add(name)
    return matched


def label_speakers(
    turns: Sequence[SpeakerTurn],
    *,
    turn_embeddings: Mapping[str, np.ndarray] | None = None,
    references: Mapping[str, np.ndarray] | None = None,
    threshold: float,
) -> dict[str, str]:
    """Backend label -> public label. A cluster whose embedding matches a reference (cosine >= threshold,
    best unique match) takes the reference's name; the others get "A", "B", ... in order of first
    appearance, skipping any letter a reference name already took."""
    clusters = speakers_in_order(turns)
    named = match_references(clusters, turn_embeddings or {}, references or {}, threshold)
    taken = set(named.values())
    labels: dict[str, str] = {}
    index = 0
    for cluster in clusters:
        if cluster in named:
            labels[cluster] = named[cluster]
            continue
        while letter_label(index) in taken:
            index += 1
        labels[cluster] = letter_label(index)
        index += 1
    return labels


def relabel(turns: Sequence[SpeakerTurn], labels: Mapping[str, str]) -> list[SpeakerTurn]:
    """The turns with their public labels (a label missing from `labels` is kept)."""
    return [SpeakerTurn(turn.start, turn.end, labels.get(turn.speaker, turn.speaker)) for turn in turns]
