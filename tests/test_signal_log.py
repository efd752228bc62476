"""The per-context signal log: numbers that survive restarts, are shared by processes,
and a compacted log that answers old numbers with Resync."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from cm_notebook.errors import CorruptDataError
from cm_notebook.events import (
    ContentDelta,
    Event,
    MessageCompleted,
    Resync,
    StateChanged,
    ToolApprovalRequested,
)
from cm_notebook.fsm import State
from cm_notebook.session import ContextSession
from cm_notebook.signal_log import LogReader, SignalLog
from cm_notebook.store.folders import signal_log_in
from cm_notebook.testing import ScriptedProvider

DEADLINE = 30.0


def _numbers(path: Path) -> list[int]:
    lines = path.read_bytes().splitlines()
    return [json.loads(line)["e"]["seq"] for line in lines if line.strip()]


def _delta(n: int) -> ContentDelta:
    return ContentDelta(message_id="m1", text="x" * 40, offset=n * 40, branch="main")


def _stamp(event: Event, context_id: str = "c1") -> Callable[[int], Event]:
    def stamp(seq: int) -> Event:
        return event.model_copy(update={"seq": seq, "context_id": context_id})

    return stamp


def test_numbers_survive_a_reopen_and_never_repeat(tmp_path: Path) -> None:
    session = ContextSession.create(
        data_dir=tmp_path, provider=ScriptedProvider().reply("one").reply("two")
    )
    context_id = session.id
    seen: list[Event] = []
    session.subscribe(seen.append)
    session.send("first").result(DEADLINE)
    first_last = session.last_seq
    session.close()
    assert first_last > 0

    again = ContextSession.open(
        context_id, data_dir=tmp_path, provider=ScriptedProvider().reply("3")
    )
    assert again.last_seq == first_last  # the bus starts where the log ends
    later: list[Event] = []
    again.subscribe(later.append)
    again.send("second").result(DEADLINE)
    again.close()

    assert later
    assert min(e.seq for e in later) == first_last + 1
    numbers = _numbers(tmp_path / "contexts" / context_id / "signals" / "signals.log")
    assert numbers == list(range(1, len(numbers) + 1))  # one sequence, no repeat, no gap
    assert [e.seq for e in seen] == numbers[: len(seen)]
    assert any(isinstance(e, MessageCompleted) for e in later)


def test_the_log_has_a_folder_of_its_own(tmp_path: Path) -> None:
    # Watching the log must not be woken by the store's writes beside it.
    session = ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider())
    session.send("hello").result(DEADLINE)
    session.close()
    folder = tmp_path / "contexts" / session.id
    assert session.signal_log_path == folder / "signals" / "signals.log"
    assert sorted(os.listdir(folder / "signals")) == ["signals.log"]
    assert not (folder / "signals.log").exists()


@pytest.mark.parametrize("kind", ["a folder", "a symbolic link"])
def test_something_else_where_the_log_belongs_is_named_on_opening(
    tmp_path: Path, kind: str
) -> None:
    session = ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider())
    session.send("hello").result(DEADLINE)
    path = session.signal_log_path
    session.close()
    assert path is not None
    path.unlink()
    if kind == "a folder":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "elsewhere.log")
    with pytest.raises(CorruptDataError, match=kind) as caught:
        ContextSession.open(session.id, data_dir=tmp_path, provider=ScriptedProvider())
    assert caught.value.path == path


def test_a_log_kept_in_the_context_folder_moves_to_its_folder_with_its_numbers(
    tmp_path: Path,
) -> None:
    # As an older version of the package kept it: numbers go on after its last one.
    session = ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider())
    session.send("first").result(DEADLINE)
    last = session.last_seq
    path = session.signal_log_path
    session.close()
    assert path is not None
    assert last > 0
    folder = path.parent.parent
    os.rename(path, folder / "signals.log")
    path.parent.rmdir()

    again = ContextSession.open(session.id, data_dir=tmp_path, provider=ScriptedProvider())
    assert again.last_seq == last
    again.send("second").result(DEADLINE)
    again.close()
    assert not (folder / "signals.log").exists()
    numbers = _numbers(path)
    assert numbers == list(range(1, len(numbers) + 1))
    assert numbers[-1] > last


def test_a_log_that_cannot_move_stays_where_it_was(tmp_path: Path) -> None:
    # A context folder that cannot be written to (here: a "signals" file in the way):
    # the old log is left as it is, never lost.
    folder = tmp_path / "context"
    folder.mkdir()
    (folder / "signals.log").write_bytes(b"records")
    (folder / "signals").write_bytes(b"in the way")
    assert signal_log_in(folder) == folder / "signals" / "signals.log"
    assert (folder / "signals.log").read_bytes() == b"records"


def test_a_reader_replays_from_a_number_and_then_follows(tmp_path: Path) -> None:
    log = SignalLog(tmp_path / "signals.log")
    for n in range(5):
        log.record(_stamp(_delta(n)))
    reader = LogReader(log.path, since=2)
    assert [e.seq for _, e in reader.poll()] == [3, 4, 5]
    assert reader.poll() == []
    log.record(_stamp(StateChanged(old=State.IDLE, new=State.STREAMING, branch="main")))
    [(writer, event)] = reader.poll()
    assert writer == log.writer
    assert event.seq == 6
    assert isinstance(event, StateChanged)
    assert LogReader(log.path).last_seq == 6  # None: start at the end


def test_compaction_bounds_the_file_and_old_numbers_get_resync(tmp_path: Path) -> None:
    log = SignalLog(tmp_path / "signals.log", max_bytes=2048)
    behind = LogReader(log.path, since=0)
    assert behind.poll() == []
    for n in range(200):
        log.record(_stamp(_delta(n)))
    log.sync()  # a compaction that is due is made by the next sync (here, this thread)
    assert log.path.stat().st_size <= 2048
    numbers = _numbers(log.path)
    assert numbers[-1] == 200
    assert numbers == list(range(numbers[0], 201))

    fresh = LogReader(log.path, since=0).poll()
    assert isinstance(fresh[0][1], Resync)
    assert fresh[0][1].seq == numbers[0] - 1
    assert [e.seq for _, e in fresh[1:]] == numbers

    # A reader that was following while the file was replaced under it also resyncs.
    events = [e for _, e in behind.poll()]
    assert isinstance(events[0], Resync)
    assert events[-1].seq == 200
    again = SignalLog(log.path)
    assert again.last_seq == 200
    assert again.record(_stamp(_delta(0))).seq == 201


def test_own_tail_says_nothing_of_a_file_the_log_let_go(tmp_path: Path) -> None:
    # A compacted (unlinked) file's inode number may be given to the next file made,
    # another process's log included: a follower trusting an old own_tail would then
    # leave that process's record unread until its safety read.
    log = SignalLog(tmp_path / "signals.log", max_bytes=2048)
    assert log.own_tail() is None
    log.record(_stamp(_delta(0)))
    assert log.own_tail() is not None
    for n in range(200):
        log.record(_stamp(_delta(n)))
    log.sync()  # the compaction that is due, made here
    assert log.own_tail() is None
    log.record(_stamp(_delta(0)))
    named = os.stat(log.path)
    own = log.own_tail()
    assert own is not None
    assert (own[0], own[1], own[3]) == (named.st_dev, named.st_ino, named.st_size)
    log.close()
    assert log.own_tail() is None


def test_compaction_carries_forward_what_still_runs_and_waits(tmp_path: Path) -> None:
    # A process that opens later learns from the log which turns run elsewhere and
    # which calls wait for a decision: compacted away, they were unseen (and unstoppable).
    log = SignalLog(tmp_path / "signals.log", max_bytes=2048)
    busy = StateChanged(branch="main", old=State.IDLE, new=State.STREAMING, turn_id="t1")
    waits = StateChanged(
        branch="tools", old=State.STREAMING, new=State.AWAITING_TOOL_APPROVAL, turn_id="t2"
    )
    asked = ToolApprovalRequested(branch="tools", message_id="m9", tool_call_ids=("call_1",))
    done = StateChanged(branch="other", old=State.STREAMING, new=State.IDLE, turn_id="t3")
    for event in (busy, waits, asked, done):
        log.record(_stamp(event))
    for n in range(200):
        log.record(_stamp(_delta(n)))
    log.sync()
    numbers = _numbers(log.path)
    assert numbers[:3] == [1, 2, 3]  # the two busy states and the request; not "other"
    assert numbers[3:] == list(range(numbers[3], 205))

    fresh = [e for _, e in LogReader(log.path, since=0).poll()]
    assert [e.seq for e in fresh[:3]] == [1, 2, 3]
    assert [busy.new, waits.new] == [e.new for e in fresh[:2] if isinstance(e, StateChanged)]
    assert isinstance(fresh[2], ToolApprovalRequested)
    # The numbers between what was carried and the newest records are gone: said so.
    assert isinstance(fresh[3], Resync)
    assert fresh[3].seq == numbers[3] - 1
    assert [e.seq for e in fresh[4:]] == numbers[3:]
    # A reader that had seen up to #10 is told of the gap once, then reads on.
    later = [e for _, e in LogReader(log.path, since=10).poll()]
    assert isinstance(later[0], Resync)
    assert [e.seq for e in later[1:]] == numbers[3:]


def test_writers_go_on_while_the_sync_thread_compacts(tmp_path: Path) -> None:
    # The compaction writes and fsyncs a new file on the log's sync thread, without the
    # locks: held up in that fsync, it must not hold up a writer (maybe an event loop).
    in_fsync, release = threading.Event(), threading.Event()
    writers = {threading.get_ident()}  # this thread, and the one started below
    compacted_on: set[int] = set()

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp"):
            compacted_on.add(threading.get_ident())
            if threading.get_ident() not in writers and not release.is_set():
                in_fsync.set()
                release.wait(DEADLINE)
        os.fsync(fd)

    log = SignalLog(tmp_path / "signals.log", max_bytes=2048, fsync=fsync)
    for n in range(40):
        log.record(_stamp(_delta(n)))
    assert in_fsync.wait(DEADLINE)  # the sync thread is in the new file's fsync
    writer = threading.Thread(target=lambda: [log.record(_stamp(_delta(n))) for n in range(5)])
    writer.start()
    writers.add(writer.ident or 0)
    writer.join(DEADLINE)
    finished = not writer.is_alive()
    release.set()
    assert finished, "a writer waited for the compaction's fsync"
    log.close()
    assert not compacted_on & writers, "a writer compacted the log on its own thread"
    numbers = _numbers(log.path)
    assert numbers[-1] == 45
    assert numbers == list(range(numbers[0], 46))  # the records written meanwhile kept
    assert numbers[0] > 1  # compacted
    assert [p.name for p in tmp_path.iterdir()] == ["signals.log"]  # no temp file left


def test_a_writer_whose_file_another_compacted_writes_to_the_new_file(tmp_path: Path) -> None:
    # Two writers (as two processes have): the second's records compact the log, so the
    # file the first holds open is no longer the log; its next record must go to the
    # file the path names now, numbered after the second's.
    path = tmp_path / "signals.log"
    first = SignalLog(path, max_bytes=2048)
    second = SignalLog(path, max_bytes=2048)
    assert first.record(_stamp(_delta(0))).seq == 1
    old_inode = path.stat().st_ino
    for n in range(100):
        second.record(_stamp(_delta(n)))
    second.sync()
    assert path.stat().st_ino != old_inode  # compacted: a new file
    assert first.record(_stamp(_delta(1))).seq == 102
    numbers = _numbers(path)
    assert numbers[-1] == 102
    assert numbers == list(range(numbers[0], 103))
    first.close()
    second.close()


def test_a_compacted_log_still_linked_elsewhere_is_not_written_to(tmp_path: Path) -> None:
    # A hard-link backup (cp -al, rsync --link-dest) keeps the replaced file linked:
    # a writer holding it must still move to the file the path names.
    path = tmp_path / "signals.log"
    first = SignalLog(path, max_bytes=2048)
    second = SignalLog(path, max_bytes=2048)
    assert first.record(_stamp(_delta(0))).seq == 1
    os.link(path, tmp_path / "backup-signals.log")
    old_inode = path.stat().st_ino
    for n in range(100):
        second.record(_stamp(_delta(n)))
    second.sync()
    assert path.stat().st_ino != old_inode
    assert first.record(_stamp(_delta(1))).seq == 102  # not a number the log already has
    numbers = _numbers(path)
    assert numbers == list(range(numbers[0], 103))
    first.close()
    second.close()


def test_a_writer_of_a_folder_renamed_away_writes_to_the_new_one(tmp_path: Path) -> None:
    # delete_context renames the folder away before deleting it; if the id is made again
    # meanwhile, a writer holding the old log must write to the new folder's.
    folder = tmp_path / "c1"
    folder.mkdir()
    log = SignalLog(folder / "signals.log")
    log.record(_stamp(_delta(0)))
    folder.rename(tmp_path / "trash")
    folder.mkdir()
    log.record(_stamp(_delta(1)))
    assert len(_numbers(folder / "signals.log")) == 1
    log.close()


def test_own_tail_says_which_end_of_the_file_is_this_writer_s_alone(tmp_path: Path) -> None:
    # What a follower checks to leave this process's own records unread: the run of
    # records a writer appended with nobody else's in between, up to its last write.
    path = tmp_path / "signals.log"
    mine, theirs = SignalLog(path), SignalLog(path)
    assert mine.own_tail() is None
    mine.record(_stamp(_delta(0)))
    mine.record(_stamp(_delta(1)))
    status = path.stat()
    assert mine.own_tail() == (status.st_dev, status.st_ino, 0, status.st_size)
    theirs.record(_stamp(_delta(2)))
    after_theirs = path.stat().st_size
    # Unchanged: a follower sees the file longer than this end, and reads.
    assert mine.own_tail() == (status.st_dev, status.st_ino, 0, status.st_size)
    mine.record(_stamp(_delta(3)))
    assert mine.own_tail() == (status.st_dev, status.st_ino, after_theirs, path.stat().st_size)
    reader = LogReader(path, since=0)
    assert reader.position is None  # opened by its first poll
    assert [event.seq for _, event in reader.poll()] == [1, 2, 3, 4]
    assert reader.position == (status.st_dev, status.st_ino, path.stat().st_size)
    reader.close()
    assert reader.position is None
    mine.close()
    theirs.close()


def test_two_processes_appending_share_one_sequence(tmp_path: Path) -> None:
    path = tmp_path / "signals.log"
    child = textwrap.dedent(
        f"""
        from cm_notebook.events import ContentDelta
        from cm_notebook.signal_log import SignalLog
        log = SignalLog({str(path)!r}, max_bytes=8192)
        for n in range(300):
            log.record(lambda seq: ContentDelta(
                message_id="child", text="c", offset=n, branch="b", seq=seq))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child])
    log = SignalLog(path, max_bytes=8192)
    for n in range(300):
        log.record(_stamp(_delta(n)))
    assert proc.wait(DEADLINE) == 0
    numbers = _numbers(path)
    assert numbers[-1] == 600
    assert numbers == list(range(numbers[0], 601))  # compacted, but never a repeat


def test_a_torn_last_line_is_skipped_and_numbering_goes_on(tmp_path: Path) -> None:
    log = SignalLog(tmp_path / "signals.log")
    for n in range(3):
        log.record(_stamp(_delta(n)))
    log.close()
    with log.path.open("ab") as out:
        out.write(b'{"w":"dead","e":{"type":"ContentDelta","seq":4,')  # a writer died here
    reader = LogReader(log.path, since=0)
    assert [e.seq for _, e in reader.poll()] == [1, 2, 3]
    again = SignalLog(log.path)
    assert again.record(_stamp(_delta(9))).seq == 4  # the torn record was never delivered
    assert [e.seq for _, e in reader.poll()] == [4]
    assert [e.seq for _, e in LogReader(log.path, since=0).poll()] == [1, 2, 3, 4]


def test_asking_for_numbers_ahead_of_the_log_gives_resync(tmp_path: Path) -> None:
    log = SignalLog(tmp_path / "signals.log")
    log.record(_stamp(_delta(0)))
    [(_, resync)] = LogReader(log.path, since=50).poll()
    assert isinstance(resync, Resync)
    assert resync.seq == 1
    assert resync.context_id == "c1"  # like every other signal of the log
    assert LogReader(tmp_path / "missing.log", since=0).poll() == []


def test_a_log_that_cannot_be_written_is_said_once_then_again_when_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cm_notebook.events import EventBus

    path = tmp_path / "signals.log"
    path.mkdir()  # the log cannot be opened: e.g. its context's folder was removed
    log = SignalLog(path)
    bus = EventBus("c1", recorder=log)
    caplog.clear()  # what the bus said when it opened is not the question
    with caplog.at_level("INFO", logger="cm_notebook.events"):
        for n in range(5):
            bus.publish(StateChanged(branch="main", old=State.IDLE, new=State.STREAMING))
            assert bus.events(0)[-1].seq == n + 1  # still delivered, numbered here
        path.rmdir()
        bus.publish(StateChanged(branch="main", old=State.STREAMING, new=State.IDLE))
    bus.close()
    said = [(r.levelname, r.getMessage().split(" (")[0]) for r in caplog.records]
    assert said == [
        ("WARNING", f"could not record signals in {log}"),
        ("INFO", f"recording signals in {log} again"),
    ]
    assert len(path.read_text().splitlines()) == 1  # the one signal since it could


def test_a_writer_whose_path_cannot_be_checked_does_not_keep_the_lock(tmp_path: Path) -> None:
    # The folder of the log replaced by a file: the check that the path names the file
    # locked fails, and the writer raises without holding other writers back.
    folder = tmp_path / "signals"
    log = SignalLog(folder / "signals.log")
    log.record(_stamp(_delta(0)))
    held = os.open(folder / "signals.log", os.O_RDONLY)
    folder.rename(tmp_path / "moved")
    folder.write_text("not a folder")
    with pytest.raises(NotADirectoryError):
        log.record(_stamp(_delta(1)))
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if the writer still held it
    os.close(held)
    log.close()
