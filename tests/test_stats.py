"""Streaming statistics: the meter's definitions, and what every stored reply carries."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_session_support import DEADLINE

from cm_notebook.model import StreamStats
from cm_notebook.providers.base import Finish, TextDelta
from cm_notebook.retry import RetryPolicy
from cm_notebook.session import ContextSession
from cm_notebook.stats import StreamMeter
from cm_notebook.testing import ScriptedProvider


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_meter_definitions_on_a_hand_moved_clock() -> None:
    clock = Clock()
    meter = StreamMeter(clock)
    clock.now += 1.0
    meter.attempt()  # a first attempt that fails after one chunk
    clock.now += 0.5
    meter.chunk()
    clock.now += 2.0
    meter.attempt()  # the retry: ttft, chunks and tokens restart
    clock.now += 0.25
    meter.chunk()
    clock.now += 0.5
    meter.chunk()
    meter.chunk()
    clock.now += 0.5
    assert meter.stats() == StreamStats(
        ttft_ms=250.0,
        chunks=3,
        duration_ms=4750.0,
        output_tokens=3,
        tokens_per_second=2 / 1.0,  # the tokens after the first over the time since it
        attempts=2,
        tokens_from_usage=False,
    )
    meter.usage(8)
    stats = meter.stats()
    assert (stats.output_tokens, stats.tokens_from_usage, stats.tokens_per_second) == (8, True, 7)


def test_the_rate_does_not_count_the_token_that_starts_the_clock() -> None:
    # Two chunks 10 ms apart stream at 100 tokens/s, not 200: the clock starts when the
    # first arrives, so the first is not part of the rate.
    clock = Clock()
    meter = StreamMeter(clock)
    meter.attempt()
    meter.chunk()
    clock.now += 0.01
    meter.chunk()
    assert meter.stats().tokens_per_second == pytest.approx(100.0)
    meter.usage(1)  # a usage report of one token over two chunks carries no rate
    assert meter.stats().tokens_per_second is None


def test_meter_without_text_or_with_one_chunk_has_no_rate() -> None:
    clock = Clock()
    meter = StreamMeter(clock)
    assert meter.stats() == StreamStats(attempts=0)  # cancelled before any request
    meter.attempt()
    clock.now += 1.0
    meter.chunk()
    clock.now += 1.0
    stats = meter.stats()
    assert stats.ttft_ms == 1000.0
    assert stats.chunks == 1
    assert stats.tokens_per_second is None


def test_every_reply_stores_its_stats(data_dir: Path, closing: list[ContextSession]) -> None:
    fake = ScriptedProvider()
    fake.reply("one two three four", chunks="words", usage=(5, 6))
    # A backend that reports no usage: tokens are the chunks counted.
    fake.chunks(TextDelta("a"), TextDelta("b"), TextDelta("c"), Finish("stop"))
    session = ContextSession.create(provider=fake, data_dir=data_dir)
    closing.append(session)
    first = session.send("count").result(DEADLINE)
    stats = first.metadata.stats
    assert stats is not None
    assert (stats.chunks, stats.output_tokens, stats.tokens_from_usage) == (4, 6, True)
    assert stats.attempts == 1
    assert stats.ttft_ms is not None
    assert stats.ttft_ms <= stats.duration_ms
    assert stats.tokens_per_second is not None
    assert first.metadata.duration_ms == stats.duration_ms
    second = session.send("again").result(DEADLINE)
    assert second.metadata.stats is not None
    assert second.metadata.stats.output_tokens == 3
    assert not second.metadata.stats.tokens_from_usage
    # Stored, not only returned.
    assert session.get(first.id).metadata.stats == stats


def test_retries_count_as_attempts(data_dir: Path, closing: list[ContextSession]) -> None:
    fake = ScriptedProvider()
    fake.error("transient", after_chunks=2).reply("fine now", chunks="words")
    session = ContextSession.create(
        provider=fake, data_dir=data_dir, retry=RetryPolicy(initial_delay=0.0)
    )
    closing.append(session)
    reply = session.send("hi").result(DEADLINE)
    assert reply.content == "fine now"
    assert reply.metadata.stats is not None
    assert reply.metadata.stats.attempts == 2
    assert reply.metadata.stats.chunks == 2  # the kept text's chunks, not the failed ones


def test_comparison_shows_stats_side_by_side(data_dir: Path, closing: list[ContextSession]) -> None:
    fast = ScriptedProvider(model="fast").reply("a b c", chunks="words", usage=(1, 3))
    # No usage report from this one: its rate comes from counted chunks.
    slow = ScriptedProvider(model="slow").chunks(TextDelta("x "), TextDelta("y"), Finish("stop"))
    session = ContextSession.create(provider=fast, data_dir=data_dir)
    closing.append(session)
    comparison = session.fan_out("go", [fast, slow]).result(DEADLINE)
    assert all(r.stats is not None for r in comparison.results)
    text = str(comparison)
    assert text.count("TTFT") == 2
    assert text.count("tok/s") == 2
    assert "~" in text  # the slow arm's rate is from counted chunks, marked as such
    html = comparison._repr_html_()
    assert html.count("TTFT") == 2


@pytest.mark.parametrize("attempts", [0, 1, 3])
def test_stats_round_trip(attempts: int) -> None:
    stats = StreamStats(attempts=attempts, chunks=2, output_tokens=2, duration_ms=1.5)
    assert StreamStats.model_validate_json(stats.model_dump_json()) == stats
