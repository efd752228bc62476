"""An automatic title holds nothing a title may not: no escape sequence, no control
character. Made from the first message or asked of the model, it is a title that
:func:`~cm_notebook.titles.validate_title` takes as it is, so it can be set back, and
lists, terminals and the REST API show it without acting on it."""

from __future__ import annotations

import time
from collections.abc import Callable

from hypothesis import example, given
from hypothesis import strategies as st
from test_session_support import DEADLINE

from cm_notebook._unicode import without_controls
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.titles import clean_model_title, title_from_text, validate_title

#: Pieces of hostile text: escape sequences (CSI, OSC; 7-bit and C1), a lone escape,
#: an unterminated OSC, controls, white space of every kind, quotes and marks the
#: titles trim, combining marks and a surrogate half.
_PIECES = st.sampled_from(
    [
        "\x1b[31m",
        "\x1b[2J",
        "\x9b1;2H",
        "\x1b]0;pwned\x07",
        "\x1b]8;;https://x.test\x1b\\",
        "\x9d0;t\x9c",
        "\x1b",
        "\x1b]0;open",
        "\x00",
        "\x07",
        "\x7f",
        "\x85",
        "\x9f",
        "\r",
        "\n",
        "\t",
        "\x0b",
        "\x1c",
        "\x1f",
        "\u00a0",
        "\u2028",
        "Title: ",
        '"',
        "`",
        "*",
        "#",
        ".",
        "-",
        "\u0301",
        "\ud83d",
        "x" * 90,
    ]
)
_HOSTILE = st.lists(_PIECES | st.text(max_size=12), max_size=20).map("".join)


@given(_HOSTILE)
@example("\x1b]0;pwned\x07\x00 hello")
@example("\x00\x07\x1b")
def test_a_title_made_from_a_message_is_one_validate_title_takes_as_it_is(text: str) -> None:
    title = title_from_text(text)
    assert validate_title(title) == title


@given(_HOSTILE)
@example("\x1b[31mRed\x00 Title")
@example("Title:\x00\n")
def test_a_title_the_model_gave_is_one_validate_title_takes_as_it_is(text: str) -> None:
    title = clean_model_title(text)
    assert title is None or validate_title(title) == title


def test_escape_sequences_go_whole_and_other_controls_go() -> None:
    assert title_from_text("\x1b]0;pwned\x07\x00 hello") == "hello"
    assert title_from_text("\x1b[1;31mWhy\x1b[0m is\x00 the\x07 sky?") == "Why is the sky?"
    assert title_from_text("a\x1ftab\x85next") == "a tab next"  # white space stays a break
    assert clean_model_title("\x1b[31mRed\x00 Title") == "Red Title"
    assert clean_model_title("\x00\x1b[0m\n\x07") is None


def test_the_automatic_titles_can_be_set_back(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider().reply("ok"))
    session.send("\x1b]0;pwned\x07\x00 hello").result(DEADLINE)
    assert session.title == "hello"
    session.title = session.title  # was refused: the title held control characters

    fake = ScriptedProvider(strict=True).reply("answer").reply("\x1b[31mRed\x00 Title")
    asked = new_session(provider=fake, auto_title=True)
    asked.send("hello").result(DEADLINE)
    deadline = time.monotonic() + DEADLINE
    while asked.title == "hello":  # asked of the model in the background
        assert time.monotonic() < deadline, "the model's title was never written"
        time.sleep(0.01)
    assert asked.title == "Red Title"
    asked.title = asked.title


def test_every_control_character_goes_but_white_space() -> None:
    for code in [*range(0x20), *range(0x7F, 0xA0)]:
        character = chr(code)
        kept = without_controls(character)
        assert kept == (character if character.isspace() else ""), hex(code)
