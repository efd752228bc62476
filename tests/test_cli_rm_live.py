"""`rm` of a context another process is writing into: refused, naming what holds it,
with the context left whole; once that process is killed its locks no longer count
and `rm --yes` deletes it; `--force` deletes it while the writer lives."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from cli_process import cli
from jupyter_server_proc import JupyterServer
from server_client import create_context

from cm_notebook import ContextSession
from cm_notebook.errors import BusyError
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock and SIGKILL")

DEADLINE = 120

# A notebook's kernel, say: a session streaming a reply that never ends, holding the
# turn's claim on its branch and the reply's streaming lock until it is killed.
_SESSION_WRITER = textwrap.dedent(
    """
    import sys, threading
    from cm_notebook.session import ContextSession
    from cm_notebook.testing import ScriptedProvider

    fake = ScriptedProvider().hang(after_chunks=1, text="busy")
    session = ContextSession.open(sys.argv[2], data_dir=sys.argv[1], provider=fake)
    started = threading.Event()
    session.subscribe(lambda e: started.set(), kinds={"ContentDelta"})
    session.send("mine")
    if not started.wait(60):
        sys.exit("the reply never started")
    print("streaming", flush=True)
    threading.Event().wait()
    """
)

# A reply streamed through the store alone: its streaming lock, no turn's claim.
_STORE_WRITER = textwrap.dedent(
    """
    import sys, threading
    import anyio
    from cm_notebook.model import Message, MessageStatus
    from cm_notebook.store import FileStore

    async def main():
        store = FileStore(sys.argv[1])
        cid = sys.argv[2]
        head = (await store.get_metadata(cid)).branches["main"].head
        reply = Message(
            role="assistant", parent_id=head, content="", status=MessageStatus.STREAMING
        )
        await store.append_message(cid, reply, branch="main")
        print(reply.id, flush=True)
        await anyio.sleep_forever()

    anyio.run(main)
    """
)


@pytest.fixture
def context_id(data_dir: Path) -> str:
    """A context with one finished turn, no session left open on it."""
    session = ContextSession.create("Live", data_dir=data_dir, provider=ScriptedProvider())
    try:
        assert session.send("before").result(DEADLINE).content == "echo: before"
    finally:
        session.close()
    return session.id


def start(script: str, data_dir: Path, context_id: str) -> tuple[subprocess.Popen[str], str]:
    """The writer started in a process of its own, and the line it says once writing."""
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir), context_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    assert line, "the writer never started"
    return child, line


def kill(child: subprocess.Popen[str]) -> None:
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=DEADLINE)  # reaped, its pipe closed


@pytest.fixture
def writers() -> Iterator[list[subprocess.Popen[str]]]:
    """Writer processes to kill after the test, whatever happened in it."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for child in started:
        if child.poll() is None:
            kill(child)


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def delete_in_process(data_dir: Path, context_id: str) -> None:
    async def main() -> None:
        async with FileStore(data_dir) as store:
            await store.delete_context(context_id)

    anyio.run(main)


def test_rm_refuses_a_context_a_live_session_streams_into_until_it_is_killed(
    data_dir: Path, context_id: str, writers: list[subprocess.Popen[str]]
) -> None:
    folder = data_dir / "contexts" / context_id
    child, said = start(_SESSION_WRITER, data_dir, context_id)
    writers.append(child)
    assert said == "streaming"
    before = files(folder)
    done = cli(data_dir, "rm", "--yes", context_id)
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        f"cm-notebook: error: context {context_id!r} is being written by a live process: reply '"
    )
    assert (
        f"' is being streamed; a turn is running on one of its branches (pid {child.pid} on "
        in line
    )
    assert line.endswith(
        "Stop that first (let the reply finish or cancel the turn, or stop the kernel or "
        "process running it), then delete the context; or delete it anyway with "
        f"`cm-notebook --data-dir {shlex.quote(str(data_dir))} rm --force {context_id}`, and "
        "that process's next write fails."
    )
    assert files(folder) == before  # nothing deleted, nothing moved
    assert "Live" in cli(data_dir, "ls").stdout
    # Without --yes: refused before any question.
    asked = cli(data_dir, "rm", context_id)
    assert asked.returncode == 1
    assert "Delete context" not in asked.stdout
    assert "is being written by a live process" in asked.stderr
    # The library call the command makes refuses too.
    with pytest.raises(BusyError, match=f"pid {child.pid} on "):
        delete_in_process(data_dir, context_id)
    assert files(folder) == before

    kill(child)  # its locks are left behind, held by nobody
    assert any(name.startswith(".claim-") for name in os.listdir(folder))
    done = cli(data_dir, "rm", "--yes", context_id)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"deleted {context_id}\n", "")
    assert not folder.exists()


def test_a_reply_streamed_through_the_store_alone_holds_it_too(
    data_dir: Path, context_id: str, writers: list[subprocess.Popen[str]]
) -> None:
    folder = data_dir / "contexts" / context_id
    child, reply_id = start(_STORE_WRITER, data_dir, context_id)
    writers.append(child)
    done = cli(data_dir, "rm", "--yes", context_id)
    assert done.returncode == 1
    assert (
        f"context {context_id!r} is being written by a live process: reply {reply_id!r} is "
        "being streamed. Stop that first"
    ) in done.stderr
    assert folder.is_dir()
    kill(child)
    delete_in_process(data_dir, context_id)  # the killed writer's lock no longer counts
    assert not folder.exists()


def test_force_deletes_a_context_while_its_writer_lives(
    data_dir: Path, context_id: str, writers: list[subprocess.Popen[str]]
) -> None:
    assert "--force" in cli(data_dir, "rm", "--help").stdout
    child, _ = start(_SESSION_WRITER, data_dir, context_id)
    writers.append(child)
    done = cli(data_dir, "rm", "--yes", "--force", context_id)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"deleted {context_id}\n", "")
    assert not (data_dir / "contexts" / context_id).exists()


def test_a_fifo_under_a_lock_files_name_does_not_make_rm_wait(
    data_dir: Path, context_id: str
) -> None:
    # Damage, not a writer: the probe of it must neither wait for a writer nor refuse.
    folder = data_dir / "contexts" / context_id
    os.mkfifo(folder / ".streaming-m1.lock")
    os.mkfifo(folder / ".claim-0123456789abcdef01234567.lock")
    done = cli(data_dir, "rm", "--yes", context_id)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"deleted {context_id}\n", "")
    assert not folder.exists()


def test_the_server_answers_409_while_another_process_writes_into_it(
    tmp_path: Path, writers: list[subprocess.Popen[str]]
) -> None:
    # The REST API's DELETE goes through the same check: a notebook's kernel streaming
    # into the context keeps it, and the answer says why.
    with (
        JupyterServer(tmp_path) as running,
        httpx.Client(base_url=running.api("/"), headers=running.auth, timeout=30) as http,
    ):
        context_id = create_context(http, [])
        folder = running.data_dir / "contexts" / context_id
        child, said = start(_SESSION_WRITER, running.data_dir, context_id)
        writers.append(child)
        assert said == "streaming"
        refused = http.delete(f"contexts/{context_id}")
        assert refused.status_code == 409, refused.text
        assert f"pid {child.pid} on " in refused.json()["message"]
        assert folder.is_dir()
        assert http.get(f"contexts/{context_id}").status_code == 200
        kill(child)
        assert http.delete(f"contexts/{context_id}").status_code == 204
        assert not folder.exists()
