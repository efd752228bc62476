"""``%cm send``: the text after ``send`` is the message, exactly as typed, in a real kernel.

A message is not shell words: its quotes and apostrophes are kept. A line ending in
``?`` is a question, not IPython's ``obj?`` help syntax (which would rewrite the line
before the magic runs; the extension keeps it off ``%cm send`` lines).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from widget_frontend import FrontEnd, front_end


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("send-data")) as frontend:
        frontend.run("%load_ext cm_notebook")
        frontend.run("%load_ext cm_notebook")  # loading again must not rewrite lines twice
        yield frontend


@pytest.fixture
def session(fe: FrontEnd) -> None:
    fe.run(
        """
        from cm_notebook import ContextSession
        from cm_notebook.testing import ScriptedProvider
        s = ContextSession.create("send", provider=ScriptedProvider())
        %cm use s
        """
    )


def _printed(fe: FrontEnd, expression: str) -> Any:
    return ast.literal_eval(fe.run(f"print(repr({expression}))").strip())


def _sent(fe: FrontEnd, line: str) -> tuple[str, str | None]:
    """Run ``line`` as a cell and wait for its reply: the message stored, and its branch."""
    reply, output = fe.execute(line)
    assert reply["status"] == "ok", output
    assert "not found" not in output, output  # IPython's help, not the magic, ran
    fe.run("await _")
    return tuple(  # type: ignore[return-value]
        _printed(
            fe, "[(m.content, b) for b in s.branches for m in s.history(b) if m.role == 'user'][-1]"
        )
    )


@pytest.mark.usefixtures("session")
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%cm send What is the capital of France?", "What is the capital of France?"),
        ("%cm send Why??", "Why??"),
        ('%cm send Define the word "serendipity" please', 'Define the word "serendipity" please'),
        ("%cm send What's the time?  ", "What's the time?"),
        ("x = 1\n%cm send Is x one?", "Is x one?"),
        ('%cm send "Quoted whole."', '"Quoted whole."'),
        # A tab after the subcommand ends it as a space does.
        ('%cm send\tDefine "serendipity" now', 'Define "serendipity" now'),
        ("%cm send\tWhat's up", "What's up"),
        ("%cm send what does --verbose do", "what does --verbose do"),
        # After "--", options are text: at the start, and a known one at the end.
        ("%cm send -- --verbose is unknown", "--verbose is unknown"),
        ("%cm send -- what does --branch main do", "what does --branch main do"),
        # Not rewritten by IPython's expansion: no variable, no expression evaluated.
        ("x = 'SECRET'\n%cm send What does {x} mean at $x?", "What does {x} mean at $x?"),
        ("%cm send Compute {len('abc')} and {{x}}", "Compute {len('abc')} and {{x}}"),
    ],
)
def test_send_stores_the_text_exactly_as_typed(fe: FrontEnd, line: str, message: str) -> None:
    assert _sent(fe, line) == (message, "main")


@pytest.mark.usefixtures("session")
def test_send_takes_a_branch_before_or_after_the_text(fe: FrontEnd) -> None:
    fe.run("s.branch('other'); s.switch('main')")
    assert _sent(fe, '%cm send --branch other Is it "here"?') == ('Is it "here"?', "other")
    assert _sent(fe, "%cm send It's there --branch=other") == ("It's there", "other")
    assert _sent(fe, "%cm send --branch other -- --x --branch main") == (
        "--x --branch main",
        "other",
    )


@pytest.mark.usefixtures("session")
def test_a_branch_taken_from_the_end_of_the_line_is_said(fe: FrontEnd) -> None:
    fe.run("s.branch('other'); s.switch('main')")
    line = "%cm send Clone one branch: git clone --branch other"
    reply, output = fe.execute(line)
    assert reply["status"] == "ok", output
    assert output.startswith("sent on branch 'other' (--branch other ended the line;")
    assert "`%cm send -- TEXT` sends TEXT exactly as typed" in output
    fe.run("await _")
    # Before the text, the option is plainly one: nothing to say.
    reply, output = fe.execute("%cm send --branch other Is it here?")
    assert (reply["status"], output) == ("ok", "")
    fe.run("await _")
    # After "--", the whole rest of the line is the message, on the active branch.
    fe.run("%cm send -- Clone one branch: git clone --branch other")
    fe.run("await _")
    assert _printed(fe, "s.history('main')[-2].content") == (
        "Clone one branch: git clone --branch other"
    )


@pytest.mark.usefixtures("session")
def test_help_on_the_magic_and_a_cell_body_are_left_alone(fe: FrontEnd) -> None:
    reply, _ = fe.execute("%cm?")  # help goes to the front end's pager
    assert "Talk to the current context" in str(reply["payload"])
    fe.run("%%cm\n%cm send is this the body?")
    assert _printed(fe, "(await _).content") == "echo: %cm send is this the body?"


@pytest.mark.usefixtures("session")
@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("%cm send", "the text is missing"),
        ("%cm send --nope hi", "unknown option '--nope'"),
        ("%cm send --branch", "--branch needs a value"),
        ("%cm send --branch main --", "the text after -- is missing"),
        ("%cm send --branch -- hi", "--branch needs a value"),
    ],
)
def test_bad_sends_are_one_line_usage_errors(fe: FrontEnd, line: str, says: str) -> None:
    reply, output = fe.execute(line)
    assert reply["status"] == "error", output
    assert reply["ename"] == "UsageError"
    assert says in reply["evalue"]


@pytest.mark.usefixtures("session")
@pytest.mark.parametrize("name", ["__builtins__", "_2", "_i2", "_exit_code"])
def test_a_var_the_kernel_uses_is_refused_and_the_kernel_keeps_working(
    fe: FrontEnd, name: str
) -> None:
    reply, output = fe.execute(f"%%cm --var {name}\nhi")
    assert reply["status"] == "error", output
    assert reply["ename"] == "UsageError"
    assert f"{name!r} is a name the kernel uses itself" in reply["evalue"]
    assert fe.run('print(len("abc"))') == "3\n"


@pytest.mark.usefixtures("session")
@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("%%cm\n    def f():\n        return 1\n", "    def f():\n        return 1"),
        ("%%cm\n\n  \n\tindented\nnot\n  \n\n", "\tindented\nnot"),
        ("%%cm -f code\n    x = 1\n    y = 2", "    x = 1\n    y = 2"),
        # A cell saved with Windows line endings: the message's lines end in "\n".
        ("%%cm\r\nFirst line\r\nSecond line\r\n", "First line\nSecond line"),
    ],
)
def test_a_cell_keeps_its_first_line_s_indentation(fe: FrontEnd, cell: str, message: str) -> None:
    # The blank lines above the message and the whitespace after it are dropped.
    assert _sent(fe, cell) == (message, "main")


@pytest.mark.usefixtures("session")
@pytest.mark.parametrize(
    ("setup", "cell", "says"),
    [
        ("pass", "%%cm\n  \n\t\n", "the cell is empty"),
        ("blank = ' \\n '", "%%cm\n{blank}\n", "the message is empty"),
    ],
)
def test_a_blank_cell_is_still_refused(fe: FrontEnd, setup: str, cell: str, says: str) -> None:
    fe.run(setup)
    reply, output = fe.execute(cell)
    assert reply["status"] == "error", output
    assert says in reply["evalue"], reply["evalue"]
