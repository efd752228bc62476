"""Contexts the magics no longer use are closed; those still open close at the kernel's exit.

Each open session keeps threads, open files and file watches. A kernel that went
through many contexts with ``%cm new`` + ``%%cm`` kept every one of them open for its
life (the reply views in IPython's ``Out`` hold their sessions, and the magics never
gave their hold back), until it ran out of file descriptors. Now the magics give back
their hold when another context becomes current, and a session nobody else uses is
closed: a reply under way, a variable naming the session, another holder keep it open.
A reply view left in ``Out`` still gives its reply when awaited. And a kernel shut
down while a reply streams stores that reply as stopped by the session's closing.

Real kernels driven over ZMQ; the kernel's threads, files and watches read from /proc.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from widget_frontend import FrontEnd, front_end

from cm_notebook._session_core import SESSION_CLOSED
from cm_notebook.model import MessageStatus
from cm_notebook.session import ContextSession

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the kernel's resources from /proc"
)

#: Contexts made one after another in a kernel.
CONTEXTS = 15
#: How long a session given back may take to be closed on a loaded machine.
SETTLE = 60.0

# A provider spec whose replies stream slowly (an echo, word by word), so that a cell's
# reply is still under way when the test acts.
SLOW_PROVIDER = """
from cm_notebook.providers import register_provider
from cm_notebook.testing import ScriptedProvider
register_provider("slowfake", lambda model=None, **options: ScriptedProvider(delay=0.05))
"""

LONG_MESSAGE = " ".join(f"w{i}" for i in range(60))  # streams for about 3 s


@pytest.fixture
def fe(tmp_path: Path) -> Iterator[FrontEnd]:
    with front_end(tmp_path / "data") as frontend:
        frontend.run("%load_ext cm_notebook")
        frontend.run(SLOW_PROVIDER)
        yield frontend


def _pid(fe: FrontEnd) -> int:
    return int(fe.run("import os; print(os.getpid())"))


def _resources(pid: int, data_dir: Path) -> dict[str, int]:
    """The kernel's threads, its open files in the data directory, its other open
    descriptors, and its inotify watches."""
    threads = len(os.listdir(f"/proc/{pid}/task"))
    data_files = other_fds = watches = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target == "anon_inode:inotify":
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    watches += sum(line.startswith("inotify wd") for line in info)
        except OSError:  # closed meanwhile
            continue
        if target.startswith(str(data_dir)):
            data_files += 1
        elif target != "anon_inode:[eventfd]":
            # (ipykernel's sockets for threads that publish output are eventfds that
            # it collects every ten seconds, however many contexts there were)
            other_fds += 1
    return {"threads": threads, "data files": data_files, "fds": other_fds, "watches": watches}


#: The threads each open session has of its own (its log's follower and syncer).
SESSION_THREADS = ("cm-signal-follower", "signal log sync")


def _session_threads(fe: FrontEnd) -> int:
    names = "[t.name for t in threading.enumerate()]"
    code = f"import threading; print(sum(n.startswith({SESSION_THREADS!r}) for n in {names}))"
    return int(fe.run(code))


def _one_context(fe: FrontEnd, number: int) -> None:
    fe.run(f'%cm new "context {number}" --provider scripted')
    fe.run(f"%%cm\nhello {number}")
    assert f"hello {number}" in fe.run("r = await _; print(r.content)")


def test_contexts_used_one_after_another_do_not_pile_up(fe: FrontEnd) -> None:
    pid, data_dir = _pid(fe), fe.data_dir
    for number in range(3):
        _one_context(fe, number)
    before = {**_resources(pid, data_dir), "session threads": _session_threads(fe)}
    for number in range(3, CONTEXTS):
        _one_context(fe, number)
    # Each context kept open held its threads, about ten files and two watches: twelve
    # more contexts would add a dozen threads or more, over 100 files and 24 watches.
    # (The kernel's threads in all may vary a little: thread pools grow on demand.)
    slack = {"threads": 8, "session threads": 1, "data files": 4, "fds": 12, "watches": 2}

    def settled() -> dict[str, int] | None:
        now = {**_resources(pid, data_dir), "session threads": _session_threads(fe)}
        return now if all(now[key] <= before[key] + slack[key] for key in slack) else None

    deadline = time.monotonic() + SETTLE
    after = settled()
    while after is None and time.monotonic() < deadline:
        time.sleep(0.2)
        after = settled()
    assert after is not None, (before, _resources(pid, data_dir), _session_threads(fe))
    # Only the current context is still open.
    assert fe.run(
        "from cm_notebook._registry import REGISTRY; print(len(REGISTRY.open_sessions()))"
    ).split() == ["1"]


def _printed(fe: FrontEnd, expression: str) -> str:
    return fe.run(f"print({expression})").strip()


def _wait_until_closed(fe: FrontEnd, session: str) -> None:
    deadline = time.monotonic() + SETTLE
    while _printed(fe, f"{session}.closed") != "True":
        assert time.monotonic() < deadline, f"{session} was not closed"
        time.sleep(0.2)


def test_a_reply_under_way_when_the_context_changes_ends_and_its_view_still_gives_it(
    fe: FrontEnd,
) -> None:
    fe.run('%cm new "first" --provider slowfake')
    fe.run(f"%%cm\n{LONG_MESSAGE}")
    fe.run("first = _")
    fe.run('%cm new "second" --provider scripted')
    # Still streaming: the context stays open until the reply has ended.
    assert _printed(fe, "first.session.closed") == "False"
    out = fe.run("r = await first; print(r.status.value, r.content.split()[-1])")
    assert out.split() == ["complete", "w59"]
    _wait_until_closed(fe, "first.session")
    # The view (in a variable, or in Out) still gives its reply; the session says it is
    # closed and how to go on.
    assert fe.run("r = await first; print(r.content.split()[-1])").split() == ["w59"]
    reply, output = fe.execute('first.session.send("more")')
    assert reply["status"] == "error", output
    assert reply["ename"] == "StateError", output
    assert "is closed; open the context again with ContextSession.open(" in reply["evalue"]
    context_id = _printed(fe, "first.session.id")
    assert fe.run(f"%cm use {context_id}").strip() == "context 'first' is current"
    assert fe.run("%cm history").splitlines()[-1].endswith("w59")


def test_a_context_a_variable_or_another_holder_keeps_stays_open(fe: FrontEnd) -> None:
    # A variable naming the session itself: the user may still send with it.
    fe.run('%cm new "named" --provider scripted')
    fe.run("%%cm\nhello")
    fe.run("kept = _.session")
    fe.run('%cm new "next" --provider scripted')
    assert _printed(fe, "kept.closed") == "False"
    out = fe.run('r = await kept.send("again"); print(r.content)')
    assert "again" in out
    fe.run("del kept")  # then nothing uses it: closed after the cell
    fe.run("%cm use next")
    fe.run("from cm_notebook._registry import REGISTRY")
    deadline = time.monotonic() + SETTLE
    while _printed(fe, "sorted(s.title for s in REGISTRY.open_sessions())") != "['next']":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    # Another holder: the magics give their hold back, the session stays theirs.
    fe.run(
        """
        from cm_notebook import ContextSession
        mine = ContextSession.create("mine", provider="scripted")
        """
    )
    fe.run(f"%cm use {_printed(fe, 'mine.id')}")  # opened by id: a hold of the magics
    fe.run('%cm new "after mine" --provider scripted')
    assert _printed(fe, "mine.closed") == "False"
    fe.run("mine.close()")
    assert _printed(fe, "mine.closed") == "True"


def test_a_graceful_shutdown_stores_the_reply_under_way_as_stopped_by_the_closing(
    fe: FrontEnd,
) -> None:
    fe.run('%cm new "shut down" --provider slowfake')
    fe.run(f"%%cm\n{LONG_MESSAGE}")
    fe.run("view = _")
    context_id = _printed(fe, "view.session.id")
    deadline = time.monotonic() + SETTLE
    while _printed(fe, "len(view.text.split())") in ("0", "1"):
        assert time.monotonic() < deadline, "the reply did not start"
        time.sleep(0.1)
    # Time enough to exit (the manager kills a kernel that has not exited by then).
    fe.manager.shutdown_wait_time = 2 * SETTLE
    fe.client.stop_channels()
    fe.manager.shutdown_kernel(now=False)
    session = ContextSession.open(context_id, data_dir=fe.data_dir, provider="scripted")
    try:
        reply = session.history()[-1]
    finally:
        session.close()
    assert reply.role == "assistant"
    assert reply.status is MessageStatus.INTERRUPTED
    assert reply.metadata.error == SESSION_CLOSED
    assert reply.content.startswith("echo: w0")
    assert not reply.content.endswith("w59")
