"""Text holding halves of UTF-16 surrogate pairs is stored, not lost.

JSON's ``"\\ud83d"`` (an emoji cut in two by a JavaScript front end, or a model's stream
cut between the two halves of one) decodes to a lone surrogate, which UTF-8 cannot hold.
Messages and titles carrying one are stored with the halves that form a pair joined and
the others replaced by U+FFFD; a reply that ends inside an emoji is kept whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cm_notebook import ContextSession
from cm_notebook._unicode import REPLACEMENT, scrub, without_surrogates
from cm_notebook.model import ContextMetadata, Message
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider

HALF = json.loads('"\\ud83d"')  # the first half of U+1F600, alone
PAIR = json.loads('"\\ud83d\\ude00"')  # both halves, as two code points


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x1FFFF)))
def test_scrubbed_text_always_encodes_and_text_without_halves_is_unchanged(text: str) -> None:
    scrubbed = without_surrogates(text)
    scrubbed.encode("utf-8")  # never raises
    if all(not 0xD800 <= ord(c) <= 0xDFFF for c in text):
        assert scrubbed == text


def test_halves_that_pair_are_joined_and_lone_ones_replaced() -> None:
    assert without_surrogates(f"a{PAIR}b") == "a\U0001f600b"
    assert without_surrogates(f"a{HALF}b") == f"a{REPLACEMENT}b"
    assert scrub({f"k{HALF}": [HALF, 1, None]}) == {f"k{REPLACEMENT}": [REPLACEMENT, 1, None]}


def test_the_store_keeps_messages_and_titles_with_halves(tmp_path: Path) -> None:
    async def main() -> None:
        async with FileStore(tmp_path) as store:
            await store.create_context(ContextMetadata(id="c", title=f"Trip {HALF}"))
            sent = Message(role="user", content=f"Paris {HALF} and {PAIR}")
            await store.append_message("c", sent, branch="main")
        async with FileStore(tmp_path) as fresh:  # read back from the files
            [stored] = await fresh.page("c")
            assert stored.id == sent.id
            assert stored.content == f"Paris {REPLACEMENT} and \U0001f600"
            assert (await fresh.get_metadata("c")).title == f"Trip {REPLACEMENT}"

    anyio.run(main)


@pytest.mark.parametrize("chunks", [1, 7])
def test_a_reply_ending_inside_an_emoji_is_stored_complete(tmp_path: Path, chunks: int) -> None:
    answer = "A long and careful answer. " * 10 + HALF
    provider = ScriptedProvider().reply(answer, chunks=chunks)
    with ContextSession.create("t", data_dir=tmp_path, provider=provider) as session:
        reply = session.send("question").result(timeout=30)
        assert reply.status.value == "complete"
        assert reply.content == answer[:-1] + REPLACEMENT
        context_id = session.id
    with ContextSession.open(context_id, data_dir=tmp_path) as again:
        assert [m.content for m in again.history()] == ["question", answer[:-1] + REPLACEMENT]


def test_a_message_naming_a_file_that_is_not_utf8_is_sent_and_the_branch_goes_on(
    tmp_path: Path,
) -> None:
    # What os.listdir gives for a file name that is not UTF-8 (surrogateescape).
    name = b"r\xe9sum\xe9.pdf".decode("utf-8", "surrogateescape")
    provider = ScriptedProvider().reply("first").reply("second")
    with ContextSession.create("files", data_dir=tmp_path, provider=provider) as session:
        assert session.send(f"summarise {name}").result(timeout=30).content == "first"
        assert session.send("next").result(timeout=30).content == "second"
        shown = session.history()[0].content
        assert shown == f"summarise r{REPLACEMENT}sum{REPLACEMENT}.pdf"
        # The model was sent what is stored, not text no request can carry.
        assert provider.requests[0].messages[-1].content == shown
        context_id = session.id
    with ContextSession.open(context_id, data_dir=tmp_path) as again:
        assert again.history()[0].content == shown
