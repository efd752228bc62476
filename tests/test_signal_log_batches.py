"""The signal log off the hot path: group commit of fsyncs, text deltas written in
batches, and what a follower skips. fsyncs are counted through ``SignalLog(fsync=...)``,
the same seam as ``FileStore(fsync=...)``."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cm_notebook._delta_runs import RUN_LIMIT
from cm_notebook._signal_records import encode_record, encode_records
from cm_notebook.errors import InvalidInputError
from cm_notebook.events import (
    DELTA_BATCH,
    ContentDelta,
    Event,
    EventBus,
    MessageCompleted,
    StateChanged,
    parse_event,
)
from cm_notebook.fsm import State
from cm_notebook.model import MessageStatus
from cm_notebook.signal_log import LogReader, SignalLog
from cm_notebook.signals import trusted_delta

DEADLINE = 30.0


class Fsyncs:
    """Counts fsyncs of files (``calls``) and of folders (``folders``, the new log's
    name); with ``hold`` the first file fsync waits until :meth:`release`."""

    def __init__(self, *, hold: bool = False) -> None:
        self.calls = 0
        self.folders: list[str] = []
        self.entered = threading.Event()
        self._go = threading.Event()
        if not hold:
            self._go.set()

    def __call__(self, fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            self.folders.append(os.readlink(f"/proc/self/fd/{fd}"))
            os.fsync(fd)
            return
        self.calls += 1
        self.entered.set()
        assert self._go.wait(DEADLINE), "the test never released the fsync"
        os.fsync(fd)

    def release(self) -> None:
        self._go.set()


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.005)  # a poll interval, not a wait for an outcome


def _state(seq: int) -> Event:
    return StateChanged(seq=seq, context_id="c1", old=State.IDLE, new=State.STREAMING)


def _delta(n: int) -> Callable[[int], Event]:
    def stamp(seq: int) -> Event:
        return ContentDelta(seq=seq, context_id="c1", message_id="m1", text="ab", offset=2 * n)

    return stamp


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line)["e"] for line in path.read_bytes().splitlines() if line]


# --- group commit ------------------------------------------------------------------------


def test_a_burst_of_durable_signals_costs_two_fsyncs_not_fifty(tmp_path: Path) -> None:
    fsyncs = Fsyncs(hold=True)
    log = SignalLog(tmp_path / "signals.log", fsync=fsyncs)
    for _ in range(50):
        log.record(_state)  # each one is in the file when record returns
    assert len(_lines(log.path)) == 50
    # The sync thread began one fsync (it waits for the test); the other records wait
    # for the next, which covers all of them.
    assert fsyncs.entered.wait(DEADLINE)
    fsyncs.release()
    log.close()
    assert 1 <= fsyncs.calls <= 2
    assert log.unsynced == 0
    assert [e["seq"] for e in _lines(log.path)] == list(range(1, 51))


def test_a_durable_signal_is_fsynced_by_the_thread_without_close(tmp_path: Path) -> None:
    fsyncs = Fsyncs()
    log = SignalLog(tmp_path / "signals.log", fsync=fsyncs)
    log.record(_state)
    _wait_for(lambda: log.unsynced == 0, "the sync thread's fsync")
    assert fsyncs.calls == 1
    log.close()
    assert fsyncs.calls == 1  # nothing left for close to sync


def test_a_log_this_process_makes_has_its_name_fsynced_once(tmp_path: Path) -> None:
    fsyncs = Fsyncs()
    log = SignalLog(tmp_path / "signals" / "signals.log", fsync=fsyncs, sync_delay=3600)
    log.record(_state)
    log.close()
    # The new folder's name in its parent, and the new log's name in the new folder.
    assert sorted(fsyncs.folders) == [str(tmp_path), str(tmp_path / "signals")]
    log.record(_state)
    log.close()
    again = SignalLog(log.path, fsync=fsyncs)
    again.record(_state)
    again.close()
    assert len(fsyncs.folders) == 2  # both names were durable already
    assert fsyncs.calls == 3


def test_close_syncs_what_the_thread_has_not_yet(tmp_path: Path) -> None:
    fsyncs = Fsyncs()
    log = SignalLog(tmp_path / "signals.log", fsync=fsyncs, sync_delay=3600)
    log.record(_state)
    log.record(_state)
    assert log.unsynced == 2
    log.close()  # cuts the thread's hour-long wait short and syncs on this thread
    assert (fsyncs.calls, log.unsynced) == (1, 0)
    log.record(_state)  # a closed log opens again, and syncs again
    log.close()
    assert fsyncs.calls == 2


def test_text_deltas_never_ask_for_an_fsync(tmp_path: Path) -> None:
    fsyncs = Fsyncs()
    log = SignalLog(tmp_path / "signals.log", fsync=fsyncs)
    log.record_all([_delta(n) for n in range(10)])
    log.close()
    assert fsyncs.calls == 0
    assert len(_lines(log.path)) == 10


def test_a_bad_sync_delay_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="sync_delay"):
        SignalLog(tmp_path / "signals.log", sync_delay=-1)


# --- batches -------------------------------------------------------------------------------


def test_batches_of_two_writers_keep_one_sequence(tmp_path: Path) -> None:
    first = SignalLog(tmp_path / "signals.log")
    second = SignalLog(tmp_path / "signals.log")
    a = first.record_all([_delta(n) for n in range(3)])
    b = second.record(_state)
    c = first.record_all([_delta(n) for n in range(3, 5)])
    assert [e.seq for e in [*a, b, *c]] == [1, 2, 3, 4, 5, 6]
    assert [e["seq"] for e in _lines(first.path)] == [1, 2, 3, 4, 5, 6]
    first.close()
    second.close()


@pytest.mark.anyio
async def test_deltas_are_written_and_delivered_as_one_batch_in_order(tmp_path: Path) -> None:
    log = SignalLog(tmp_path / "signals.log")
    bus = EventBus("c1", recorder=log)
    seen: list[Event] = []
    bus.subscribe(seen.append)
    bus.publish_delta("main", "m1", "Hel", 0)
    returned = bus.publish(ContentDelta(branch="main", message_id="m1", text="lo", offset=3))
    assert returned.seq == 0  # numbered with its batch
    assert seen == []  # held until the loop turns (or another kind of signal comes)
    assert not log.path.exists() or _lines(log.path) == []
    changed = bus.publish(StateChanged(branch="main", old=State.STREAMING, new=State.IDLE))
    # The two deltas continue each other: one signal says it all.
    assert [(e.type, e.seq) for e in seen] == [("ContentDelta", 1), ("StateChanged", 2)]
    assert changed.seq == 2
    assert [(e["type"], e["seq"]) for e in _lines(log.path)] == [(e.type, e.seq) for e in seen]
    delta = seen[0]
    assert isinstance(delta, ContentDelta)
    assert (delta.text, delta.offset, delta.context_id, delta.branch) == ("Hello", 0, "c1", "main")

    bus.publish_delta("main", "m1", "!", 5)
    await asyncio.sleep(0)  # the loop turns: the held delta is written
    assert [e.seq for e in seen] == [1, 2, 3]
    assert len(_lines(log.path)) == 3
    assert [e.seq for e in bus.events(0)] == [1, 2, 3]
    bus.close()


class _CountingRecorder:
    """The bus's recorder protocol over a real signal log, counting its writes."""

    def __init__(self, log: SignalLog) -> None:
        self.log = log
        self.writes: list[int] = []  # signals per write

    @property
    def last_seq(self) -> int:
        return self.log.last_seq

    def record(self, stamp: Callable[[int], Event]) -> Event:
        self.writes.append(1)
        return self.log.record(stamp)

    def record_all(
        self, stamps: Sequence[Callable[[int], Event]], *, after: int = 0
    ) -> list[Event]:
        self.writes.append(len(stamps))
        return self.log.record_all(stamps, after=after)

    def close(self) -> None:
        self.log.close()


@pytest.mark.anyio
async def test_held_deltas_are_written_with_the_signal_that_follows_them(tmp_path: Path) -> None:
    # A reply's last deltas and its completion: one lock and one write, in order.
    recorder = _CountingRecorder(SignalLog(tmp_path / "signals.log"))
    bus = EventBus("c1", recorder=recorder)
    bus.publish_delta("main", "m1", "Hel", 0)
    bus.publish_delta("main", "m1", "lo", 3)
    done = bus.publish(
        MessageCompleted(branch="main", message_id="m1", status=MessageStatus.COMPLETE)
    )
    assert recorder.writes == [2]  # the two deltas as one, and the completion
    assert done.seq == 2
    assert [(e["type"], e["seq"]) for e in _lines(recorder.log.path)] == [
        ("ContentDelta", 1),
        ("MessageCompleted", 2),
    ]
    bus.publish(StateChanged(branch="main", old=State.STREAMING, new=State.IDLE))
    assert recorder.writes == [2, 1]
    await asyncio.sleep(0)  # the batch the first delta scheduled finds nothing left
    assert recorder.writes == [2, 1]
    assert [e.seq for e in bus.events(0)] == [1, 2, 3]
    bus.close()


@pytest.mark.anyio
async def test_only_deltas_that_continue_each_other_are_merged(tmp_path: Path) -> None:
    ticks = iter(range(100))
    recorder = _CountingRecorder(SignalLog(tmp_path / "signals.log"))
    bus = EventBus(
        "c1",
        recorder=recorder,
        clock=lambda: datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=next(ticks)),
    )
    seen: list[Event] = []
    bus.subscribe(seen.append)
    bus.publish_delta("main", "m1", "Hel", 0)
    bus.publish_delta("main", "m1", "lo", 3)  # continues it
    bus.publish(ContentDelta(branch="main", message_id="m1", text=",", offset=5))  # too
    bus.publish_delta("main", "m1", "?", 9)  # a gap
    bus.publish_delta("main", "m2", "Hi", 0)  # another message
    bus.publish_delta("side", "m2", "!", 2)  # another branch
    bus.publish_delta("main", "m3", "a" * (RUN_LIMIT - 1), 0)
    bus.publish_delta("main", "m3", "b", RUN_LIMIT - 1)  # fills the run
    bus.publish_delta("main", "m3", "c", RUN_LIMIT)  # would pass the limit
    await asyncio.sleep(0)
    assert recorder.writes == [6]
    deltas = [e for e in seen if isinstance(e, ContentDelta)]
    assert [(e.branch, e.message_id, e.text, e.offset) for e in deltas] == [
        ("main", "m1", "Hello,", 0),
        ("main", "m1", "?", 9),
        ("main", "m2", "Hi", 0),
        ("side", "m2", "!", 2),
        ("main", "m3", "a" * (RUN_LIMIT - 1) + "b", 0),
        ("main", "m3", "c", RUN_LIMIT),
    ]
    assert [e.seq for e in deltas] == [1, 2, 3, 4, 5, 6]
    # A merged delta has the time of its first chunk: the clock is read once per run.
    assert [e.at.second for e in deltas] == [0, 1, 2, 3, 4, 5]
    assert _lines(recorder.log.path) == [e.model_dump(mode="json") for e in deltas]
    bus.close()


def _counted_bus(
    tmp_path: Path, delta_interval: float
) -> tuple[_CountingRecorder, EventBus, list[Event]]:
    # A bus over a real log whose writes are counted, and the signals it delivered.
    recorder = _CountingRecorder(SignalLog(tmp_path / "signals.log"))
    bus = EventBus("c1", recorder=recorder, delta_interval=delta_interval)
    seen: list[Event] = []
    bus.subscribe(seen.append)
    return recorder, bus, seen


@pytest.mark.anyio
async def test_deltas_arriving_one_per_loop_turn_are_written_together(tmp_path: Path) -> None:
    # A local model yields one token per loop turn: written as they came, that is a
    # write (and a wake-up of every follower) per token. Batches of deltas alone are
    # at least delta_interval apart; another kind of signal still takes them along.
    recorder, bus, seen = _counted_bus(tmp_path, delta_interval=30.0)
    bus.publish_delta("main", "m1", "Once", 0)
    await asyncio.sleep(0)
    assert recorder.writes == [1]  # the first batch in a while: at the next loop turn
    for offset, token in ((4, " upon"), (9, " a"), (11, " time")):
        bus.publish_delta("main", "m1", token, offset)
        await asyncio.sleep(0)
    assert recorder.writes == [1]  # held: the last batch was less than 30 s ago
    assert [e.seq for e in seen] == [1]
    bus.publish(MessageCompleted(branch="main", message_id="m1", status=MessageStatus.COMPLETE))
    assert recorder.writes == [1, 2]  # the three held tokens as one delta
    assert [(e.type, e.seq) for e in seen] == [
        ("ContentDelta", 1),
        ("ContentDelta", 2),
        ("MessageCompleted", 3),
    ]
    assert "".join(e.text for e in seen if isinstance(e, ContentDelta)) == "Once upon a time"
    bus.close()


@pytest.mark.anyio
async def test_deltas_held_for_the_interval_are_written_when_it_ends(tmp_path: Path) -> None:
    recorder, bus, seen = _counted_bus(tmp_path, delta_interval=0.05)
    bus.publish_delta("main", "m1", "Hel", 0)
    await asyncio.sleep(0)
    bus.publish_delta("main", "m1", "lo", 3)  # within the interval: held
    deadline = time.monotonic() + DEADLINE
    while len(seen) < 2:  # no other signal comes: the interval's end writes it
        assert time.monotonic() < deadline, "a held delta was never written"
        await asyncio.sleep(0.01)
    assert recorder.writes == [1, 1]
    assert [e.seq for e in seen] == [1, 2]
    bus.close()


def test_a_bad_delta_interval_is_refused() -> None:
    for bad in (-0.1, 60.0):
        with pytest.raises(InvalidInputError, match="delta_interval"):
            EventBus("c1", delta_interval=bad)


@pytest.mark.anyio
async def test_a_long_run_of_deltas_is_written_every_batch(tmp_path: Path) -> None:
    log = SignalLog(tmp_path / "signals.log")
    bus = EventBus("c1", recorder=log)
    for n in range(DELTA_BATCH + 1):
        bus.publish_delta("main", "m1", "x", n)
    # Written without the loop turning once: the batch's deltas, as one.
    assert [(e["text"], e["offset"]) for e in _lines(log.path)] == [("x" * DELTA_BATCH, 0)]
    bus.close()  # writes the rest
    assert [(e["seq"], e["text"], e["offset"]) for e in _lines(log.path)] == [
        (1, "x" * DELTA_BATCH, 0),
        (2, "x", DELTA_BATCH),
    ]


@pytest.mark.anyio
async def test_a_publisher_that_never_yields_still_gets_its_deltas_written(
    tmp_path: Path,
) -> None:
    log = SignalLog(tmp_path / "signals.log")
    bus = EventBus("c1", recorder=log)
    published = 0

    def one_more_then_look() -> bool:
        # A model producing text on the loop's thread without ever yielding to it.
        nonlocal published
        bus.publish_delta("main", "m1", "x", published)
        published += 1
        return log.path.exists() and bool(_lines(log.path))

    _wait_for(one_more_then_look, "deltas held longer than DELTA_HOLD to be written")
    assert published < DELTA_BATCH  # written for their age, not their number
    bus.close()
    records = _lines(log.path)
    assert [e["seq"] for e in records] == list(range(1, len(records) + 1))
    assert "".join(e["text"] for e in records) == "x" * published


def test_without_a_running_loop_each_delta_is_written_at_once(tmp_path: Path) -> None:
    bus = EventBus("c1", recorder=SignalLog(tmp_path / "signals.log"))
    stamped = bus.publish(ContentDelta(branch="main", message_id="m1", text="a", offset=0))
    bus.publish_delta("main", "m1", "b", 1)
    assert stamped.seq == 1
    assert [e.seq for e in bus.events(0)] == [1, 2]
    bus.close()


@pytest.mark.anyio
async def test_a_batch_that_cannot_be_written_is_still_delivered(tmp_path: Path) -> None:
    folder = tmp_path / "signals.log"
    folder.mkdir()  # the log cannot be opened
    bus = EventBus("c1", recorder=SignalLog(folder))
    seen: list[Event] = []
    bus.subscribe(seen.append)
    bus.publish_delta("main", "m1", "a", 0)
    bus.publish_delta("main", "m1", "b", 1)
    await asyncio.sleep(0)
    assert [(e.type, e.seq) for e in seen] == [("ContentDelta", 1)]
    assert [e.text for e in seen if isinstance(e, ContentDelta)] == ["ab"]
    bus.close()


@pytest.mark.anyio
async def test_a_closed_bus_ignores_deltas(tmp_path: Path) -> None:
    bus = EventBus("c1", recorder=SignalLog(tmp_path / "signals.log"))
    bus.close()
    bus.publish_delta("main", "m1", "late", 0)
    assert bus.events(0) == []


def test_a_bad_delta_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="offset"):
        EventBus("c1").publish_delta("main", "m1", "x", -1)


# --- the format of a delta record ------------------------------------------------------------

_AT = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "delta",
    [
        ContentDelta(branch="main", message_id="m1", text="plain ", offset=0, at=_AT),
        ContentDelta(branch=None, message_id="m\u00e9", text='a"\n\\\u2028', offset=7),
        ContentDelta(branch="b", message_id="m1", text="\U0001f600 cut \ud83d", offset=1),
        ContentDelta(
            branch="b",
            message_id="m1",
            text="x",
            offset=0,
            at=datetime(2026, 1, 1, 1, 2, 3, 5, tzinfo=timezone(timedelta(hours=2))),
        ),
    ],
)
def test_a_delta_record_reads_back_as_the_delta_it_was(tmp_path: Path, delta: ContentDelta) -> None:
    log = SignalLog(tmp_path / "signals.log")
    [written] = log.record_all([lambda seq: delta.model_copy(update={"seq": seq})])
    log.close()
    [line] = log.path.read_bytes().splitlines()
    record = json.loads(line)["e"]
    # The same JSON object pydantic writes (json.dumps: it also takes unpaired surrogates).
    assert record == json.loads(json.dumps(written.model_dump(mode="json")))
    assert parse_event(record) == written
    [(_, read)] = LogReader(log.path, since=0).poll()
    assert read == written


def _numbered(delta: ContentDelta, seq: int) -> Event:
    return delta.model_copy(update={"seq": seq})


def test_deltas_of_replies_taking_turns_are_each_written_as_themselves(tmp_path: Path) -> None:
    # The parts shared by one reply's deltas are kept between records: they must follow
    # when the context, branch or message changes.
    log = SignalLog(tmp_path / "signals.log")
    deltas = [
        ContentDelta(context_id=c, branch=b, message_id=m, text=f"t{n}", offset=n, at=_AT)
        for n, (c, b, m) in enumerate(
            [("c1", "main", "m1"), ("c1", "main", "m2"), ("c1", None, "m1"), ("c2", "main", "m1")]
            * 2
        )
    ]
    stamps: list[Callable[[int], Event]] = [functools.partial(_numbered, delta) for delta in deltas]
    written = log.record_all(stamps)
    log.close()
    records = [json.loads(line)["e"] for line in log.path.read_bytes().splitlines()]
    assert records == [event.model_dump(mode="json") for event in written]


def test_a_batch_is_written_as_each_of_its_records_would_be() -> None:
    # encode_records writes a batch's deltas in one loop; each line must be the one
    # encode_record writes for that signal alone, whatever comes between them.
    events: list[Event] = [
        ContentDelta(seq=1, context_id="c1", branch="main", message_id="m1", text="a", offset=0),
        ContentDelta(
            seq=2, context_id="c1", branch="main", message_id="m1", text="\ud83d", offset=1
        ),
        StateChanged(
            seq=3, context_id="c1", branch="main", old=State.AWAITING_RESPONSE, new=State.STREAMING
        ),
        ContentDelta(seq=4, context_id="c1", branch="main", message_id="m1", text='"\n', offset=2),
        ContentDelta(seq=5, context_id="c1", branch=None, message_id="m2", text="\u00e9", offset=0),
        ContentDelta(
            seq=6, context_id="c2", branch=None, message_id="m2", text="b", offset=0, at=_AT
        ),
        MessageCompleted(
            seq=7, context_id="c1", branch="main", message_id="m1", status=MessageStatus.COMPLETE
        ),
    ]
    assert encode_records("w1", events) == b"".join(encode_record("w1", e) for e in events)
    assert encode_records("w1", []) == b""


@pytest.mark.parametrize("branch", ["main", None])
def test_a_trusted_delta_is_the_validated_model(branch: str | None) -> None:
    # trusted_delta sets pydantic's attributes itself: this fails if a pydantic release
    # changes what a model instance holds.
    built = trusted_delta("c1", branch, _AT, "m1", "Hel", 2, seq=3)
    validated = ContentDelta(
        seq=3, context_id="c1", branch=branch, at=_AT, message_id="m1", text="Hel", offset=2
    )
    assert type(built) is ContentDelta
    assert built == validated
    assert hash(built) == hash(validated)
    assert built.model_dump() == validated.model_dump()
    assert built.model_dump_json() == validated.model_dump_json()
    assert built.model_fields_set == validated.model_fields_set
    assert built.model_copy(update={"seq": 4}).seq == 4
    assert repr(built) == repr(validated)
    with pytest.raises(ValueError, match="frozen"):
        built.text = "changed"  # type: ignore[misc]


# --- a follower skips its own records ----------------------------------------------------------


def test_a_reader_skips_one_writer_and_keeps_counting(tmp_path: Path) -> None:
    own = SignalLog(tmp_path / "signals.log")
    other = SignalLog(tmp_path / "signals.log")
    reader = LogReader(own.path)
    reader.skip_writer(own.writer)
    own.record_all([_delta(n) for n in range(3)])
    other.record(_state)
    own.record(_state)
    polled = reader.poll()
    assert [(writer, event.seq) for writer, event in polled] == [(other.writer, 4)]
    assert reader.last_seq == 5
    # A record of the skipped writer cut short by a crash is not counted.
    with open(own.path, "ab") as file:
        file.write(f'{{"w":"{own.writer}","e":{{"seq":6,"text":"cut'.encode())
    other.record(_state)
    assert [(writer, event.seq) for writer, event in reader.poll()] == [(other.writer, 6)]
    own.close()
    other.close()


_FULL_DISK = textwrap.dedent(
    """
    import asyncio, json, resource, signal, sys
    from pathlib import Path
    from cm_notebook.events import EventBus
    from cm_notebook.signal_log import LogReader, SignalLog
    from cm_notebook.signals import MessageAdded

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
    path = Path(sys.argv[1])
    bus = EventBus("c1", recorder=SignalLog(path, sync_delay=0))
    seen = []
    bus.subscribe(lambda e: seen.append([e.seq, getattr(e, "message_id", "")]))

    async def main():
        bus.publish(MessageAdded(branch="main", message_id="m0", parent_id=None, role="user"))
        for n in range(4):
            bus.publish_delta("main", "r1", f"chunk {n} " * 10, n)  # held for the batch
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        # Room for about two of the batch's five records: the write fails part-way.
        resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 450, hard))
        bus.publish(MessageAdded(branch="main", message_id="r1", parent_id="m0", role="assistant"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
        bus.publish(MessageAdded(branch="main", message_id="m2", parent_id="r1", role="user"))

    asyncio.run(main())
    logged = [[e.seq, getattr(e, "message_id", "")] for _w, e in LogReader(path, since=0).poll()]
    print(json.dumps({"seen": seen, "logged": logged}))
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_batch_the_disk_takes_only_part_of_leaves_no_record_and_no_reused_number(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path / "signals.log")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    numbers = [seq for seq, _id in result["seen"]]
    assert numbers == sorted(set(numbers))  # this process saw every number once
    assert [(seq, mid) for seq, mid in result["seen"]][-1] == (7, "m2")
    # The log holds what it took whole, under the numbers this process gave them; none
    # of the failed batch (the others learn of it by the gap).
    assert result["logged"] == [[1, "m0"], [7, "m2"]]


def test_a_log_whose_folder_was_removed_closes_without_a_logged_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A context deleted (or its folder removed on disk) before the log's first sync.
    (tmp_path / "context").mkdir()
    log = SignalLog(tmp_path / "context" / "signals" / "signals.log", sync_delay=3600)
    log.record(_state)
    shutil.rmtree(tmp_path / "context")
    with caplog.at_level("DEBUG", logger="cm_notebook"):
        log.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
