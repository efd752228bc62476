"""Run All over a notebook of ``%%cm`` cells, in a real kernel: the same as running the
cells one by one.

A cell run while this kernel's reply before it is still coming waits for it
(``--ab``, ``--system`` and ``{name}`` fields reading a ``--var`` included), commands
that read or move branches run after the replies above them, ``%cm approve`` waits for
the reply to ask, and ``%cm stop --all`` aborts the lot.
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
    with front_end(tmp_path_factory.mktemp("run-all-data")) as frontend:
        frontend.run("%load_ext cm_notebook")
        yield frontend


HANGING = '[{"hang": True, "after_chunks": 1, "text": "so far"}]'


def _printed(fe: FrontEnd, expression: str) -> Any:
    return ast.literal_eval(fe.run(f"print(repr({expression}))").strip())


def _hanging(fe: FrontEnd, title: str) -> None:
    # A current context whose first reply hangs after "so far" until stopped; the
    # replies after it echo their question.
    fe.use_scripted(title, HANGING)


def _contents(fe: FrontEnd, branch: str) -> list[str]:
    return list(_printed(fe, f"[m.content for m in slow.history({branch!r})]"))


def _slow_paris(fe: FrontEnd, title: str) -> None:
    # A current context whose first reply, "Paris", takes a moment; echoes after it.
    fe.use_scripted(title, '[{"reply": "Paris", "chunks": "words", "delay": 0.3}]')


def test_a_second_cell_while_the_first_reply_streams_waits_for_it(fe: FrontEnd) -> None:
    # Run All: the next %%cm cell comes while the last one's reply is still written.
    # It returns at once, says it waits, and asks once that reply has ended.
    _hanging(fe, "slow")
    first, output = fe.execute("%%cm\nFirst question")
    assert first["status"] == "ok", output
    second, output = fe.execute("%%cm\nSecond question")
    assert second["status"] == "ok", output
    assert any(
        "waits for the replies above it, then asks" in data.get("text/html", "")
        for _parent, _id, data in fe.display_log
    )
    assert _printed(fe, "[m.role for m in slow.history()]") == ["user", "assistant"]
    fe.run("%cm stop")  # the first reply ends (stopped): the second cell asks
    assert _printed(fe, "(await _).content") == "echo: Second question"
    assert _printed(fe, "[m.content for m in slow.history()][2:]") == [
        "Second question",
        "echo: Second question",
    ]


def test_a_cell_while_code_s_reply_streams_says_what_to_do(fe: FrontEnd) -> None:
    # A reply started from code (not a %%cm cell): a cell is refused, with what to do.
    _hanging(fe, "slow code")
    fe.run('started = slow.send("From code")')
    for cell in ("%%cm\nSecond question", '%%cm --ab "A" "B"\nSecond question'):
        second, output = fe.execute(cell)
        assert second["status"] == "error", output
        assert second["ename"] == "UsageError"
        assert "`await _`" in second["evalue"]
        assert "`%cm stop --branch main`" in second["evalue"]
        assert "turn.cancel()" not in second["evalue"]
    fe.run("%cm stop")


def test_run_all_over_a_question_an_ab_cell_and_another_question(fe: FrontEnd) -> None:
    # The A/B cell forks its arms once the reply before it has ended; the question after
    # it goes on the base branch once the arms are forked, not into them.
    _hanging(fe, "run all ab")
    for cell in (
        "%%cm\nFirst question",
        '%%cm --ab "Be brief." "Be long."\nSecond question',
        "%%cm --var third\nThird question",
    ):
        fe.run(cell)  # (which checks the cell succeeded)
    assert _printed(fe, "sorted(slow.branches)") == ["main"]  # nothing forked yet
    assert any(  # the saved copy says it waits too
        data.get("text/plain") == "<cm_notebook comparison (HTML)>"
        and "waits for the replies above it, then asks" in data.get("text/html", "")
        for _parent, _id, data in fe.display_log
    )
    fe.run("%cm stop")  # the first reply ends (stopped): the cells after it go
    fe.run("await _")
    assert _printed(fe, "third") == "echo: Third question"
    assert _contents(fe, "main") == [
        "First question",
        "so far",
        "Third question",
        "echo: Third question",
    ]
    arms = _printed(fe, "sorted(b for b in slow.branches if b != 'main')")
    assert len(arms) == 2
    for arm in arms:
        assert _contents(fe, arm) == [
            "First question",
            "so far",
            "Second question",
            "echo: Second question",
        ]
    # The saved copy shows the arms' answers now.
    assert any(
        data.get("text/plain") == "<cm_notebook comparison (HTML)>"
        and "echo: Second question" in data.get("text/html", "")
        for _parent, _id, data in fe.display_log
    )


def test_run_all_over_a_question_and_a_system_cell_continues_on_its_fork(fe: FrontEnd) -> None:
    # As the cells run one by one would: the --system cell forks (main has a reply under
    # no prompt) and says so in its view; the A/B cell and the cell after continue on
    # the fork.
    _hanging(fe, "run all system")
    for cell in (
        "%%cm\nFirst question",
        '%%cm --system "Be brief."\nSecond question',
        '%%cm --ab "A" "B"\nBetween',
        "%%cm\nThird question",
    ):
        assert "on new branch" not in fe.run(cell)  # not forked yet
    fe.run("%cm stop")
    fe.run("await _")
    assert _printed(fe, "slow.active_branch") == "main-system-1"
    assert _printed(fe, "slow.system_prompt_of('main-system-1')") == "Be brief."
    assert _contents(fe, "main") == ["First question", "so far"]
    assert _contents(fe, "main-system-1") == [
        "First question",
        "so far",
        "Second question",
        "echo: Second question",
        "Third question",
        "echo: Third question",
    ]
    arms = _printed(fe, "sorted(b for b in slow.branches if b.startswith('main-system-1-'))")
    assert len(arms) == 2
    for arm in arms:
        assert _contents(fe, arm)[2:] == [
            "Second question",
            "echo: Second question",
            "Between",
            "echo: Between",
        ]
    assert any(
        "on new branch &#x27;main-system-1&#x27;" in data.get("text/html", "")
        for _parent, _id, data in fe.display_log
    )


def test_a_queued_cell_that_cannot_be_sent_says_to_run_it_again(fe: FrontEnd) -> None:
    _hanging(fe, "closed meanwhile")
    fe.run("%%cm\nFirst question")
    fe.run("%%cm\nSecond question")
    fe.run("slow.close()")  # stops the first reply; the second cannot be sent
    reply, _output = fe.execute("await _")
    assert reply["status"] == "error"
    assert any(
        "not sent: " in data.get("text/html", "")
        and "(run the cell again to ask)" in data.get("text/html", "")
        for _parent, _id, data in fe.display_log
    )


def test_interrupting_a_cell_that_awaits_a_queued_cell_leaves_it_queued(fe: FrontEnd) -> None:
    # The Interrupt button lands at once (a bare await of a future ignores it until
    # another message comes), and the queued cell still asks when its turn comes.
    _hanging(fe, "interrupted wait")
    fe.run("%%cm\nFirst question")
    fe.run("%%cm\nSecond question")
    fe.run("queued = _")
    msg_id = fe.client.execute('print("awaiting", flush=True)\nawait queued', stop_on_error=False)
    fe.wait_for(lambda: "awaiting" in fe.output(msg_id), what="the cell's await")
    fe.manager.interrupt_kernel()
    reply = fe.reply(msg_id)
    assert reply["status"] == "error"
    assert reply["ename"] in ("CancelledError", "KeyboardInterrupt")
    assert "stopped waiting; the cell still asks once the replies above" in fe.output(msg_id)
    fe.run("%cm stop")
    assert _printed(fe, "(await queued).content") == "echo: Second question"


def test_a_field_reading_a_var_still_to_come_is_filled_in_with_the_new_reply(
    fe: FrontEnd,
) -> None:
    # Run All: the second cell reads the first's --var. It is not set yet (no "no
    # variable" error), and it is filled in once that reply has ended.
    _slow_paris(fe, "var to come")
    fe.run("%%cm --var city_to_come\nName a city.")
    reply, output = fe.execute("%%cm\nTell me about {city_to_come}.")
    assert reply["status"] == "ok", output
    assert _printed(fe, "(await _).content") == "echo: Tell me about Paris."
    assert _printed(fe, "slow.history()[2].metadata.model_extra") == {
        "interpolated": ["city_to_come"]
    }
    assert "Paris" in _printed(fe, "slow.history()[2].metadata.variables['city_to_come']")


def test_a_field_reading_a_var_whose_reply_failed_is_not_sent(fe: FrontEnd) -> None:
    # Run All a second time: the reply that sets the variable fails. The cell reading it
    # would ask with the last run's value: it is not sent, and says why and what to do.
    fe.use_scripted("var failed", '[{"error": "permanent", "after_chunks": 1, "delay": 0.3}]')
    fe.run('old_city = "Rome"')
    fe.run("%%cm --var old_city\nName a city.")
    fe.run("%%cm\nTell me about {old_city}.")
    reply, output = fe.execute("await _")
    assert reply["ename"] == "UsageError", output
    said = "the reply that sets `old_city` failed, so `old_city` has no new value"
    assert reply["evalue"].startswith(said)
    assert "Rome" not in str(_contents(fe, "main"))
    fe.wait_for(
        lambda: any(f"not sent: {said}" in data["text/html"] for data in fe.displays.values()),
        what="the cell's view saying it was not sent",
    )


def test_a_field_on_another_branch_waits_for_the_var_not_its_old_value(fe: FrontEnd) -> None:
    # Run All a second time: the variable holds the last run's answer. A cell reading it
    # (here on another branch, so not queued for its branch) waits for the new one.
    _slow_paris(fe, "stale var")
    fe.run('city = "Rome"\nslow.branch("side")\nslow.switch("main")')
    fe.run("%%cm --var city\nName a city.")
    fe.run('%%cm --ab "Be brief." "Be long." --branch side\nAnd {city}?')
    comparison = _printed(fe, "[r.text for r in (await _).results]")
    assert comparison == ["echo: And Paris?", "echo: And Paris?"]


def test_a_field_typed_in_another_unicode_form_names_the_same_variable(fe: FrontEnd) -> None:
    # Python reads identifiers as NFKC: "cafe" + a combining acute in code is the
    # variable "café". A field typed so (a macOS input method, a paste) names it too:
    # for its value, and for the --var still to come that it waits for.
    _slow_paris(fe, "nfd var")
    typed = "cafe\u0301"
    fe.run(f'{typed} = "Rome"\nslow.branch("side")\nslow.switch("main")')
    assert _printed(fe, "'café' in globals()")
    fe.run("%%cm --var café\nName a city.")
    fe.run(f"%%cm --branch side\nAnd {{{typed}}}?")
    assert _printed(fe, "(await _).content") == "echo: And Paris?"
    asked = _printed(fe, "slow.history('side')[-2].metadata.model_extra")
    assert asked == {"interpolated": ["café"]}


def test_history_branch_and_branches_run_after_the_cells_before_them(fe: FrontEnd) -> None:
    # Run All: these commands come while the reply above is still being written. As
    # run one by one, the history shows the reply, the fork comes after it, and the
    # next question goes on the fork.
    _slow_paris(fe, "commands after cells")
    fe.run("%%cm\nName a city.")
    for hostile in ("%cm branch ../..", "%cm switch ../..", "%cm history --branch ../.."):
        reply, _output = fe.execute(hostile)  # refused now, though the command would wait
        assert reply["ename"] == "UsageError"
        assert "branch name '../..' is not valid" in reply["evalue"]
    fe.run("shown = %cm history")
    fe.run("forked = %cm branch alt")
    fe.run("%%cm\nAnd another?")
    fe.run("listed = %cm branches")
    assert "once the cells above have run" in _printed(fe, "listed.text")
    history = _printed(fe, "(await shown, shown.text)[1]").splitlines()
    assert history == ["user: Name a city.", "assistant: Paris"]
    assert _printed(fe, "(await forked, forked.text)[1]") == "on new branch 'alt'"
    assert _printed(fe, "(await listed, listed.text)[1]").splitlines() == [
        "  main  (2 messages)",
        "* alt  (4 messages)",
    ]
    assert _contents(fe, "alt")[2:] == ["And another?", "echo: And another?"]
    # Nothing under way: the command runs at once, as before.
    assert fe.run("%cm switch main").strip() == "on branch 'main'"


def test_compare_run_before_the_arms_exist_compares_them_once_they_do(fe: FrontEnd) -> None:
    _slow_paris(fe, "compare later")
    fe.run("%%cm\nName a city.")
    fe.run('%%cm --ab "Be brief." "Be long."\nAnd another?')
    fe.run("compared = %cm compare\ndisplay(compared)")
    assert _printed(fe, "compared.compare") is None  # only main exists yet
    fe.wait_for(lambda: _printed(fe, "compared.compare is not None"), what="the comparison made")
    names = _printed(fe, "compared.compare.branch_names")
    assert sorted(names) == sorted(_printed(fe, "list(slow.branches)"))
    assert len(names) == 3
    fe.wait_for(
        lambda: any(
            data.get("text/plain") == "<cm_notebook comparison (HTML)>"
            and "echo: And another?" in data.get("text/html", "")
            for _parent, _id, data in fe.display_log
        ),
        what="the saved copy of the comparison",
    )


def test_stop_all_aborts_a_run_all_the_reply_and_every_cell_after_it(fe: FrontEnd) -> None:
    _hanging(fe, "abort run all")
    fe.run("%%cm\nFirst question")
    fe.run("%%cm\nSecond question")
    fe.run("second = _")
    fe.run('%%cm --ab "A" "B"\nThird question')
    fe.run("third = _")
    fe.run("shown = %cm history")
    fe.run("forked = %cm branch alt")
    reply, _output = fe.execute("%cm stop --all --branch nope")
    assert reply["evalue"].startswith("there is no branch 'nope'")
    assert fe.run("%cm stop --all").strip() == "stopping 4 cells of this kernel"  # all still
    assert _printed(fe, "(await forked, forked.text)[1]") == "not done: stopped (`%cm stop --all`)"
    # A command that only reads runs once the cells above it have stopped.
    assert _printed(fe, "(await shown, shown.text)[1]").splitlines() == [
        "user: First question",
        "assistant: so far [stopped before the end: cancelled by the user]",
    ]
    for view in ("second", "third"):
        reply, _output = fe.execute(f"await {view}")
        assert reply["status"] == "error"
        assert reply["ename"] == "CancelledError"
    assert _printed(fe, "sorted(slow.branches)") == ["main"]  # no arms forked
    assert _contents(fe, "main") == ["First question", "so far"]  # stopped, kept
    assert fe.run("%cm stop --all").strip() == "nothing to stop: no reply is being written"


def test_export_as_markdown_waits_for_the_replies_above(fe: FrontEnd) -> None:
    _slow_paris(fe, "export later")
    fe.run("%%cm\nName a city.")
    fe.run("exported = %cm export\ndisplay(exported)")
    assert "Paris" in _printed(fe, "(await exported, exported.text)[1]")
    fe.wait_for(
        lambda: any("Paris" in data.get("text/markdown", "") for _c, _i, data in fe.display_log),
        what="the export shown as Markdown",
    )


def test_a_waiting_cell_fills_in_its_other_fields_as_they_were_when_it_ran(
    fe: FrontEnd,
) -> None:
    # As one by one: {mood} is what it was when the cell ran, not what a later cell
    # made it before the reply the cell waits for ended.
    _slow_paris(fe, "fields as they were")
    fe.run('mood = "happy"')
    fe.run("%%cm --var town\nName a city.")
    fe.run("%%cm\nA {mood} poem about {town}.")
    fe.run('mood = "sad"')
    assert _printed(fe, "(await _).content") == "echo: A happy poem about Paris."


def test_interrupting_await_says_the_reply_goes_on(fe: FrontEnd) -> None:
    _hanging(fe, "interrupted reply")
    fe.run("%%cm\nFirst question")
    msg_id = fe.client.execute('print("awaiting", flush=True)\nawait _', stop_on_error=False)
    fe.wait_for(lambda: "awaiting" in fe.output(msg_id), what="the cell's await")
    fe.manager.interrupt_kernel()
    reply = fe.reply(msg_id)
    assert reply["status"] == "error"
    assert "stopped waiting; the reply goes on (`%cm stop` stops it)" in fe.output(msg_id)
    # The error says it too: not a turn's `.cancel()`, which a view has not.
    assert reply["evalue"] == "stopped waiting; the reply goes on (`%cm stop` stops it)"
    assert ".cancel()" not in fe.output(msg_id)
    fe.run("%cm stop")
    assert _printed(fe, "(await _).content") == "so far"


def test_a_cell_naming_the_branch_a_waiting_fork_makes_goes_on_it(fe: FrontEnd) -> None:
    _slow_paris(fe, "named fork")
    fe.run("%%cm\nName a city.")
    fe.run("%cm branch side")
    reply, output = fe.execute("%%cm --branch side\nOn the side?")
    assert reply["status"] == "ok", output
    assert _printed(fe, "(await _).content") == "echo: On the side?"
    assert _contents(fe, "side") == ["Name a city.", "Paris", "On the side?", "echo: On the side?"]
    assert _contents(fe, "main") == ["Name a city.", "Paris"]


def test_a_reply_stopped_before_any_text_shows_why_not_an_ellipsis(fe: FrontEnd) -> None:
    _slow_paris(fe, "stopped early")
    fe.run("%%cm\nName a city.\n")
    fe.run("stopped = _")
    fe.run("%cm stop")
    fe.run("await stopped")
    html = _printed(fe, "stopped.html()")
    assert "reply interrupted" in html
    assert "…" not in html


def test_stop_all_right_after_a_queued_cell_lets_the_cells_after_it_go(fe: FrontEnd) -> None:
    # The queued cell is stopped before its task ever ran: it still says so, and lets
    # the next cell go once the reply above it has been stopped.
    _hanging(fe, "stop right after")
    fe.run("%%cm\nFirst question")
    fe.run("%%cm\nSecond question")
    fe.run("queued = _")
    fe.run("%cm stop --all")
    reply, output = fe.execute("%%cm\nThird question")
    assert reply["status"] == "ok", output
    assert _printed(fe, "(await _).content") == "echo: Third question"
    assert _contents(fe, "main") == [
        "First question",
        "so far",
        "Third question",
        "echo: Third question",
    ]
    reply, output = fe.execute("await queued")
    assert reply["ename"] == "CancelledError"
    assert "stopped waiting" not in output  # nothing was interrupted
    assert "stopped before it was sent" in _printed(fe, "queued.html()")


def test_interrupting_await_of_an_ab_cell_says_the_arms_go_on(fe: FrontEnd) -> None:
    _hanging(fe, "interrupted arms")
    fe.run('%%cm --ab "Be brief." "Be long."\nA question')
    msg_id = fe.client.execute('print("awaiting", flush=True)\nawait _', stop_on_error=False)
    fe.wait_for(lambda: "awaiting" in fe.output(msg_id), what="the cell's await")
    fe.manager.interrupt_kernel()
    reply = fe.reply(msg_id)
    assert reply["status"] == "error"
    assert "stopped waiting; the arms go on (`%cm stop --all` stops them)" in fe.output(msg_id)
    assert reply["evalue"] == "stopped waiting; the arms go on (`%cm stop --all` stops them)"
    assert ".cancel()" not in fe.output(msg_id)
    assert fe.run("%cm stop --all").startswith("stopping 1 cell")


def test_a_fork_that_fails_leaves_the_next_cell_on_the_branch_before_it(fe: FrontEnd) -> None:
    # One by one: the first `%cm branch alt` makes alt and switches to it; the same
    # cell run again fails (alt exists); the next question goes on alt.
    _slow_paris(fe, "failed fork")
    fe.run("%%cm\nName a city.")
    fe.run("%cm branch alt")
    fe.run("again = %cm branch alt")
    fe.run("%%cm\nAnd another?")
    assert _printed(fe, "(await _).content") == "echo: And another?"
    assert "not done: " in _printed(fe, "again.text")
    assert _contents(fe, "alt")[2:] == ["And another?", "echo: And another?"]
    assert _contents(fe, "main") == ["Name a city.", "Paris"]


def test_retry_waits_for_the_reply_above_to_fail(fe: FrontEnd) -> None:
    fe.run(
        """
        failing = ScriptedProvider().error("permanent", after_chunks=2, delay=0.3).reply("Paris")
        slow = ContextSession.create("retry after", provider=failing)
        %cm use slow
        """
    )
    fe.run("%%cm\nName a city.")
    reply, output = fe.execute("%cm retry")
    assert reply["status"] == "ok", output
    assert _printed(fe, "(await _).content") == "Paris"


def test_reloading_the_extension_keeps_the_context_and_the_cells_under_way(
    fe: FrontEnd,
) -> None:
    _slow_paris(fe, "reloaded")
    fe.run("%%cm --var reloaded_city\nName a city.")
    fe.run("%reload_ext cm_notebook")
    reply, output = fe.execute("%%cm\nAnd {reloaded_city}?")
    assert reply["status"] == "ok", output
    assert _printed(fe, "(await _).content") == "echo: And Paris?"
