"""Signals and the event bus: numbering, history, subscribers, overflow and JSON."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

from cm_notebook.errors import InvalidInputError, StateError
from cm_notebook.events import (
    SIGNAL_KINDS,
    BaseEvent,
    BranchCreated,
    BranchDeleted,
    BranchSwitched,
    BranchUpdated,
    ContentDelta,
    ContextUpdated,
    ErrorReported,
    Event,
    EventBus,
    MessageAdded,
    MessageCompleted,
    Resync,
    StateChanged,
    ToolApprovalRequested,
    ToolCallResolved,
    parse_event,
)
from cm_notebook.fsm import State
from cm_notebook.model import MessageStatus, ToolCallStatus

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class FakeClock:
    """Advances one second per reading, so tests can see which time was stamped."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def delta(i: int, message_id: str = "m1") -> ContentDelta:
    return ContentDelta(message_id=message_id, text=f"t{i}", offset=2 * i, branch="main")


def publish_many(bus: EventBus, count: int) -> None:
    for i in range(count):
        bus.publish(delta(i))


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


# --- numbering and history -------------------------------------------------------------------


def test_publish_stamps_a_copy_with_seq_context_and_time() -> None:
    bus = EventBus("c1", clock=FakeClock())
    draft = delta(0)
    first = bus.publish(draft)
    second = bus.publish(BranchSwitched(branch="alt"))
    assert (first.seq, second.seq, bus.last_seq) == (1, 2, 2)
    assert first.context_id == second.context_id == "c1"
    assert first.at == T0 + timedelta(seconds=1)
    assert second.at == T0 + timedelta(seconds=2)
    assert (first.text, first.branch) == ("t0", "main")
    assert draft.seq == 0  # the caller's event is not changed
    assert isinstance(first, ContentDelta)  # and the type is kept for the caller


def test_seq_is_strictly_increasing_by_one() -> None:
    bus = EventBus("c1")
    publish_many(bus, 50)
    assert seqs(bus.events(0)) == list(range(1, 51))


def test_events_since_returns_the_tail() -> None:
    bus = EventBus("c1")
    assert bus.events(0) == []
    publish_many(bus, 10)
    assert seqs(bus.events(7)) == [8, 9, 10]
    assert bus.events(10) == []


def test_events_since_the_future_asks_for_a_resync() -> None:
    bus = EventBus("c1")
    publish_many(bus, 3)
    (event,) = bus.events(99)
    assert isinstance(event, Resync)
    assert event.seq == 3
    assert "restart" in event.reason


def test_events_since_negative_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="since"):
        EventBus("c1").events(-1)


def test_history_ring_overflow_gives_a_resync() -> None:
    bus = EventBus("c1", history=5)
    publish_many(bus, 12)
    assert seqs(bus.events(7)) == [8, 9, 10, 11, 12]  # exactly what the ring holds
    for since in (0, 6):
        (event,) = bus.events(since)
        assert isinstance(event, Resync)
        assert event.seq == 12
        assert "no longer kept" in event.reason
    assert len(bus.events(7)) == 5  # a Resync is not stored in the history


def test_zero_history_keeps_nothing() -> None:
    bus = EventBus("c1", history=0)
    publish_many(bus, 2)
    assert bus.events(2) == []
    assert isinstance(bus.events(1)[0], Resync)


@pytest.mark.parametrize("kwargs", [{"history": -1}, {"subscriber_buffer": 0}])
def test_bus_arguments_are_validated(kwargs: dict[str, int]) -> None:
    with pytest.raises(InvalidInputError):
        EventBus("c1", **kwargs)  # type: ignore[arg-type]


def test_only_known_event_types_are_published() -> None:
    class Custom(BaseEvent):
        pass

    bus = EventBus("c1")
    with pytest.raises(InvalidInputError, match="Custom"):
        bus.publish(Custom())
    assert bus.last_seq == 0


# --- synchronous callbacks -------------------------------------------------------------------


def test_callbacks_get_every_event_until_unsubscribed() -> None:
    bus = EventBus("c1")
    got: list[int] = []
    unsubscribe = bus.subscribe(lambda e: got.append(e.seq))
    publish_many(bus, 3)
    unsubscribe()
    unsubscribe()  # twice is harmless
    publish_many(bus, 2)
    assert got == [1, 2, 3]
    assert bus.subscriber_count == 0


def test_a_failing_callback_is_logged_and_isolated(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus("c1")
    got: list[int] = []

    def broken(event: Event) -> None:
        raise RuntimeError("view exploded")

    bus.subscribe(broken)
    bus.subscribe(lambda e: got.append(e.seq))
    with caplog.at_level(logging.ERROR, logger="cm_notebook.events"):
        publish_many(bus, 2)
    assert got == [1, 2]
    assert bus.last_seq == 2
    failures = [r for r in caplog.records if "event callback" in r.getMessage()]
    assert len(failures) == 2
    assert failures[0].exc_info is not None
    assert "view exploded" in str(failures[0].exc_info[1])


def test_publishing_from_a_callback_keeps_the_order_for_everyone() -> None:
    bus = EventBus("c1")
    first: list[int] = []
    second: list[int] = []

    def echo(event: Event) -> None:
        first.append(event.seq)
        if isinstance(event, MessageAdded):
            bus.publish(BranchSwitched(branch="echo"))

    bus.subscribe(echo)
    bus.subscribe(lambda e: second.append(e.seq))
    bus.publish(MessageAdded(message_id="m1", role="user"))
    assert first == second == [1, 2]


def test_a_callback_may_unsubscribe_itself_while_being_called() -> None:
    bus = EventBus("c1")
    got: list[int] = []

    def once(event: Event) -> None:
        got.append(event.seq)
        unsubscribe()

    unsubscribe = bus.subscribe(once)
    publish_many(bus, 3)
    assert got == [1]


# --- async streams -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stream_is_registered_when_created() -> None:
    bus = EventBus("c1")
    async with bus.stream() as stream:
        publish_many(bus, 3)  # before the first read: still delivered
        assert stream.pending == 3
        assert [(await stream.__anext__()).seq for _ in range(3)] == [1, 2, 3]


@pytest.mark.anyio
async def test_stream_wakes_a_waiting_reader() -> None:
    bus = EventBus("c1")
    got: list[int] = []

    async def reader() -> None:
        async with bus.stream() as stream:
            async for event in stream:
                got.append(event.seq)
                if event.seq == 3:
                    return

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        publish_many(bus, 1)
        await anyio.wait_all_tasks_blocked()
        publish_many(bus, 2)
    assert got == [1, 2, 3]
    assert bus.subscriber_count == 0


@pytest.mark.anyio
async def test_stream_since_replays_history_then_live_without_gap() -> None:
    bus = EventBus("c1")
    publish_many(bus, 5)
    stream = bus.stream(since=2)
    publish_many(bus, 2)
    got = [(await stream.__anext__()).seq for _ in range(5)]
    assert got == [3, 4, 5, 6, 7]
    assert stream.pending == 0
    await stream.aclose()


@pytest.mark.anyio
async def test_stream_since_too_old_starts_with_a_resync() -> None:
    bus = EventBus("c1", history=3)
    publish_many(bus, 10)
    async with bus.stream(since=1) as stream:
        publish_many(bus, 1)
        first = await stream.__anext__()
        assert isinstance(first, Resync)
        assert first.seq == 10
        assert (await stream.__anext__()).seq == 11


@pytest.mark.anyio
async def test_slow_reader_gets_a_resync_and_never_blocks_the_publisher() -> None:
    bus = EventBus("c1", subscriber_buffer=100)
    slow = bus.stream()  # never read while publishing
    fast_got: list[int] = []
    unsubscribe = bus.subscribe(lambda e: fast_got.append(e.seq))
    publish_many(bus, 10_000)  # synchronous: would hang here if publish waited for readers
    assert fast_got == list(range(1, 10_001))
    assert slow.pending <= 100
    # The overflow left one Resync at the last seq it covered, then what came after it.
    resync = await slow.__anext__()
    assert isinstance(resync, Resync)
    assert "fell more than 100 events behind" in resync.reason
    rest = [(await slow.__anext__()).seq for _ in range(slow.pending)]
    assert rest == list(range(resync.seq + 1, 10_001))
    bus.publish(BranchSwitched(branch="after"))
    assert (await slow.__anext__()).seq == 10_001
    slow.close()
    unsubscribe()


@pytest.mark.anyio
async def test_overflow_also_drops_unread_history() -> None:
    bus = EventBus("c1", subscriber_buffer=2)
    publish_many(bus, 5)
    stream = bus.stream(since=0)
    publish_many(bus, 3)  # the third live event overflows the buffer
    first = await stream.__anext__()
    assert isinstance(first, Resync)
    assert first.seq == 8
    assert stream.pending == 0
    stream.close()


@pytest.mark.anyio
async def test_closing_a_stream_ends_it_and_unregisters() -> None:
    bus = EventBus("c1")
    stream = bus.stream()
    publish_many(bus, 2)
    assert bus.subscriber_count == 1
    await stream.aclose()
    assert bus.subscriber_count == 0
    assert [e async for e in stream] == []
    publish_many(bus, 1)
    assert stream.pending == 0


@pytest.mark.anyio
async def test_close_wakes_a_reader_waiting_on_another_task() -> None:
    bus = EventBus("c1")
    stream = bus.stream()
    ended = anyio.Event()

    async def reader() -> None:
        async for _ in stream:
            pass
        ended.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        stream.close()
    assert ended.is_set()


@pytest.mark.anyio
async def test_a_waiting_reader_can_be_cancelled() -> None:
    bus = EventBus("c1")
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def read_one() -> None:
                async with bus.stream() as stream:
                    await stream.__anext__()

            tg.start_soon(read_one)
            await anyio.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught
    assert bus.subscriber_count == 0


def test_a_dropped_stream_is_unregistered_by_the_garbage_collector() -> None:
    bus = EventBus("c1")
    stream = bus.stream()
    assert bus.subscriber_count == 1
    del stream
    gc.collect()
    assert bus.subscriber_count == 0


@pytest.mark.anyio
async def test_closing_the_bus_drains_streams_then_ends_them() -> None:
    bus = EventBus("c1")
    stream = bus.stream()
    bus.subscribe(lambda e: None)
    publish_many(bus, 2)
    bus.close()
    assert bus.closed
    assert bus.subscriber_count == 0
    assert seqs([e async for e in stream]) == [1, 2]
    assert [e async for e in bus.stream()] == []
    with pytest.raises(StateError, match="closed"):
        publish_many(bus, 1)
    assert "last_seq=2" in repr(bus)


# --- the event models and JSON -----------------------------------------------------------


def every_kind_of_event() -> list[BaseEvent]:
    return [
        StateChanged(old=State.IDLE, new=State.AWAITING_RESPONSE, turn_id="t1"),
        MessageAdded(message_id="m2", parent_id="m1", role="assistant"),
        ContentDelta(message_id="m2", text="Hé 🙂", offset=0),
        MessageCompleted(message_id="m2", status=MessageStatus.INTERRUPTED),
        ToolApprovalRequested(message_id="m2", tool_call_ids=("a", "b")),
        ToolCallResolved(tool_call_id="a", status=ToolCallStatus.DENIED, reason="cancelled"),
        BranchCreated(branch="try 2", head="m1"),
        BranchSwitched(branch="try 2"),
        ErrorReported(message="rate limited", kind="transient"),
        Resync(reason="test"),
    ]


@pytest.mark.parametrize("draft", every_kind_of_event(), ids=lambda e: type(e).__name__)
def test_json_round_trip_through_parse_event(draft: BaseEvent) -> None:
    bus = EventBus("c1")
    event = bus.publish(draft)
    as_dict = event.model_dump(mode="json")
    # The wire name is the class name, except for the Error signal (a class named
    # ...Error would read as an exception).
    wire = {"ErrorReported": "Error"}.get(type(draft).__name__, type(draft).__name__)
    assert as_dict["type"] == wire
    assert wire in SIGNAL_KINDS
    assert as_dict["seq"] == 1
    assert parse_event(as_dict) == event
    assert parse_event(event.model_dump_json()) == event
    assert parse_event(event.model_dump_json().encode()) == event


@pytest.mark.parametrize(
    "draft",
    [e for e in every_kind_of_event() if not isinstance(e, ContentDelta)],
    ids=lambda e: type(e).__name__,
)
def test_a_stamped_signal_is_what_pydantic_s_copy_makes(draft: BaseEvent) -> None:
    # The bus builds its stamped copy itself (cheaper than model_copy): this fails if a
    # pydantic release changes what a model instance holds. (A text delta is built
    # anew: test_signal_log_batches checks trusted_delta.)
    clock = FakeClock()
    event = EventBus("c1", clock=clock).publish(draft)
    copied = draft.model_copy(update={"seq": 1, "context_id": "c1", "at": event.at})
    assert type(event) is type(draft)
    assert event == copied
    assert hash(event) == hash(copied)
    assert event.model_dump() == copied.model_dump()
    assert event.model_dump_json() == copied.model_dump_json()
    assert event.model_fields_set == copied.model_fields_set
    assert repr(event) == repr(copied)
    assert event.model_copy(update={"seq": 2}).seq == 2
    assert (draft.seq, draft.context_id) == (0, "")  # the draft is not changed
    with pytest.raises(ValidationError, match="frozen"):
        event.seq = 5  # type: ignore[misc]


def test_parse_event_refuses_unknown_or_incomplete_events() -> None:
    with pytest.raises(ValidationError):
        parse_event({"type": "Nope", "seq": 1})
    with pytest.raises(ValidationError):
        parse_event({"type": "ContentDelta", "seq": 1, "message_id": "m"})


def test_events_are_frozen_and_checked() -> None:
    event = delta(1)
    with pytest.raises(ValidationError):
        event.text = "changed"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ContentDelta(message_id="m", text="x", offset=-1)
    with pytest.raises(ValidationError):
        ContentDelta(message_id="m", text="x", offset=0, extra_field=1)  # type: ignore[call-arg]


def test_naive_times_are_taken_as_utc() -> None:
    event = parse_event({"type": "BranchSwitched", "branch": "x", "at": "2026-01-01T00:00:00"})
    assert event.at == T0


# --- filtered and cross-thread subscriptions --------------------------------------------------


def test_a_subscription_can_keep_one_branch_and_some_kinds() -> None:
    bus = EventBus("c1")
    main_deltas: list[int] = []
    side_any: list[str] = []
    bus.subscribe(lambda e: main_deltas.append(e.seq), branch="main", kinds={"ContentDelta"})
    bus.subscribe(lambda e: side_any.append(e.type), branch="side")
    bus.publish(delta(0))  # main
    bus.publish(MessageAdded(message_id="m2", role="user", branch="main"))
    bus.publish(BranchDeleted(branch="side"))
    bus.publish(ContextUpdated(changed=["title"]))
    bus.publish(BranchUpdated(branch="side", head="m1", changed=["head"]))
    assert main_deltas == [1]
    assert side_any == ["BranchDeleted", "BranchUpdated"]


def test_an_unknown_kind_is_refused_with_the_close_match() -> None:
    bus = EventBus("c1")
    with pytest.raises(InvalidInputError, match="ContentDelta"):
        bus.subscribe(lambda e: None, kinds=["ContentDelt"])
    assert bus.subscriber_count == 0
    assert "BranchDeleted" in SIGNAL_KINDS
    assert "Resync" in SIGNAL_KINDS


def test_subscribing_from_many_threads_while_publishing_loses_no_registration() -> None:
    bus = EventBus("c1")
    got: dict[int, list[int]] = {}
    removers: list[Callable[[], None]] = []
    lock = threading.Lock()

    def register(n: int) -> None:
        seen_by_n: list[int] = []
        remove = bus.subscribe(lambda e: seen_by_n.append(e.seq))
        with lock:
            got[n] = seen_by_n
            removers.append(remove)

    threads = [threading.Thread(target=register, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    publish_many(bus, 50)  # concurrently with the registrations, on this thread
    for thread in threads:
        thread.join()
    assert bus.subscriber_count == 20
    bus.publish(delta(99))
    assert all(seqs_seen[-1] == 51 for seqs_seen in got.values())
    unsubscribers = [threading.Thread(target=remove) for remove in removers]
    for thread in unsubscribers:
        thread.start()
    for thread in unsubscribers:
        thread.join()
    assert bus.subscriber_count == 0


def test_the_new_signals_round_trip_through_json() -> None:
    for event in (
        BranchDeleted(branch="b"),
        BranchUpdated(branch="b", head=None, changed=["head"]),
        ContextUpdated(changed=["title", "tags"]),
    ):
        assert parse_event(event.model_dump_json()) == event


def test_a_reader_on_another_loop_is_woken_by_each_event(tmp_path: Path) -> None:
    # A script's session runs on the package's own loop; reading its stream inside
    # asyncio.run() is a reader on a loop of its own, to be woken from the session's
    # thread. Nothing else may wake that loop here (no timer on it), so a reader not
    # woken by the events themselves would wait for ever: the driving thread waits for
    # it, then wakes the loop itself so that the test ends either way.
    from cm_notebook.session import ContextSession
    from cm_notebook.testing import ScriptedProvider

    session = ContextSession.create(
        data_dir=tmp_path, provider=ScriptedProvider().reply("a b c", chunks="words")
    )
    got: list[str] = []
    done = threading.Event()
    woken: list[bool] = []
    drivers: list[threading.Thread] = []

    def drive(loop: asyncio.AbstractEventLoop) -> None:
        session.send("hi").result(10)
        woken.append(done.wait(10))
        if not woken[0]:
            loop.call_soon_threadsafe(lambda: None)

    async def read() -> None:
        stream = session.event_stream()
        loop = asyncio.get_running_loop()
        drivers.append(threading.Thread(target=drive, args=(loop,), daemon=True))
        drivers[0].start()
        async for event in stream:
            got.append(event.type)
            if isinstance(event, StateChanged) and event.new is State.IDLE:
                done.set()
                return

    try:
        asyncio.run(read())
        drivers[0].join(10)
    finally:
        session.close()
    assert woken == [True]
    assert got[-1] == "StateChanged"
    assert "ContentDelta" in got
    assert "MessageCompleted" in got
