"""The store's fault-injection matrix: damaged files of every kind, a full disk, kill
points and two writers, each against a data directory holding a damaged context
(``bad``) beside an intact one (``good``).

Every case checks the same four promises (README, "What the store promises"):

* nothing acknowledged is lost: every append that returned is readable afterwards
  (except the one message whose own file was destroyed);
* the damaged item is named by its path, in the error raised or the StoreWarning;
* the good context is unaffected: it lists and reads in full, without a warning;
* errors are the package's own (``CMError``), never a bare ``OSError``.

Everything is real: files damaged on disk, a size-limited tmpfs for ENOSPC (mounted
when the tests run as root; skipped otherwise), SIGKILLed child processes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from full_disk import PAGE, Filler, mounted_tmpfs
from store_helpers import chain, msg
from test_store_crash_points import ForkServer

from cm_notebook.cli import main
from cm_notebook.errors import (
    CMError,
    SchemaVersionError,
    StorageFullError,
    StoreError,
)
from cm_notebook.model import SCHEMA_VERSION, ContextMetadata, Message, MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.store.context import lock_is_held

CHAIN = 6  # acknowledged messages per context
CHILD = Path(__file__).with_name("store_child.py")


# -- a data directory with a good and a bad context ------------------------------------


Prepare = Callable[[Path], dict[str, list[str]]]


@pytest.fixture(scope="module")
def prepare(tmp_path_factory: pytest.TempPathFactory) -> Prepare:
    """``prepare(data_dir)``: two contexts with CHAIN acknowledged messages each, copied
    from one template built once (appends fsync; copies need not); returns their ids."""
    template = tmp_path_factory.mktemp("template") / "data"

    async def build() -> dict[str, list[str]]:
        async with FileStore(template) as store:
            acked = {}
            for cid in ("bad", "good"):
                await store.create_context(ContextMetadata(id=cid, title=cid))
                acked[cid] = await chain(store, cid, CHAIN)
                # Fold the head moves into metadata.json (as compaction also does), so a
                # damaged journal loses no head.
                await store.set_active_branch(cid, "main")
            return acked

    ids = anyio.run(build)

    def copy(data_dir: Path) -> dict[str, list[str]]:
        shutil.copytree(template, data_dir)
        return {cid: list(values) for cid, values in ids.items()}

    return copy


def leftovers(data_dir: Path) -> list[str]:
    """Temporary files and unheld streaming locks anywhere below ``data_dir``."""
    found = []
    for root, dirs, files in os.walk(data_dir):
        for name in files + dirs:
            path = Path(root) / name
            temporary = name.endswith(".tmp") or name.startswith(".tmp-")
            stale = name.startswith(".streaming-") and not lock_is_held(path)
            if temporary or stale:
                found.append(str(path))
    return found


class Seen:
    """What a fresh FileStore and ContextSession.list() see, with the warnings raised."""

    def __init__(self, data_dir: Path) -> None:
        self.warnings: list[StoreWarning] = []
        self.errors: dict[str, BaseException] = {}
        self.messages: dict[str, list[Message]] = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.listed = [meta.id for meta in anyio.run(self._read, data_dir)]
            self.session_listed = [meta.id for meta in ContextSession.list(data_dir)]
        for item in caught:
            assert isinstance(item.message, StoreWarning), item
            self.warnings.append(item.message)

    async def _read(self, data_dir: Path) -> list[ContextMetadata]:
        async with FileStore(data_dir) as store:
            listed = await store.list_contexts()
            for cid in ("bad", "good"):
                try:
                    ids = await store.path(cid)
                    self.messages[cid] = await store.get_messages(cid, ids)
                except Exception as exc:
                    self.errors[cid] = exc
            return listed

    def warned_about(self, path: Path) -> bool:
        return any(w.path == path and str(path) in str(w) for w in self.warnings)


def assert_good_unaffected(seen: Seen, acked: dict[str, list[str]], data_dir: Path) -> None:
    assert "good" in seen.listed
    assert "good" in seen.session_listed
    assert "good" not in seen.errors, seen.errors.get("good")
    assert [m.id for m in seen.messages["good"]] == acked["good"]
    good = data_dir / "contexts" / "good"
    assert not [w for w in seen.warnings if w.path is not None and good in w.path.parents]


def assert_package_error(exc: BaseException, path: Path) -> None:
    assert isinstance(exc, CMError), repr(exc)
    assert getattr(exc, "path", None) == path, (exc, path)
    assert str(path) in str(exc)


def cli(capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str) -> tuple[int, str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the CLI prints them as "warning:" lines
        code = main(["--data-dir", str(data_dir), *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


# -- damaged files of every kind -------------------------------------------------------

TARGETS = {
    "metadata": lambda folder, ids: folder / "metadata.json",
    "index": lambda folder, ids: folder / "message_index.json",
    "journal": lambda folder, ids: folder / "message_index.journal",
    "message": lambda folder, ids: folder / "messages" / f"{ids[2]}.json",
}


def _replace(path: Path, make: Callable[[Path], Any]) -> None:
    path.unlink()
    make(path)


def _socket(path: Path) -> None:
    # Bound under a short name (socket paths are limited to about 100 bytes), then moved.
    short = Path(tempfile.mkdtemp(dir=path.parent.parent)) / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.path.relpath(short))  # the socket file stays after the socket closes
    short.rename(path)
    short.parent.rmdir()


def _wrong_types(path: Path) -> None:
    if path.name.endswith(".journal"):
        path.write_bytes(b'{"id": 5, "role": []}\n')
    elif path.name == "message_index.json":
        path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "entries": [{"id": 5}]}))
    else:
        raw = json.loads(path.read_text())
        raw.update({"title": 5, "role": 5, "branches": "x"})
        path.write_text(json.dumps(raw))


def _newer(path: Path) -> None:
    raw = json.loads(path.read_text())
    raw["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(raw))


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "folder": lambda p: _replace(p, Path.mkdir),
    "fifo": lambda p: _replace(p, os.mkfifo),
    "socket": lambda p: _replace(p, _socket),
    "dangling-link": lambda p: _replace(p, lambda q: q.symlink_to(q.parent / "nowhere")),
    "looping-link": lambda p: _replace(p, lambda q: q.symlink_to(q.name)),
    "wrong-types": _wrong_types,
    "newer-schema": _newer,
}

# What happens to each kind of damage (anything not listed: "repaired").
#   refused:  the context cannot be read; listing skips it with a warning naming the file
#   repaired: the index is rebuilt from the message files, with a warning naming the file
#   reported: reading the context raises the package's error naming the file
#   skipped:  the one damaged message is left out, with a warning naming its file
# A damaged message file whose committed copy is still in the journal (every message
# since the last compaction) is restored from it, with a warning naming the file.
OUTCOMES: dict[str, str] = {"metadata": "refused"}
EXCEPTIONS: dict[tuple[str, str], str] = {
    # A folder cannot be replaced by the restored file.
    ("message", "folder"): "skipped",
    # A folder cannot be replaced by the rebuilt file: the user must move it.
    ("index", "folder"): "reported",
    ("journal", "folder"): "reported",
    # Data from a newer cm_notebook is never overwritten by an older one.
    ("index", "newer-schema"): "reported",
}
CASES = [
    (target, damage)
    for target in TARGETS
    for damage in DAMAGES
    if not (target == "journal" and damage == "newer-schema")  # journal lines carry none
]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs and UNIX sockets")
@pytest.mark.parametrize(("target", "damage"), CASES, ids=[f"{t}-{d}" for t, d in CASES])
def test_damaged_file(
    prepare: Prepare, tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, damage: str
) -> None:
    data_dir = tmp_path / "data"
    acked = prepare(data_dir)
    path = TARGETS[target](data_dir / "contexts" / "bad", acked["bad"])
    DAMAGES[damage](path)
    outcome = EXCEPTIONS.get((target, damage), OUTCOMES.get(target, "repaired"))

    seen = Seen(data_dir)
    assert_good_unaffected(seen, acked, data_dir)
    if outcome == "refused":
        assert "bad" not in seen.listed
        assert "bad" not in seen.session_listed
        assert seen.warned_about(path), [str(w) for w in seen.warnings]
        assert_package_error(seen.errors["bad"], path)
        if damage == "newer-schema":
            assert isinstance(seen.errors["bad"], SchemaVersionError)
    elif outcome == "reported":
        assert "bad" in seen.listed
        assert_package_error(seen.errors["bad"], path)
    elif outcome == "repaired":
        assert "bad" not in seen.errors, seen.errors["bad"]
        assert [m.id for m in seen.messages["bad"]] == acked["bad"]  # nothing lost
        assert seen.warned_about(path), [str(w) for w in seen.warnings]
    else:  # skipped
        assert "bad" not in seen.errors, seen.errors["bad"]
        lost = acked["bad"][2]
        assert [m.id for m in seen.messages["bad"]] == [i for i in acked["bad"] if i != lost]
        assert seen.warned_about(path), [str(w) for w in seen.warnings]

        async def get_it() -> None:
            async with FileStore(data_dir) as store:
                await store.get_message("bad", lost)

        with pytest.raises(StoreError) as info:
            anyio.run(get_it)
        assert_package_error(info.value, path)

    # The command line: `ls` lists the good context and exits 0 whatever the damage;
    # `show` of the damaged one fails (or warns) with one line naming the file.
    code, out, err = cli(capsys, data_dir, "ls")
    assert code == 0
    assert "good" in out
    code, out, err = cli(capsys, data_dir, "show", "bad")
    if outcome in ("refused", "reported"):
        assert code == 1
        assert err.strip().splitlines()[-1].startswith("cm-notebook: error: ")
        assert str(path) in err
    else:
        assert code == 0
        assert f"{CHAIN} message(s)" in out
    if outcome == "skipped":
        assert str(path) in err
        assert "1 unreadable message(s) skipped" in out


def test_cut_journal_is_rebuilt_without_losing_messages(prepare: Prepare, tmp_path: Path) -> None:
    """A journal cut at every possible length: the context always comes back whole."""
    data_dir = tmp_path / "data"
    acked = prepare(data_dir)
    journal = data_dir / "contexts" / "bad" / "message_index.journal"
    full = journal.read_bytes()
    for cut in range(0, len(full), 97):
        journal.write_bytes(full[:cut])
        seen = Seen(data_dir)
        assert_good_unaffected(seen, acked, data_dir)
        assert [m.id for m in seen.messages["bad"]] == acked["bad"], cut
        journal.write_bytes(full)  # the rebuild replaced it; put the original back
        (data_dir / "contexts" / "bad" / "message_index.json").write_bytes(
            b'{"schema_version": 1, "entries": []}\n'
        )


def test_an_unreadable_file_is_named_by_path(prepare: Prepare, tmp_path: Path) -> None:
    """Permission denied, for real: as root the CLI runs without its capabilities."""
    prefix: list[str] = []
    if os.name == "posix" and os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:  # pragma: no cover - util-linux is missing
            pytest.skip("root reads every file; needs setpriv to drop that power")
        prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-all"]
    data_dir = tmp_path / "data"
    acked = prepare(data_dir)
    metadata = data_dir / "contexts" / "bad" / "metadata.json"
    message = data_dir / "contexts" / "good" / "messages" / f"{acked['good'][1]}.json"
    for path in (metadata, message):
        path.chmod(0o000)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [*prefix, sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir)]
        return subprocess.run(
            [*command, *argv], capture_output=True, text=True, timeout=60, check=False
        )

    done = run("ls")
    assert done.returncode == 0, done.stderr
    assert "good" in done.stdout
    assert "bad" not in done.stdout
    assert f"permission denied to read {metadata}" in done.stderr
    assert "Traceback" not in done.stderr
    done = run("show", "good")
    assert done.returncode == 0, done.stderr
    assert f"permission denied to read {message}" in done.stderr
    assert "1 unreadable message(s) skipped" in done.stdout


# -- a full disk -------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs (needs root: skipped where it cannot be mounted)."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


def files_of(folder: Path) -> dict[str, bytes]:
    """Every data file of a context folder (lock files hold no data)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.endswith(".lock")
    }


def until_it_fits(
    disk: Path, data_dir: Path, attempt: Callable[[], None], unchanged: bool = True
) -> list[str]:
    """Run ``attempt`` with 0, 1, 2, ... free pages until it succeeds.

    After each failure: the package's StorageFullError naming a file of the data
    directory and saying what to do, no temporary file anywhere, and (``unchanged``)
    the damaged context byte for byte as before. Returns the names of the files whose
    writes failed, in order.
    """
    filler = Filler(disk)
    filler.fill()
    bad = data_dir / "contexts" / "bad"
    failed: list[str] = []
    for pages in range(12):
        filler.leave_free(pages)
        before = files_of(bad)
        error: StorageFullError | None = None
        try:
            attempt()
        except StorageFullError as exc:
            error = exc
        assert not leftovers(data_dir), leftovers(data_dir)
        if error is None:
            filler.leave_free(10**6)
            return failed
        assert error.path is not None
        assert data_dir in error.path.parents, error.path
        assert str(error.path) in str(error)
        assert "free some space" in str(error)
        if unchanged:
            assert files_of(bad) == before, error
        failed.append(error.path.name)
    raise AssertionError(f"still failing with 12 free pages: {failed}")


def fill_journal_page(data_dir: Path, acked: dict[str, list[str]]) -> None:
    """Append until the next journal line of ``bad`` must start a new page."""
    journal = data_dir / "contexts" / "bad" / "message_index.journal"

    async def go() -> None:
        async with FileStore(data_dir) as store:
            while PAGE - journal.stat().st_size % PAGE > 120:
                acked["bad"] += await chain(store, "bad", 1)

    anyio.run(go)


def test_disk_full_append_changes_nothing(prepare: Prepare, small_disk: Path, capsys: Any) -> None:
    data_dir = small_disk / "data"
    acked = prepare(data_dir)
    fill_journal_page(data_dir, acked)
    message = msg("user", acked["bad"][-1], "x" * 3000)

    async def append() -> None:
        async with FileStore(data_dir) as store:
            await store.append_message("bad", message, branch="main")

    failed = until_it_fits(small_disk, data_dir, lambda: anyio.run(append))
    # The failure hit the message file, then its journal line (which also moves the
    # head: metadata.json is not written by an append).
    assert failed[0] == f"{message.id}.json"
    assert failed[-1] == "message_index.journal"
    assert "metadata.json" not in failed
    seen = Seen(data_dir)
    assert_good_unaffected(seen, acked, data_dir)
    assert [m.id for m in seen.messages["bad"]] == [*acked["bad"], message.id]
    assert not seen.warnings


def test_disk_full_while_streaming(prepare: Prepare, small_disk: Path) -> None:
    data_dir = small_disk / "data"
    acked = prepare(data_dir)
    reply = Message(role="assistant", parent_id=acked["bad"][-1], status=MessageStatus.STREAMING)
    with anyio.from_thread.start_blocking_portal() as portal:
        writer = FileStore(data_dir)  # alive throughout: it holds the stream's lock
        portal.call(partial(writer.append_message, "bad", reply, branch="main"))
        reply.content = "streamed text " * 300
        checkpoint = partial(portal.call, writer.update_message, "bad", reply)
        assert set(until_it_fits(small_disk, data_dir, checkpoint)) == {f"{reply.id}.json"}
        final = reply.model_copy(update={"status": MessageStatus.COMPLETE})
        # The final update may fail after its message file was replaced: that file is
        # then the complete new version, and the index catches up on the next write.
        finish = partial(portal.call, writer.update_message, "bad", final)
        until_it_fits(small_disk, data_dir, finish, unchanged=False)
        portal.call(writer.close)
    seen = Seen(data_dir)
    assert_good_unaffected(seen, acked, data_dir)
    got = seen.messages["bad"][-1]
    assert (got.id, got.status, got.content) == (reply.id, MessageStatus.COMPLETE, reply.content)
    assert not seen.warnings
    assert not leftovers(data_dir)


@pytest.mark.parametrize("operation", ["update_metadata", "create_branch", "create_context"])
def test_disk_full_metadata_writes_change_nothing(
    prepare: Prepare, small_disk: Path, operation: str
) -> None:
    data_dir = small_disk / "data"
    acked = prepare(data_dir)

    async def attempt() -> None:
        async with FileStore(data_dir) as store:
            if operation == "update_metadata":
                await store.update_metadata("bad", title="t" * 5000)
            elif operation == "create_branch":
                await store.create_branch("bad", "alt", head=acked["bad"][1])
            else:
                await store.create_context(ContextMetadata(id="new", title="n" * 5000))

    failed = until_it_fits(small_disk, data_dir, lambda: anyio.run(attempt))
    assert failed
    seen = Seen(data_dir)
    assert_good_unaffected(seen, acked, data_dir)
    assert [m.id for m in seen.messages["bad"]] == acked["bad"]
    assert not seen.warnings


def test_disk_full_export_leaves_no_temporary_file(
    prepare: Prepare, small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"  # on the ordinary disk: only the export target is full
    prepare(data_dir)
    target = small_disk / "export.json"
    filler = Filler(small_disk)
    filler.fill()
    code, _out, err = cli(capsys, data_dir, "export", "bad", "-o", str(target))
    assert code == 1
    assert f"{target}" in err
    assert "free some space" in err
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    filler.leave_free(10**6)
    code, _out, err = cli(capsys, data_dir, "export", "bad", "-o", str(target))
    assert code == 0, err
    assert json.loads(target.read_text())["metadata"]["id"] == "bad"


# -- kill points and what a dead writer leaves ----------------------------------------


@pytest.fixture(scope="module")
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


KILLED_OPS: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "update_metadata": lambda ids: {"title": "after"},
    "append": lambda ids: {"parent": ids[-1], "branch": "main"},
    "finish": lambda ids: {"parent": ids[-1]},  # a streamed reply's final update
    "create_context": lambda ids: {"new_cid": "fresh"},
}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("op", list(KILLED_OPS))
def test_kill_at_every_file_event_then_open_sweeps(
    prepare: Prepare, fork_server: ForkServer, tmp_path: Path, op: str
) -> None:
    template = tmp_path / "template"
    acked = prepare(template)
    args = {"cid": "bad", "id": "m-killed", "content": "new", **KILLED_OPS[op](acked["bad"])}
    full = tmp_path / "full"
    shutil.copytree(template, full)
    assert fork_server.run(op, full, 10**9, **args) == "exit 0"
    events = int(Path(f"{full}.events").read_text())
    swept = 0
    for kill_at in range(1, events + 1):
        work = tmp_path / f"k{kill_at}"
        shutil.copytree(template, work)
        assert fork_server.run(op, work, kill_at, **args) == "killed 9", kill_at
        swept += bool(leftovers(work))

        async def open_context(data_dir: Path = work) -> None:
            async with FileStore(data_dir) as store:
                await store.list_contexts()  # sweeps what a killed create_context left
                await store.get_metadata("bad")  # sweeps what a killed write to it left

        anyio.run(open_context)
        assert not leftovers(work), (kill_at, leftovers(work))  # opening swept them
        seen = Seen(work)
        assert not seen.warnings  # a crash is not damage
        assert_good_unaffected(seen, acked, work)
        assert [m.id for m in seen.messages["bad"]][: len(acked["bad"])] == acked["bad"]
        shutil.rmtree(work)
    assert swept, "no kill point left anything behind: the test lost its point"


def test_opening_sweeps_stale_locks_but_never_a_held_one(prepare: Prepare, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    acked = prepare(data_dir)
    folder = data_dir / "contexts" / "bad"
    # Left by a probe that raced with a finishing writer, or a writer killed between
    # its final journal line and removing its lock: nobody holds them.
    stale = [folder / f".streaming-{acked['bad'][-1]}.lock", folder / ".streaming-m-gone.lock"]
    for path in stale:
        path.touch()
    # Message files too are written through temporary files in the context folder, so
    # that opening a context never lists messages/, however many files it holds.
    temporary = [folder / ".metadata.json.0a1b2c.tmp", folder / ".m-x.json.00.tmp"]
    for path in temporary:
        path.write_bytes(b"half")
    # The folder of a context being created by a killed creator: removed only when no
    # creator at all is at work (the creation lock is free), since it bears no owner.
    creation = data_dir / "contexts" / ".tmp-x-0123"
    creation.mkdir()
    (creation / "metadata.json").write_text("{}")
    held = [folder / ".streaming-m-live.lock", data_dir / ".creating.lock"]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCKS, *map(str, held)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    async def open_context() -> None:
        async with FileStore(data_dir) as store:
            await store.list_contexts()
            await store.get_metadata("bad")

    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert all(lock_is_held(path) for path in held)
        assert not lock_is_held(folder / ".streaming-m-missing.lock")
        assert not (folder / ".streaming-m-missing.lock").exists()  # probing creates nothing
        anyio.run(open_context)
        assert [p for p in [*stale, *temporary] if p.exists()] == []
        assert all(path.exists() for path in [*held, creation])  # held: alive
    finally:
        holder.communicate("", timeout=30)
    anyio.run(open_context)
    assert not creation.exists()
    seen = Seen(data_dir)
    assert not seen.warnings
    assert_good_unaffected(seen, acked, data_dir)


HOLD_LOCKS = """
import fcntl, os, sys
fds = [os.open(path, os.O_RDWR | os.O_CREAT) for path in sys.argv[1:]]
for fd in fds:
    fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


# -- two writers -----------------------------------------------------------------------


def test_two_writers_and_a_reader_lose_nothing_and_leave_nothing(
    prepare: Prepare, tmp_path: Path
) -> None:
    """A child process appends on one branch while this process streams replies on
    another and a third FileStore keeps reading both: every acknowledged message is
    there afterwards, and no temporary file or stale streaming lock is left."""
    data_dir = tmp_path / "data"
    acked = prepare(data_dir)

    async def setup() -> None:
        async with FileStore(data_dir) as store:
            await store.create_branch("bad", "other", head=acked["bad"][-1])

    anyio.run(setup)
    child = subprocess.Popen(
        [sys.executable, str(CHILD), "append", str(data_dir), "bad", "other", "40"],
        stdout=subprocess.PIPE,
        text=True,
    )
    streamed: list[str] = []
    output: list[str] = []

    async def stream_and_read() -> None:
        done = anyio.Event()

        async def read() -> None:
            async with FileStore(data_dir) as reader:
                while not done.is_set():
                    for branch in ("main", "other"):
                        await reader.page("bad", branch, limit=5)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read)
            async with FileStore(data_dir) as writer:
                head = acked["bad"][-1]
                for _ in range(15):
                    reply = Message(
                        role="assistant", parent_id=head, status=MessageStatus.STREAMING
                    )
                    await writer.append_message("bad", reply, branch="main")
                    for _ in range(3):
                        reply.content += "tok "
                        await writer.update_message("bad", reply)
                    final = reply.model_copy(update={"status": MessageStatus.COMPLETE})
                    await writer.update_message("bad", final)
                    streamed.append(reply.id)
                    head = reply.id
            output.append((await anyio.to_thread.run_sync(child.communicate))[0])
            done.set()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        anyio.run(stream_and_read)
    child_acked = [line.split()[1] for line in output[0].splitlines()]
    assert child.returncode == 0
    assert len(child_acked) == 40
    assert not leftovers(data_dir), leftovers(data_dir)

    async def check() -> None:
        async with FileStore(data_dir) as store:
            assert await store.path("bad", "main") == acked["bad"] + streamed
            assert await store.path("bad", "other") == acked["bad"] + child_acked
            index = await store.index("bad")
            assert all(index[i].status is MessageStatus.COMPLETE for i in streamed)

    anyio.run(check)
    seen = Seen(data_dir)
    assert not seen.warnings
    assert_good_unaffected(seen, acked, data_dir)
