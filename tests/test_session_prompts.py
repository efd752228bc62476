"""Per-branch system prompts and defaults (A/B prompts): what the provider is sent."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from test_session_support import DEADLINE, Recorder

from cm_notebook.errors import BranchNotFoundError, BusyError, InvalidInputError
from cm_notebook.events import BranchCreated, BranchUpdated
from cm_notebook.model import Message, MessageStatus
from cm_notebook.providers.base import ChatRequest
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool


def system_of(request: ChatRequest) -> str | None:
    first = request.messages[0]
    return first.content if first.role == "system" else None


def test_a_branch_prompt_replaces_the_context_prompt_in_the_request(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    fake = ScriptedProvider()
    session = ContextSession.create(provider=fake, data_dir=data_dir, system="Be helpful.")
    closing.append(session)
    session.send("hi").result(DEADLINE)
    assert system_of(fake.last_request) == "Be helpful."

    session.branch("terse", system="Answer in five words.")
    assert session.system_prompt_of() == "Answer in five words."
    assert session.system_prompt_of("main") == "Be helpful."
    reply = session.send("Why is the sky blue?").result(DEADLINE)
    assert system_of(fake.last_request) == "Answer in five words."
    # The reply records the prompt it was made under.
    assert reply.metadata.system_prompt == "Answer in five words."
    # Only one system message, then the shared history.
    assert [m.role for m in fake.last_request.messages] == [
        "system",
        "user",
        "assistant",
        "user",
    ]

    # "" means no system prompt on this branch, even though the context has one.
    session.branch("bare", system="")
    assert session.system_prompt_of("bare") is None
    session.send("hello", branch="bare").result(DEADLINE)
    assert system_of(fake.last_request) is None

    # Stored: a reopened session sends the same prompts.
    session.close()
    again = ContextSession.open(session.id, data_dir=data_dir, provider=fake)
    closing.append(again)
    assert again.system_prompt_of("terse") == "Answer in five words."
    assert again.branches["terse"].system_prompt == "Answer in five words."
    with pytest.raises(BranchNotFoundError):
        again.system_prompt_of("nope")


def test_branch_provider_and_parameters_are_defaults_of_every_send(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    default = ScriptedProvider(model="default")
    special = ScriptedProvider(model="special")
    session = ContextSession.create(provider=default, data_dir=data_dir)
    closing.append(session)
    session.branch("hot", provider=special, temperature=0.9, seed=7)
    assert session.branches["hot"].params == {"temperature": 0.9, "seed": 7}
    assert session.branches["hot"].provider is not None
    assert session.branches["hot"].provider.spec == "scripted:special"

    reply = session.send("one").result(DEADLINE)
    assert special.last_request.params == {"temperature": 0.9, "seed": 7}
    assert reply.metadata.model == "special"
    assert not default.requests
    # The call's own parameters win; None drops the branch's value.
    session.send("two", temperature=0.1, seed=None).result(DEADLINE)
    assert special.last_request.params == {"temperature": 0.1}
    # And a provider named in the call wins over the branch's.
    session.send("three", provider=default).result(DEADLINE)
    assert default.last_request.params == {"temperature": 0.9, "seed": 7}
    # The main branch has no defaults.
    session.send("four", branch="main").result(DEADLINE)
    assert default.last_request.params == {}

    with pytest.raises(InvalidInputError, match="temperature"):
        session.branch("bad", temperature=5)
    with pytest.raises(InvalidInputError, match="system prompt must be a string"):
        session.branch("bad", system=3)  # type: ignore[arg-type]
    assert "bad" not in session.branches


def test_edit_system_changes_in_place_until_there_are_replies_then_forks(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    fake = ScriptedProvider()
    session = ContextSession.create(provider=fake, data_dir=data_dir)
    closing.append(session)
    recorder = Recorder(session)

    # No replies yet: the prompt changes in place, with a signal.
    updated = session.edit_system("Answer in five words.")
    assert updated.name == "main"
    assert session.system_prompt_of() == "Answer in five words."
    recorder.wait(
        lambda events: any(
            isinstance(e, BranchUpdated) and e.changed == ["system_prompt"] for e in events
        )
    )
    first = session.send("Why is the sky blue?").result(DEADLINE)
    assert system_of(fake.last_request) == "Answer in five words."

    # Now the branch has a reply made under that prompt: a new branch takes the new one.
    fork = session.edit_system("Answer like a pirate.")
    assert fork.name == "main-system-1"
    assert fork.head == first.id
    assert session.active_branch == "main-system-1"
    assert session.system_prompt_of("main") == "Answer in five words."
    assert session.system_prompt_of() == "Answer like a pirate."
    recorder.wait(lambda events: any(isinstance(e, BranchCreated) for e in events))

    # Regenerating on the fork asks the same question under the new prompt.
    again = session.regenerate().result(DEADLINE)
    assert system_of(fake.last_request) == "Answer like a pirate."
    assert again.parent_id == first.parent_id
    comparison = session.compare("main", "main-system-1")
    assert comparison["main"].system_prompt == "Answer in five words."
    assert comparison["main-system-1"].system_prompt == "Answer like a pirate."

    # The same prompt again changes nothing; a non-active branch is forked, not switched to.
    assert session.edit_system("Answer like a pirate.").name == "main-system-1"
    other = session.edit_system(None, branch="main")
    assert other.name == "main-system-2"
    assert other.system_prompt is None
    assert session.active_branch == "main-system-1"
    with pytest.raises(InvalidInputError, match="must be a string"):
        session.edit_system(42)  # type: ignore[arg-type]


def test_edit_system_on_a_new_branch_ignores_the_replies_it_was_forked_with(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    # A branch just made (a typo in its prompt, nothing sent on it yet) shares main's
    # replies, made on main under main's prompt: not its own, so its prompt is fixed in
    # place, as the guide says; a reply made on it under its prompt then forks.
    fake = ScriptedProvider().reply("Red.").reply("Rouge.").reply("Rouge!")
    session = ContextSession.create(provider=fake, data_dir=data_dir, system="Be brief.")
    closing.append(session)
    red = session.send("Name a colour.").result(DEADLINE)
    session.branch("french", system="Answr in French.")
    fixed = session.edit_system("Answer in French.")
    assert (fixed.name, fixed.system_prompt) == ("french", "Answer in French.")
    assert set(session.branches) == {"main", "french"}
    assert session.active_branch == "french"
    assert session.system_prompt_of("main") == "Be brief."
    # A branch made with main's own prompt (inherited) is not main: in place too.
    session.branch("plain", switch=False)
    assert session.edit_system("Be long.", branch="plain").name == "plain"
    assert session.get(red.id).metadata.system_prompt == "Be brief."  # as it was made

    session.send("Another?").result(DEADLINE)
    assert system_of(fake.last_request) == "Answer in French."
    # Now french has a reply of its own under its prompt: read from the files too.
    session.close()
    reopened = ContextSession.open(session.id, data_dir=data_dir, provider=fake)
    closing.append(reopened)
    fork = reopened.edit_system("Answer in Spanish.", branch="french")
    assert fork.name == "french-system-1"
    assert reopened.system_prompt_of("french") == "Answer in French."
    # Forked at french's head, the fork's replies up to there are french's: in place.
    assert reopened.edit_system("Answer in Italian.", branch=fork.name).name == fork.name


def test_edit_system_waits_for_a_turn_running_on_the_branch(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    # Mid-turn the branch's head is the turn's question or its unfinished reply: a fork
    # made there would continue a conversation that has not happened yet.
    fake = ScriptedProvider().reply("one two three four five", chunks="words", delay=0.05)
    fake.reply("Arr.")
    session = ContextSession.create(provider=fake, data_dir=data_dir)
    closing.append(session)
    turn = session.send("Count to five.")
    with pytest.raises(BusyError, match="still being generated on branch 'main'"):
        session.edit_system("Answer like a pirate.")
    assert set(session.branches) == {"main"}  # nothing was written
    assert session.system_prompt_of() is None
    first = turn.result(DEADLINE)
    fork = session.edit_system("Answer like a pirate.")
    assert fork.head == first.id
    assert [m.content for m in session.history(fork.name)] == [
        "Count to five.",
        "one two three four five",
    ]


def test_edit_system_never_forks_at_a_reply_still_being_written(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    # A writer that announces nothing (the store used directly, or a process whose
    # signals this one has not seen) streams a reply on main: its head is unfinished.
    session = ContextSession.create(provider=ScriptedProvider().reply("A1"), data_dir=data_dir)
    closing.append(session)
    answer = session.send("Q1").result(DEADLINE)
    writer = FileStore(data_dir)
    reply = Message(role="assistant", parent_id=answer.id, status=MessageStatus.STREAMING)
    try:
        anyio.run(lambda: writer.append_message(session.id, reply, branch="main"))
        with pytest.raises(BusyError, match="still being generated on branch 'main'"):
            session.edit_system("Answer like a pirate.")
        assert set(session.branches) == {"main"}
    finally:
        anyio.run(writer.close)


def test_fan_out_over_system_prompts(data_dir: Path, closing: list[ContextSession]) -> None:
    fake = ScriptedProvider()
    fake.reply("Light scatters, blue most.", chunks="words")
    fake.reply("Arr, the sea reflects it, matey!", chunks="words")
    session = ContextSession.create("AB", provider=fake, data_dir=data_dir, system="Be kind.")
    closing.append(session)
    fan = session.fan_out(
        "Why is the sky blue?",
        [{"system": "Answer in five words."}, {"system": "Answer like a pirate."}],
    )
    comparison = fan.result(DEADLINE)
    assert fan.branches == ["main-answer-in-five-words", "main-answer-like-a-pirate"]
    assert sorted(system_of(r) or "" for r in fake.requests) == [
        "Answer in five words.",
        "Answer like a pirate.",
    ]
    terse, pirate = comparison.results
    assert terse.system_prompt == "Answer in five words."
    assert pirate.system_prompt == "Answer like a pirate."
    assert {terse.text, pirate.text} == {
        "Light scatters, blue most.",
        "Arr, the sea reflects it, matey!",
    }
    text = str(comparison)
    assert "system: Answer in five words." in text
    assert "system: Answer like a pirate." in text
    html = comparison._repr_html_()
    assert "Answer like a pirate." in html
    # The arms keep their prompts: a follow-up on one arm is still under its prompt.
    session.send("And at sunset?", branch=fan.branches[1]).result(DEADLINE)
    assert system_of(fake.last_request) == "Answer like a pirate."
    # A variant without a prompt inherits the base branch's.
    second = session.fan_out("Hi", [{"system": "Shout."}, {"temperature": 0.5}])
    result = second.result(DEADLINE)
    assert [r.system_prompt for r in result.results] == ["Shout.", "Be kind."]
    with pytest.raises(InvalidInputError, match="system prompt must be a string"):
        session.fan_out("Hi", [{"system": 1}])


@pytest.mark.anyio
async def test_the_three_line_ab_experiment(data_dir: Path) -> None:
    # As in a notebook cell: create, await the fan-out, display the comparison.
    # One scripted model per arm: the arms run concurrently, so which of them asks a
    # shared script first is up to the scheduler.
    terse = ScriptedProvider(delay=0.001)
    terse.reply("Sunlight scatters off air.", chunks="words", usage=(9, 5))
    pirate = ScriptedProvider(delay=0.001)
    pirate.reply("Arr, sunlight scatters off air, matey!", chunks="words", usage=(9, 7))
    s = ContextSession.create("AB", system=None, provider=terse, data_dir=data_dir)
    try:
        fan = s.fan_out(
            "Why is the sky blue?",
            [
                {"system": "Answer in five words."},
                {"system": "Answer like a pirate.", "provider": pirate},
            ],
        )
        ab = await fan
        html = ab._repr_html_()
        assert fan._repr_html_() == html  # the handle shows the comparison once done
        for shown in ["Answer in five words.", "Answer like a pirate.", "TTFT", "tok/s"]:
            assert shown in html, shown
        # Both answers, as a word diff: the pirate's additions marked as inserted.
        assert "Sunlight scatters off air." in ab.results[0].text
        assert ab.diff() == [
            ("-", "Sunlight"),
            ("+", "Arr, sunlight"),
            ("=", " scatters off "),
            ("-", "air."),
            ("+", "air, matey!"),
        ]
        assert '<span style="background:#dfd;color:#1f2937">Arr, sunlight</span>' in html
        assert "[-Sunlight-]{+Arr, sunlight+} scatters off [-air.-]{+air, matey!+}" in str(ab)
        assert all(r.stats is not None and r.stats.ttft_ms is not None for r in ab.results)
        assert all(r.stats is not None and r.stats.tokens_per_second for r in ab.results)
        assert s.title == "AB"
    finally:
        await s.aclose()


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_a_turn_diverted_to_a_conflict_branch_keeps_its_prompt(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    fake = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("three")
    session = ContextSession.create(provider=fake, tools=[add], data_dir=data_dir)
    closing.append(session)
    session.branch("terse", system="Be terse.", temperature=0.3)
    recorder = Recorder(session)
    turn = session.send("1 + 2?")
    recorder.wait(lambda events: any(e.type == "ToolApprovalRequested" for e in events))
    asking = session.history()[-1]

    async def intrude() -> None:
        # A writer that does not claim the branch moves its head mid-turn.
        async with FileStore(data_dir) as store:
            stray = Message(role="user", parent_id=asking.id, content="from elsewhere")
            await store.append_message(session.id, stray, branch="terse", expected_head=asking.id)

    anyio.run(intrude)
    session.approve()
    assert turn.result(DEADLINE).content == "three"
    conflict = session.branches["terse-conflict-1"]
    assert conflict.system_prompt == "Be terse."
    assert conflict.params == {"temperature": 0.3}
    assert system_of(fake.last_request) == "Be terse."


def test_branches_made_from_a_branch_inherit_its_defaults(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    fake = ScriptedProvider()
    session = ContextSession.create(provider=fake, data_dir=data_dir, system="Context prompt.")
    closing.append(session)
    session.branch("terse", system="Be terse.", top_p=0.5)
    question = session.send("Why?").result(DEADLINE).parent_id
    assert question is not None
    # An edit's new branch answers under the prompt and parameters of the branch edited.
    edited = session.edit(question, "Why, really?").result(DEADLINE)
    assert session.active_branch == "terse-edit-1"
    assert session.system_prompt_of() == "Be terse."
    assert edited.metadata.system_prompt == "Be terse."
    assert fake.last_request.params == {"top_p": 0.5}
    # So does a fan-out from it, unless a variant says otherwise.
    arms = session.fan_out("Go on", [{"temperature": 0.1}, {"system": ""}]).result(DEADLINE)
    assert [r.system_prompt for r in arms.results] == ["Be terse.", None]
    assert [r.parameters for r in arms.results] == [
        {"top_p": 0.5, "temperature": 0.1},
        {"top_p": 0.5},
    ]
