"""ContextSession basics: create/open/list, send in scripts and in async code, stream,
reading, signals, persistence on real disk, and input validation that writes nothing."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_session_support import (
    DEADLINE,
    Recorder,
    message_files,
    roles,
    seen,
)

from cm_notebook._delta_runs import RUN_LIMIT
from cm_notebook.errors import (
    BranchExistsError,
    BranchNotFoundError,
    InvalidIdError,
    InvalidInputError,
    MessageNotFoundError,
    PermanentProviderError,
    StateError,
)
from cm_notebook.events import (
    ContentDelta,
    MessageAdded,
    MessageCompleted,
    Resync,
    StateChanged,
)
from cm_notebook.fsm import State
from cm_notebook.model import MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

# -- create / open / list ------------------------------------------------------------------


def test_create_list_and_open_round_trip(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider(), title="Capitals", system="Be brief.")
    assert session.title == "Capitals"
    assert session.metadata.system_prompt == "Be brief."
    assert session.active_branch == "main"
    assert list(session.branches) == ["main"]
    assert session.state is State.IDLE
    assert (data_dir / "contexts" / session.id / "metadata.json").is_file()

    other = new_session(provider=ScriptedProvider())
    listed = ContextSession.list(data_dir)
    assert {m.id for m in listed} == {session.id, other.id}

    reopened = ContextSession.open(session.id, data_dir=data_dir)
    assert reopened.id == session.id
    assert reopened.title == "Capitals"
    assert reopened.history() == []


def test_create_without_title_is_untitled(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    assert new_session(provider=ScriptedProvider()).title == "Untitled"


@pytest.mark.parametrize(
    "options",
    [
        {"title": 5},
        {"system": ["not", "text"]},
        {"provider": "no-such-provider:model"},
        {"provider": "openai:gpt-x", "provider_options": {"api_key": "sk-secret"}},
    ],
)
def test_create_refuses_bad_arguments_and_writes_nothing(
    data_dir: Path, options: dict[str, Any]
) -> None:
    options.setdefault("provider", ScriptedProvider())
    with pytest.raises(InvalidInputError):
        ContextSession.create(data_dir=data_dir, **options)
    assert ContextSession.list(data_dir) == []


LOCAL_SERVER = "http://127.0.0.1:9/v1"  # never reached: nothing is sent


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"base_url": LOCAL_SERVER, "temprature": 0.2}, "unexpected keyword argument 'temprature'"),
        ({"base_url": LOCAL_SERVER, "timeout": "30"}, "option 'timeout' must be a number"),
        ({"base_url": LOCAL_SERVER, "timeout": float("nan")}, "timeout must be a positive"),
        ({"base_url": 8080}, "['base_url']"),
    ],
    ids=["unknown option", "a string for a number", "not a number", "a number for a URL"],
)
def test_create_refuses_provider_options_the_provider_cannot_take(
    data_dir: Path, options: dict[str, Any], said: str
) -> None:
    # Stored, they would fail every send of the context (a TypeError at the first).
    with pytest.raises(InvalidInputError, match="provider 'openai:gpt-x'") as refused:
        ContextSession.create(data_dir=data_dir, provider="openai:gpt-x", provider_options=options)
    assert said in str(refused.value)
    assert ContextSession.list(data_dir) == []


def test_create_keeps_provider_options_the_provider_takes(data_dir: Path) -> None:
    options = {"base_url": LOCAL_SERVER, "timeout": 5}
    with ContextSession.create(
        data_dir=data_dir, provider="openai:gpt-x", provider_options=options
    ) as session:
        assert session.metadata.provider.params == options


def test_open_unknown_context_is_not_found(data_dir: Path) -> None:
    with pytest.raises(KeyError):
        ContextSession.open("c01unknown0000000000000", data_dir=data_dir)
    with pytest.raises(InvalidIdError):
        ContextSession.open("../escape", data_dir=data_dir)


# -- sending from a script (no running loop) -----------------------------------------------


def test_send_returns_at_once_and_result_blocks_for_the_reply(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider(delay=0.05).reply("Hello there, friend.", chunks="words")
    session = new_session(provider=fake)
    turn = session.send("Hi")
    assert not turn.done()
    assert session.turn() is turn

    message = turn.result(DEADLINE)
    assert turn.done()
    assert message.content == "Hello there, friend."
    assert turn.text == message.content
    assert turn.message_id == message.id
    assert message.status is MessageStatus.COMPLETE
    assert message.metadata.usage is not None
    assert message.metadata.usage.output_tokens == 3
    assert message.metadata.provider == "scripted"
    assert message.metadata.duration_ms is not None
    assert roles(session.history()) == ["user", "assistant"]
    assert session.history()[-1] == message
    assert session.state is State.IDLE
    assert session.turn() is None
    assert turn.exception() is None
    assert "done" in repr(turn)


def test_result_times_out_while_the_reply_is_running(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider().hang())
    turn = session.send("Hi")
    with pytest.raises(TimeoutError):
        turn.result(0.05)
    turn.cancel()
    assert turn.result(DEADLINE).status is MessageStatus.INTERRUPTED


def test_params_and_system_prompt_reach_the_model_and_the_metadata(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider(["ok"])
    session = new_session(provider=fake, system="You are terse.")
    message = session.send("Hi", temperature=0.5, max_tokens=10, seed=7).result(DEADLINE)
    request = fake.last_request
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "You are terse."),
        ("user", "Hi"),
    ]
    assert request.params == {"temperature": 0.5, "max_tokens": 10, "seed": 7}
    assert message.metadata.parameters == {"temperature": 0.5, "max_tokens": 10, "seed": 7}
    # The system prompt is not a message of the tree.
    assert roles(session.history()) == ["user", "assistant"]


def test_retry_repeats_the_failed_request_with_its_parameters(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider().error("permanent", message="key revoked").reply("ok")
    session = new_session(provider=fake)
    with pytest.raises(PermanentProviderError, match="key revoked"):
        session.send("Hi", temperature=0.3, max_tokens=5).result(DEADLINE)
    message = session.retry().result(DEADLINE)
    assert message.content == "ok"
    assert fake.last_request.params == {"temperature": 0.3, "max_tokens": 5}
    assert message.metadata.parameters == {"temperature": 0.3, "max_tokens": 5}


def test_the_model_sees_the_whole_conversation(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider(["first answer", "second answer"])
    session = new_session(provider=fake)
    session.send("one").result(DEADLINE)
    session.send("two").result(DEADLINE)
    assert [(m.role, m.content) for m in fake.last_request.messages] == [
        ("user", "one"),
        ("assistant", "first answer"),
        ("user", "two"),
    ]


def test_get_reads_one_message_and_refuses_bad_ids(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider(["ok"]))
    reply = session.send("Hi").result(DEADLINE)
    assert session.get(reply.id) == reply
    assert session.history(limit=1) == [reply]
    with pytest.raises(MessageNotFoundError):
        session.get("m01doesnotexist000000000")
    with pytest.raises(InvalidIdError):
        session.get("../../etc/passwd")
    with pytest.raises(InvalidInputError):
        session.history(limit=0)


# -- sending from async code (a running loop, like a notebook cell) ------------------------


@pytest.mark.anyio
async def test_await_turn_in_async_code(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider().reply("Hello!", chunks=2))
    turn = session.send("Hi")
    # The reply runs as a task on this loop: nothing has happened before we yield.
    assert not turn.done()
    message = await turn
    assert turn.done()
    assert message.content == "Hello!"
    assert turn.text == "Hello!"
    assert message.metadata.usage is not None
    assert roles(session.history()) == ["user", "assistant"]


@pytest.mark.anyio
async def test_acreate_makes_the_context_off_the_loop_and_the_session_lives_on_it(
    data_dir: Path,
) -> None:
    creating = asyncio.ensure_future(
        ContextSession.acreate(
            "Async", data_dir=data_dir, system="Be brief.", tags=["t"], provider=ScriptedProvider()
        )
    )
    await asyncio.sleep(0)  # one step: the checks ran, the folder is being written
    assert not creating.done()  # the loop was not held while the disk was written
    session = await creating
    try:
        assert (session.title, session.metadata.system_prompt) == ("Async", "Be brief.")
        assert session.metadata.tags == ["t"]
        assert (data_dir / "contexts" / session.id / "metadata.json").is_file()
        assert (await session.send("Hi")).content == "echo: Hi"
        # One live session per context: opening it again in this process shares it.
        again = ContextSession.open(session.id, data_dir=data_dir)
        assert again is session
        again.close()
    finally:
        session.close()


@pytest.mark.anyio
async def test_acreate_checks_its_arguments_before_writing(data_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="system must be a string"):
        await ContextSession.acreate(data_dir=data_dir, system=5, provider=ScriptedProvider())  # type: ignore[arg-type]
    assert not (data_dir / "contexts").exists() or not list((data_dir / "contexts").iterdir())


@pytest.mark.anyio
async def test_result_inside_a_running_loop_is_refused(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider(["ok"]))
    turn = session.send("Hi")
    with pytest.raises(StateError, match="await"):
        turn.result(1)
    assert (await turn).content == "ok"


@pytest.mark.anyio
async def test_stream_yields_the_deltas_of_the_reply(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider().reply("one two three four", chunks="words", delay=0.01)
    session = new_session(provider=fake)
    deltas = [delta async for delta in session.stream("count")]
    assert deltas == ["one ", "two ", "three ", "four"]
    assert session.history()[-1].content == "one two three four"
    assert session.state is State.IDLE


@pytest.fixture
def script_session(data_dir: Path, new_session: Callable[..., ContextSession]) -> ContextSession:
    # Made outside any loop (a sync fixture): its turns run on the background loop.
    fake = ScriptedProvider()
    for _ in range(21):
        fake.reply("alpha beta gamma", chunks="words")
    return new_session(provider=fake)


@pytest.mark.anyio
async def test_stream_and_await_across_threads(script_session: ContextSession) -> None:
    # The session's loop is the background thread's; this coroutine runs on another.
    # Repeated, because the reply may finish before stream() starts listening.
    for _ in range(20):
        deltas = [delta async for delta in script_session.stream("go")]
        assert "".join(deltas) == "alpha beta gamma"
    message = await script_session.send("and again")
    assert message.content == "alpha beta gamma"


# -- signals -------------------------------------------------------------------------------


def test_signals_of_a_turn_are_numbered_small_and_consistent(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    long_text = "word " * 2000
    fake = ScriptedProvider().reply(long_text, chunks=500)
    session = new_session(provider=fake)
    recorder = Recorder(session)
    message = session.send(long_text).result(DEADLINE)
    recorder.wait(seen(MessageCompleted, message_id=message.id))
    recorder.wait(seen(StateChanged, new=State.IDLE))

    events = session.events()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert session.last_seq == events[-1].seq
    assert recorder.snapshot() == events
    assert recorder.states() == [State.IDLE, State.AWAITING_RESPONSE, State.STREAMING, State.IDLE]
    assert {e.context_id for e in events} == {session.id}

    # Deltas: offsets chain up and rebuild the final text exactly. Chunks that come
    # together may be one delta, but never one of more than RUN_LIMIT characters.
    deltas = [e for e in events if isinstance(e, ContentDelta)]
    assert len(long_text) // RUN_LIMIT < len(deltas) <= len(long_text) // 500
    assert all(len(delta.text) <= RUN_LIMIT for delta in deltas)
    offset = 0
    for delta in deltas:
        assert delta.message_id == message.id
        assert delta.offset == offset
        offset += len(delta.text)
    assert "".join(d.text for d in deltas) == message.content

    # Signals carry ids, not contents.
    added = [e for e in events if isinstance(e, MessageAdded)]
    assert [(e.role, e.message_id) for e in added] == [
        ("user", message.parent_id),
        ("assistant", message.id),
    ]
    for event in events:
        if not isinstance(event, ContentDelta):
            assert len(event.model_dump_json()) < 400, event


def test_events_since_returns_the_tail_and_resyncs_when_ahead(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider(["ok"]))
    session.send("Hi").result(DEADLINE)
    everything = session.events()
    assert session.events(since=3) == everything[3:]
    assert session.events(since=everything[-1].seq) == []
    (resync,) = session.events(since=everything[-1].seq + 100)
    assert isinstance(resync, Resync)
    with pytest.raises(InvalidInputError):
        session.events(since=-1)


def test_last_seq_agrees_with_events_in_a_script(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # From a script, signals are published on the session's loop thread; reading
    # last_seq right after an action must already count them.
    session = new_session(provider=ScriptedProvider())
    for n in range(30):
        session.branch(f"b{n}", switch=n % 2 == 0)
        assert session.last_seq == session.events()[-1].seq


def test_unsubscribed_callbacks_get_nothing_more(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider(["one", "two"]))
    early, late = Recorder(session), Recorder(session)
    session.send("1").result(DEADLINE)
    late.wait(seen(StateChanged, new=State.IDLE))
    early.unsubscribe()
    early.unsubscribe()  # twice is harmless
    count = len(early.snapshot())
    session.send("2").result(DEADLINE)
    late.wait(lambda events: sum(isinstance(e, MessageCompleted) for e in events) == 2)
    assert len(early.snapshot()) == count
    assert late.snapshot() == session.events()


@pytest.mark.anyio
async def test_event_stream_catches_up_from_a_sequence_number(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider(["first", "second"]))
    await session.send("1")
    mark = session.last_seq
    stream = session.event_stream(since=2)
    await session.send("2")
    got = []
    with anyio.fail_after(DEADLINE):
        async for event in stream:
            got.append(event)
            if event.seq == session.last_seq:
                break
    stream.close()
    assert [e.seq for e in got] == list(range(3, session.last_seq + 1))
    assert got[mark - 2 :] == session.events(since=mark)


# -- persistence ---------------------------------------------------------------------------


def test_a_reopened_session_sees_the_same_tree(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider(["one", "two", "three"]), title="Kept")
    session.send("first").result(DEADLINE)
    session.branch("side")
    session.send("second").result(DEADLINE)
    session.switch("main")
    session.send("third").result(DEADLINE)

    reopened = ContextSession.open(session.id, data_dir=data_dir)
    assert reopened.title == "Kept"
    assert reopened.branches.keys() == {"main", "side"}
    assert reopened.active_branch == "main"
    assert reopened.history() == session.history()
    assert reopened.history("side") == session.history("side")
    assert [m.content for m in reopened.history("side")] == ["first", "one", "second", "two"]
    assert len(message_files(data_dir, session)) == 6
    listed = {m.id: m for m in ContextSession.list(data_dir)}
    assert listed[session.id].title == "Kept"


_CRASHING_CHILD = textwrap.dedent(
    """
    import sys, threading
    from cm_notebook.events import MessageAdded
    from cm_notebook.session import ContextSession
    from cm_notebook.testing import ScriptedProvider

    fake = ScriptedProvider().hang(after_chunks=2, text="half a reply")
    session = ContextSession.create(provider=fake, data_dir=sys.argv[1])
    started = threading.Event()
    session.subscribe(
        lambda e: started.set() if isinstance(e, MessageAdded) and e.role == "assistant" else None
    )
    session.send("hello")
    if not started.wait(30):
        sys.exit("the reply never started")
    print(session.id, flush=True)
    threading.Event().wait()  # streaming forever, until killed
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_reply_cut_by_a_crash_is_marked_interrupted_on_open(data_dir: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_CHILD, str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        context_id = child.stdout.readline().strip()
        assert context_id, "the child process did not start its reply"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(DEADLINE)
        if child.stdout is not None:
            child.stdout.close()
    session = ContextSession.open(context_id, data_dir=data_dir, provider=ScriptedProvider(["ok"]))
    history = session.history()
    assert [(m.role, m.status) for m in history] == [
        ("user", MessageStatus.COMPLETE),
        ("assistant", MessageStatus.INTERRUPTED),
    ]
    assert history[-1].metadata.error is not None
    assert "stopped before it finished" in history[-1].metadata.error
    # The conversation carries on after the crash.
    assert session.send("again").result(DEADLINE).content == "ok"


# -- validation: refused before anything is written ----------------------------------------


@pytest.fixture
def one_turn(data_dir: Path, new_session: Callable[..., ContextSession]) -> ContextSession:
    session = new_session(provider=ScriptedProvider(["ok"]))
    session.send("Hi").result(DEADLINE)
    return session


def _unchanged(
    session: ContextSession, data_dir: Path, action: Any, error: type[Exception]
) -> None:
    before = (session.history(), session.metadata.branches, message_files(data_dir, session))
    seq = session.last_seq
    with pytest.raises(error):
        action()
    after = (session.history(), session.metadata.branches, message_files(data_dir, session))
    assert after == before
    assert session.events(since=seq) == []
    assert session.state is State.IDLE


@pytest.mark.parametrize("text", ["", "   \n\t", None, 5, b"bytes", ["a list"]])
def test_send_refuses_text_that_is_not_a_message(
    one_turn: ContextSession, data_dir: Path, text: Any
) -> None:
    _unchanged(one_turn, data_dir, lambda: one_turn.send(text), InvalidInputError)


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 5},
        {"temperature": "hot"},
        {"max_tokens": 0},
        {"top_p": 0},
        {"api_key": "sk-secret"},
        {"extra": {"authorization": "Bearer x"}},
    ],
)
def test_send_refuses_bad_generation_parameters(
    one_turn: ContextSession, data_dir: Path, params: dict[str, Any]
) -> None:
    _unchanged(one_turn, data_dir, lambda: one_turn.send("Hi", **params), InvalidInputError)


def test_a_secret_is_not_echoed_in_the_error(one_turn: ContextSession) -> None:
    with pytest.raises(InvalidInputError) as caught:
        one_turn.send("Hi", api_key="sk-very-secret")
    assert "sk-very-secret" not in str(caught.value)


@pytest.mark.parametrize("name", ["../x", "a/b", "", " padded", "x" * 300, "nul\x00"])
def test_hostile_branch_names_are_refused_everywhere(
    one_turn: ContextSession, data_dir: Path, name: str
) -> None:
    user = one_turn.history()[0].id
    actions = [
        lambda: one_turn.send("Hi", branch=name),
        lambda: one_turn.branch(name),
        lambda: one_turn.switch(name),
        lambda: one_turn.delete_branch(name),
        lambda: one_turn.history(name),
        lambda: one_turn.edit(user, "changed", branch=name),
        lambda: one_turn.fan_out("Hi", [{"branch": name}]),
        lambda: one_turn.compare(name),
    ]
    for action in actions:
        _unchanged(one_turn, data_dir, action, InvalidIdError)


def test_sending_on_a_missing_branch_is_not_found(one_turn: ContextSession, data_dir: Path) -> None:
    _unchanged(one_turn, data_dir, lambda: one_turn.send("Hi", branch="nope"), BranchNotFoundError)


def test_fan_out_with_one_bad_variant_writes_nothing(
    one_turn: ContextSession, data_dir: Path
) -> None:
    variants: list[dict[str, Any]] = [{"temperature": 0.1}, {"temperature": 9}]
    _unchanged(one_turn, data_dir, lambda: one_turn.fan_out("Hi", variants), InvalidInputError)
    for odd in ([{"temperature": 0.1}, None], [5]):
        with pytest.raises(InvalidInputError, match=r"variant \d must be a mapping of settings"):
            one_turn.fan_out("Hi", odd)  # type: ignore[arg-type]


def test_fan_out_onto_an_existing_branch_writes_nothing(
    one_turn: ContextSession, data_dir: Path
) -> None:
    one_turn.branch("taken", switch=False)
    variants = [{"branch": "fresh"}, {"branch": "taken"}]
    _unchanged(one_turn, data_dir, lambda: one_turn.fan_out("Hi", variants), BranchExistsError)
    # Names the store would refuse as look-alikes: of a branch there, or of each other.
    for names in (["fresh", "TAKEN"], ["arm", "ARM"]):
        variants = [{"branch": name} for name in names]
        fan_out = functools.partial(one_turn.fan_out, "Hi", variants)
        _unchanged(one_turn, data_dir, fan_out, InvalidInputError)


def test_edit_refuses_bad_text_and_non_user_messages(
    one_turn: ContextSession, data_dir: Path
) -> None:
    user, reply = one_turn.history()
    _unchanged(one_turn, data_dir, lambda: one_turn.edit(user.id, ""), InvalidInputError)
    _unchanged(one_turn, data_dir, lambda: one_turn.edit(reply.id, "x"), InvalidInputError)
    _unchanged(one_turn, data_dir, lambda: one_turn.edit(user.id, "x", top_p=3), InvalidInputError)


# -- static views --------------------------------------------------------------------------


def test_repr_html_shows_the_conversation_escaped(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(
        provider=ScriptedProvider(["<script>alert(1)</script>"]), title="<b>t</b>"
    )
    session.send("<img src=x onerror=alert(1)>").result(DEADLINE)
    page = session._repr_html_()
    assert "<script>" not in page
    assert "<img" not in page
    assert "<b>t</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert session.id in repr(session)
    # What a saved notebook shows is a pure function of the stored data.
    json.loads((data_dir / "contexts" / session.id / "metadata.json").read_text())
    assert os.path.isdir(data_dir / "contexts" / session.id / "messages")


def test_metadata_that_is_not_a_mapping_is_refused(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider(["never"]))
    with pytest.raises(InvalidInputError, match="metadata must be a mapping"):
        session.send("Hi", metadata=-1.5)  # type: ignore[arg-type]
    assert session.history() == []


def test_what_is_not_a_provider_is_refused_before_anything_is_stored(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    with pytest.raises(InvalidInputError, match=r"provider must be a spec .* not 42"):
        ContextSession.create(data_dir=data_dir, provider=42)  # type: ignore[arg-type]
    session = new_session(provider=ScriptedProvider())
    for bad in (42, ScriptedProvider, object()):
        with pytest.raises(InvalidInputError, match="provider must be a spec"):
            session.send("hi", provider=bad)  # type: ignore[arg-type]
    assert session.history() == []
    assert session.send("hi").result(DEADLINE).content == "echo: hi"
