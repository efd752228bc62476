"""The store's OS lock (cm_notebook.store.oslock): exclusion that survives kept descriptors."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cm_notebook.store.context import lock_is_held
from cm_notebook.store.oslock import LockTimeout, OSLock, move_by_link

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock semantics")


def test_two_locks_on_one_file_exclude_each_other(tmp_path: Path) -> None:
    first, second = OSLock(tmp_path / ".lock"), OSLock(tmp_path / ".lock")
    first.acquire(timeout=0)
    with pytest.raises(LockTimeout):
        second.acquire(timeout=0.02)
    assert lock_is_held(tmp_path / ".lock")
    first.release()
    second.acquire(timeout=0)  # the kept descriptor of the first does not hold it
    assert second.is_locked
    assert not first.is_locked
    second.close()
    first.close()
    assert not lock_is_held(tmp_path / ".lock")


def test_a_lock_file_made_anew_is_locked_anew(tmp_path: Path) -> None:
    # A kept descriptor still points at the removed file: locking it would let two
    # writers "hold" the lock on two different files.
    path = tmp_path / ".lock"
    old = OSLock(path)
    old.acquire(timeout=0)
    old.release()
    path.unlink()
    other = OSLock(path)
    other.acquire(timeout=0)  # creates and locks the new file
    with pytest.raises(LockTimeout):
        old.acquire(timeout=0.02)
    other.close()
    old.acquire(timeout=0)
    assert os.stat(path).st_ino == os.fstat(old._fd).st_ino
    old.close()


def test_a_missing_folder_is_an_error_not_a_new_folder(tmp_path: Path) -> None:
    lock = OSLock(tmp_path / "gone" / ".lock")
    with pytest.raises(FileNotFoundError):
        lock.acquire(timeout=0)
    assert not (tmp_path / "gone").exists()


def _child_tries(lock: OSLock, answer: multiprocessing.connection.Connection) -> None:
    try:
        lock.acquire(timeout=0)
    except LockTimeout:
        answer.send("refused")
    else:
        answer.send("took it")


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_does_not_inherit_the_lock(tmp_path: Path) -> None:
    lock = OSLock(tmp_path / ".lock")
    lock.acquire(timeout=0)
    context = multiprocessing.get_context("fork")
    mine, theirs = context.Pipe()
    child = context.Process(target=_child_tries, args=(lock, theirs))
    child.start()
    assert mine.recv() == "refused"
    child.join()
    assert lock.is_locked
    lock.release()  # and the child's exit did not release it for us early
    lock.acquire(timeout=0)
    lock.close()


def test_a_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from cm_notebook.store.oslock import OSLock
        OSLock(Path({str(path)!r})).acquire(timeout=5)
        print("held", flush=True)
        time.sleep(60)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        lock = OSLock(path)
        with pytest.raises(LockTimeout):
            lock.acquire(timeout=0.05)
        holder.kill()
        holder.wait()
        lock.acquire(timeout=5)
        lock.close()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_a_lock_not_taken_keeps_no_descriptor(tmp_path: Path) -> None:
    holder = OSLock(tmp_path / ".lock")
    holder.acquire(timeout=0)
    before = _open_descriptors()
    for _ in range(50):  # probes dropped after a timeout, as a check for a live writer does
        with pytest.raises(LockTimeout):
            OSLock(tmp_path / ".lock").acquire(timeout=0)
    assert _open_descriptors() == before
    waiter = OSLock(tmp_path / ".lock")
    with pytest.raises(LockTimeout):
        waiter.acquire(timeout=0.02)
    holder.close()
    waiter.acquire(timeout=0)  # tried again after a timeout, it takes the lock
    assert waiter.is_locked
    waiter.close()


def test_a_moved_lock_keeps_its_file_and_never_replaces_another(tmp_path: Path) -> None:
    lock = OSLock(tmp_path / ".a.lock")
    lock.acquire(timeout=0)
    inode = os.stat(lock.path).st_ino
    lock.move_to(tmp_path / ".b.lock")
    assert sorted(os.listdir(tmp_path)) == [".b.lock"]
    assert os.stat(tmp_path / ".b.lock").st_ino == inode
    assert lock_is_held(tmp_path / ".b.lock")
    (tmp_path / ".taken.lock").write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        lock.move_to(tmp_path / ".taken.lock")
    assert (tmp_path / ".taken.lock").read_bytes() == b"theirs"
    assert lock.path == tmp_path / ".b.lock"
    assert lock_is_held(tmp_path / ".b.lock")
    lock.close()


def test_the_move_by_link_and_unlink_keeps_a_held_lock_and_never_replaces(
    tmp_path: Path,
) -> None:
    # What move_to does where renameat2(RENAME_NOREPLACE) is not offered (another
    # system, or a file system without it): the same guarantees, in two calls.
    lock = OSLock(tmp_path / ".a.lock")
    lock.acquire(timeout=0)
    inode = os.stat(lock.path).st_ino
    move_by_link(tmp_path / ".a.lock", tmp_path / ".b.lock")
    assert sorted(os.listdir(tmp_path)) == [".b.lock"]
    assert os.stat(tmp_path / ".b.lock").st_ino == inode
    assert lock_is_held(tmp_path / ".b.lock")
    (tmp_path / ".taken.lock").write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        move_by_link(tmp_path / ".b.lock", tmp_path / ".taken.lock")
    assert (tmp_path / ".taken.lock").read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == [".b.lock", ".taken.lock"]
    assert lock_is_held(tmp_path / ".b.lock")
    lock.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_a_rename_that_may_not_replace_is_one_call_on_linux(tmp_path: Path) -> None:
    from cm_notebook.store.oslock import rename_no_replace

    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        rename_no_replace(tmp_path / "a", tmp_path / "b")
    with pytest.raises(FileNotFoundError):
        rename_no_replace(tmp_path / "gone", tmp_path / "c")
    # True where the file system can (tmpfs, ext4, xfs, btrfs...); False: nothing done.
    if rename_no_replace(tmp_path / "a", tmp_path / "c"):
        assert sorted(os.listdir(tmp_path)) == ["b", "c"]
    else:
        assert sorted(os.listdir(tmp_path)) == ["a", "b"]
