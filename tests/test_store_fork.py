"""A FileStore used across ``fork``: the child gets descriptors of its own and, when it
closes the store, keeps none of the parent's (a long-lived forking server would
otherwise gather one per context per child)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/fd; fork is POSIX"
)

_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from cm_notebook.model import ContextMetadata, Message
    from cm_notebook.store import FileStore

    data = Path(sys.argv[1])
    folder = data / "contexts" / "c1"

    def open_in(folder):
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(folder)):
                found.append(target)
        return found

    store = FileStore(data)

    async def first():
        await store.create_context(ContextMetadata(id="c1"))
        await store.append_message("c1", Message(role="user", content="hi"), branch="main")

    asyncio.run(first())
    assert open_in(folder), "the store keeps its files open between calls"
    pid = os.fork()
    if pid == 0:
        async def child():
            head = (await store.get_metadata("c1")).branches["main"].head
            reply = Message(role="assistant", content="from the child", parent_id=head)
            await store.append_message("c1", reply, branch="main")
            await store.close()

        asyncio.run(child())
        left = open_in(folder)
        print("child keeps:", left, flush=True)
        os._exit(1 if left else 0)
    _, status = os.waitpid(pid, 0)
    asyncio.run(store.close())
    sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_a_forked_child_that_closes_the_store_keeps_no_descriptor_of_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
