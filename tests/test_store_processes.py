"""Real child processes: SIGKILL at random moments, and two writers on one context.

The children run ``tests/store_child.py`` with this interpreter (the project's venv).
A child prints an id only after ``append_message`` returned, so every printed id is an
acknowledged write that must survive the kill.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from cm_notebook.model import ContextMetadata, MessageStatus
from cm_notebook.store import FileStore

CHILD = Path(__file__).with_name("store_child.py")
CID = "c1"

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_and_collect(proc: subprocess.Popen[str], seen: list[str]) -> list[str]:
    """SIGKILL the child; return its complete output lines (``seen`` plus the rest)."""
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate()  # reads to EOF and closes the pipes
    assert proc.returncode == -signal.SIGKILL
    # Only whole lines count: a line cut by the kill was never fully acknowledged.
    return ("".join(seen) + rest).split("\n")[:-1]


def read_lines(proc: subprocess.Popen[str], count: int) -> list[str]:
    assert proc.stdout is not None
    lines = []
    for _ in range(count):
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate()
            raise AssertionError(f"child ended early: {err}")
        lines.append(line)
    return lines


def create_context(data_dir: Path, *branches: str) -> None:
    async def main() -> None:
        async with FileStore(data_dir) as store:
            await store.create_context(ContextMetadata(id=CID))
            for name in branches:
                await store.create_branch(CID, name, head=None)

    anyio.run(main)


async def check_opens_cleanly(data_dir: Path, acked: list[str]) -> None:
    """A fresh FileStore sees every acknowledged message, in order, with no warnings."""
    async with FileStore(data_dir) as store:
        index = await store.index(CID)
        missing = [mid for mid in acked if mid not in index]
        assert not missing, f"acknowledged appends lost: {missing}"
        path = await store.path(CID)
        on_path = set(path)
        assert [mid for mid in path if mid in set(acked)] == acked
        assert all(mid in on_path for mid in acked)
        page = await store.page(CID, limit=20)
        assert [m.id for m in page] == path[-20:]
        got = await store.get_messages(CID, acked[-5:])
        assert [m.id for m in got] == acked[-5:]
        if len(path) > 1:
            assert path[1] in await store.children(CID, path[0])


@pytest.mark.slow
def test_sigkill_never_loses_an_acknowledged_append(data_dir: Path) -> None:
    create_context(data_dir)
    rng = random.Random(20240611)
    acked: list[str] = []
    for _trial in range(24):
        proc = spawn("append", str(data_dir), CID, "main", "100000")
        seen = read_lines(proc, rng.randint(1, 25))
        # Land the kill anywhere inside the next append (one append takes a few ms).
        time.sleep(rng.uniform(0, 0.004))
        lines = kill_and_collect(proc, seen)
        acked += [line.split()[1] for line in lines if line.startswith("ack ")]
        anyio.run(check_opens_cleanly, data_dir, acked)
    assert len(acked) > 24


@pytest.mark.slow
def test_sigkill_during_streaming_checkpoints_keeps_partial_text(data_dir: Path) -> None:
    create_context(data_dir)
    rng = random.Random(7)
    for trial in range(3):
        proc = spawn("stream", str(data_dir), CID, "main")
        first = read_lines(proc, 1)[0]
        assert first.startswith("stream ")
        reply_id = first.split()[1]
        seen = read_lines(proc, rng.randint(1, 30))
        reader = FileStore(data_dir)  # open before the kill, read again after it
        if trial == 0:
            # While the writer lives, another process's FileStore leaves the stream be.
            reply = anyio.run(reader.get_message, CID, reply_id)
            assert reply.status is MessageStatus.STREAMING
            seen += read_lines(proc, 2)  # and the writer carries on checkpointing
        time.sleep(rng.uniform(0, 0.003))
        lines = kill_and_collect(proc, [first, *seen])
        reply = anyio.run(reader.get_message, CID, reply_id)
        assert reply.status is MessageStatus.INTERRUPTED
        anyio.run(reader.close)
        tokens = max(int(line.split()[1]) for line in lines if line.startswith("ckpt "))

        async def check(reply_id: str = reply_id, tokens: int = tokens) -> None:
            async with FileStore(data_dir) as store:
                reply = await store.get_message(CID, reply_id)
                assert reply.status is MessageStatus.INTERRUPTED
                # At least the last acknowledged checkpoint; maybe one more that landed.
                assert reply.content.startswith("tok " * tokens)
                assert reply.content == "tok " * (len(reply.content) // 4)
                assert (await store.index(CID))[reply_id].status is MessageStatus.INTERRUPTED
                assert (await store.path(CID))[-1] == reply_id

        anyio.run(check)
        assert not (data_dir / "contexts" / CID / f".streaming-{reply_id}.lock").exists()


@pytest.mark.slow
@pytest.mark.parametrize("same_branch", [False, True], ids=["two-branches", "one-branch"])
def test_two_processes_append_to_one_context(data_dir: Path, same_branch: bool) -> None:
    branches = ["main", "main"] if same_branch else ["p1", "p2"]
    create_context(data_dir, *sorted(set(branches) - {"main"}))
    per_child = 200

    async def observe() -> tuple[FileStore, int]:
        reader = FileStore(data_dir)
        return reader, len(await reader.index(CID))

    reader, before = anyio.run(observe)
    assert before == 0
    children = [spawn("append", str(data_dir), CID, b, str(per_child)) for b in branches]
    sizes = []
    while any(child.poll() is None for child in children):
        sizes.append(anyio.run(reader.index, CID))
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        outputs.append([line.split()[1] for line in out.splitlines()])
    counts = [len(s) for s in sizes]
    assert counts == sorted(counts)  # the reader only ever sees the index grow

    async def check() -> None:
        # The reader loaded the context before the children started; its next read
        # must show everything they wrote.
        index = await reader.index(CID)
        assert len(index) == 2 * per_child
        for ids in outputs:
            assert len(ids) == per_child
            assert all(mid in index for mid in ids)
            # Each child's chain is intact: every message's parent is its predecessor.
            assert [index[mid].parent_id for mid in ids[1:]] == ids[:-1]
        if not same_branch:
            assert await reader.path(CID, "p1") == outputs[0]
            assert await reader.path(CID, "p2") == outputs[1]
        else:
            # The last writer's chain ends the branch; it may have started on top of
            # messages the other child appended before it read the head.
            head_path = await reader.path(CID, "main")
            last, other = (0, 1) if head_path[-1] == outputs[0][-1] else (1, 0)
            assert head_path[-per_child:] == outputs[last]
            prefix = head_path[:-per_child]
            assert prefix == outputs[other][: len(prefix)]
        seqs = sorted(entry.seq for entry in index.values())
        assert seqs == list(range(2 * per_child))
        await reader.close()
        async with FileStore(data_dir) as fresh:
            assert await fresh.index(CID) == index

    anyio.run(check)
