"""Subtitle cues from timed words: punctuation restoration, timing estimation, cue grouping.

Spacing convention (used by every function here): a `WordTiming.text` starts with one space when the
transcript had whitespace before that unit, and never otherwise (the first unit never does). So
`"".join(w.text for w in words)` is the transcript with whitespace runs collapsed, CJK stays unspaced
and mixed Chinese/English keeps exactly the spaces it had. `restore_punctuation` and `fast_timings`
produce this. Lists where no word after the first starts with a space (e.g. raw aligner output) are
joined by script instead: a space between two words unless either side is Chinese/Japanese.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from asr_server.text.char_align import match_spans
from asr_server.text.cues import Cue
from asr_server.text.line_breaking import (
    SENTENCE_END,
    break_penalty,
    breaks_anywhere,
    can_break_between,
    display_width,
    is_cjk,
    wrap_lines,
)
from asr_server.text.units import (
    LineFit,
    attach_gaps,
    ends_sentence,
    match_key,
    needs_space,
    normalise_space,
    speaking_cost,
    unit_spans,
)


@dataclass(frozen=True)
class WordTiming:
    """A timed unit: a word in Latin scripts, one character in CJK (see the spacing convention)."""

    text: str
    start: float
    end: float
    speaker: str | None = None  # with diarization: the label of whoever said it


@dataclass(frozen=True)
class CueRules:
    """Cue layout and timing limits; defaults follow common broadcast/streaming guidelines."""

    max_lines: int = 2  #: lines per cue
    max_line_width: int = 42  #: display columns per line (a CJK character takes 2)
    min_duration: float = 5 / 6  #: seconds a cue should stay up, where the next cue leaves room
    max_duration: float = 7.0  #: seconds a cue may stay up
    min_gap: float = 0.083  #: seconds between cues (2 frames at 24 fps) so the eye sees a change
    pause_split: float = 0.5  #: a silence longer than this (seconds) between words ends a cue
    max_cps: float = 17.0  #: reading speed ceiling, characters per second (Latin and other scripts)
    max_cps_cjk: float = 9.0  #: reading speed ceiling for CJK characters per second

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be an int >= {low}"
            for name, low in (("max_lines", 1), ("max_line_width", 2))  # 2 columns: one CJK character
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low
        ] + [
            f"{name} must be a finite number > 0"
            for name in ("max_duration", "pause_split", "max_cps", "max_cps_cjk")
            if not (_finite(getattr(self, name)) and getattr(self, name) > 0)
        ]
        if not (_finite(self.min_duration) and 0 <= self.min_duration <= self.max_duration):
            problems.append("min_duration must be between 0 and max_duration")
        if not (_finite(self.min_gap) and 0 <= self.min_gap < self.max_duration):
            problems.append("min_gap must be >= 0 and below max_duration")
        if problems:
            raise ValueError("CueRules: " + "; ".join(problems))


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --- Units of a transcript ---


def join_words(words: Sequence[WordTiming]) -> str:
    """The text of `words` under the module's spacing convention."""
    spaced = any(w.text[:1].isspace() for w in words[1:])
    out: list[str] = []
    previous = ""
    for w in words:
        core = normalise_space(w.text)
        if not core:
            continue
        if previous and (w.text[:1].isspace() if spaced else needs_space(previous, core)):
            out.append(" ")
        out.append(core)
        previous = core
    return "".join(out)


def join_word_runs(runs: Sequence[Sequence[WordTiming]]) -> list[WordTiming]:
    """The words of consecutive pieces as one run: each piece's first word gets the space `join_pieces` puts
    between the pieces' texts (a piece's transcript starts without one, so "end" + "start" would read "endstart")."""
    words: list[WordTiming] = []
    for run in runs:
        if words and run and not run[0].text[:1].isspace():
            left, right = normalise_space(words[-1].text), normalise_space(run[0].text)
            if left and right and needs_space(left, right):
                run = [dataclasses.replace(run[0], text=" " + run[0].text), *run[1:]]
        words.extend(run)
    return words


# --- Punctuation restoration ---


def restore_punctuation(transcript: str, aligned: list[WordTiming], *, keep_unmatched: bool = True) -> list[WordTiming]:
    """Put the transcript's punctuation, case and spacing back on the aligner's bare items.

    Items are matched to the transcript in order on case-, accent- and punctuation-folded letters.
    Transcript text no item covers (punctuation, a skipped word) joins the neighbouring item:
    closing marks and skipped words the one before, opening marks the one after. A run of unmatched
    items takes the uncovered transcript words between its matched neighbours, shared out in order;
    an unmatched item with no such words keeps its own text (or is left out if `keep_unmatched` is
    False). Items without letters or digits (bare punctuation) are left out. Timings are the
    aligner's. The result follows the module's spacing convention.
    """
    text = normalise_space(transcript)
    if not aligned:
        return []
    keys = [match_key(w.text)[0] for w in aligned]
    # Per item: a character span in `text`, "keep" (its own text), or None (left out).
    spans: list[tuple[int, int] | str | None] = list(match_spans(text, keys))
    matched = [k for k, span in enumerate(spans) if span is not None]
    k = 0
    while k < len(aligned):
        if spans[k] is not None or not keys[k]:
            k += 1
            continue
        run = [k]
        while run[-1] + 1 < len(aligned) and spans[run[-1] + 1] is None:
            run.append(run[-1] + 1)
        before = [m for m in matched if m < k]
        after = [m for m in matched if m > run[-1]]
        lo = spans[before[-1]][1] if before else 0  # type: ignore[index]
        hi = spans[after[0]][0] if after else len(text)  # type: ignore[index]
        units = unit_spans(text, lo, hi)
        run = [q for q in run if keys[q]]
        for n, q in enumerate(run):
            share = units[n * len(units) // len(run) : (n + 1) * len(units) // len(run)]
            if share:
                spans[q] = (share[0][0], share[-1][1])
            elif not units and keep_unmatched:
                spans[q] = "keep"
        k = run[-1] + 1 if run else k + 1
    return _assemble(text, aligned, spans)


def _assemble(text: str, aligned: list[WordTiming], spans: list[tuple[int, int] | str | None]) -> list[WordTiming]:
    spanned = [k for k, span in enumerate(spans) if isinstance(span, tuple)]
    if not spanned:  # no words in the transcript to match: keep it whole
        return [WordTiming(text, aligned[0].start, aligned[-1].end)] if text else []
    pieces = dict(zip(spanned, attach_gaps(text, [spans[k] for k in spanned]), strict=True))  # type: ignore[misc]
    out: list[WordTiming] = []
    for k, (w, span) in enumerate(zip(aligned, spans, strict=True)):
        if span == "keep":
            core = normalise_space(w.text)
            pieces[k] = (" " if out and needs_space(out[-1].text, core) else "") + core
        if k in pieces:
            out.append(WordTiming(pieces[k] if out else pieces[k].lstrip(), w.start, w.end))
    return out


# --- Timings without an aligner ---


def fast_timings(
    text: str, regions: list[tuple[float, float]], *, offset: float = 0.0, duration: float
) -> list[WordTiming]:
    """Estimated timings when no aligner is available.

    `text` is split into units (Latin words, CJK characters; punctuation joins the unit before it,
    opening marks the unit after). Units are shared out over the speech `regions` (seconds from the
    chunk start, as `vad.speech_regions` returns them) in proportion to their speaking cost; each
    unit lies inside one region, with a short gap after sentence and clause punctuation. Without
    regions the whole [0, duration] span is used. Output times are `offset` + chunk time, within
    [offset, offset + duration].
    """
    if not (math.isfinite(duration) and duration >= 0):
        raise ValueError("duration must be a finite number >= 0")
    norm = normalise_space(text)
    if not norm:
        return []
    pieces = attach_gaps(norm, unit_spans(norm, 0, len(norm)) or [(0, len(norm))])  # no units: one piece
    weights = [speaking_cost(normalise_space(p)) for p in pieces]
    pauses = [_pause_weight(normalise_space(p)) for p in pieces]
    usable = sorted((max(0.0, a), min(duration, b)) for a, b in regions if min(duration, b) > max(0.0, a))
    merged: list[tuple[float, float]] = []
    for a, b in usable:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    if not merged:
        merged = [(0.0, duration)]
    # Give each unit to the region holding the middle of its share of the total speech time.
    bounds = list(itertools.accumulate(b - a for a, b in merged))
    firsts = itertools.accumulate([w + p for w, p in zip(weights, pauses, strict=True)], initial=0.0)
    scale = bounds[-1] / (sum(weights) + sum(pauses[:-1]))
    owner = [
        min(bisect.bisect_left(bounds, (first + weight / 2) * scale), len(merged) - 1)
        for first, weight in zip(firsts, weights, strict=False)
    ]
    out: list[WordTiming] = []
    for r, group in itertools.groupby(range(len(pieces)), key=owner.__getitem__):
        units = list(group)
        a, b = merged[r]
        step = (b - a) / (sum(weights[u] for u in units) + sum(pauses[u] for u in units[:-1]))
        t = a
        for u in units:
            end = min(b, t + weights[u] * step)
            out.append(WordTiming(pieces[u], offset + t, offset + end))
            t = min(b, end + pauses[u] * step)
    return out


def _pause_weight(core: str) -> float:
    stripped = core.rstrip("\"'”’)）」』")
    if stripped and stripped[-1] in SENTENCE_END:
        return 4.0
    if stripped and stripped[-1] in ",;:，、；：":
        return 2.0
    return 0.0


# --- Cue building ---

_CUE_COST = 1000.0  # fewer cues first; the terms below only choose between equally many
_FILL_COST = 200.0  # uneven cue lengths (squared emptiness)
_SHORT_COST = 100.0  # cues spanning less than min_duration of speech
_PAUSE_BONUS = 100.0  # a pause (up to pause_split) makes a boundary this much cheaper


@dataclass(frozen=True)
class _Word:
    core: str
    space: bool  # a space before it in the cue text
    start: float
    end: float
    width: int
    reading: float  # seconds to read it (incl. the space before it) at the CPS ceilings
    breakable: bool  # a line may break before it
    speaker: str | None = None


def _reading_time(core: str, rules: CueRules) -> float:
    cjk = sum(1 for ch in core if is_cjk(ch))
    other = sum(1 for ch in core if not is_cjk(ch) and unicodedata.category(ch) not in ("Mn", "Me", "Cf"))
    return cjk / rules.max_cps_cjk + other / rules.max_cps


def _prepare(words: Sequence[WordTiming], duration: float, rules: CueRules) -> list[_Word]:
    """Normalised words with times clamped into [0, duration] and made non-decreasing."""
    spaced = any(w.text[:1].isspace() for w in words[1:])
    out: list[_Word] = []
    floor = 0.0
    for w in words:
        core = normalise_space(w.text)
        if not core:
            continue
        start = min(max(w.start, floor), duration) if math.isfinite(w.start) else floor
        end = min(max(w.end, start), duration) if math.isfinite(w.end) else start
        floor = start
        space = False
        if out:
            space = w.text[:1].isspace() if spaced else needs_space(out[-1].core, core)
        breakable = bool(out) and can_break_between(out[-1].core, core, space)
        reading = _reading_time(core, rules) + (1 / rules.max_cps if space else 0.0)
        out.append(_Word(core, space, start, end, display_width(core), reading, breakable, w.speaker))
    return out


def _boundary_penalties(ws: list[_Word], rules: CueRules) -> list[float]:
    """Cost of ending a cue after each word (before the next one)."""
    out = []
    for left, right in itertools.pairwise(ws):
        sep = " " if right.space else ""
        penalty = break_penalty(left.core + sep + right.core, len(left.core), len(left.core) + len(sep))
        pause = min(max(right.start - left.end, 0.0), rules.pause_split)
        out.append(penalty - _PAUSE_BONUS * pause / rules.pause_split)
    return [*out, 0.0]


def _plan(ws: list[_Word], lo: int, hi: int, duration: float, rules: CueRules) -> list[tuple[int, int]]:
    """Best split of words[lo:hi] into cues (inclusive index pairs) by dynamic programming."""
    n = hi - lo
    capacity = rules.max_lines * rules.max_line_width
    penalties = _boundary_penalties(ws[lo:hi], rules)
    best = [0.0] + [math.inf] * n
    back = [0] * (n + 1)
    for a in range(n):
        if best[a] == math.inf:
            continue
        first = ws[lo + a]
        fit = LineFit(rules.max_line_width, first.width)
        reading, width, good_prefix = first.reading - (1 / rules.max_cps if first.space else 0.0), first.width, False
        last_end = first.end
        for b in range(a, n):
            w = ws[lo + b]
            if b > a:
                fit.add(w.width, w.space, w.breakable)
                reading += w.reading
                width += w.width + (1 if w.space else 0)
                last_end = max(last_end, w.end)
                if fit.lines > rules.max_lines or last_end - first.start > rules.max_duration:
                    break  # longer cues only get worse
            following = ws[lo + b + 1].start if lo + b + 1 < len(ws) else duration
            span = last_end - first.start
            available = max(min(rules.max_duration, following - rules.min_gap - first.start), span)
            readable = reading <= available + 1e-9
            # Too dense: close the cue where a readable cue of reasonable length was possible. Where
            # even that is impossible, splitting would only make subtitles flicker, so don't.
            if not readable and good_prefix:
                continue
            good_prefix = good_prefix or (readable and available >= rules.min_duration)
            cost = best[a] + _CUE_COST + _FILL_COST * (1 - min(1.0, width / capacity)) ** 2
            if span < rules.min_duration:
                cost += _SHORT_COST * (rules.min_duration - span) / rules.min_duration
            if b + 1 < n:
                cost += penalties[b]
            if cost < best[b + 1]:
                best[b + 1], back[b + 1] = cost, a
    plan: list[tuple[int, int]] = []
    b = n
    while b > 0:
        plan.append((lo + back[b], lo + b - 1))
        b = back[b]
    return plan[::-1]


def _segments(ws: list[_Word], rules: CueRules) -> list[tuple[int, int]]:
    """Runs of words between hard cue boundaries: sentence ends, long pauses and a change of speaker (a cue is
    one speaker's words)."""
    out, start = [], 0
    for k, w in enumerate(ws):
        last = k + 1 == len(ws)
        if (
            last
            or ends_sentence(w.core)
            or ws[k + 1].start - w.end > rules.pause_split
            or ws[k + 1].speaker != w.speaker
        ):
            out.append((start, k + 1))
            start = k + 1
    return out


def _cue_text(ws: list[_Word], i: int, j: int) -> str:
    return ws[i].core + "".join((" " if w.space else "") + w.core for w in ws[i + 1 : j + 1])


def build_cues(words: list[WordTiming], duration: float, rules: CueRules = CueRules()) -> list[Cue]:
    """Group timed words into subtitle cues.

    A cue ends at sentence punctuation, at a pause longer than `rules.pause_split`, or where the
    text would need more than `max_lines` lines, last longer than `max_duration`, or read faster
    than the CPS ceiling (only where a readable cue of at least `min_duration` was possible before).
    Within those limits the split points are chosen jointly (fewest cues, even lengths, breaks after
    clause punctuation or at pauses). Times are whole milliseconds: cues are extended toward
    max(min_duration, reading time) where the next cue leaves room, keep `min_gap` apart, never
    overlap and stay inside [0, duration]. Should cues be too crowded for that (more of them than
    milliseconds allow), the closest neighbours are merged.
    """
    if not words:
        return []  # nothing was said (e.g. a clip shorter than an engine accepts): no cues, whatever its length
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError("duration must be a finite number > 0")
    limit_ms = math.floor(duration * 1000 + 1e-6)
    if limit_ms < 1:
        raise ValueError("duration must be at least 1 ms")
    ws = _prepare(words, limit_ms / 1000, rules)
    if not ws:
        return []
    plan = [cue for lo, hi in _segments(ws, rules) for cue in _plan(ws, lo, hi, limit_ms / 1000, rules)]
    gap_ms = round(rules.min_gap * 1000)
    # Merge the most crowded neighbours until every cue can get >= 1 ms with the gaps between.
    while len(plan) > 1 and len(plan) * (1 + gap_ms) - gap_ms > limit_ms:
        k = min(range(1, len(plan)), key=lambda c: ws[plan[c][0]].start - ws[plan[c - 1][0]].start)
        plan[k - 1 : k + 1] = [(plan[k - 1][0], plan[k][1])]
    return _timed_cues(ws, plan, limit_ms, gap_ms, rules)


def _timed_cues(ws: list[_Word], plan: list[tuple[int, int]], limit_ms: int, gap_ms: int, rules: CueRules) -> list[Cue]:
    count = len(plan)
    starts = [round(ws[i].start * 1000) for i, _ in plan]
    ends = [round(max(w.end for w in ws[i : j + 1]) * 1000) for i, j in plan]
    # Latest end of each cue that still leaves every later cue 1 ms and its gap before `limit_ms`.
    latest_end = [0] * count
    limit = limit_ms
    for k in range(count - 1, -1, -1):
        latest_end[k] = limit
        limit -= 1 + gap_ms
    max_ms = math.floor(rules.max_duration * 1000 + 1e-6)
    min_ms = round(rules.min_duration * 1000)
    cues: list[Cue] = []
    previous_end = -gap_ms
    for k, (i, j) in enumerate(plan):
        text = _cue_text(ws, i, j)
        start = min(max(starts[k], previous_end + gap_ms, 0), latest_end[k] - 1)
        # Ending here keeps the next cue at its own start; later ends would push it.
        free_until = max(starts[k + 1] - gap_ms, start + 1) if k + 1 < count else limit_ms
        target = start + max(min_ms, math.ceil(sum(w.reading for w in ws[i : j + 1]) * 1000))
        end = max(ends[k], start + 1, min(target, free_until))
        end = max(start + 1, min(end, free_until, latest_end[k], start + max_ms))
        lines = wrap_lines(text, rules.max_line_width, rules.max_lines)
        cues.append(Cue(index=k + 1, start=start / 1000, end=end / 1000, text="\n".join(lines), speaker=ws[i].speaker))
        previous_end = end
    return cues


def segments_from_cues(cues: list[Cue]) -> list[dict]:
    """OpenAI verbose_json `segments` ({"id", "start", "end", "text"}) with cue lines rejoined."""
    out = []
    for number, cue in enumerate(cues):
        lines = [line.strip() for line in cue.text.split("\n") if line.strip()]
        text = lines[0] if lines else ""
        for line in lines[1:]:
            glue = "" if breaks_anywhere(text[-1]) and breaks_anywhere(line[0]) else " "
            text += glue + line
        segment: dict = {"id": number, "start": cue.start, "end": cue.end, "text": text}
        if cue.speaker is not None:
            segment["speaker"] = cue.speaker
        out.append(segment)
    return out


def words_payload(words: list[WordTiming]) -> list[dict]:
    """OpenAI verbose_json `words` ({"word", "start", "end"}), without the leading spaces."""
    return [
        {"word": w.text.strip(), "start": round(w.start, 3), "end": round(w.end, 3)}
        | ({"speaker": w.speaker} if w.speaker is not None else {})
        for w in words
        if w.text.strip()
    ]
