"""What a reply keeps of a failed attempt's text: the reply's content when the failure
ends the turn, only its metadata's ``failed_attempts`` when a retry follows."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_session_support import DEADLINE

from cm_notebook import ContextSession, RetryPolicy
from cm_notebook.errors import PermanentProviderError
from cm_notebook.model import MessageStatus
from cm_notebook.testing import ScriptedProvider

LAST = "the last try's text"


@pytest.mark.parametrize("case", ["attempts used up", "one attempt", "retry-after too long"])
def test_a_transient_failure_that_ends_the_turn_keeps_its_text_as_the_reply(
    data_dir: Path, case: str
) -> None:
    model = ScriptedProvider()
    if case == "attempts used up":
        model.error("transient", after_chunks=2, text="the first try's text")
    model.error(
        "transient",
        after_chunks=3,
        text=LAST,
        retry_after=3600.0 if case == "retry-after too long" else None,
    )
    policy = {
        "attempts used up": RetryPolicy(initial_delay=0.01, max_attempts=2),
        "one attempt": RetryPolicy(max_attempts=1),
        "retry-after too long": RetryPolicy(max_retry_after=1.0),
    }[case]
    with ContextSession.create(data_dir=data_dir, provider=model, retry=policy) as session:
        turn = session.send("Hi")
        with pytest.raises(PermanentProviderError):
            turn.result(DEADLINE)
        assert turn.text == LAST
        failed = session.history()[-1]
        assert (failed.status, failed.content) == (MessageStatus.ERROR, LAST)
        assert failed.metadata.failed_attempts[-1]["text"] == LAST
    with ContextSession.open(session.id, data_dir=data_dir) as again:
        assert again.history()[-1].content == LAST


def test_a_retried_reply_holds_only_the_text_of_the_attempt_that_answered(
    data_dir: Path,
) -> None:
    model = ScriptedProvider().error("transient", after_chunks=2, text="cut off").reply("whole")
    policy = RetryPolicy(initial_delay=0.01)
    with ContextSession.create(data_dir=data_dir, provider=model, retry=policy) as session:
        reply = session.send("Hi").result(DEADLINE)
        assert reply.content == "whole"
        assert [a["text"] for a in reply.metadata.failed_attempts] == ["cut off"]
