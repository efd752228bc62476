"""The session inside a real ipykernel, driven over ZMQ with jupyter_client the way a
notebook front end drives it. It proves the design's first rule: a cell never blocks
on the conversation. ``send()`` returns, the cell replies, and the turn carries on in
the background; a later cell awaits it, or approves a tool call it is waiting for."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from widget_frontend import FrontEnd, front_end  # noqa: E402

from cm_notebook.model import MessageStatus  # noqa: E402
from cm_notebook.session import ContextSession  # noqa: E402


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("kernel-data")) as running:
        yield running


def test_the_kernel_runs_this_virtualenv(kernel: FrontEnd) -> None:
    out = kernel.run(
        """
        import os, sys
        print(sys.prefix)
        print(os.environ["CM_NOTEBOOK_DATA_DIR"])
        """
    ).splitlines()
    assert os.path.realpath(out[0]) == os.path.realpath(sys.prefix)
    assert out[1] == str(kernel.data_dir)


def test_a_cell_ends_before_its_reply_and_a_later_cell_awaits_it(kernel: FrontEnd) -> None:
    first = kernel.run(
        """
        from cm_notebook import ContextSession
        from cm_notebook.testing import ScriptedProvider

        fake = ScriptedProvider().reply(
            "Hello from the background task.", chunks="words", delay=0.1
        )
        s = ContextSession.create("kernel test", provider=fake)
        turn = s.send("hi")
        print("done in the cell:", turn.done())
        print("context:", s.id)
        """
    )
    assert "done in the cell: False" in first
    context_id = first.split("context:")[1].split()[0]

    second = kernel.run(
        """
        m = await turn
        print(m.content)
        print(turn.done(), s.state.value)
        """
    )
    assert second.splitlines() == ["Hello from the background task.", "True Idle"]

    # The kernel wrote real files where CM_NOTEBOOK_DATA_DIR pointed; read them here.
    seen_here = ContextSession.open(context_id, data_dir=kernel.data_dir)
    assert [(m.role, m.content) for m in seen_here.history()] == [
        ("user", "hi"),
        ("assistant", "Hello from the background task."),
    ]
    assert seen_here.history()[-1].status is MessageStatus.COMPLETE


def test_tool_approval_from_a_later_cell(kernel: FrontEnd) -> None:
    kernel.run(
        """
        import asyncio
        from cm_notebook import ContextSession, tool
        from cm_notebook.events import ToolApprovalRequested
        from cm_notebook.testing import ScriptedProvider

        ran = []

        @tool
        def add(a: int, b: int) -> int:
            '''Add two integers.'''
            ran.append((a, b))
            return a + b

        fake = ScriptedProvider(strict=True).tool_call("add", {"a": 2, "b": 3})
        fake.reply("The sum is 5.")
        s2 = ContextSession.create(provider=fake, tools=[add])
        asked = asyncio.Event()
        s2.subscribe(lambda e: asked.set() if isinstance(e, ToolApprovalRequested) else None)
        t2 = s2.send("add 2 and 3")
        print("started", t2.done())
        """
    )
    waiting = kernel.run(
        """
        await asyncio.wait_for(asked.wait(), 30)
        print([c.id for c in s2.pending_tool_calls], t2.done(), s2.state.value, ran)
        """
    )
    # The turn waits for a person while cells keep running.
    assert waiting.strip() == "['call_1'] False AwaitingToolApproval []"
    still = kernel.run("print(t2.done(), len(s2.pending_tool_calls))")
    assert still.strip() == "False 1"

    kernel.run("print(s2.approve('call_1')[0].id)")
    done = kernel.run(
        """
        m2 = await t2
        print(m2.content, ran, fake.requests[-1].messages[-1].content)
        """
    )
    assert done.strip() == "The sum is 5. [(2, 3)] 5"


def test_result_in_a_cell_is_refused_instead_of_freezing_the_kernel(kernel: FrontEnd) -> None:
    out = kernel.run(
        """
        from cm_notebook.errors import StateError
        from cm_notebook.testing import ScriptedProvider
        s3 = ContextSession.create(provider=ScriptedProvider(["fine"]))
        t3 = s3.send("hi")
        try:
            t3.result(5)
        except StateError as exc:
            print("refused:", "await" in str(exc))
        print((await t3).content)
        """
    )
    assert out.splitlines() == ["refused: True", "fine"]


def test_the_interrupt_button_stops_a_cell_awaiting_a_turn(kernel: FrontEnd) -> None:
    # DESIGN fact 3: a bare `await future` ignores Interrupt until another message
    # arrives; `await turn` polls, so the interrupt lands at once and the next cell is
    # not aborted. The turn itself carries on in the background until cancelled.
    kernel.run(
        """
        from cm_notebook import ContextSession
        from cm_notebook.testing import ScriptedProvider

        stuck = ContextSession.create("interrupt test", provider=ScriptedProvider().hang())
        stuck_turn = stuck.send("wait forever")
        """
    )
    # stop_on_error=False: the interrupted cell's error must not abort the cell after it
    # (on a loaded machine that cell can reach the kernel while it is still aborting).
    msg_id = kernel.client.execute(
        'print("awaiting", flush=True)\nawait stuck_turn', stop_on_error=False
    )
    # Wait until the cell is in its await (an earlier interrupt hits compile).
    kernel.wait_for(lambda: "awaiting" in kernel.output(msg_id), what="the cell's await")
    kernel.manager.interrupt_kernel()
    reply = kernel.reply(msg_id)
    assert reply["status"] == "error"
    # ipykernel 7 cancels an interrupted async cell; older kernels raise KeyboardInterrupt.
    assert reply["ename"] in ("CancelledError", "KeyboardInterrupt")
    after = kernel.run(
        """
        print("still running:", not stuck_turn.done())
        stuck_turn.cancel()
        m = await stuck_turn
        print("then:", m.status.value)
        """
    )
    assert after.splitlines() == ["still running: True", "then: interrupted"]


def _interrupted(kernel: FrontEnd, cell: str) -> dict[str, object]:
    # Run ``cell`` (one that awaits), press Interrupt once it is in its await, and
    # return the cell's reply.
    msg_id = kernel.client.execute(f'print("awaiting", flush=True)\n{cell}', stop_on_error=False)
    kernel.wait_for(lambda: "awaiting" in kernel.output(msg_id), what="the cell's await")
    kernel.manager.interrupt_kernel()
    return kernel.reply(msg_id)


def test_an_interrupted_send_says_what_to_do_from_the_next_cell(kernel: FrontEnd) -> None:
    # `r = await s.send(...)` interrupted mid-reply: the cell never got the Turn, so
    # "await it again" or "turn.cancel()" name nothing the next cell has. The advice
    # goes through the session, with the branch, and works as given.
    kernel.run(
        """
        from cm_notebook import ContextSession
        from cm_notebook.errors import BusyError
        from cm_notebook.testing import ScriptedProvider

        told = ContextSession.create(
            "interrupted send",
            provider=ScriptedProvider().hang(after_chunks=1, text="so far").reply("next"),
        )
        """
    )
    reply = _interrupted(kernel, 'r = await told.send("go")')
    if reply["ename"] == "KeyboardInterrupt":  # ipykernel < 7: no CancelledError to read
        pytest.skip("this ipykernel raises KeyboardInterrupt in an interrupted async cell")
    assert reply["ename"] == "CancelledError"
    said = str(reply["evalue"])
    assert "session.turn('main')" in said
    assert "session.stop(branch='main')" in said
    assert "await it again" not in said
    assert ".cancel()" not in said
    refused = kernel.run(
        """
        try:
            told.send("next question")
        except BusyError as exc:
            print(exc)
        """
    )
    assert "session.turn('main')" in refused
    assert "session.stop(branch='main')" in refused
    assert "turn.cancel()" not in refused
    # As told: the session's Turn while it runs, and its stop.
    done = kernel.run(
        """
        running = told.turn('main')
        told.stop(branch='main')
        print((await running).status.value, repr(running.text))
        print((await told.send("next question")).content)
        """
    )
    assert done.splitlines() == ["interrupted 'so far'", "next"]


def test_an_interrupted_fan_out_names_each_arm(kernel: FrontEnd) -> None:
    # `comparison = await s.fan_out(...)` interrupted: the arms go on, each reachable
    # through its branch; compare() gives the comparison once they are over.
    kernel.run(
        """
        from cm_notebook import ContextSession
        from cm_notebook.testing import ScriptedProvider

        arms = ContextSession.create(
            "interrupted fan-out", provider=ScriptedProvider().hang().hang()
        )
        """
    )
    reply = _interrupted(
        kernel, 'comparison = await arms.fan_out("q", [{"system": "A"}, {"system": "B"}])'
    )
    if reply["ename"] == "KeyboardInterrupt":  # ipykernel < 7
        pytest.skip("this ipykernel raises KeyboardInterrupt in an interrupted async cell")
    said = str(reply["evalue"])
    names = kernel.run("print(sorted(set(arms.branches) - {'main'}))")
    first, second = eval(names)  # the arms' branches, as the kernel named them
    assert f"on branches {first!r}, {second!r}" in said
    assert f"session.compare({first!r}, {second!r})" in said
    assert "session.stop(branch=branch)" in said
    assert ".cancel()" not in said
    done = kernel.run(
        f"""
        running = [arms.turn({first!r}), arms.turn({second!r})]
        for name in ({first!r}, {second!r}):
            arms.stop(branch=name)
        print([(await turn).status.value for turn in running])
        print(type(arms.compare({first!r}, {second!r})).__name__)
        """
    )
    assert done.splitlines() == ["['interrupted', 'interrupted']", "Comparison"]
