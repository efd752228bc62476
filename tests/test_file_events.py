"""A log follower is woken by file-change notification, and polls where there is none.

Another process appends to a context's signal log; the follower relays what it wrote.
With notification on, the follower's safety read is set to an hour, so only a
notification can deliver within the test's deadline. ``CM_NOTEBOOK_FILE_EVENTS=0`` (the
documented switch, for file systems without notifications) makes it poll instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cm_notebook._file_events import watch_folders
from cm_notebook._follower import LogFollower
from cm_notebook.events import ContentDelta, Event, MessageCompleted
from cm_notebook.session import ContextSession
from cm_notebook.signal_log import LOG_NAME, LogReader, SignalLog
from cm_notebook.testing import ScriptedProvider

DEADLINE = 30.0
HOUR = 3600.0


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.01)  # a poll interval, not a wait for an outcome


def _write_in_another_process(log_path: Path, texts: list[str]) -> None:
    code = textwrap.dedent(
        f"""
        from cm_notebook.events import ContentDelta
        from cm_notebook.signal_log import SignalLog
        log = SignalLog({str(log_path)!r})
        offset = 0
        for text in {texts!r}:
            event = ContentDelta(message_id="m1", text=text, offset=offset, branch="main")
            log.record(lambda seq, e=event: e.model_copy(update={{"seq": seq}}))
            offset += len(text)
        log.close()
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=DEADLINE)


def _follow(log_path: Path, seen: list[Event]) -> LogFollower:
    own = SignalLog(log_path)  # this process's writer token, as a session has one
    return LogFollower(
        LogReader(log_path),
        own.writer,
        relay=seen.append,
        claim_held=lambda _: True,
        on_dead=lambda *_: None,
        safety=HOUR,
        busy_safety=HOUR,
    )


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    context = tmp_path / "c1"
    context.mkdir()
    return context / LOG_NAME


@pytest.fixture
def follower_of(log_path: Path) -> Iterator[Callable[[list[Event]], LogFollower]]:
    made: list[LogFollower] = []

    def make(seen: list[Event]) -> LogFollower:
        made.append(_follow(log_path, seen))
        return made[-1]

    yield make
    for follower in made:
        follower.close()


def _texts(seen: list[Event]) -> str:
    return "".join(e.text for e in list(seen) if isinstance(e, ContentDelta))


def test_a_notification_wakes_the_follower_for_another_process_s_write(
    log_path: Path, follower_of: Callable[[list[Event]], LogFollower]
) -> None:
    seen: list[Event] = []
    follower = follower_of(seen)
    _wait_for(lambda: follower.notified, "the follower to subscribe to notifications")
    _write_in_another_process(log_path, ["Once ", "upon ", "a time"])
    # The safety read is an hour away: only a notification brings these in time.
    _wait_for(lambda: _texts(seen) == "Once upon a time", "the other process's signals")
    _write_in_another_process(log_path, [" there was"])
    _wait_for(lambda: _texts(seen) == "Once upon a time there was", "the second write")
    assert [e.seq for e in seen] == [1, 2, 3, 4]


def test_with_notification_turned_off_the_follower_polls(
    log_path: Path,
    follower_of: Callable[[list[Event]], LogFollower],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CM_NOTEBOOK_FILE_EVENTS", "0")
    seen: list[Event] = []
    follower = follower_of(seen)
    _write_in_another_process(log_path, ["Polled ", "all the same"])
    _wait_for(lambda: _texts(seen) == "Polled all the same", "the other process's signals")
    assert not follower.notified


def test_this_process_s_own_records_do_not_wake_its_follower(log_path: Path) -> None:
    # A turn run here writes a record every few milliseconds; the follower would read
    # each only to skip it. A change that added this process's records alone leaves
    # it asleep; another writer's record, even followed at once by ours (one change
    # as the watcher sees it), still wakes it.
    own, other = SignalLog(log_path), SignalLog(log_path)  # other: as another process's
    seen: list[Event] = []
    reads: list[None] = []
    follower = LogFollower(
        LogReader(log_path),
        own.writer,
        relay=seen.append,
        claim_held=lambda _: True,
        on_dead=lambda *_: None,
        each_poll=lambda: reads.append(None),
        own_tail=own.own_tail,
        safety=HOUR,
        busy_safety=HOUR,
    )
    offset = 0

    def write(log: SignalLog, text: str) -> None:
        nonlocal offset
        event = ContentDelta(message_id="m1", text=text, offset=offset, branch="main")
        log.record(lambda seq: event.model_copy(update={"seq": seq}))
        offset += len(text)

    try:
        _wait_for(lambda: follower.notified, "the follower to subscribe to notifications")
        write(other, "theirs ")
        _wait_for(lambda: _texts(seen) == "theirs ", "the other writer's first record")
        _wait_for(lambda: follower.caught_up(DEADLINE), "the follower's read")
        read_before = len(reads)
        for text in ["our ", "own ", "words "]:
            write(own, text)
        time.sleep(0.3)  # many of the watcher's 10 ms looks, each seeing our writes
        assert len(reads) == read_before
        write(other, "and ")
        write(own, "ours ")  # the file now ends with ours, after theirs unread
        _wait_for(lambda: _texts(seen) == "theirs and ", "a record of theirs before ours")
        write(own, "again ")
        write(other, "theirs again")  # ours, then theirs: the file is longer than ours
        _wait_for(lambda: _texts(seen) == "theirs and theirs again", "the last record")
    finally:
        follower.close()
        own.close()
        other.close()


def test_a_log_replaced_by_compaction_is_still_followed(
    log_path: Path, follower_of: Callable[[list[Event]], LogFollower]
) -> None:
    # Compaction renames a new file over the log: the folder's watch sees that too.
    seen: list[Event] = []
    follower = follower_of(seen)
    _wait_for(lambda: follower.notified, "the follower to subscribe to notifications")
    _write_in_another_process(log_path, ["a"])
    _wait_for(lambda: _texts(seen) == "a", "the first write")
    replaced = log_path.with_name("replacement")
    replaced.write_bytes(log_path.read_bytes())
    replaced.replace(log_path)
    _write_in_another_process(log_path, ["b"])
    _wait_for(lambda: _texts(seen) == "ab", "a write after the log was replaced")


def test_followers_of_two_contexts_share_the_watcher_and_each_sees_its_own(
    tmp_path: Path,
) -> None:
    paths = []
    for name in ("c1", "c2"):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / LOG_NAME)
    seen: tuple[list[Event], list[Event]] = ([], [])
    followers = [_follow(path, into) for path, into in zip(paths, seen, strict=True)]
    try:
        _wait_for(lambda: all(f.notified for f in followers), "both followers to subscribe")
        _write_in_another_process(paths[1], ["second"])
        _write_in_another_process(paths[0], ["first"])
        _wait_for(lambda: _texts(seen[0]) == "first", "the first context's signal")
        _wait_for(lambda: _texts(seen[1]) == "second", "the second context's signal")
        followers[0].close()
        _write_in_another_process(paths[1], [" again"])
        _wait_for(lambda: _texts(seen[1]) == "second again", "a signal after the other closed")
    finally:
        for follower in followers:
            follower.close()


def test_a_session_polling_sees_another_process_s_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CM_NOTEBOOK_FILE_EVENTS", "0")
    with ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider()) as session:
        seen: list[Event] = []
        session.subscribe(seen.append)
        code = textwrap.dedent(
            f"""
            from cm_notebook.session import ContextSession
            from cm_notebook.testing import ScriptedProvider
            provider = ScriptedProvider().reply("Polled story.", chunks="words")
            with ContextSession.open({session.id!r}, data_dir={str(tmp_path)!r},
                                     provider=provider) as other:
                other.send("Tell me").result(60)
            """
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=DEADLINE)
        _wait_for(
            lambda: any(isinstance(e, MessageCompleted) for e in list(seen)),
            "the other process's reply",
        )
        assert _texts(seen) == "Polled story."


def test_a_subscriber_is_woken_only_by_the_paths_it_wants(tmp_path: Path) -> None:
    # A context folder sees the store's files change many times a turn; a follower
    # wants its log alone. Both subscribers get the same dispatch of each change.
    folder = tmp_path / "c1"
    folder.mkdir()
    wanted = os.path.realpath(folder / LOG_NAME)
    every, picky = threading.Event(), threading.Event()
    everything = watch_folders([folder], every.set)
    only_the_log = watch_folders([folder], picky.set, lambda path: path == wanted)
    if everything is None or only_the_log is None:
        pytest.skip("file-change notification is not available here")
    try:
        (folder / "message_index.journal").write_text("a store write")
        assert every.wait(DEADLINE)
        assert not picky.is_set()
        (folder / LOG_NAME).write_text("a signal")
        assert picky.wait(DEADLINE)
    finally:
        everything.cancel()
        only_the_log.cancel()


def test_a_slow_wants_does_not_hold_up_other_subscribers(tmp_path: Path) -> None:
    # A subscriber's ``wants`` may look at a file (the log follower stats the log);
    # while it waits on a slow file system, other sessions still subscribe and cancel.
    slow_folder, other_folder = tmp_path / "slow", tmp_path / "other"
    slow_folder.mkdir()
    other_folder.mkdir()
    asked, answer = threading.Event(), threading.Event()

    def slow_wants(path: str) -> bool:
        asked.set()
        answer.wait(DEADLINE)
        return False

    slow = watch_folders([slow_folder], lambda: None, slow_wants)
    if slow is None:
        pytest.skip("file-change notification is not available here")
    try:
        (slow_folder / "a file").write_text("a change")
        assert asked.wait(DEADLINE)
        subscribed = threading.Event()

        def subscribe_and_cancel() -> None:
            other = watch_folders([other_folder], lambda: None)
            if other is not None:
                other.cancel()
            subscribed.set()

        threading.Thread(target=subscribe_and_cancel, daemon=True).start()
        assert subscribed.wait(10), "subscribing waited for another subscriber's wants"
    finally:
        answer.set()
        slow.cancel()


def _inotify_watches() -> int:
    # The watches this process holds, as the kernel counts them (Linux).
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as info:
                count += sum(1 for line in info if line.startswith("inotify wd"))
        except OSError:
            continue  # closed meanwhile
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fdinfo"), reason="counts Linux's watches")
def test_folders_nobody_follows_any_more_are_not_watched_for_the_process_s_life(
    tmp_path: Path,
) -> None:
    # A kernel keeps one context open all day while others are opened and closed: the
    # closed ones' folders must not stay watched (each watch counts against a per-user
    # limit, and makes every rebuild of the watch dearer).
    before = _inotify_watches()  # other tests' sessions may still be open (and watched)
    kept = tmp_path / "kept"
    kept.mkdir()
    staying = watch_folders([kept], lambda: None)
    if staying is None:
        pytest.skip("file-change notification is unavailable here")
    try:
        for i in range(30):
            folder = tmp_path / f"closed-{i}"
            folder.mkdir()
            passing = watch_folders([folder], lambda: None)
            assert passing is not None
            passing.cancel()
        # The watcher's thread closes the watch it replaced when it next looks.
        _wait_for(lambda: _inotify_watches() <= before + 3, "the closed folders' watches to go")
    finally:
        staying.cancel()
