"""The session inside a real ipykernel, driven over ZMQ with jupyter_client the way a
notebook front end drives it. It proves the design's first rule: a cell never blocks
on the conversation. ``send()`` returns, the cell replies, and the turn carries on in
the background; a later cell awaits it, or approves a tool call it is waiting for."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from jupyter_client.blocking.client import BlockingKernelClient  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402
from widget_frontend import running_kernel  # noqa: E402

from cm_notebook.model import MessageStatus  # noqa: E402
from cm_notebook.session import ContextSession  # noqa: E402

TIMEOUT = 30.0


@dataclass
class CellResult:
    reply: dict[str, Any]
    stdout: str = ""
    errors: list[str] = field(default_factory=list)


@dataclass
class Kernel:
    manager: KernelManager
    client: BlockingKernelClient
    data_dir: Path

    def run(self, code: str, timeout: float = TIMEOUT) -> CellResult:
        """Execute one cell; return its execute_reply and output, never sleeping."""
        msg_id = self.client.execute(textwrap.dedent(code))
        deadline = time.monotonic() + timeout
        result = CellResult(reply={})
        idle = False
        while not idle:
            msg = self.client.get_iopub_msg(timeout=_left(deadline))
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                result.stdout += content["text"]
            elif kind == "error":
                result.errors.append("\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
        while not result.reply:
            msg = self.client.get_shell_msg(timeout=_left(deadline))
            if msg["parent_header"].get("msg_id") == msg_id:
                result.reply = msg["content"]
        assert result.reply["status"] == "ok", result.errors or result.reply
        assert not result.errors, result.errors
        return result


def _left(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("the kernel did not answer in time")
    return remaining


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    data_dir = tmp_path_factory.mktemp("kernel-data")
    with running_kernel(data_dir) as (manager, client):
        yield Kernel(manager, client, data_dir)


def test_the_kernel_runs_this_virtualenv(kernel: Kernel) -> None:
    out = kernel.run(
        """
        import os, sys
        print(sys.prefix)
        print(os.environ["CM_NOTEBOOK_DATA_DIR"])
        """
    ).stdout.splitlines()
    assert os.path.realpath(out[0]) == os.path.realpath(sys.prefix)
    assert out[1] == str(kernel.data_dir)


def test_a_cell_ends_before_its_reply_and_a_later_cell_awaits_it(kernel: Kernel) -> None:
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
    assert first.reply["status"] == "ok"
    assert "done in the cell: False" in first.stdout
    context_id = first.stdout.split("context:")[1].split()[0]

    second = kernel.run(
        """
        m = await turn
        print(m.content)
        print(turn.done(), s.state.value)
        """
    )
    assert second.stdout.splitlines() == ["Hello from the background task.", "True Idle"]

    # The kernel wrote real files where CM_NOTEBOOK_DATA_DIR pointed; read them here.
    seen_here = ContextSession.open(context_id, data_dir=kernel.data_dir)
    assert [(m.role, m.content) for m in seen_here.history()] == [
        ("user", "hi"),
        ("assistant", "Hello from the background task."),
    ]
    assert seen_here.history()[-1].status is MessageStatus.COMPLETE


def test_tool_approval_from_a_later_cell(kernel: Kernel) -> None:
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
    assert waiting.stdout.strip() == "['call_1'] False AwaitingToolApproval []"
    still = kernel.run("print(t2.done(), len(s2.pending_tool_calls))")
    assert still.stdout.strip() == "False 1"

    kernel.run("print(s2.approve('call_1')[0].id)")
    done = kernel.run(
        """
        m2 = await t2
        print(m2.content, ran, fake.requests[-1].messages[-1].content)
        """
    )
    assert done.stdout.strip() == "The sum is 5. [(2, 3)] 5"


def test_result_in_a_cell_is_refused_instead_of_freezing_the_kernel(kernel: Kernel) -> None:
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
    assert out.stdout.splitlines() == ["refused: True", "fine"]


def test_the_interrupt_button_stops_a_cell_awaiting_a_turn(kernel: Kernel) -> None:
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
    deadline = time.monotonic() + TIMEOUT
    while True:  # wait until the cell is in its await (an earlier interrupt hits compile)
        msg = kernel.client.get_iopub_msg(timeout=_left(deadline))
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "stream"
            and "awaiting" in msg["content"]["text"]
        ):
            break
    kernel.manager.interrupt_kernel()
    reply: dict[str, Any] = {}
    while not reply:
        msg = kernel.client.get_shell_msg(timeout=_left(deadline))
        if msg["parent_header"].get("msg_id") == msg_id:
            reply = msg["content"]
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
    assert after.stdout.splitlines() == ["still running: True", "then: interrupted"]
