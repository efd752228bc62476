"""The retry policy: backoff, jitter, Retry-After and the HTTP status table."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cm_notebook.errors import InvalidInputError
from cm_notebook.retry import (
    DEFAULT_POLICY,
    RetryPolicy,
    classify_http_status,
    parse_retry_after,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_default_policy_values() -> None:
    policy = DEFAULT_POLICY
    assert (policy.initial_delay, policy.multiplier, policy.max_attempts) == (0.5, 2.0, 3)
    assert (policy.max_delay, policy.jitter, policy.max_retry_after) == (30.0, 0.1, 120.0)


def test_backoff_sequence_doubles_then_caps() -> None:
    delays = [DEFAULT_POLICY.backoff(n) for n in range(1, 10)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_backoff_huge_attempt_does_not_overflow() -> None:
    assert DEFAULT_POLICY.backoff(10**9) == 30.0
    assert RetryPolicy(initial_delay=0.0).backoff(10**9) == 0.0
    assert RetryPolicy(multiplier=1.0).backoff(10**9) == 0.5


def test_delay_without_retry_after_is_backoff() -> None:
    assert DEFAULT_POLICY.delay(1, retry_after=None, jitter=0.0) == 0.5
    assert DEFAULT_POLICY.delay(2, retry_after=None, jitter=0.0) == 1.0


@given(attempt=st.integers(1, 60), u=st.floats(0.0, 1.0, exclude_max=True))
def test_jitter_only_shortens_and_stays_in_bounds(attempt: int, u: float) -> None:
    policy = DEFAULT_POLICY
    base = policy.backoff(attempt)
    jittered = policy.backoff(attempt, jitter=u)
    assert base * (1 - policy.jitter) <= jittered <= base <= policy.max_delay


def test_jitter_spreads_delays() -> None:
    low = DEFAULT_POLICY.delay(3, retry_after=None, jitter=0.999)
    high = DEFAULT_POLICY.delay(3, retry_after=None, jitter=0.0)
    assert low is not None
    assert high is not None
    assert low < high == 2.0
    assert low == pytest.approx(2.0 * (1 - 0.1 * 0.999))


@given(
    attempt=st.integers(1, 20),
    retry_after=st.floats(0.0, 120.0),
    u=st.floats(0.0, 1.0, exclude_max=True),
)
def test_retry_after_is_never_undercut(attempt: int, retry_after: float, u: float) -> None:
    delay = DEFAULT_POLICY.delay(attempt, retry_after=retry_after, jitter=u)
    assert delay is not None
    assert delay >= retry_after
    assert delay >= DEFAULT_POLICY.backoff(attempt, jitter=u)


def test_retry_after_longer_than_max_delay_is_still_honoured() -> None:
    assert DEFAULT_POLICY.delay(1, retry_after=90.0, jitter=0.0) == 90.0


def test_retry_after_beyond_the_hard_cap_gives_up() -> None:
    assert DEFAULT_POLICY.delay(1, retry_after=120.5, jitter=0.0) is None
    assert DEFAULT_POLICY.delay(1, retry_after=math.inf, jitter=0.0) is None


def test_retry_after_negative_counts_as_zero_and_nan_is_refused() -> None:
    assert DEFAULT_POLICY.delay(1, retry_after=-3.0, jitter=0.0) == 0.5
    with pytest.raises(InvalidInputError, match="NaN"):
        DEFAULT_POLICY.delay(1, retry_after=math.nan, jitter=0.0)


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempt_counts_from_one(attempt: int) -> None:
    with pytest.raises(InvalidInputError, match="attempt"):
        DEFAULT_POLICY.delay(attempt, retry_after=None, jitter=0.0)


@pytest.mark.parametrize("jitter", [-0.1, 1.0, math.nan])
def test_jitter_draw_must_be_in_unit_interval(jitter: float) -> None:
    with pytest.raises(InvalidInputError, match="jitter"):
        DEFAULT_POLICY.delay(1, retry_after=None, jitter=jitter)


def test_should_retry_counts_tries_including_the_first() -> None:
    assert [DEFAULT_POLICY.should_retry(n) for n in (1, 2, 3, 4)] == [True, True, False, False]
    assert not RetryPolicy(max_attempts=1).should_retry(1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_delay": -1.0},
        {"multiplier": 0.5},
        {"max_attempts": 0},
        {"max_delay": math.inf},
        {"jitter": 1.5},
        {"max_retry_after": -1.0},
        {"initial_delay": math.nan},
    ],
)
def test_policy_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidInputError, match="invalid RetryPolicy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [True, False, 2.0, "3"])
def test_max_attempts_must_be_a_whole_number(value: object) -> None:
    # A bool is an int to Python: True would mean one try, silently.
    with pytest.raises(InvalidInputError, match="max_attempts is a whole number >= 1") as info:
        RetryPolicy(max_attempts=value)  # type: ignore[arg-type]
    assert f"max_attempts={value!r}" in str(info.value)


def test_policy_is_frozen() -> None:
    with pytest.raises(AttributeError):
        DEFAULT_POLICY.max_attempts = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "permanent"),
        (401, "permanent"),
        (403, "permanent"),
        (404, "permanent"),
        (408, "transient"),
        (409, "transient"),
        (413, "permanent"),
        (422, "permanent"),
        (425, "transient"),
        (429, "transient"),
        (451, "permanent"),
        (500, "transient"),
        (502, "transient"),
        (503, "transient"),
        (504, "transient"),
        (529, "transient"),
        (599, "transient"),
        (302, "permanent"),
        (200, "permanent"),
    ],
)
def test_classify_http_status(status: int, kind: str) -> None:
    assert classify_http_status(status) == kind


@pytest.mark.parametrize("status", [99, 600, 0, -429])
def test_classify_refuses_non_status(status: int) -> None:
    with pytest.raises(InvalidInputError, match="HTTP status"):
        classify_http_status(status)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_retry_after_seconds(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


def test_parse_retry_after_http_date() -> None:
    later = NOW + timedelta(seconds=42)
    assert parse_retry_after(format_datetime(later, usegmt=True), now=NOW) == 42.0
    # The RFC 9110 example format, and the obsolete one without a zone.
    assert parse_retry_after("Fri, 02 Jan 2026 03:05:05 GMT", now=NOW) == 60.0
    assert parse_retry_after("Fri, 02 Jan 2026 03:05:05", now=NOW) == 60.0


def test_parse_retry_after_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=NOW) == 0.0


def test_parse_retry_after_accepts_naive_now_as_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Fri, 02 Jan 2026 03:05:05 GMT", now=naive) == 60.0


def test_parse_retry_after_defaults_to_the_real_clock() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    far = format_datetime(datetime.now(timezone.utc) + timedelta(days=1), usegmt=True)
    waited = parse_retry_after(far)
    assert waited is not None
    assert 86_000 < waited <= 86_400
