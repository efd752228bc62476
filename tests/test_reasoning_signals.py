"""A thinking model's reasoning is signalled as it streams (``ReasoningDelta``), apart
from the reply's text, batched as text deltas are, and kept in the signal log."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from cm_notebook import ContextSession
from cm_notebook.events import (
    SIGNAL_KINDS,
    ContentDelta,
    EventBus,
    ReasoningDelta,
    parse_event,
)
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.anyio

THOUGHT = "".join(f"step{i} " for i in range(50))


def _joined(events: Sequence[object], kind: type[ContentDelta | ReasoningDelta]) -> str:
    text = ""
    for event in events:
        if isinstance(event, kind):
            assert event.offset == len(text), "a delta that does not continue"
            text += event.text
    return text


async def test_the_reasoning_is_signalled_before_the_text_and_kept_in_the_log(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider().reply("It is 4.", reasoning=THOUGHT, chunks="words")
    session = new_session("thinks", provider=fake)
    seen: list[object] = []
    session.subscribe(seen.append, kinds={"ReasoningDelta", "ContentDelta"})
    turn = session.send("2+2?")
    reply = await turn
    assert _joined(seen, ReasoningDelta) == THOUGHT
    assert _joined(seen, ContentDelta) == "It is 4."
    kinds = [type(event) for event in seen]
    assert kinds.index(ContentDelta) > max(
        i for i, kind in enumerate(kinds) if kind is ReasoningDelta
    )
    # Batched: the 50 chunks of one run joined into far fewer signals.
    assert kinds.count(ReasoningDelta) < 50
    assert turn.reasoning == THOUGHT
    assert reply.metadata.reasoning == THOUGHT
    # Recorded in the context's signal log, read back as they were.
    logged = [e for e in session.events(0) if isinstance(e, ReasoningDelta)]
    assert _joined(logged, ReasoningDelta) == THOUGHT
    assert all(e.message_id == reply.id and e.branch == "main" for e in logged)


async def test_a_thinking_model_stopped_keeps_what_it_reasoned(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session("stopped", provider=ScriptedProvider().hang(reasoning="Hmm, let me see."))
    thinking = asyncio.Event()
    session.subscribe(lambda _event: thinking.set(), kinds={"ReasoningDelta"})
    turn = session.send("Hard?")
    await thinking.wait()  # the model still thinks: nothing of an answer yet
    assert turn.reasoning == "Hmm, let me see."
    assert turn.text == ""
    assert not turn.done()
    turn.cancel()
    stopped = await turn  # stopped: the reply is kept, interrupted
    assert stopped.status.value == "interrupted"
    assert stopped.metadata.reasoning == "Hmm, let me see."


def test_a_reasoning_delta_is_a_signal_of_its_own_kind() -> None:
    assert "ReasoningDelta" in SIGNAL_KINDS
    bus = EventBus("c1")
    stamped = bus.publish(ReasoningDelta(message_id="m1", text="Hmm", offset=0, branch="main"))
    assert stamped.seq == 1
    again = parse_event(stamped.model_dump(mode="json"))
    assert again == stamped
    bus.publish(ReasoningDelta(message_id="m1", text=" yes", offset=3, branch="main"))
    (last,) = bus.events(1)
    assert isinstance(last, ReasoningDelta)
    assert (last.text, last.offset, last.seq) == (" yes", 3, 2)
