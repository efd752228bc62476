"""Context titles: renaming, the automatic title, and the title asked of the model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_session_support import DEADLINE, Recorder

from cm_notebook.errors import InvalidInputError
from cm_notebook.events import ContextUpdated
from cm_notebook.model import ContextMetadata
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider
from cm_notebook.titles import UNTITLED, clean_model_title, title_from_text


def title_changes(recorder: Recorder) -> int:
    return sum("title" in e.changed for e in recorder.of(ContextUpdated))


def test_rename_and_the_title_property(data_dir: Path, closing: list[ContextSession]) -> None:
    session = ContextSession.create("First", provider=ScriptedProvider(), data_dir=data_dir)
    closing.append(session)
    recorder = Recorder(session)
    assert session.title == "First"
    session.title = "  Sky   experiments "
    assert session.title == "Sky experiments"
    assert session.rename("Second") == "Second"
    recorder.wait(lambda _events: title_changes(recorder) == 2)
    # Stored: another session over the same data sees it.
    assert [m.title for m in ContextSession.list(data_dir)] == ["Second"]
    for bad in ["", "   ", "x" * 201, 3]:
        with pytest.raises(InvalidInputError, match="title"):
            session.rename(bad)  # type: ignore[arg-type]
    # A titled context keeps its title when messages come.
    session.send("Why is the sky blue?").result(DEADLINE)
    assert session.title == "Second"


def test_an_untitled_context_is_named_after_its_first_message(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    session = ContextSession.create(provider=ScriptedProvider(), data_dir=data_dir)
    closing.append(session)
    assert session.title == UNTITLED
    session.send("Why   is the sky blue?").result(DEADLINE)
    assert session.title == "Why is the sky blue?"
    session.send("And the sunset red?").result(DEADLINE)
    assert session.title == "Why is the sky blue?"
    # Renaming it back to the placeholder: named again after the *first* message.
    session.rename(UNTITLED)
    session.send("Third question").result(DEADLINE)
    assert session.title == "Why is the sky blue?"


class RenamedMeanwhile:
    """The real FileStore behind the Store protocol. The first write of the title
    ``automatic`` is preceded by a rename to ``chosen`` made through a FileStore of its
    own, as another process would: one that came after the session decided to write
    its automatic title, before the write."""

    def __init__(self, inner: FileStore, data_dir: Path, automatic: str, chosen: str) -> None:
        self.inner, self.data_dir = inner, data_dir
        self.automatic, self.chosen = automatic, chosen
        self.renamed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def update_metadata(self, context_id: str, **changes: Any) -> ContextMetadata:
        if changes.get("title") == self.automatic and not self.renamed:
            async with FileStore(self.data_dir) as other:
                await other.update_metadata(context_id, title=self.chosen)
            # Once the rename is written: closing the session cancels a title job, so
            # a test that closes after seeing this must not cut the rename short.
            self.renamed = True
        return await self.inner.update_metadata(context_id, **changes)


@pytest.fixture
def inner_store(data_dir: Path) -> Iterator[FileStore]:
    store = FileStore(data_dir)
    yield store
    anyio.run(store.close)


def test_a_title_given_elsewhere_meanwhile_is_not_replaced_by_the_automatic_one(
    data_dir: Path, inner_store: FileStore, new_session: Callable[..., ContextSession]
) -> None:
    store = RenamedMeanwhile(inner_store, data_dir, "Why is the sky blue?", "My chosen title")
    session = new_session(provider=ScriptedProvider(), store=store)
    assert session.title == UNTITLED
    session.send("Why is the sky blue?").result(DEADLINE)
    assert store.renamed
    assert session.title == "My chosen title"
    # Still titled: a later send names nothing either.
    session.send("And the sunset red?").result(DEADLINE)
    assert session.title == "My chosen title"


def test_a_title_given_elsewhere_meanwhile_is_not_replaced_by_the_models(
    data_dir: Path, inner_store: FileStore, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider(strict=True).reply("Rayleigh scattering.").reply("Blue Sky Physics")
    store = RenamedMeanwhile(inner_store, data_dir, "Blue Sky Physics", "My chosen title")
    session = new_session(provider=fake, store=store, auto_title=True)
    session.send("Why is the sky blue?").result(DEADLINE)
    deadline = time.monotonic() + DEADLINE
    while not store.renamed:  # the title is asked for in the background
        assert time.monotonic() < deadline, "the model's title was never written"
        time.sleep(0.01)
    session.close()  # (cancels the title job if it is still under way)
    assert session.title == "My chosen title"


class EarlierProtocol:
    """The real FileStore behind a Store written to the protocol before
    ``update_metadata`` took ``expected_title`` (its keywords spelled out)."""

    def __init__(self, inner: FileStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def update_metadata(
        self,
        context_id: str,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
        tags: list[str] | None = None,
        provider_spec: str | None = None,
        provider_params: dict[str, object] | None = None,
    ) -> ContextMetadata:
        return await self.inner.update_metadata(
            context_id,
            title=title,
            system_prompt=system_prompt,
            tags=tags,
            provider_spec=provider_spec,
            provider_params=provider_params,
        )


def test_a_store_of_the_earlier_protocol_still_gets_the_automatic_titles(
    inner_store: FileStore, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider(strict=True).reply("Rayleigh scattering.").reply("Blue Sky Physics")
    session = new_session(provider=fake, store=EarlierProtocol(inner_store), auto_title=True)
    reply = session.send("Why is the sky blue?").result(DEADLINE)
    assert reply.content == "Rayleigh scattering."
    assert [m.role for m in session.history()] == ["user", "assistant"]
    deadline = time.monotonic() + DEADLINE
    while session.title != "Blue Sky Physics":  # asked for in the background
        assert time.monotonic() < deadline, f"the model's title was never written: {session.title}"
        time.sleep(0.01)


def test_title_from_text_is_short_and_deterministic() -> None:
    assert title_from_text("hello") == "hello"
    long = "Please explain in great detail how a transformer model computes attention"
    assert title_from_text(long) == "Please explain in great detail how a transformer…"
    assert title_from_text("a" * 100) == "a" * 60 + "…"
    assert title_from_text("one,\ntwo   three") == "one, two three"
    assert clean_model_title('Title: "Why the Sky Is Blue".\nMore text') == "Why the Sky Is Blue"
    assert clean_model_title("  \n ") is None


def test_auto_title_asks_the_model_after_the_reply(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    fake = ScriptedProvider(strict=True)
    fake.reply("Rayleigh scattering.", chunks="words").reply("Blue Sky Physics")
    session = ContextSession.create(provider=fake, data_dir=data_dir, auto_title=True)
    closing.append(session)
    recorder = Recorder(session)
    reply = session.send("Why is the sky blue?").result(DEADLINE)
    assert reply.content == "Rayleigh scattering."
    recorder.wait(lambda _events: title_changes(recorder) == 2)
    assert session.title == "Blue Sky Physics"
    # The title request is not part of the conversation.
    assert [m.content for m in session.history()] == ["Why is the sky blue?", reply.content]
    assert "Why is the sky blue?" in fake.last_request.messages[-1].content


def test_auto_title_never_blocks_or_fails_a_send(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    fake = ScriptedProvider(strict=True)
    fake.reply("first answer").hang().reply("second answer")
    session = ContextSession.create(provider=fake, data_dir=data_dir, auto_title=True)
    closing.append(session)
    session.send("one").result(DEADLINE)
    # The title request hangs; the conversation goes on regardless.
    assert session.send("two").result(DEADLINE).content == "second answer"
    assert session.title == "one"
    session.close()  # cancels the hanging title request

    failing = ScriptedProvider(strict=True).reply("answer").error("permanent")
    other = ContextSession.create(provider=failing, data_dir=data_dir, auto_title=True)
    closing.append(other)
    recorder = Recorder(other)
    assert other.send("hello there").result(DEADLINE).content == "answer"
    deadline = time.monotonic() + DEADLINE
    while len(failing.requests) < 2:  # poll: the title request sends no signal
        assert time.monotonic() < deadline, "the title was never asked for"
        time.sleep(0.01)
    other.close()  # waits for the title job to end
    assert other.title == "hello there"
    assert not [e for e in recorder.snapshot() if e.type == "Error"]


def test_names_that_lists_show_refuse_control_characters(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    # An escape sequence or a NUL in a title, a tag or a branch description would garble
    # every list and terminal that shows it: refused where it enters, nothing stored.
    with pytest.raises(InvalidInputError, match=r"tag .* control characters \(found U\+001B\)"):
        ContextSession.create("T", tags=["\x1b[31mred"], data_dir=data_dir)
    with pytest.raises(InvalidInputError, match=r"found U\+0009"):
        ContextSession.create("T", tags=["a\tb"], data_dir=data_dir)
    with pytest.raises(InvalidInputError, match="tags must be a list"):
        ContextSession.create("T", tags="study", data_dir=data_dir)  # type: ignore[arg-type]
    assert ContextSession.list(data_dir) == []
    session = ContextSession.create(
        "T", tags=["study", "ünïcode ok"], provider=ScriptedProvider(), data_dir=data_dir
    )
    closing.append(session)
    assert session.metadata.tags == ["study", "ünïcode ok"]
    with pytest.raises(InvalidInputError, match=r"title cannot contain .*U\+0000"):
        session.rename("bad\x00title")
    assert session.title == "T"
    with pytest.raises(InvalidInputError, match=r"branch description .*U\+001B"):
        session.branch("b", description="\x1b]0;owned\x07")
    assert "b" not in session.branches
    # Line breaks and tabs are text in a description.
    session.branch("c", description="line one\n\tline two", switch=False)
    assert session.branches["c"].description == "line one\n\tline two"


def test_a_description_keeps_line_ends_but_refuses_a_carriage_return_of_its_own(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    # A lone "\r" sends a terminal back to the line's start: what follows hides what
    # was before it ("safe\rEVIL" shows "EVIL"). Windows line ends are line breaks.
    session = ContextSession.create("T", provider=ScriptedProvider(), data_dir=data_dir)
    closing.append(session)
    with pytest.raises(InvalidInputError, match=r"found U\+000D\); remove them \(line breaks"):
        session.branch("b", description="looks safe\rhidden")
    with pytest.raises(InvalidInputError, match=r"found U\+000D"):
        session.branch("b", description="ends in a lone\r")
    assert "b" not in session.branches
    session.branch("c", description="line one\r\nline two\n", switch=False)
    assert session.branches["c"].description == "line one\r\nline two\n"


def test_a_stored_control_character_still_opens(data_dir: Path) -> None:
    # Refused where it enters, never on reading: a context written before still opens.
    session = ContextSession.create("T", provider=ScriptedProvider(), data_dir=data_dir)
    context_id = session.id
    session.close()
    metadata = data_dir / "contexts" / context_id / "metadata.json"
    raw = json.loads(metadata.read_text())
    raw["tags"] = ["old\x1btag"]
    raw["branches"]["main"]["description"] = "old\x00description"
    metadata.write_text(json.dumps(raw))
    with ContextSession.open(context_id, data_dir=data_dir) as reopened:
        assert reopened.metadata.tags == ["old\x1btag"]
        assert reopened.branches["main"].description == "old\x00description"


def test_context_tags_are_kept_once_each_in_nfc(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    # "café" typed with a combining accent and with "é" were two tags, and a repeat
    # was listed twice, wherever contexts are listed.
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    session = ContextSession.create(
        "T", tags=[decomposed, "study", composed, "study"], data_dir=data_dir
    )
    closing.append(session)
    assert session.metadata.tags == [composed, "study"]
    (listed,) = ContextSession.list(data_dir)
    assert listed.tags == [composed, "study"]
