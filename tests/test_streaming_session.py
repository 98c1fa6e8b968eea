"""StreamSession and Segmenter without HTTP: segmentation, cost bounds, slow engines, errors.

Audio is tones and silence; a level detector stands in for the VAD so every boundary is exact. The
clock is the audio clock (advanced by what was fed), so timing never depends on the machine.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asr_server.errors import InferenceError, QueueFull
from asr_server.streaming import (
    Final,
    Partial,
    SegmenterConfig,
    SessionError,
    SessionEvent,
    SpeechStopped,
    StreamConfig,
    StreamMetrics,
    StreamSession,
)

RATE = 16_000


class LevelVAD:
    """Speech probability 1 for frames louder than -34 dBFS, else 0."""

    def process_frame(self, frame: np.ndarray) -> float:
        return 1.0 if float(np.sqrt(np.mean(np.square(frame)))) > 0.02 else 0.0

    def reset(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def speech(seconds: float, amplitude: float = 0.3, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


class Engine:
    """A stand-in model: answers with the clip length; can be slow, gated, or failing."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[float] = []
        self.active = 0
        self.max_active = 0
        self.failures: list[Exception] = []

    async def __call__(self, audio: np.ndarray, language: str | None, context: str) -> tuple[str, str | None]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            self.calls.append(audio.size / RATE)
            await asyncio.sleep(self.delay)
            if self.failures:
                raise self.failures.pop(0)
            return f"{context}len={audio.size / RATE:.2f}", language or "English"
        finally:
            self.active -= 1


def drain(session: StreamSession) -> list[SessionEvent]:
    events = []
    while not session.events.empty():
        events.append(session.events.get_nowait())
    return events


async def stream(
    audio: np.ndarray,
    engine: Callable[[np.ndarray, str | None, str], Awaitable[tuple[str, str | None]]],
    config: StreamConfig | None = None,
    chunk: int = 1600,
    metrics: StreamMetrics | None = None,
) -> tuple[list[SessionEvent], StreamSession]:
    clock = Clock()
    session = StreamSession(engine, LevelVAD(), config, metrics=metrics, clock=clock, vad_in_thread=False)
    async with session:
        for offset in range(0, audio.size, chunk):
            piece = audio[offset : offset + chunk]
            await session.feed(piece)
            clock.now += piece.size / RATE
            for _ in range(5):  # let the decode loop and the engine run between chunks
                await asyncio.sleep(0)
        await session.finish()
        return drain(session), session


def finals(events: list[SessionEvent]) -> list[Final]:
    return [e for e in events if isinstance(e, Final)]


async def test_each_utterance_gets_one_final_with_its_times() -> None:
    audio = np.concatenate([silence(1.0), speech(2.0), silence(1.0), speech(3.0), silence(1.0)])
    events, session = await stream(audio, Engine())
    got = finals(events)
    assert [f.segment_id for f in got] == [0, 1]
    # 0.3 s of prefix padding before speech, 0.2 s of tail after it (to the 32 ms frame grid)
    assert got[0].start == pytest.approx(0.7, abs=0.04) and got[0].end == pytest.approx(3.2, abs=0.04)
    assert got[1].start == pytest.approx(3.7, abs=0.04) and got[1].end == pytest.approx(7.2, abs=0.04)
    assert got[0].text == f"len={got[0].end - got[0].start:.2f}" and got[0].language == "English"
    kinds = [(type(e).__name__, e.segment_id) for e in events if not isinstance(e, Partial)]
    assert kinds == [
        ("SpeechStarted", 0),
        ("SpeechStopped", 0),
        ("Final", 0),
        ("SpeechStarted", 1),
        ("SpeechStopped", 1),
        ("Final", 1),
    ]
    assert session.stats.finals == 2


async def test_partials_come_before_their_final_and_never_after() -> None:
    audio = np.concatenate([silence(0.5), speech(6.0), silence(1.0), speech(4.0), silence(1.0)])
    events, _ = await stream(audio, Engine())
    closed: set[int] = set()
    partials = 0
    for event in events:
        if isinstance(event, Final):
            closed.add(event.segment_id)
        elif isinstance(event, Partial):
            partials += 1
            assert event.segment_id not in closed
            assert event.end - event.start >= 1.0  # the interval: at least 1 s of audio each
    assert partials >= 3


async def test_silence_and_blips_never_reach_the_model() -> None:
    engine = Engine()
    blip = speech(0.1)  # a click: shorter than the 0.25 s of speech an utterance needs
    audio = np.concatenate([silence(5.0), blip, silence(3.0), 0.005 * speech(2.0), silence(2.0)])
    events, session = await stream(audio, engine)
    assert engine.calls == [] and events == []
    assert session.stats.decoded_seconds == 0


async def test_a_long_utterance_is_cut_at_its_quietest_points() -> None:
    # 40 s without a pause; two quieter stretches (still speech to the VAD) at 11.0 s and 22.5 s.
    loud = 0.3
    audio = np.concatenate(
        [speech(11.0, loud), speech(0.2, 0.03), speech(11.3, loud), speech(0.2, 0.03), speech(12.0, loud), silence(1)]
    )
    events, _ = await stream(audio, Engine(), StreamConfig(segmenter=SegmenterConfig(max_utterance_s=15.0)))
    got = finals(events)
    assert len(got) == 3
    assert all(f.end - f.start <= 15.0 + 0.04 for f in got)
    assert got[0].end == pytest.approx(11.1, abs=0.15)
    assert got[1].start == got[0].end and got[1].end == pytest.approx(22.6, abs=0.15)
    assert got[2].start == got[1].end
    stops = [e.reason for e in events if isinstance(e, SpeechStopped)]
    assert stops == ["max_length", "max_length", "flush"] or stops == ["max_length", "max_length", "pause"]


async def test_flush_finalises_and_clear_discards() -> None:
    engine = Engine()
    clock = Clock()
    async with StreamSession(engine, LevelVAD(), clock=clock, vad_in_thread=False) as session:
        await session.feed(np.concatenate([silence(0.5), speech(1.0)]))
        await session.flush()  # mid-speech: finalise what was heard
        await session.feed(speech(1.0))
        session.clear()  # this utterance is dropped unheard
        await session.feed(silence(1.0))
        await session.finish()
        events = drain(session)
    got = finals(events)
    assert len(got) == 1 and got[0].end == pytest.approx(1.5, abs=0.04)
    assert [e.reason for e in events if isinstance(e, SpeechStopped)] == ["flush"]


async def test_a_slow_engine_drops_stale_partials_but_never_a_final() -> None:
    engine = Engine(delay=0.02)  # fed ~16x faster than it can keep up with
    pieces = []
    for i in range(12):
        pieces += [speech(1.0 + (i % 4)), silence(0.8)]
    events, session = await stream(np.concatenate(pieces), engine, chunk=4000)
    got = finals(events)
    assert [f.segment_id for f in got] == list(range(12))  # every utterance, in order
    assert engine.max_active == 1  # one engine call per stream at a time
    assert session.stats.partials_dropped + session.stats.partials < 40


async def test_engine_errors_become_error_events_and_full_queues_are_retried() -> None:
    engine = Engine()
    engine.failures = [QueueFull("busy"), InferenceError("boom")]
    config = StreamConfig(partials=False)
    audio = np.concatenate([speech(1.0), silence(1.0), speech(1.0), silence(1.0)])
    events, _ = await stream(audio, engine, config)
    errors = [e for e in events if isinstance(e, SessionError)]
    assert len(errors) == 1 and errors[0].code == "inference_failed"
    got = finals(events)
    assert len(got) == 1 and "boom" not in got[0].text  # errors are never transcript text
    assert {errors[0].segment_id, got[0].segment_id} == {0, 1}


async def test_closing_cancels_engine_work_and_lag_is_reported() -> None:
    gate = asyncio.Event()
    cancelled = asyncio.Event()
    clock = Clock()

    async def stuck(audio: np.ndarray, language: str | None, context: str) -> tuple[str, str | None]:
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never", None

    session = StreamSession(stuck, LevelVAD(), StreamConfig(partials=False), clock=clock, vad_in_thread=False)
    session.start()
    await session.feed(np.concatenate([speech(1.0), silence(1.0)]))
    await asyncio.sleep(0.01)
    clock.now = 5.0
    assert session.lag_seconds() == pytest.approx(5.0)
    assert session.buffered_seconds > 1.0
    assert not await session.wait_for_room(0.5, timeout=0.05)
    await session.aclose()
    assert cancelled.is_set() and session.buffered_seconds == 0


async def test_a_ten_minute_stream_costs_a_small_constant_per_second() -> None:
    rng = np.random.default_rng(7)
    pieces = []
    while sum(p.size for p in pieces) < 600 * RATE:
        pieces += [speech(float(rng.uniform(0.5, 20.0))), silence(float(rng.uniform(0.6, 2.0)))]
    audio = np.concatenate(pieces)
    metrics = StreamMetrics()
    _, session = await stream(audio, Engine(), chunk=3200, metrics=metrics)
    stats = session.stats
    assert stats.partial_decoded_seconds <= 1.5 * stats.audio_seconds
    assert stats.final_decoded_seconds <= stats.audio_seconds
    assert stats.decoded_seconds / stats.audio_seconds < 3.0
    assert metrics.decoded_seconds == pytest.approx(stats.decoded_seconds)
    assert stats.partials > 100  # partials were still produced all along


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(
        st.tuples(st.floats(0.05, 25.0), st.floats(0.0, 3.0), st.sampled_from([0.3, 0.05, 0.01])),
        min_size=1,
        max_size=8,
    ),
    chunk=st.sampled_from([160, 511, 512, 1600, 7000]),
    budget=st.sampled_from([0.0, 0.5, 1.5]),
)
async def test_finals_are_never_decoded_twice_and_cost_is_bounded(
    parts: list[tuple[float, float, float]], chunk: int, budget: float
) -> None:
    audio = np.concatenate([np.concatenate([speech(s, level), silence(p)]) for s, p, level in parts])
    config = StreamConfig(partial_budget=budget, partials=budget > 0)
    events, session = await stream(audio, Engine(), config, chunk=chunk)
    stats = session.stats
    ranges = stats.final_ranges
    assert all(start < end for start, end in ranges)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(ranges))
    assert all(end - start <= 15.0 * RATE + 512 for start, end in ranges)
    assert stats.final_decoded_seconds == pytest.approx(sum(e - s for s, e in ranges) / RATE)
    assert stats.final_decoded_seconds <= stats.audio_seconds + 1e-6
    assert stats.partial_decoded_seconds <= budget * stats.audio_seconds + 1e-6
    assert [f.segment_id for f in finals(events)] == sorted(f.segment_id for f in finals(events))
    assert stats.audio_seconds == pytest.approx(audio.size / RATE, abs=1e-3)
