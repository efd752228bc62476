"""What ``%cm``, ``%cm compare``, ``%%cm --ab`` and ``%cm export`` leave in a saved notebook.

A notebook saved without widget state (the default in JupyterLab, VS Code, Colab)
shows only plain outputs. Each of these magics is followed by a ``text/html`` output
holding the conversation or the comparison, kept current through its display id (a
comparison says so once a compared branch is gone); the export's Markdown shows a
reply's HTML as text. Driven in a real kernel over ZMQ.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from cli_process import cli
from widget_frontend import FrontEnd, front_end

from cm_notebook import ContextSession

CONVERSATION = "<cm_notebook conversation (HTML)>"
COMPARISON = "<cm_notebook comparison (HTML)>"
EVIL = '<img src=x onerror="alert(1)"></div><script>alert(2)</script>'


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("saved-data")) as frontend:
        frontend.run("%load_ext cm_notebook")
        yield frontend


def _use_scripted(fe: FrontEnd, replies: list[str]) -> None:
    fe.run(
        f"""
        from cm_notebook import ContextSession
        from cm_notebook.testing import ScriptedProvider
        s = ContextSession.create("saved", provider=ScriptedProvider({replies!r}))
        %cm use s
        """
    )


def _printed(fe: FrontEnd, expression: str) -> Any:
    return ast.literal_eval(fe.run(f"print(repr({expression}))").strip())


def _saved_output(fe: FrontEnd, code: str, plain: str) -> str:
    """Run ``code``; the display id of the one static HTML output it made."""
    before = set(fe.displays)
    fe.run(code)
    [display_id] = [
        key for key in fe.displays if key not in before and fe.displays[key]["text/plain"] == plain
    ]
    return display_id


def _html_has(fe: FrontEnd, display_id: str, *texts: str) -> None:
    fe.wait_for(
        lambda: all(text in fe.displays[display_id]["text/html"] for text in texts),
        what=f"{texts} in the saved output",
    )


def test_cm_shows_the_conversation_in_a_saved_output_kept_current(fe: FrontEnd) -> None:
    _use_scripted(fe, ["First answer.", "Second answer."])
    fe.run("await s.send('hi')")
    saved = _saved_output(fe, "%cm", CONVERSATION)
    assert _printed(fe, "type(_).__mro__[1].__name__") == "SessionView"  # still the view
    _html_has(fe, saved, "First answer.")
    fe.run("await s.send('again')")
    _html_has(fe, saved, "First answer.", "Second answer.")


def test_a_session_view_shown_on_its_own_leaves_the_conversation_too(fe: FrontEnd) -> None:
    _use_scripted(fe, ["Viewed answer.", "Later answer."])
    fe.run("await s.send('hi')")
    saved = _saved_output(fe, "s.view()", CONVERSATION)
    _html_has(fe, saved, "Viewed answer.")
    fe.run("await s.send('again')")
    _html_has(fe, saved, "Viewed answer.", "Later answer.")


def test_compare_shows_the_comparison_in_a_saved_output(fe: FrontEnd) -> None:
    _use_scripted(fe, ["Main answer.", "Other answer."])
    fe.run("await s.send('hi')\ns.branch('other', s.history()[0].id)\nawait s.regenerate()")
    saved = _saved_output(fe, "%cm compare main other", COMPARISON)
    # Each answer is marked up as a word diff against the first: look for the words.
    _html_has(fe, saved, "Main", "Other", "cm-comparison")


def test_ab_ends_in_a_saved_comparison_of_its_arms(fe: FrontEnd) -> None:
    _use_scripted(fe, ["Terse arm.", "Pirate arm."])
    saved = _saved_output(
        fe, '%%cm --ab "Be terse." "Be a pirate." --var result\nHello', COMPARISON
    )
    assert _printed(fe, "repr(_)") == "<cm_notebook comparison of 2 branches>"
    assert _printed(fe, "len((await _).results)") == 2
    # The copy is made before the arms reply, and replaced once they have.
    _html_has(fe, saved, "Terse", "Pirate", "Be a pirate.")


def test_a_queued_ab_cell_stopped_before_it_asks_says_so_in_its_saved_copy(
    fe: FrontEnd,
) -> None:
    # Run All: the --ab cell waits for the reply above it, then `%cm stop --all` stops
    # both. The saved copy must not say for good that it still asks.
    fe.use_scripted("saved stop", '[{"hang": True, "after_chunks": 1, "text": "so far"}]')
    fe.run("%%cm\nFirst question")
    saved = _saved_output(fe, '%%cm --ab "Be terse." "Be long."\nSecond question', COMPARISON)
    assert "waits for the replies above it" in fe.displays[saved]["text/html"]
    fe.run("%cm stop --all")
    _html_has(fe, saved, "stopped before it was sent")
    assert "waits for the replies above it" not in fe.displays[saved]["text/html"]


def test_export_shows_a_replys_html_as_text(fe: FrontEnd) -> None:
    _use_scripted(fe, [EVIL])
    fe.run("await s.send('hi')")
    markdown = fe.run("doc = %cm export\nprint(doc.data)")
    assert "<script" not in markdown
    assert "<img" not in markdown
    assert "&lt;script>alert(2)&lt;/script>" in markdown  # "<" is all that opens markup


def test_a_reply_that_ends_between_cells_is_sent_again_as_the_next_cell(fe: FrontEnd) -> None:
    # A headless front end (nbclient) takes a cell's messages only while it runs: an
    # update made after the %%cm cell ended, with no cell running, would be dropped.
    fe.run(
        """
        from cm_notebook import ContextSession
        from cm_notebook.testing import ScriptedProvider
        between = ContextSession.create("between", provider=ScriptedProvider(
            ["the answer that ends late"], delay=0.05))
        %cm use between
        """
    )
    cell = fe.client.execute("%%cm\nHello?")
    fe.reply(cell)
    fe.wait_for(  # the reply ends while no cell runs: its update comes as the %%cm cell
        lambda: any(
            parent == cell and "ends late" in data.get("text/html", "")
            for parent, _, data in fe.display_log
        ),
        what="the reply's final update",
    )
    after = fe.client.execute("x = 1")
    fe.reply(after)
    assert any(
        parent == after and "the answer that ends late" in data.get("text/html", "")
        for parent, _, data in fe.display_log
    )


def _both_have(fe: FrontEnd, first: str, second: str, text: str) -> None:
    # Every copy is updated in display order, in one go: once the later copy holds
    # ``text``, the update of the earlier one has already arrived (iopub is ordered).
    _html_has(fe, second, text)
    assert text in fe.displays[first]["text/html"]


def test_a_view_shown_again_keeps_every_saved_copy_current(fe: FrontEnd) -> None:
    # `v` in one cell and again in a later one: a saved notebook keeps both copies, so
    # the earlier one must not stay as it was when the view was shown again.
    _use_scripted(fe, ["Answer after both."])
    first = _saved_output(fe, "v = s.view()\nv", CONVERSATION)
    second = _saved_output(fe, "v", CONVERSATION)
    assert first != second
    fe.run("await s.send('hi')")
    _both_have(fe, first, second, "Answer after both.")


def test_a_comparison_shown_again_keeps_every_saved_copy_current(fe: FrontEnd) -> None:
    _use_scripted(fe, ["Main answer.", "Other answer.", "Newer answer."])
    fe.run("await s.send('hi')\ns.branch('other', s.history()[0].id)\nawait s.regenerate()")
    first = _saved_output(fe, "%cm compare main other", COMPARISON)
    second = _saved_output(fe, "_", COMPARISON)
    assert first != second
    fe.run("await s.regenerate(branch='main')")
    _both_have(fe, first, second, "Newer")


def _compared_after(fe: FrontEnd, code: str) -> None:
    # ``code``, then a turn ending on main, which updates the saved comparison: a
    # failing update would print its traceback into the cell running then.
    fe.run(code)
    out = fe.run("reply = await s.send('again', branch='main')")
    assert "Traceback" not in out
    assert "failed" not in out


def test_a_saved_comparison_says_when_too_few_of_its_branches_are_left(fe: FrontEnd) -> None:
    _use_scripted(fe, ["Main answer.", "Other answer.", "Newer answer."])
    fe.run("await s.send('hi')\ns.branch('other', s.history()[0].id)\nawait s.regenerate()")
    saved = _saved_output(fe, "%cm compare main other", COMPARISON)
    _compared_after(fe, "s.switch('main')\ns.delete_branch('other')")
    _html_has(fe, saved, "not compared any more", "&#x27;other&#x27; was deleted")
    assert fe.display_metadata[saved]["cm_notebook"]["arms"] == []
    # It says so for good: later turns on main leave it (and the cells) alone.
    _compared_after(fe, "pass")
    assert "was deleted" in fe.displays[saved]["text/html"]


def test_a_branch_deleted_by_another_process_leaves_the_saved_comparison(
    fe: FrontEnd,
) -> None:
    _use_scripted(fe, ["Main answer.", "Other answer.", "Third answer.", "Newest answer."])
    fe.run(
        """
        await s.send('hi')
        s.branch('other', s.history()[0].id)
        await s.regenerate()
        s.branch('third', s.history('main')[0].id)
        await s.regenerate()
        s.switch('main')
        """
    )
    saved = _saved_output(fe, "view = %cm compare main other third\nview", COMPARISON)
    _html_has(fe, saved, "Third")
    elsewhere = ContextSession.open(_printed(fe, "s.id"), data_dir=fe.data_dir)
    try:
        elsewhere.delete_branch("third")
    finally:
        elsewhere.close()
    # Once this kernel has its signal (the live view has dropped the branch), the copy
    # has dropped it too: the two left are still compared, and kept current.
    heard = "import asyncio\nwhile 'third' in view.branch_names:\n    await asyncio.sleep(0.01)"
    _compared_after(fe, heard)
    _html_has(fe, saved, "Newest", "Other")
    assert "Third" not in fe.displays[saved]["text/html"]
    arms = fe.display_metadata[saved]["cm_notebook"]["arms"]
    assert [arm["branch"] for arm in arms] == ["main", "other"]


def test_a_saved_comparison_that_cannot_be_made_says_why(fe: FrontEnd) -> None:
    # Its context removed by another process (``cm-notebook rm``): showing the
    # comparison again leaves a line saying why there is none, not a traceback.
    _use_scripted(fe, ["Main answer.", "Other answer."])
    fe.run("await s.send('hi')\ns.branch('other', s.history()[0].id)\nawait s.regenerate()")
    _saved_output(fe, "view = %cm compare main other\nview", COMPARISON)
    removed = cli(fe.data_dir, "rm", _printed(fe, "s.id"), "--yes", "--force")
    assert removed.returncode == 0, removed.stderr
    before = set(fe.displays)
    out = fe.run("view")
    assert "Traceback" not in out
    [again] = [key for key in fe.displays if key not in before]
    said = fe.displays[again]["text/html"]
    assert "not compared: context" in said
    assert "was deleted from" in said
    assert "while it was open here" in said


def test_the_saved_conversation_follows_a_renamed_context(fe: FrontEnd) -> None:
    _use_scripted(fe, ["Answer."])
    saved = _saved_output(fe, "s.view()", CONVERSATION)
    fe.run("s.title = 'Renamed by hand'")  # no turn ends after it: only the rename tells
    _html_has(fe, saved, "Renamed by hand")


def test_the_saved_conversation_takes_the_title_named_after_the_turn(fe: FrontEnd) -> None:
    # auto_title names the context once the first reply is in: after the turn's update.
    fe.run(
        """
        titled = ContextSession.create(
            provider=ScriptedProvider(["Paris.", "French Capital Question"]), auto_title=True
        )
        %cm use titled
        """
    )
    saved = _saved_output(fe, "titled.view()", CONVERSATION)
    fe.run("await titled.send('What is the capital of France?')")
    _html_has(fe, saved, "Paris.", "French Capital Question")
