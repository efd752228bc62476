"""A process out of open files reads no message as "damaged": it gets an error saying so.

Skipping each unreadable file with a warning is right for one damaged file, wrong when
the process cannot open any file: a whole conversation read back empty.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from store_helpers import chain

from cm_notebook.model import ContextMetadata
from cm_notebook.store import FileStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_NOFILE")

_CHILD = textwrap.dedent(
    """
    import asyncio, os, resource, sys
    from cm_notebook.errors import StoreIOError
    from cm_notebook.store import FileStore

    async def main():
        async with FileStore(sys.argv[1]) as store:
            ids = await store.path("c")
            assert len(await store.get_messages("c", ids)) == len(ids)  # warm
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
            held = []
            try:
                while True:
                    held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                pass
            try:
                got = await store.get_messages("c", ids)
            except StoreIOError as exc:
                print("error:", exc)
            else:
                print("read", len(got), "of", len(ids))
            finally:
                for fd in held:
                    os.close(fd)

    asyncio.run(main())
    """
)


def test_running_out_of_open_files_is_an_error_not_an_empty_conversation(
    tmp_path: Path,
) -> None:
    async def fill() -> None:
        async with FileStore(tmp_path) as store:
            await store.create_context(ContextMetadata(id="c"))
            await chain(store, "c", 6)

    anyio.run(fill)
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.startswith("error:"), done.stdout + done.stderr
    assert "run out of open files" in done.stdout
    assert "skipped an unreadable message" not in done.stderr
