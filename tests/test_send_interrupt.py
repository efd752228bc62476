"""Ctrl-C landing in a script's ``send()``: the send leaves no trace, or its message is
stored and its reply stopped as ``session.stop()`` stops one, said by the interrupt;
never a user message left unanswered (the next send then made two in a row) nor a turn
that never runs. The sends run in a child process (``tests/send_interrupt_child.py``)
that delivers SIGINT to itself at moments that vary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cm_notebook._session_stop import INTERRUPTED_SEND

CHILD = Path(__file__).with_name("send_interrupt_child.py")

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs SIGINT to itself")


def run_child(data_dir: Path, count: int, operation: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(CHILD), str(data_dir), str(count), operation],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_ctrl_c_in_send_leaves_the_branch_consistent_and_says_so(data_dir: Path) -> None:
    count = 40
    lines = run_child(data_dir, count, "send")
    sends, end = lines[:-1], lines[-1]
    assert [each["sent"] for each in sends] == list(range(count))
    interrupted = [each for each in sends if each["outcome"] == "interrupted"]
    assert interrupted, "no SIGINT landed inside send(): the test tested nothing"
    messages = end["messages"]
    roles = [role for role, _status, _error, _text in messages]
    # user, assistant, user, assistant...: never two user messages in a row.
    assert roles == ["user", "assistant"] * (len(roles) // 2), roles
    replies = {asked[3]: reply for asked, reply in zip(messages[::2], messages[1::2], strict=True)}
    assert len(replies) == len(messages) // 2  # no message stored twice
    for each in interrupted:
        asked = f"question {each['sent']}"
        if not each["said"]:
            # Before its message was stored: no trace. (Or in the last steps of a send
            # that had started its turn, as it returned: the reply went on, complete.)
            assert asked not in replies or replies[asked][1:3] == ["complete", None]
            continue
        # Stored, and its reply stopped at once, as a stop leaves one.
        assert "is stored" in each["said"]
        assert "session.regenerate()" in each["said"]
        assert replies[asked][1:3] == ["interrupted", INTERRUPTED_SEND]
        assert "alpha beta gamma".startswith(replies[asked][3])  # what little it had
    assert end["last"] == "alpha beta gamma"  # the branch is free after it all


def test_ctrl_c_in_regenerate_leaves_the_branch_consistent_and_says_so(data_dir: Path) -> None:
    count = 40
    lines = run_child(data_dir, count, "regenerate")
    sends, end = lines[:-1], lines[-1]
    interrupted = [each for each in sends if each["outcome"] == "interrupted"]
    assert interrupted, "no SIGINT landed inside regenerate(): the test tested nothing"
    # The branch: the first message and one reply to it (the last one asked for), then
    # the message sent after them all and its reply; never a user message unanswered.
    messages = end["messages"]
    assert [m[0] for m in messages] == ["user", "assistant", "user", "assistant"]
    for each in interrupted:
        if each["said"]:
            assert "regenerate() was interrupted" in each["said"]
    last_asked = sends[-1]
    if last_asked["said"]:  # the last new reply was stopped as it started
        assert messages[1][1:3] == ["interrupted", INTERRUPTED_SEND]
    assert end["last"] == "alpha beta gamma"
