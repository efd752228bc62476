"""A throttle paced by what its flushes cost: a flush that re-renders a growing text runs
on the kernel's loop, and must not take more than a bounded share of it (a reply of
megabytes, re-rendered back to back, streamed several times slower shown than not).

No assert here depends on how fast the machine is: a flush that sleeps takes at least
its sleep, and the pacing is checked against the cost the throttle measured.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from cm_notebook.magics._reply import RENDER_SHARE
from cm_notebook.widgets._base import Throttle

pytestmark = pytest.mark.anyio

SLOW = 0.05  # seconds a deliberately slow flush sleeps


async def test_a_costly_flush_lengthens_the_interval_to_its_share() -> None:
    flushed: list[int] = []
    throttle = Throttle(
        asyncio.get_running_loop(),
        0.01,
        lambda: (time.sleep(SLOW), flushed.append(1)),
        max_share=0.2,
    )
    throttle.now()
    assert throttle.flush_cost >= SLOW
    # The flush may take a fifth of the time from one flush's start to the next's.
    assert throttle.interval == throttle.flush_cost / 0.2
    assert throttle.interval >= 5 * SLOW
    # So a poke right after waits for the paced interval instead of the given 0.01 s.
    throttle.poke()
    assert flushed == [1]
    throttle.cancel()


async def test_the_interval_follows_the_last_flush_cost() -> None:
    sleeps = [SLOW, 0.0]
    throttle = Throttle(
        asyncio.get_running_loop(), 0.01, lambda: time.sleep(sleeps.pop(0)), max_share=0.25
    )
    throttle.now()
    assert throttle.interval >= 4 * SLOW
    throttle.now()  # cheap again: the pacing follows the last flush, not the costliest
    assert throttle.interval == max(0.01, throttle.flush_cost / 0.25)


async def test_a_cheap_flush_keeps_the_given_interval() -> None:
    throttle = Throttle(asyncio.get_running_loop(), 0.2, lambda: None, max_share=RENDER_SHARE)
    throttle.now()
    assert throttle.interval == 0.2


async def test_without_a_share_the_cost_does_not_pace() -> None:
    throttle = Throttle(asyncio.get_running_loop(), 0.01, lambda: time.sleep(SLOW))
    throttle.now()
    assert throttle.flush_cost >= SLOW  # measured all the same
    assert throttle.interval == 0.01


async def test_now_is_never_held_back_by_the_pacing() -> None:
    # The final value (a finished reply, shown whole) goes out at once, however costly
    # the flush before it was, and the flush waiting for the paced interval is dropped.
    state = {"value": 0}
    flushed: list[int] = []

    def flush() -> None:
        time.sleep(SLOW)
        flushed.append(state["value"])

    throttle = Throttle(asyncio.get_running_loop(), 0.01, flush, max_share=0.2)
    throttle.now()
    state["value"] = 1
    throttle.poke()  # waits for the paced interval
    state["value"] = 2
    throttle.now()
    assert flushed == [0, 2]
    await asyncio.sleep(6 * SLOW)  # past the interval the poke would have waited for
    assert flushed == [0, 2]


@pytest.mark.parametrize("share", [0, -0.5, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="max_share"):
            Throttle(loop, 0.1, lambda: None, max_share=share)
    finally:
        loop.close()
