"""Edges of ``%cm`` / ``%%cm`` in a real kernel: options that combine, a context that is
closed or damaged, a flag given a value, a deferred compare that fails, an assigned
``%cm send ...?``, control characters in what the magics print, a retried ``--var``.

Driven over ZMQ as a notebook front end drives it; the only fake is the scripted
provider.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from widget_frontend import FrontEnd, front_end

COMPARISON = "<cm_notebook comparison (HTML)>"


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("edges-data")) as frontend:
        frontend.run("%load_ext cm_notebook")
        yield frontend


def _printed(fe: FrontEnd, expression: str) -> Any:
    return ast.literal_eval(fe.run(f"print(repr({expression}))").strip())


def _usage_error(fe: FrontEnd, code: str) -> str:
    reply, output = fe.execute(code)
    assert reply["status"] == "error", output
    assert reply["ename"] == "UsageError", (reply, output)
    assert "\n" not in reply["evalue"].strip()
    return str(reply["evalue"])


def test_fanout_with_system_asks_every_arm_under_that_prompt(fe: FrontEnd) -> None:
    fe.use_scripted("fanout system", "[]")
    fe.run("%%cm --fanout scripted,scripted:other --system 'Answer like a pirate.'\nHello")
    fe.run("compared = await _")
    branches = _printed(fe, "compared.branches")
    assert len(branches) == 2
    # Each arm keeps the prompt, and its answer was made under it.
    prompts = _printed(fe, "[slow.system_prompt_of(b) for b in compared.branches]")
    assert prompts == ["Answer like a pirate."] * 2
    made_under = _printed(fe, "[r.system_prompt for r in compared.results]")
    assert made_under == ["Answer like a pirate."] * 2


def test_system_with_the_prompt_in_effect_forks_nothing(fe: FrontEnd) -> None:
    # The context's prompt, which main inherits, given again: no fork, no message.
    fe.run("%cm new Terse --provider scripted --system 'Be terse.'")
    fe.run("%%cm\nfirst")
    fe.run("await _")
    said = fe.run("%%cm --system 'Be terse.'\nsecond, same prompt")
    assert "new branch" not in said
    fe.run("view = _\nawait view")
    assert _printed(fe, "(view.turn.branch, list(view.session.branches))") == ("main", ["main"])
    # "" (no prompt) on a branch that has none.
    fe.run("%cm new Plain --provider scripted")
    fe.run("%%cm\nfirst")
    fe.run("await _")
    assert "new branch" not in fe.run("%%cm --system ''\nsecond, still no prompt")
    fe.run("view = _\nawait view")
    assert _printed(fe, "(view.turn.branch, list(view.session.branches))") == ("main", ["main"])
    # Another prompt still forks.
    assert "on new branch 'main-system-1'" in fe.run("%%cm --system 'Be loud.'\nthird")


def _current_id(fe: FrontEnd) -> str:
    return str(
        _printed(fe, "get_ipython().magics_manager.registry['CMMagics'].commands.current.id")
    )


def test_use_reopens_a_closed_current_context_as_its_error_says(fe: FrontEnd) -> None:
    fe.run("%cm new Closing --provider scripted")
    context_id = _current_id(fe)
    fe.run("get_ipython().magics_manager.registry['CMMagics'].commands.current.close()")
    said = _usage_error(fe, "%%cm\nhello")
    assert f"`%cm use {context_id}`" in said
    assert fe.run(f"%cm use {context_id}").strip() == "context 'Closing' is current"
    fe.run("%%cm\nhello")
    assert _printed(fe, "(await _).content") == "echo: hello"


def test_use_of_a_variable_s_closed_session_says_it_is_closed(fe: FrontEnd) -> None:
    fe.run(
        "from cm_notebook import ContextSession\n"
        "shut = ContextSession.create('Shut', provider='scripted')\n"
        "shut.close()"
    )
    context_id = _printed(fe, "shut.id")
    said = _usage_error(fe, "%cm use shut")
    assert said.startswith("the session in 'shut' (context 'Shut') is closed")
    assert f"`%cm use {context_id}` opens the context again" in said
    assert fe.run(f"%cm use {context_id}").strip() == "context 'Shut' is current"


def test_use_of_a_damaged_context_says_what_is_wrong_with_it(fe: FrontEnd) -> None:
    fe.run("%cm new Damaged --provider scripted")
    context_id = _current_id(fe)
    fe.run("%cm new Other --provider scripted")
    metadata = fe.data_dir / "contexts" / context_id / "metadata.json"
    metadata.write_text('{"garbage": ', encoding="utf-8")
    said = _usage_error(fe, f"%cm use {context_id}")
    assert "no context" not in said
    assert str(metadata) in said
    assert "not valid JSON" in said
    assert "no context 'c-nothing-here'" in _usage_error(fe, "%cm use c-nothing-here")
    # By title: its title cannot be read, so the error says a damaged one may be it.
    said = _usage_error(fe, "%cm use Damaged")
    assert "no context 'Damaged'" in said
    assert "1 stored context cannot be read" in said
    assert "`%cm ls` names them by id" in said
    # The kernel's data folder is not the default one: the command advised for a
    # terminal names it, and run as given (the id filled in) it finds the damage.
    (command,) = re.findall(r"`(cm-notebook [^`]*)`", said)
    words = shlex.split(command)
    assert words[1:] == ["--data-dir", str(fe.data_dir), "check", "ID"]
    env = {k: v for k, v in os.environ.items() if k != "CM_NOTEBOOK_DATA_DIR"}
    checked = subprocess.run(
        [sys.executable, "-m", "cm_notebook", *words[1:-1], context_id],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert checked.returncode == 1
    assert "not valid JSON" in checked.stderr, checked.stderr
    assert fe.run("%cm use Other").strip() == "context 'Other' is current"
    for _ in range(2):  # said each time, not once as Python shows a warning
        listed = fe.run("%cm ls")
        [line] = [text for text in listed.splitlines() if text.startswith("! not listed:")]
        assert context_id in line
        assert "not valid JSON" in line
        assert "Other" in listed


def test_a_cell_waiting_for_a_reply_checks_its_other_fields_at_once(fe: FrontEnd) -> None:
    fe.use_scripted("waits", "[{'reply': 'Paris', 'delay': 0.3}, {'reply': 'ok'}]")
    fe.run("%%cm --var ans\nCapital of France?")
    # A typo in another field failed only the send, later, shown as a Python repr.
    said = _usage_error(fe, "%%cm\n{ans} {nosuch}")
    assert "{nosuch} in the cell: no variable 'nosuch'" in said
    # Whatever the reply's own field does is left to its text.
    fe.run("%%cm\n{ans!r} starts with {ans[0]:>3}")
    fe.run("sent = await _")
    assert _printed(fe, "slow.history()[-2].content") == "'Paris' starts with   P"


def test_a_branch_named_twice_is_compared_once(fe: FrontEnd) -> None:
    fe.run("%cm new Twice --provider scripted")
    # Accepted before, as a comparison of the branch with itself.
    for line in ("%cm compare main", "%cm compare main main"):
        assert "compare needs two or more branches, got ['main']" in _usage_error(fe, line)


@pytest.mark.parametrize("value", ["no", "false", ""])
def test_a_flag_given_a_value_is_refused_and_stops_nothing(fe: FrontEnd, value: str) -> None:
    fe.use_scripted("flag", '[{"hang": True, "after_chunks": 1, "text": "partial"}]')
    fe.run("%%cm\nq1")
    fe.run("%%cm\nq2")  # queued behind q1
    said = _usage_error(fe, f"%cm stop --all={value}")
    assert f"--all takes no value (got {value!r})" in said
    assert _printed(fe, "slow.running_turn_id('main') is not None")  # still going
    assert fe.run("%cm stop --all").strip() == "stopping 2 cells of this kernel"


@pytest.mark.parametrize(
    "code",
    [
        "r = %cm send What is it?",
        "r=%cm send What is it?",
        "if True:\n    r = %cm send What is it?",
    ],
)
def test_an_assigned_send_ending_in_a_question_mark_is_sent(fe: FrontEnd, code: str) -> None:
    fe.run("%cm new Questions --provider scripted")
    reply, output = fe.execute(code)
    assert reply["status"] == "ok", output
    assert "not found" not in output  # IPython's help did not run
    assert _printed(fe, "(await r).content") == "echo: What is it?"


def test_history_and_ls_show_control_characters_escaped(fe: FrontEnd) -> None:
    fe.use_scripted(
        "controls", r"""[{'reply': 'The answer is NO\rassistant: YES\x1b[8m hidden'}]"""
    )
    fe.run("%%cm\nIs it safe?")
    fe.run("await _")
    assert fe.run("%cm history --last 1").splitlines() == [
        r"assistant: The answer is NO\rassistant: YES\x1b[8m hidden"
    ]
    fe.run("ContextSession.create('\u202eevil title', provider='scripted').close()")
    listed = fe.run("%cm ls")
    assert "\u202e" not in listed
    assert r"\u202eevil title" in listed
    assert "(1 branch)" in listed  # not "(1 branches)"


def test_history_marks_a_failed_reply(fe: FrontEnd) -> None:
    fe.use_scripted("failing", "[{'error': 'permanent', 'message': 'the key is wrong'}]")
    fe.run("%%cm\nq1")
    fe.execute("await _")  # fails
    [line] = fe.run("%cm history --last 1").splitlines()
    assert line.startswith("assistant: [error: ")
    assert "the key is wrong" in line


def test_history_marks_a_stopped_and_a_cut_off_reply(fe: FrontEnd) -> None:
    fe.use_scripted(
        "stopping",
        "[{'hang': True, 'after_chunks': 1, 'text': 'The first half'},"
        " {'reply': 'A long answer th', 'finish': 'length'}]",
    )
    fe.run("%%cm\nq1")
    fe.run("import asyncio\nwhile not _.text: await asyncio.sleep(0.01)")
    fe.run("%cm stop")
    fe.run("await _")
    fe.run("%%cm\nq2")
    fe.run("await _")
    stopped, cut_off = fe.run("%cm history").splitlines()[1::2]
    assert stopped == "assistant: The first half [stopped before the end: cancelled by the user]"
    assert cut_off == "assistant: A long answer th [cut off at the token limit]"


def test_history_marks_a_filtered_and_a_refused_reply(fe: FrontEnd) -> None:
    fe.use_scripted(
        "stopped early",
        "[{'reply': 'Here is how', 'finish': 'content_filter'},"
        " {'reply': 'I can', 'finish': 'refusal'}]",
    )
    for question in ("q1", "q2"):
        fe.run(f"%%cm\n{question}")
        fe.run("await _")
    filtered, refused = fe.run("%cm history").splitlines()[1::2]
    assert filtered == "assistant: Here is how [stopped by the provider's content filter]"
    assert refused == "assistant: I can [the model refused]"


def test_a_deferred_compare_that_fails_says_so_in_its_saved_copy(fe: FrontEnd) -> None:
    fe.use_scripted("compare later", "[{'reply': 'one', 'delay': 0.3}]")
    fe.run("%%cm\nq1")
    before = set(fe.displays)
    fe.run("later = %cm compare main nosuch\ndisplay(later)")  # waits for q1
    [saved] = [
        key
        for key in fe.displays
        if key not in before and fe.displays[key].get("text/plain") == COMPARISON
    ]
    fe.wait_for(lambda: "not compared" in fe.displays[saved]["text/html"], what="the failure saved")
    html = fe.displays[saved]["text/html"]
    assert "nosuch" in html
    assert "then asks" not in html
    assert "not compared" in _printed(fe, "later.children[0].value")


def test_a_retried_reply_fills_the_var_of_the_cell_that_failed(fe: FrontEnd) -> None:
    fe.use_scripted("retry var", "[{'error': 'permanent'}, {'reply': 'recovered'}]")
    fe.run("%%cm --var fixed\nq1")
    assert fe.execute("await _")[0]["status"] == "error"
    fe.run("%cm retry")
    fe.run("%%cm -f text\nfollow-up on {fixed}")  # waits for the retried reply
    assert _printed(fe, "(await _).content") == "echo: follow-up on recovered"
    assert _printed(fe, "fixed") == "recovered"
