"""Provider faults driven through the whole engine: the real OpenAI provider talks real
HTTP to tests/fault_server.py, and the session's state machine retries, gives up or
waits for the user. Retries use a fast RetryPolicy, so no test waits for backoff."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fault_server import FaultServer, Hang, KeepAlive, Reply, ResetAfter, Status
from test_session_support import DEADLINE, Recorder, entered, roles, seen

from cm_notebook.errors import InvalidInputError, PermanentProviderError, StateError
from cm_notebook.events import ContentDelta, ErrorReported, MessageAdded, StateChanged
from cm_notebook.fsm import State
from cm_notebook.model import FailedAttempt, Message, MessageStatus
from cm_notebook.providers.openai import OpenAIProvider
from cm_notebook.retry import RetryPolicy
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore

FAST = RetryPolicy(initial_delay=0.01, multiplier=1.0, max_attempts=3, jitter=0.0)
TIMEOUT = 0.5  # the provider's read timeout: a hang costs this much


@pytest.fixture(autouse=True)
def _no_real_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # The environment, not the package: make sure no real key or endpoint leaks in.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def connect(data_dir: Path, server: FaultServer, **options: Any) -> ContextSession:
    """A session whose provider it builds itself (and closes in ``close()``)."""
    options.setdefault("retry", FAST)
    return ContextSession.create(
        provider="openai:fault-model",
        provider_options={"base_url": server.url, "timeout": TIMEOUT},
        data_dir=data_dir,
        **options,
    )


@pytest.fixture
def session(data_dir: Path, fault_server: FaultServer) -> Iterator[ContextSession]:
    made = connect(data_dir, fault_server)
    yield made
    made.close()  # cancels what is left and closes the provider's connections


def failed_attempts(message: Message) -> list[FailedAttempt]:
    return message.metadata.failed_attempts


def test_rate_limit_with_retry_after_is_retried(
    session: ContextSession, fault_server: FaultServer
) -> None:
    fault_server.script([Status(429, "slow down", retry_after="0.3"), Reply("Hello after.")])
    recorder = Recorder(session)
    message = session.send("Hi").result(DEADLINE)
    assert message.content == "Hello after."
    assert message.status is MessageStatus.COMPLETE
    assert message.metadata.usage is not None
    assert len(fault_server.requests) == 2
    (attempt,) = failed_attempts(message)
    assert attempt["status_code"] == 429
    assert attempt["text"] == ""
    assert "429" in attempt["error"] or "rate" in attempt["error"].lower()
    recorder.wait(entered(State.IDLE))
    assert recorder.states() == [
        State.IDLE,
        State.AWAITING_RESPONSE,
        State.TRANSIENT_FAILURE,
        State.AWAITING_RESPONSE,
        State.STREAMING,
        State.IDLE,
    ]
    (error,) = recorder.of(ErrorReported)
    assert error.kind == "transient"
    assert "retrying in 0.3 s" in error.message
    # Announced in the state it describes: a view that shows the error with the state
    # it is in shows "retrying", not "streaming".
    events = recorder.snapshot()
    entered_failure = next(
        i
        for i, e in enumerate(events)
        if isinstance(e, StateChanged) and e.new is State.TRANSIENT_FAILURE
    )
    assert events.index(error) > entered_failure
    # The server's Retry-After (0.3 s) wins over the policy's 0.01 s backoff.
    changes = recorder.of(StateChanged)
    failed_at = next(e.at for e in changes if e.new is State.TRANSIENT_FAILURE)
    retried_at = next(e.at for e in changes if e.old is State.TRANSIENT_FAILURE)
    assert (retried_at - failed_at).total_seconds() >= 0.3
    # One assistant message for the whole turn, retries included.
    assert [e.role for e in recorder.of(MessageAdded)] == ["user", "assistant"]
    assert session.get(message.id) == message


def test_server_errors_twice_then_success(
    session: ContextSession, fault_server: FaultServer
) -> None:
    fault_server.script([Status(500), Status(502), Reply("Third time lucky.")])
    recorder = Recorder(session)
    message = session.send("Hi").result(DEADLINE)
    assert message.content == "Third time lucky."
    assert [a["status_code"] for a in failed_attempts(message)] == [500, 502]
    assert len(fault_server.requests) == 3
    recorder.wait(entered(State.IDLE))
    assert recorder.states().count(State.TRANSIENT_FAILURE) == 2
    assert [e.kind for e in recorder.of(ErrorReported)] == ["transient", "transient"]
    assert roles(session.history()) == ["user", "assistant"]


def test_a_reset_mid_stream_is_retried_and_the_partial_text_kept(
    session: ContextSession, fault_server: FaultServer, data_dir: Path
) -> None:
    fault_server.script([ResetAfter(["Hel", "lo wor"]), Reply("Hello world.")])
    recorder = Recorder(session)
    message = session.send("Hi").result(DEADLINE)
    assert message.content == "Hello world."
    (attempt,) = failed_attempts(message)
    assert attempt["text"] == "Hello wor"
    recorder.wait(entered(State.IDLE))
    assert State.TRANSIENT_FAILURE in recorder.states()
    # The retry restarts the text: an offset goes back to 0, so views re-pull or restart.
    deltas = recorder.of(ContentDelta)
    restarts = [number for number, delta in enumerate(deltas) if delta.offset == 0]
    assert restarts[0] == 0
    assert len(restarts) >= 2
    first_attempt = deltas[: restarts[1]]
    assert "".join(e.text for e in first_attempt) == "Hello wor"
    assert [e.offset for e in first_attempt] == [
        sum(len(e.text) for e in first_attempt[:number]) for number in range(len(first_attempt))
    ]
    assert "".join(e.text for e in deltas[restarts[-1] :]) == message.content
    # The model is never shown the failed attempt: the retry sends the same request.
    assert fault_server.requests[0]["messages"] == fault_server.requests[1]["messages"]
    # Stored as the model wrote it, as the reply's own text is: text that looks like a
    # credential (`auth=basic`) is the model's, not a key to redact.
    looks_like = "pass auth=basic and the key: the_one"
    fault_server.script([ResetAfter([looks_like]), Reply("Done.")])
    retried = session.send("Again").result(DEADLINE)
    other_store = FileStore(data_dir)  # read from the file, as another process would
    try:
        stored = anyio.run(other_store.get_message, session.id, retried.id)
    finally:
        anyio.run(other_store.close)
    (attempt,) = failed_attempts(stored)
    assert attempt["text"] == looks_like


def test_unauthorized_fails_at_once_and_retry_succeeds_later(
    session: ContextSession, fault_server: FaultServer
) -> None:
    fault_server.script([Status(401, "Incorrect API key provided", error_type="auth")])
    recorder = Recorder(session)
    turn = session.send("Hi")
    with pytest.raises(PermanentProviderError) as caught:
        turn.result(DEADLINE)
    text = str(caught.value)
    assert "401" in text
    assert "To fix" in text
    assert "OPENAI_API_KEY" in text
    assert len(fault_server.requests) == 1  # never retried
    assert session.state is State.PERMANENT_FAILURE
    assert isinstance(turn.exception(), PermanentProviderError)
    recorder.wait(seen(ErrorReported, kind="permanent"))
    assert [e.kind for e in recorder.of(ErrorReported)] == ["permanent"]
    failed = session.history()[-1]
    assert failed.status is MessageStatus.ERROR
    assert failed.metadata.error is not None
    assert "401" in failed.metadata.error

    # The user fixes things (here: the server now answers) and retries.
    message = session.retry().result(DEADLINE)
    assert message.content == "Hello from the fault server."
    assert session.state is State.IDLE
    history = session.history()
    assert roles(history) == ["user", "assistant"]
    assert history[-1] == message
    # The failed reply stays in the tree as a sibling, and the model never saw it.
    assert {m.id for m in session.siblings(message.id)} == {failed.id, message.id}
    assert [m["role"] for m in fault_server.requests[-1]["messages"]] == ["user"]
    with pytest.raises(StateError, match="nothing to retry"):
        session.retry()


def test_retries_exhausted_is_a_permanent_failure_with_the_last_error(
    session: ContextSession, fault_server: FaultServer
) -> None:
    fault_server.script([Status(503), Status(503), Status(500, "still broken")])
    recorder = Recorder(session)
    turn = session.send("Hi")
    with pytest.raises(PermanentProviderError, match="gave up after 3 attempts") as caught:
        turn.result(DEADLINE)
    assert "still broken" in str(caught.value)
    assert len(fault_server.requests) == 3
    assert session.state is State.PERMANENT_FAILURE
    recorder.wait(seen(ErrorReported, kind="permanent"))
    assert [e.kind for e in recorder.of(ErrorReported)] == ["transient", "transient", "permanent"]
    failed = session.history()[-1]
    assert failed.status is MessageStatus.ERROR
    assert [a["status_code"] for a in failed_attempts(failed)] == [503, 503, 500]
    # Sending again starts a new turn from PermanentFailure.
    assert session.send("Again").result(DEADLINE).status is MessageStatus.COMPLETE
    assert session.state is State.IDLE


def test_a_long_retry_after_gives_up_instead_of_waiting(
    data_dir: Path, fault_server: FaultServer
) -> None:
    policy = RetryPolicy(initial_delay=0.01, max_retry_after=1.0)
    session = connect(data_dir, fault_server, retry=policy)
    fault_server.script([Status(429, retry_after="3600")])
    try:
        with pytest.raises(PermanentProviderError, match="asked to wait 3600 s"):
            session.send("Hi").result(DEADLINE)
        assert len(fault_server.requests) == 1
    finally:
        session.close()


@pytest.mark.parametrize(
    ("hang", "partial"),
    [(Hang(seconds=10), ""), (Hang(seconds=10, after=["Hel"]), "Hel")],
)
def test_a_hang_past_the_timeout_is_transient_and_retried(
    session: ContextSession, fault_server: FaultServer, hang: Hang, partial: str
) -> None:
    fault_server.script([hang, Reply("Awake now.")])
    recorder = Recorder(session)
    message = session.send("Hi").result(DEADLINE)
    assert message.content == "Awake now."
    (attempt,) = failed_attempts(message)
    assert attempt["text"] == partial
    recorder.wait(entered(State.IDLE))
    assert State.TRANSIENT_FAILURE in recorder.states()
    assert [e.kind for e in recorder.of(ErrorReported)] == ["transient"]


def test_keepalives_past_the_timeout_are_a_timeout_retried_with_the_text_kept(
    session: ContextSession, fault_server: FaultServer
) -> None:
    # Keep-alive comments restart the read timeout; the provider's timeout bounds the
    # time without reply text too, and the turn goes on as after a read timeout.
    fault_server.script([KeepAlive(["Hel"]), Reply("Awake now.")])
    recorder = Recorder(session)
    message = session.send("Hi").result(DEADLINE)
    assert message.content == "Awake now."
    (attempt,) = failed_attempts(message)
    assert attempt["text"] == "Hel"
    assert "only keep-alive messages for 0.5 s" in attempt["error"]
    recorder.wait(entered(State.IDLE))
    assert State.TRANSIENT_FAILURE in recorder.states()
    (error,) = recorder.of(ErrorReported)
    assert error.kind == "transient"
    assert "the request timed out" in error.message


def test_first_token_timeout_is_a_provider_option_kept_with_the_context(
    data_dir: Path, fault_server: FaultServer
) -> None:
    # Given in provider_options, stored with them, and used again when the context is
    # opened: keep-alives before the first words fail after it (not after the timeout),
    # retried, and the error says how to raise it.
    options = {"base_url": fault_server.url, "timeout": TIMEOUT, "first_token_timeout": 1.0}
    fault_server.script([KeepAlive([]), Reply("Awake now."), KeepAlive([]), Reply("Again.")])
    with ContextSession.create(
        provider="openai:fault-model", provider_options=options, data_dir=data_dir, retry=FAST
    ) as made:
        message = made.send("Hi").result(DEADLINE)
        context_id = made.id
    assert message.content == "Awake now."
    (attempt,) = failed_attempts(message)
    assert "only keep-alive messages for 1 s and no reply yet" in attempt["error"]
    assert "provider_options={'first_token_timeout': ...}" in attempt["error"]
    with ContextSession.open(context_id, data_dir=data_dir, retry=FAST) as reopened:
        message = reopened.send("Hi again").result(DEADLINE)
    assert message.content == "Again."
    (attempt,) = failed_attempts(message)
    assert "only keep-alive messages for 1 s and no reply yet" in attempt["error"]


def test_a_first_token_timeout_that_is_not_a_number_is_refused(data_dir: Path) -> None:
    for wrong in ("600", 0, True):
        with pytest.raises(InvalidInputError, match="first_token_timeout") as info:
            ContextSession.create(
                provider="openai:fault-model",
                provider_options={
                    "base_url": "http://127.0.0.1:9/v1",
                    "first_token_timeout": wrong,
                },
                data_dir=data_dir,
            )
        assert "must be" in str(info.value), info.value


def test_the_provider_spec_and_options_are_stored_and_used(
    session: ContextSession, data_dir: Path, fault_server: FaultServer
) -> None:
    fault_server.script([Status(500), Reply("Via the spec.")])
    message = session.send("Hi", temperature=0.2, max_tokens=8).result(DEADLINE)
    assert message.content == "Via the spec."
    assert message.metadata.provider == "openai"
    assert message.metadata.model == "fault-model"
    body = fault_server.requests[-1]
    assert (body["model"], body["temperature"], body["max_tokens"]) == ("fault-model", 0.2, 8)
    # A session opened elsewhere (its own store, as another process would) rebuilds the
    # provider from the stored (secret-free) settings.
    other_store = FileStore(data_dir)
    reopened = ContextSession.open(session.id, store=other_store, retry=FAST)
    try:
        settings = reopened.metadata.provider
        assert settings.spec == "openai:fault-model"
        assert settings.params == {"base_url": fault_server.url, "timeout": TIMEOUT}
        assert reopened.send("More").result(DEADLINE).content == "Hello from the fault server."
    finally:
        reopened.close()
        anyio.run(other_store.close)
    assert [m["content"] for m in fault_server.requests[-1]["messages"]] == [
        "Hi",
        "Via the spec.",
        "More",
    ]


@pytest.mark.anyio
async def test_faults_in_async_code(data_dir: Path, fault_server: FaultServer) -> None:
    # Here the provider is passed in: its owner (this test) closes it, on this loop.
    provider = OpenAIProvider("fault-model", base_url=fault_server.url, timeout=TIMEOUT)
    session = ContextSession.create(provider=provider, data_dir=data_dir, retry=FAST)
    try:
        await _async_faults(session, fault_server)
    finally:
        await session.aclose()
        await provider.aclose()


async def _async_faults(session: ContextSession, fault_server: FaultServer) -> None:
    fault_server.script([ResetAfter(["Par", "tial"]), Reply("Whole.")])
    deltas = [delta async for delta in session.stream("Hi")]
    # stream() yields what arrived, including the failed attempt's text.
    assert "".join(deltas) == "Partial" + "Whole."
    assert session.history()[-1].content == "Whole."
    fault_server.script([Status(401)])
    with pytest.raises(PermanentProviderError):
        await session.send("again")
    assert session.state is State.PERMANENT_FAILURE
    assert (await session.retry()).content == "Hello from the fault server."


def test_the_openai_provider_without_a_model_says_where_to_give_one(
    data_dir: Path, fault_server: FaultServer
) -> None:
    # "pass model=..." read as a keyword of the call that failed, which refuses it: the
    # advice names the places that take a model, and each of them works.
    options = {"base_url": fault_server.url, "timeout": TIMEOUT}
    with pytest.raises(InvalidInputError) as info:
        ContextSession.create(provider="openai", provider_options=options, data_dir=data_dir)
    assert str(info.value).endswith(
        "the openai provider needs a model: use a spec like 'openai:gpt-4o-mini', or give "
        "one in provider_options={'model': ...} when the session is created "
        "(or OpenAIProvider(model=...))"
    )
    fault_server.script([Reply("From options."), Reply("From the instance.")])
    given = {**options, "model": "fault-model"}
    with ContextSession.create(provider="openai", provider_options=given, data_dir=data_dir) as s:
        assert s.send("hi").result(DEADLINE).content == "From options."
    made = OpenAIProvider(model="fault-model", base_url=fault_server.url, timeout=TIMEOUT)
    with ContextSession.create(provider=made, data_dir=data_dir) as s:
        assert s.send("hi").result(DEADLINE).content == "From the instance."
    assert [request["model"] for request in fault_server.requests] == ["fault-model"] * 2
