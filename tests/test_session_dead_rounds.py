"""Tool calls a dead process left open are settled: none stays pending or running for ever.

A process killed while a call waited for approval, or while its tool ran, leaves the
call recorded as ``pending`` or ``running`` with no tool message. The next session to
take the branch (opening the context, sending on it, or watching the other process
die) settles the round as a cancelled turn would: denied if the tool never started,
failed "interrupted while running" if it had, each with its tool message.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import pytest
from test_signal_follow import DEADLINE, Recorder, _wait_for
from tool_writer import start_tool_writer

from cm_notebook._dead_rounds import NOT_STARTED, STOPPED, UNDECIDED
from cm_notebook._follower import LogFollower
from cm_notebook._runner_tools import approved_not_run_reason, approved_not_run_result
from cm_notebook.events import Event, StateChanged, ToolApprovalRequested, ToolCallResolved
from cm_notebook.fsm import State
from cm_notebook.model import Message, ToolCall, ToolCallStatus
from cm_notebook.session import ContextSession
from cm_notebook.signal_log import LOG_NAME, LogReader, SignalLog
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import denied_result


def _doomed_writer(
    data_dir: Path, context_id: str, *, approval: str, approve_first: bool = False
) -> subprocess.Popen[str]:
    # Asks for ``slow(x="1")``; prints ASKED when the call waits for a decision and
    # RUNNING once the tool runs (it then sleeps until killed). ``approve_first``: asks
    # for two calls, approves the first and prints APPROVED once that is stored.
    code = textwrap.dedent(
        f"""
        import time
        from cm_notebook.events import ToolApprovalRequested
        from cm_notebook.session import ContextSession
        from cm_notebook.testing import ScriptedProvider

        def slow(x: str) -> str:
            \"\"\"Take a long time.\"\"\"
            print("RUNNING", flush=True)
            time.sleep(600)
            return "finished"

        provider = ScriptedProvider()
        if {approve_first!r}:  # two calls; the first is approved, the second waits
            provider.tool_calls(("slow", {{"x": "1"}}, "c1"), ("slow", {{"x": "2"}}, "c2"))
        else:
            provider.tool_call("slow", {{"x": "1"}})
        provider.reply("never sent")
        session = ContextSession.open({context_id!r}, data_dir={str(data_dir)!r},
                                      provider=provider, tools=[slow], approval={approval!r})
        session.subscribe(
            lambda e: isinstance(e, ToolApprovalRequested) and print("ASKED", flush=True)
        )
        session.send("Please run slow.")
        if {approve_first!r}:
            while len(session.pending_tool_calls) < 2:
                time.sleep(0.01)
            session.approve("c1")
            while session.history()[-1].tool_calls[0].status.value != "approved":
                time.sleep(0.01)
            print("APPROVED", flush=True)
        time.sleep(600)
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def _kill_when(child: subprocess.Popen[str], marker: str) -> None:
    stdout = child.stdout
    assert stdout is not None
    timer = threading.Timer(DEADLINE, child.kill)  # a writer that never prints it
    timer.start()
    try:
        for line in stdout:
            if line.strip() == marker:
                break
        else:
            raise AssertionError(f"the writer ended before it printed {marker}")
    finally:
        timer.cancel()
        _kill(child)


def _kill(child: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait(DEADLINE)
    if child.stdout is not None:
        child.stdout.close()


@pytest.fixture
def context_id(tmp_path: Path) -> str:
    with ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider()) as session:
        return session.id


def _calls(session: ContextSession) -> list[ToolCall]:
    return [call for message in session.history() for call in message.tool_calls]


@pytest.mark.parametrize(
    ("approval", "marker", "status", "text"),
    [
        ("ask", "ASKED", ToolCallStatus.DENIED, denied_result("slow", UNDECIDED)),
        ("auto", "RUNNING", ToolCallStatus.FAILED, "was interrupted while running"),
    ],
    ids=["waiting-for-approval", "tool-running"],
)
def test_opening_settles_the_calls_a_killed_process_left_open(
    tmp_path: Path, context_id: str, approval: str, marker: str, status: ToolCallStatus, text: str
) -> None:
    _kill_when(_doomed_writer(tmp_path, context_id, approval=approval), marker)

    provider = ScriptedProvider().reply("Understood.")
    with ContextSession.open(context_id, data_dir=tmp_path, provider=provider) as session:
        [call] = _calls(session)
        assert call.status is status
        assert text in (call.result or "")
        if status is ToolCallStatus.FAILED:
            assert call.reason == f"interrupted while running ({STOPPED})"
            assert "check before running it again" in (call.result or "")
        # The call is answered on the branch, as a cancelled turn answers it.
        roles = [m.role for m in session.history()]
        assert roles == ["user", "assistant", "tool"]
        assert session.history()[-1].content == call.result
        assert session.pending_tool_calls == []

        session.send("Go on.").result(DEADLINE)
        seen = provider.requests[-1].messages
        assert [m.role for m in seen] == ["user", "assistant", "tool", "user"]
        assert seen[2].content == call.result  # not "no result was recorded"
        assert [c.status for c in _calls(session)] == [status]


def test_a_live_session_settles_the_round_when_the_other_process_dies(
    tmp_path: Path, context_id: str
) -> None:
    with ContextSession.open(context_id, data_dir=tmp_path) as session:
        seen = Recorder(session)
        child = start_tool_writer(tmp_path, context_id)
        try:
            _wait_for(
                lambda: any(isinstance(e, ToolApprovalRequested) for e in list(seen.events)),
                "the other process to ask for approval",
            )
        finally:
            _kill(child)
        # The call's new status is on disk (and in history()) before its write returns
        # and the session announces it: wait for both.
        _wait_for(
            lambda: (
                [c.status for c in _calls(session)] == [ToolCallStatus.DENIED]
                and any(isinstance(e, ToolCallResolved) for e in list(seen.events))
            ),
            "the dead process's call to be settled and announced",
        )
        [call] = _calls(session)
        assert call.reason == UNDECIDED
        resolved = [e for e in list(seen.events) if isinstance(e, ToolCallResolved)]
        assert [(e.tool_call_id, e.status) for e in resolved] == [(call.id, call.status)]
        assert [m.role for m in session.history()] == ["user", "assistant", "tool"]


def _add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def test_a_fork_does_not_settle_calls_a_live_turn_is_waiting_on(tmp_path: Path) -> None:
    provider = ScriptedProvider().tool_call("_add", {"a": 1, "b": 2})
    provider.reply("On the fork.").reply("It is 3.")
    with ContextSession.create(data_dir=tmp_path, provider=provider, tools=[_add]) as session:
        turn = session.send("What is 1 + 2?")
        _wait_for(lambda: bool(session.pending_tool_calls), "the call to wait for approval")
        [waiting] = session.pending_tool_calls
        session.branch("fork", switch=False)  # at the reply whose call waits
        session.send("Meanwhile, hello.", branch="fork").result(DEADLINE)
        [stored] = [c for m in session.history("fork") for c in m.tool_calls]
        assert stored.status is ToolCallStatus.PENDING  # still the live turn's
        # The fork answers the call on its own branch, as its request showed it.
        fork = session.history("fork")
        assert [m.role for m in fork] == ["user", "assistant", "tool", "user", "assistant"]
        assert fork[2].tool_call_id == waiting.id
        assert "has no result on this branch" in fork[2].content
        sent = [(m.role, m.content) for m in provider.requests[-1].messages]
        assert sent[2] == ("tool", fork[2].content)

        session.approve(waiting.id)
        assert turn.result(DEADLINE).content == "It is 3."
        [done] = _calls(session)
        assert (done.status, done.result) == (ToolCallStatus.DONE, "3")
        # The fork's history stays what its model was shown.
        provider.reply("Still on the fork.")
        session.send("And now?", branch="fork").result(DEADLINE)
        sent = [(m.role, m.content) for m in provider.requests[-1].messages]
        assert sent[2] == ("tool", fork[2].content)
        assert [m.id for m in session.history("fork")][:5] == [m.id for m in fork]


def test_regenerate_at_a_tool_answer_stores_the_rounds_other_answers(tmp_path: Path) -> None:
    # A fork at the first of two answers: regenerating there answers the second on
    # the fork before the new reply, as the request shows it answered.
    provider = ScriptedProvider().tool_calls(("_add", {"a": 1, "b": 1}), ("_add", {"a": 2, "b": 2}))
    provider.reply("2 and 4").reply("Again: 2 and 4.")
    with ContextSession.create(
        data_dir=tmp_path, provider=provider, tools=[_add], approval="auto"
    ) as session:
        session.send("Add twice.").result(DEADLINE)
        first_answer = next(m for m in session.history() if m.role == "tool")
        session.branch("f1", from_message=first_answer.id)
        session.regenerate().result(DEADLINE)
        stored = [(m.role, m.tool_call_id, m.content) for m in session.history("f1")]
        sent = [(m.role, m.tool_call_id, m.content) for m in provider.requests[-1].messages]
        assert stored[:-1] == sent
        assert [role for role, _, _ in stored] == ["user", "assistant", "tool", "tool", "assistant"]


def _store_round(
    tmp_path: Path,
    context_id: str,
    answers: dict[str, str],
    branch: str = "main",
    statuses: tuple[ToolCallStatus, ...] = (ToolCallStatus.RUNNING, ToolCallStatus.PENDING),
) -> str:
    # A round as a process killed at the worst moment leaves it: the reply records
    # ``first`` running and ``second`` pending (or ``statuses``), and ``answers`` are
    # stored.
    async def write() -> str:
        async with FileStore(tmp_path) as store:
            head = (await store.get_metadata(context_id)).branches[branch].head
            user = Message(role="user", parent_id=head, content="Add twice.")
            await store.append_message(context_id, user, branch=branch, expected_head=head)
            names = ("first", "second", "third", "fourth")
            calls = [
                ToolCall(id=name, name="_add", arguments={"a": n}, status=status)
                for n, (name, status) in enumerate(zip(names, statuses, strict=False), 1)
            ]
            reply = Message(role="assistant", parent_id=user.id, content="", tool_calls=calls)
            await store.append_message(context_id, reply, branch=branch, expected_head=user.id)
            head = reply.id
            for call_id, text in answers.items():
                answer = Message(role="tool", parent_id=head, content=text, tool_call_id=call_id)
                await store.append_message(context_id, answer, branch=branch, expected_head=head)
                head = answer.id
            return reply.id

    return anyio.run(write)


@pytest.mark.parametrize(
    ("answer", "status"),
    [("3", ToolCallStatus.DONE), ("error: b is missing", ToolCallStatus.FAILED)],
    ids=["succeeded", "failed"],
)
def test_a_call_answered_before_the_process_died_keeps_its_answer(
    tmp_path: Path, context_id: str, answer: str, status: ToolCallStatus
) -> None:
    reply_id = _store_round(tmp_path, context_id, {"first": answer})
    with ContextSession.open(context_id, data_dir=tmp_path) as session:
        first, second = session.get(reply_id).tool_calls
        assert (first.status, first.result) == (status, answer)
        assert (second.status, second.reason) == (ToolCallStatus.DENIED, UNDECIDED)
        tools = [(m.tool_call_id, m.content) for m in session.history() if m.role == "tool"]
        assert tools == [("first", answer), ("second", second.result)]
        settled = session.history()
    # Settling is done once: opening again finds nothing left to do.
    with ContextSession.open(context_id, data_dir=tmp_path) as session:
        assert session.history() == settled


def _settled_calls(tmp_path: Path, context_id: str, reply_id: str) -> list[tuple[object, ...]]:
    with ContextSession.open(context_id, data_dir=tmp_path) as session:
        return [(c.id, c.status, c.reason, c.result) for c in session.get(reply_id).tool_calls]


def test_a_settle_cut_short_after_its_answers_ends_as_one_run_to_the_end(tmp_path: Path) -> None:
    # A settle writes the answers first, then the calls. Killed in between, the next
    # one reads each call's fate back from its answer: the same status and reason.
    ask = {"provider": ScriptedProvider(), "data_dir": tmp_path}
    statuses = (ToolCallStatus.RUNNING, ToolCallStatus.PENDING, ToolCallStatus.APPROVED)
    with ContextSession.create(**ask) as whole, ContextSession.create(**ask) as cut_short:
        ids = whole.id, cut_short.id
    reply_id = _store_round(tmp_path, ids[0], {}, statuses=statuses)
    settled = _settled_calls(tmp_path, ids[0], reply_id)
    answers = {str(call_id): str(result) for call_id, _, _, result in settled}
    reply_id = _store_round(tmp_path, ids[1], answers, statuses=statuses)
    assert _settled_calls(tmp_path, ids[1], reply_id) == settled
    assert [status for _, status, _, _ in settled] == [
        ToolCallStatus.FAILED,
        ToolCallStatus.DENIED,
        ToolCallStatus.FAILED,
    ]


def test_a_denial_answered_before_the_process_died_keeps_its_reason(
    tmp_path: Path, context_id: str
) -> None:
    denial = denied_result("_add", "too risky")
    reply_id = _store_round(tmp_path, context_id, {"second": denial})
    _, second = _settled_calls(tmp_path, context_id, reply_id)
    assert second == ("second", ToolCallStatus.DENIED, "too risky", denial)


def test_an_approval_answered_as_not_run_before_the_process_died_stays_approved(
    tmp_path: Path, context_id: str
) -> None:
    # A stopped turn answers an approved call it had not started as approved but not
    # run, then records the call; killed in between, the answer tells what it was.
    answer = approved_not_run_result("_add", "cancelled by the user")
    statuses = (ToolCallStatus.APPROVED, ToolCallStatus.PENDING)
    reply_id = _store_round(tmp_path, context_id, {"first": answer}, statuses=statuses)
    first, _ = _settled_calls(tmp_path, context_id, reply_id)
    reason = approved_not_run_reason("cancelled by the user")
    assert first == ("first", ToolCallStatus.FAILED, reason, answer)


def _round_on_a_side_branch(tmp_path: Path, context_id: str) -> str:
    # A dead round on "side", not the active branch: opening the context leaves it.
    with ContextSession.open(context_id, data_dir=tmp_path) as session:
        session.branch("side", switch=False)
    return _store_round(tmp_path, context_id, {}, branch="side")


def test_a_turn_settles_the_round_left_open_on_its_branch(tmp_path: Path, context_id: str) -> None:
    reply_id = _round_on_a_side_branch(tmp_path, context_id)
    provider = ScriptedProvider().reply("Fine.")
    with ContextSession.open(context_id, data_dir=tmp_path, provider=provider) as session:
        # Opening settles the active branch only; "side" waits for its next turn.
        open_calls = [c.status for c in session.get(reply_id).tool_calls]
        assert open_calls == [ToolCallStatus.RUNNING, ToolCallStatus.PENDING]
        session.send("Go on.", branch="side").result(DEADLINE)
        first, second = session.get(reply_id).tool_calls
        assert (first.status, second.status) == (ToolCallStatus.FAILED, ToolCallStatus.DENIED)
        seen = provider.requests[-1].messages
        assert [m.role for m in seen] == ["user", "assistant", "tool", "tool", "user"]
        assert [m.content for m in seen[2:4]] == [first.result, second.result]


def test_a_fork_sharing_a_dead_reply_gets_its_own_answers(tmp_path: Path, context_id: str) -> None:
    # "side" was forked at the reply while its calls were open; the process died.
    reply_id = _store_round(tmp_path, context_id, {})
    with ContextSession.open(context_id, data_dir=tmp_path) as session:  # settles main
        session.branch("side", reply_id, switch=False)
        settled = [(c.id, c.result) for c in session.get(reply_id).tool_calls]
        assert [(m.tool_call_id, m.content) for m in session.history()[2:]] == settled
    provider = ScriptedProvider().reply("Fine.")
    with ContextSession.open(context_id, data_dir=tmp_path, provider=provider) as session:
        session.send("Go on.", branch="side").result(DEADLINE)
        side = session.history("side")
        assert [m.role for m in side] == ["user", "assistant", "tool", "tool", "user", "assistant"]
        assert [(m.tool_call_id, m.content) for m in side[2:4]] == settled
        assert [m.role for m in provider.requests[-1].messages][2:4] == ["tool", "tool"]


def test_a_call_approved_but_never_started_is_not_recorded_as_denied(
    tmp_path: Path, context_id: str
) -> None:
    child = _doomed_writer(tmp_path, context_id, approval="ask", approve_first=True)
    _kill_when(child, "APPROVED")  # c1 approved (the audit log says so), c2 undecided
    with ContextSession.open(context_id, data_dir=tmp_path) as session:
        first, second = _calls(session)
        assert (first.status, first.reason) == (ToolCallStatus.FAILED, NOT_STARTED)
        assert "approved but never run" in (first.result or "")
        assert (second.status, second.reason) == (ToolCallStatus.DENIED, UNDECIDED)


def test_regenerate_replaces_a_dead_round_with_a_sibling(tmp_path: Path, context_id: str) -> None:
    reply_id = _round_on_a_side_branch(tmp_path, context_id)
    provider = ScriptedProvider().reply("Two sums, coming up.")
    with ContextSession.open(context_id, data_dir=tmp_path, provider=provider) as session:
        new = session.regenerate(branch="side").result(DEADLINE)
        assert new.parent_id == session.get(reply_id).parent_id  # a sibling of the dead reply
        assert [m.role for m in provider.requests[-1].messages] == ["user"]
        # The dead reply records what became of its calls, answered on no branch.
        first, second = session.get(reply_id).tool_calls
        assert (first.status, second.status) == (ToolCallStatus.FAILED, ToolCallStatus.DENIED)
        assert not [m for m in session.history("side") if m.role == "tool"]


def test_a_session_opened_during_the_other_process_turn_settles_it_when_it_dies(
    tmp_path: Path, context_id: str
) -> None:
    # The turn began before this session followed the log: its state is looked up there.
    child = _doomed_writer(tmp_path, context_id, approval="ask")
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ASKED"
        with ContextSession.open(context_id, data_dir=tmp_path) as session:
            _wait_for(
                lambda: session.state is State.AWAITING_TOOL_APPROVAL,
                "the other process's state to be known",
            )
            [waiting] = _calls(session)
            assert waiting.status is ToolCallStatus.PENDING  # alive: left alone
            _kill(child)
            _wait_for(
                lambda: [c.status for c in _calls(session)] == [ToolCallStatus.DENIED],
                "the dead process's call to be settled",
            )
            _wait_for(lambda: session.state is State.IDLE, "the branch to be idle")
    finally:
        if child.poll() is None:
            _kill(child)


def test_a_call_settled_for_a_killed_process_stays_settled_while_a_turn_runs_here(
    tmp_path: Path, context_id: str
) -> None:
    # This session settles the killed process's call as it opens: signals of its own,
    # which its log follower does not read. A turn of its own then holds the branch's
    # claim, which must not make the dead call look waiting in a live process again.
    _kill_when(_doomed_writer(tmp_path, context_id, approval="ask"), "ASKED")
    provider = ScriptedProvider().tool_call("_add", {"a": 1, "b": 2}).reply("It is 3.")
    with ContextSession.open(
        context_id, data_dir=tmp_path, provider=provider, tools=[_add]
    ) as session:
        [dead] = _calls(session)
        assert dead.status is ToolCallStatus.DENIED
        turn = session.send("What is 1 + 2?")
        _wait_for(
            lambda: any(call.name == "_add" for call in session.pending_tool_calls),
            "the new call to wait",
        )
        assert session._follower is not None
        assert session._follower.caught_up(DEADLINE)  # it has read the whole log
        listed = [(call.name, call.arguments) for call in session.pending_tool_calls]
        assert listed == [("_add", {"a": 1, "b": 2})]  # not also the dead "slow"
        [waiting] = session.pending_tool_calls
        assert [call.id for call in session.approve()] == [waiting.id]
        assert turn.result(DEADLINE).content == "It is 3."
        assert session.pending_tool_calls == []


def _record(log: SignalLog, event: Event) -> None:
    log.record(lambda seq: event.model_copy(update={"seq": seq, "context_id": "c1"}))


def test_a_dead_process_s_call_stays_over_whoever_takes_its_branch(tmp_path: Path) -> None:
    # Three writers of one log, as three processes: "dead" asks and is killed, this
    # process ("here") settles its call (signals its follower does not read), then
    # "other" runs a turn on the branch. Whoever holds the claim, the call is over.
    (tmp_path / "c1").mkdir()
    path = tmp_path / "c1" / LOG_NAME
    dead, here, other = SignalLog(path), SignalLog(path), SignalLog(path)
    holder = ["dead"]  # who holds main's claim (one writer or another, throughout)

    def follower() -> LogFollower:
        return LogFollower(
            LogReader(path),
            here.writer,
            relay=lambda _: None,
            claim_held=lambda branch: True,
            held_here=lambda branch: holder[0] == "here",
            on_dead=lambda *_: None,
        )

    first = follower()
    try:
        asked = ToolApprovalRequested(branch="main", message_id="m1", tool_call_ids=("call_1",))
        _record(dead, asked)
        assert first.caught_up(DEADLINE)
        assert first.waiting_calls("main") == [("call_1", "m1", "main")]
        holder[0] = "here"  # "dead" was killed; this process settles its call
        denied = ToolCallResolved(
            branch="main", tool_call_id="call_1", status=ToolCallStatus.DENIED
        )
        _record(here, denied)
        assert first.caught_up(DEADLINE)
        assert first.waiting_calls("main") == []
        holder[0] = "other"  # let go; another process takes the branch
        second = follower()  # reads the log whole, this process's settle included
        try:
            assert second.caught_up(DEADLINE)
            assert second.waiting_calls("main") == []
        finally:
            second.close()
        begun = StateChanged(branch="main", old=State.IDLE, new=State.AWAITING_RESPONSE)
        _record(other, begun)
        assert first.caught_up(DEADLINE)
        assert first.waiting_calls("main") == []  # its turn began after the call
        assert first.waiting_call("call_1", "main") == []
    finally:
        first.close()
        for log in (dead, here, other):
            log.close()


def test_a_counterfactual_of_a_reply_a_dead_process_left_waiting_settles_it_first(
    tmp_path: Path, context_id: str
) -> None:
    # The calls a killed process left open on "side" (not the active branch, so opening
    # left them) have no decision to wait for: the edit settles them as the next turn
    # there would, and goes on.
    reply_id = _round_on_a_side_branch(tmp_path, context_id)
    provider = ScriptedProvider().reply("Answered again.")
    with ContextSession.open(context_id, data_dir=tmp_path, provider=provider) as session:
        assert [c.status for c in session.get(reply_id).tool_calls] == [
            ToolCallStatus.RUNNING,
            ToolCallStatus.PENDING,
        ]
        replay = session.counterfactual(reply_id, "Let me add them, edited.")
        replay.result(DEADLINE)
        settled = session.get(reply_id).tool_calls
        assert [c.status for c in settled] == [ToolCallStatus.FAILED, ToolCallStatus.DENIED]
        edited = session.history(replay.branch)
        assert [m.role for m in edited][-4:] == ["assistant", "tool", "tool", "assistant"]
        assert [m.content for m in edited[-3:-1]] == [c.result for c in settled]


def test_a_call_that_ran_and_answered_error_text_stays_done_after_its_process_died(
    tmp_path: Path, context_id: str
) -> None:
    # A tool may run and return a text starting "error:" (its own answer, not a
    # failure). In a round of more than RUNNING_MARKS calls the first two are marked
    # running in one write; the first runs and its answer is stored, then the process
    # is killed while the second runs, before the round's calls are stored again: the
    # first is still "running" on disk, with its answer, which records that it ran.
    code = textwrap.dedent(
        f"""
        import time
        from cm_notebook.session import ContextSession
        from cm_notebook.testing import ScriptedProvider

        def lookup(key: str) -> str:
            \"\"\"Look a key up.\"\"\"
            return "error: no such row"

        def slow(x: str) -> str:
            \"\"\"Take a long time.\"\"\"
            print("RUNNING", flush=True)
            time.sleep(600)
            return "finished"

        calls = [("lookup", {{"key": "k"}}, "c1"), ("slow", {{"x": "1"}}, "c2")]
        calls += [("lookup", {{"key": str(n)}}, f"c{{n}}") for n in range(3, 18)]
        provider = ScriptedProvider().tool_calls(*calls).reply("never sent")
        session = ContextSession.open({context_id!r}, data_dir={str(tmp_path)!r},
                                      provider=provider, tools=[lookup, slow], approval="auto")
        session.send("Look them up.")
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    _kill_when(child, "RUNNING")
    with ContextSession.open(context_id, data_dir=tmp_path) as session:
        first, second, *_rest = _calls(session)
        assert (first.status, first.result) == (ToolCallStatus.DONE, "error: no such row")
        assert second.status is ToolCallStatus.FAILED
        assert second.reason == f"interrupted while running ({STOPPED})"
        answer = next(m for m in session.history() if m.tool_call_id == "c1")
        assert answer.metadata.tool_status is ToolCallStatus.DONE
