"""When to retry a failed request, and how long to wait first.

:class:`RetryPolicy` computes exponential backoff with jitter. It is pure: the random
jitter draw ``u`` in ``[0, 1)`` is passed in by the caller, so the state machine that
uses it (:mod:`cm_notebook.fsm`) stays deterministic and testable.

Decisions worth knowing:

* ``max_attempts`` counts *tries*, the first one included: the default 3 means one
  request and at most two retries.
* Jitter only shortens a delay (``base * (1 - jitter * u)``). ``max_delay`` is therefore
  a hard upper bound on backoff, and clients that all hit the cap still spread out
  instead of retrying in lockstep.
* A server's ``Retry-After`` is honoured: we never retry sooner than it asks, even if
  that is longer than ``max_delay`` (the server knows its rate limits better than our
  defaults do). We also never retry sooner than our own backoff, and add a little
  upward jitter so many clients told "wait 10 s" do not all return at once. Beyond
  ``max_retry_after`` (default 120 s) waiting inside a notebook cell is not useful:
  :meth:`RetryPolicy.delay` returns ``None`` and the caller gives up, telling the user
  how long the server asked to wait.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Literal

from .errors import InvalidInputError

__all__ = [
    "DEFAULT_POLICY",
    "RetryPolicy",
    "classify_http_status",
    "parse_retry_after",
]

# Status codes that say "try again later" rather than "your request is wrong":
# timeout, conflict (often a concurrent-update race), too early, rate limited.
_TRANSIENT_4XX = frozenset({408, 409, 425, 429})


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_attempt(attempt: int) -> None:
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise InvalidInputError(f"attempt must be an int >= 1, got {attempt!r}")


def _check_jitter(jitter: float) -> None:
    if not (_finite(jitter) and 0 <= jitter < 1):
        raise InvalidInputError(f"jitter must be a random draw in [0, 1), got {jitter!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to try a request and how long to wait between tries.

    Args:
        initial_delay: seconds before the first retry.
        multiplier: each further retry waits this many times longer.
        max_attempts: total tries including the first (1 means never retry).
        max_delay: upper bound in seconds on the backoff delay.
        jitter: fraction in ``[0, 1]`` by which a delay may be shortened at random.
        max_retry_after: the longest server-requested ``Retry-After`` in seconds that is
            still worth waiting for; beyond it :meth:`delay` returns ``None``.

    Raises:
        InvalidInputError: if a value is out of range.
    """

    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_attempts: int = 3
    max_delay: float = 30.0
    jitter: float = 0.1
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (_finite(self.initial_delay) and self.initial_delay >= 0, "initial_delay >= 0"),
            (_finite(self.multiplier) and self.multiplier >= 1, "multiplier >= 1"),
            (
                # True is an int to Python, but no number of tries.
                isinstance(self.max_attempts, int)
                and not isinstance(self.max_attempts, bool)
                and self.max_attempts >= 1,
                "max_attempts is a whole number >= 1 (not True or False)",
            ),
            (_finite(self.max_delay) and self.max_delay >= 0, "max_delay >= 0"),
            (_finite(self.jitter) and 0 <= self.jitter <= 1, "0 <= jitter <= 1"),
            (
                _finite(self.max_retry_after) and self.max_retry_after >= 0,
                "max_retry_after >= 0",
            ),
        ]
        failed = [rule for ok, rule in checks if not ok]
        if failed:
            raise InvalidInputError(f"invalid RetryPolicy {self!r}: need {', '.join(failed)}")

    def backoff(self, attempt: int, *, jitter: float = 0.0) -> float:
        """The backoff delay in seconds before retry number ``attempt`` (1 = first retry).

        ``jitter`` is a random draw in ``[0, 1)`` supplied by the caller; 0 gives the
        un-jittered delay.
        """
        _check_attempt(attempt)
        _check_jitter(jitter)
        exponent = attempt - 1
        if self.initial_delay == 0 or self.max_delay == 0:
            base = 0.0
        elif self.multiplier > 1 and exponent * math.log(self.multiplier) >= math.log(
            self.max_delay / self.initial_delay
        ):
            # Decided in log space so a huge attempt number cannot overflow a float.
            base = self.max_delay
        else:
            base = min(self.initial_delay * self.multiplier**exponent, self.max_delay)
        return base * (1.0 - self.jitter * jitter)

    def delay(self, attempt: int, *, retry_after: float | None, jitter: float) -> float | None:
        """Seconds to wait before retry number ``attempt`` (1 = first retry), or ``None``.

        Args:
            attempt: which retry this is, counting from 1.
            retry_after: seconds the server asked us to wait (``Retry-After``), if any.
            jitter: a random draw in ``[0, 1)`` made by the caller.

        Returns:
            The delay in seconds, or ``None`` when the server asked for a wait longer
            than ``max_retry_after``: the caller should give up rather than wait.

        This does not check ``max_attempts``; see :meth:`should_retry`.
        """
        backoff = self.backoff(attempt, jitter=jitter)
        if retry_after is None:
            return backoff
        if math.isnan(retry_after):
            raise InvalidInputError("retry_after must be a number of seconds, not NaN")
        retry_after = max(retry_after, 0.0)
        if retry_after > self.max_retry_after:
            return None
        # Upward jitter only: never sooner than the server asked.
        return max(backoff, retry_after * (1.0 + self.jitter * jitter))

    def should_retry(self, tries_made: int) -> bool:
        """Whether another try is allowed after ``tries_made`` tries have failed."""
        return tries_made < self.max_attempts


DEFAULT_POLICY = RetryPolicy()
"""The policy used when none is given: 3 tries, 0.5 s then 1 s, at most 30 s."""


def classify_http_status(status: int) -> Literal["transient", "permanent"]:
    """Whether an HTTP error status is worth retrying.

    408, 409, 425, 429 and every 5xx are ``"transient"``; every other status is
    ``"permanent"`` (a 4xx means the request itself is wrong; a 1xx-3xx reaching an
    error path means something unexpected that retrying will not fix).

    Raises:
        InvalidInputError: if ``status`` is not between 100 and 599.
    """
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise InvalidInputError(f"{status!r} is not an HTTP status code (100-599)")
    if status >= 500 or status in _TRANSIENT_4XX:
        return "transient"
    return "permanent"


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or ``None`` if absent or invalid.

    The header is either a number of seconds (``"120"``; fractions are accepted too) or
    an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``), which is turned into seconds from
    ``now`` (default: the current time). A date in the past gives ``0.0``. Malformed,
    negative or non-finite values give ``None``, so a bad header never breaks retrying;
    the normal backoff then applies.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if _finite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are always GMT; parsedate gives naive for "-0000".
        when = when.replace(tzinfo=timezone.utc)
    reference = now if now is not None else datetime.now(timezone.utc)
    if reference.tzinfo is None:
        reference = reference.replace(tzinfo=timezone.utc)
    return max((when - reference).total_seconds(), 0.0)
