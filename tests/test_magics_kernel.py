"""``%cm`` / ``%%cm`` in a real kernel, driven over ZMQ as a notebook front end drives it.

The magics are loaded with ``%load_ext cm_notebook``; a cell returns a view at once and
the reply streams into it after the cell has ended (DESIGN fact 7). Bad input gives a
one-line usage error, never a traceback.
"""

from __future__ import annotations

import ast
import html
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from widget_frontend import FrontEnd, front_end

from cm_notebook.magics._reply import RENDER_SHARE
from cm_notebook.session import ContextSession

REPLY = "Paris is the capital of France, on the Seine."


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    data_dir = tmp_path_factory.mktemp("magics-data")
    with front_end(data_dir) as frontend:
        frontend.run("%load_ext cm_notebook")
        yield frontend


def _use_scripted(fe: FrontEnd, script: str, **create: Any) -> str:
    """Make a session with a scripted provider current; returns its id."""
    options = "".join(f", {k}={v}" for k, v in create.items())
    out = fe.run(
        f"""
        import json
        from cm_notebook import ContextSession, tool
        from cm_notebook.testing import ScriptedProvider
        fake = ScriptedProvider(){script}
        s = ContextSession.create("magics", provider=fake{options})
        %cm use s
        print(s.id)
        """
    )
    return out.split()[-1]


def _reply_output(fe: FrontEnd, code: str) -> str:
    """Run a cell that shows a reply; the display id of the reply's output."""
    before = set(fe.displays)
    fe.run(code)
    [display_id] = [key for key in fe.displays if key not in before]
    assert fe.displays[display_id]["text/plain"] == "<cm_notebook reply (HTML)>"
    return display_id


def _html(fe: FrontEnd, display_id: str) -> str:
    return str(fe.displays[display_id]["text/html"])


def _usage_error(fe: FrontEnd, code: str) -> str:
    reply, output = fe.execute(code)
    assert reply["status"] == "error", output
    assert reply["ename"] == "UsageError", (reply, output)
    assert "Traceback" not in output
    assert "\n" not in reply["evalue"].strip()
    return str(reply["evalue"])


def _printed(fe: FrontEnd, expression: str) -> Any:
    return ast.literal_eval(fe.run(f"print(repr({expression}))").strip())


def test_a_cell_streams_the_reply_into_its_view_after_the_cell_ends(fe: FrontEnd) -> None:
    context_id = _use_scripted(fe, f'.reply("{REPLY}", chunks="words", delay=0.1)')
    fe.run("country = 'France'")
    # The cell ends while the reply is still being written: its output shows at once,
    # then the text streams into it through the output's display id.
    reply = _reply_output(
        fe,
        """
        %%cm --var answer
        What is the capital of {country}? {{not a field}}
        """,
    )
    seen = [_html(fe, reply)]

    def complete() -> bool:
        if _html(fe, reply) != seen[-1]:
            seen.append(_html(fe, reply))
        return "Seine" in seen[-1]

    fe.wait_for(complete, what="the whole reply in the cell's output")
    assert "Paris" not in seen[0]  # shown before any text arrived
    assert any("Paris" in html and "Seine" not in html for html in seen)  # streamed
    # The whole text can show a moment before the turn settles and --var is set.
    fe.wait_for(
        lambda: _printed(fe, "globals().get('answer')") is not None, what="--var answer set"
    )
    assert _printed(fe, "answer") == REPLY

    stored = ContextSession.open(context_id, data_dir=fe.data_dir)
    try:
        user, reply = stored.history()
        assert user.content == "What is the capital of France? {not a field}"
        assert user.metadata.model_extra == {"interpolated": ["country"]}
        assert reply.content == REPLY
    finally:
        stored.close()


def test_a_view_is_awaitable_and_history_shows_the_conversation(fe: FrontEnd) -> None:
    _use_scripted(fe, '.reply("Rome.")')
    fe.run(
        """
        %%cm -f text
        And Italy?
        """
    )
    assert _printed(fe, "(await _).content") == "Rome."
    assert fe.run("%cm history --last 2").splitlines() == ["user: And Italy?", "assistant: Rome."]


def test_history_says_a_reply_is_under_way(fe: FrontEnd) -> None:
    # A reply started from code (not a %%cm cell, whose reply history would wait for):
    # a history taken while it is generated says so, with the text so far once stored.
    _use_scripted(fe, '.reply("Slowly, surely.", chunks="words", delay=0.4)')
    fe.run('slowly = s.send("Tell me slowly.")')
    lines = fe.run("%cm history --last 2").splitlines()
    assert lines[0] == "user: Tell me slowly."
    assert lines[-1].startswith("assistant: ")
    assert "…" in lines[-1]
    assert _printed(fe, "(await slowly).content") == "Slowly, surely."
    assert fe.run("%cm history --last 1").splitlines() == ["assistant: Slowly, surely."]


def test_cells_run_back_to_back_ask_one_after_another(fe: FrontEnd) -> None:
    # Run All over cells of questions: each %%cm cell returns at once; one sent while
    # the reply before it on its branch is under way waits for it, then asks.
    _use_scripted(fe, "".join(f'.reply("answer {n}", delay=0.1)' for n in range(3)))
    fe.run("%%cm --var one\nQ1")
    fe.run("%%cm --var two\nQ2")
    fe.run("%%cm -f text\nQ3")
    assert _printed(fe, "(await _).content") == "answer 2"
    assert fe.run("%cm history").splitlines() == [
        line for n in range(3) for line in (f"user: Q{n + 1}", f"assistant: answer {n}")
    ]
    assert _printed(fe, "[one, two]") == ["answer 0", "answer 1"]


def test_await_returns_after_var_is_set(fe: FrontEnd) -> None:
    # The view's own task polls the turn (as every await of a turn does, so Interrupt
    # works): when the reply ends just after that task re-armed its poll, a later
    # ``await view`` wakes first. It must still find --var set. Timed so it does: the
    # reply takes 1.3 polls, the await starts half a poll in.
    _use_scripted(fe, "".join(f'.reply("answer {n}", delay=0.13)' for n in range(3)))
    for number in range(3):
        fe.run(f"%%cm --var answer_{number}\nquestion {number}")
        fe.run("import asyncio\nawait asyncio.sleep(0.05)\nreply = await _")
        assert _printed(fe, f"reply.content == answer_{number}") is True
    fe.run('%%cm --ab "Be brief." "Be loud." --var compared\nHello')
    assert _printed(fe, "(await _).branches == compared.branches") is True


def test_ab_ends_in_a_comparison_of_two_branches(fe: FrontEnd) -> None:
    _use_scripted(fe, "")  # the scripted provider echoes when its script is empty
    fe.run(
        """
        %%cm --ab "Answer in five words." "Answer like a pirate." --var result
        Why is the sky blue?
        """
    )
    assert _printed(fe, "repr(_)") == "<cm_notebook comparison of 2 branches>"
    branches = _printed(fe, "(await _).branches")
    assert len(branches) == 2
    prompts = _printed(fe, "[s.system_prompt_of(b) for b in result.branches]")
    assert prompts == ["Answer in five words.", "Answer like a pirate."]
    assert _printed(fe, "[r.text for r in result.results]") == ["echo: Why is the sky blue?"] * 2
    assert fe.with_class("cm-compare")


def test_fanout_sends_one_message_to_several_providers(fe: FrontEnd) -> None:
    _use_scripted(fe, "")
    fe.run(
        """
        %%cm --fanout scripted,scripted:other --temperature 0
        Hello
        """
    )
    comparison = "(await _)"
    assert _printed(fe, f"len({comparison}.results)") == 2


def _tools_session(fe: FrontEnd, script: str) -> None:
    fe.run(
        """
        from cm_notebook import tool

        @tool
        def add(a: int, b: int) -> int:
            '''Add two numbers.'''
            return a + b
        """
    )
    _use_scripted(fe, script, tools="[add]")


def _asking_for_add(fe: FrontEnd, then: str) -> None:
    # A session whose model asks for add(1, 2) as call-1, then says ``then`` (scripted
    # replies); a %%cm cell's turn waits for that call's approval.
    _tools_session(fe, f'.tool_call("add", {{"a": 1, "b": 2}}, id="call-1"){then}')
    fe.run("%%cm\nWhat is 1 + 2?")
    fe.run("calls = await s.wait_for_approval()")


def test_approve_resumes_a_turn_waiting_for_a_tool_call(fe: FrontEnd) -> None:
    _asking_for_add(fe, '.reply("The sum is 3.")')
    assert fe.run("%cm approve call-1").strip() == "approved add (call-1)"
    assert _printed(fe, "(await _).content") == "The sum is 3."
    assert _printed(fe, "s.history()[-2].content") == "3"


def test_a_queued_cell_offers_its_own_calls_only(fe: FrontEnd) -> None:
    # While it waits, the branch's waiting call is the cell before it's: offered there.
    _asking_for_add(fe, '.reply("The sum is 3.").reply("Hi.")')
    fe.run("%%cm\nHello")
    assert _printed(fe, "_.approvals") is None
    assert _printed(fe, "len(_._approval_slot.children)") == 0
    fe.run("%cm approve call-1")
    assert _printed(fe, "(await _).content") == "Hi."
    assert _printed(fe, "_._approval_slot.children == (_.approvals,)") is True


def _decision_shown(fe: FrontEnd) -> str:
    # The last plain-text output shown (a pending decision's, replaced in place).
    texts = [
        data["text/plain"]
        for _cell, _id, data in fe.display_log
        if "text/html" not in data and "text/plain" in data
    ]
    return str(texts[-1])


def test_approve_run_before_the_reply_asks_decides_when_it_does(fe: FrontEnd) -> None:
    # Run All: `%cm approve` comes while the reply is still being written, before any
    # call waits. It waits for the reply to ask, then approves.
    _tools_session(fe, '.tool_call("add", {"a": 1, "b": 2}, id="call-7").reply("It is 3.")')
    fe.run("reply = %cm send What is 1 + 2?\ndecision = %cm approve call-7\ndisplay(decision)")
    assert "once the reply above asks for a tool" in _decision_shown(fe)
    assert _printed(fe, "[call.id for call in await decision]") == ["call-7"]
    assert _printed(fe, "(await reply).content") == "It is 3."
    assert _decision_shown(fe) == "approved add (call-7)"
    fe.run("reply = %cm send What is 2 + 2?\ndecision = %cm deny --reason no\ndisplay(decision)")
    assert _printed(fe, "await decision") == []
    assert _decision_shown(fe) == "nothing denied: the reply ended without asking for a tool"


def test_deny_tells_the_model_why(fe: FrontEnd) -> None:
    _use_scripted(
        fe,
        '.tool_call("add", {"a": 1, "b": 2}, id="call-2").reply("Fine.")',
        tools="[add]",
    )
    fe.run("%%cm\nAdd 1 and 2")
    fe.run("calls = await s.wait_for_approval()")
    assert fe.run('%cm deny --reason "not now"').strip() == "denied add (call-2)"
    assert _printed(fe, "(await _).content") == "Fine."
    # The reply's own output (what a saved notebook keeps) says which call was denied.
    shown = [data.get("text/html", "") for data in fe.displays.values()]
    reply = [html for html in shown if "Fine." in html]
    assert (
        "<bdi>add</bdi>(<bdi>{&quot;a&quot;: 1, &quot;b&quot;: 2}</bdi>) [denied] "
        "(<bdi>not now</bdi>)" in reply[-1]
    )


def test_deny_without_a_reason_says_the_user_denied_it(fe: FrontEnd) -> None:
    # As the view's Deny: the reason is optional.
    _use_scripted(
        fe,
        '.tool_call("add", {"a": 1, "b": 2}, id="call-3").reply("Fine.")',
        tools="[add]",
    )
    fe.run("%%cm\nAdd 1 and 2")
    fe.run("calls = await s.wait_for_approval()")
    assert fe.run("%cm deny").strip() == "denied add (call-3)"
    fe.run("await _")
    assert _printed(fe, "s.history()[-3].tool_calls[0].reason") == "denied by the user"


def test_a_reply_that_ends_with_no_text_says_so_not_that_it_is_still_coming(
    fe: FrontEnd,
) -> None:
    # "…" is what a reply still being written shows: a saved notebook must not keep it.
    _use_scripted(fe, '.reply("").reply("  \\n")')
    for cell in ("%%cm\nSay nothing.", "%%cm\nSay a blank line."):
        reply = _reply_output(fe, cell)
        fe.run("await _")
        fe.wait_for(
            lambda shown=reply: "(empty reply)" in _html(fe, shown), what="the empty reply said"
        )
        assert "…" not in _html(fe, reply)


def test_a_stop_while_a_call_waits_for_a_decision_says_so_and_lists_the_call(
    fe: FrontEnd,
) -> None:
    _tools_session(fe, '.tool_call("add", {"a": 1, "b": 2}, id="call-5").reply("Unused.")')
    reply = _reply_output(fe, "%%cm\nWhat is 1 + 2?")
    fe.run("calls = await s.wait_for_approval()")
    fe.run("%cm stop")
    fe.run("await _")
    said = "stopped while waiting for a tool decision"
    fe.wait_for(lambda: said in _html(fe, reply), what="the stop said")
    shown = _html(fe, reply)
    assert "<bdi>add</bdi>(<bdi>{&quot;a&quot;: 1, &quot;b&quot;: 2}</bdi>) [denied]" in shown
    assert "…" not in _html(fe, reply)


def test_branch_switch_and_branches(fe: FrontEnd) -> None:
    _use_scripted(fe, "")
    fe.run("%cm send hello")
    fe.run("await _")
    assert fe.run('%cm branch terse --system "Be brief."').strip() == "on new branch 'terse'"
    listing = fe.run("%cm branches").splitlines()
    assert listing == ["  main  (2 messages)", "* terse  (2 messages)  system: Be brief."]
    fe.run("%cm switch main")
    assert _printed(fe, "s.active_branch") == "main"


def test_history_ids_name_the_message_a_branch_forks_from(fe: FrontEnd) -> None:
    _use_scripted(fe, '.reply("Paris.").reply("Lyon.")')
    fe.run("%cm send Capital of France?")
    fe.run("await _")
    fe.run("%cm send Second city?")
    fe.run("await _")
    lines = fe.run("%cm history --ids").splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == [
        "user: Capital of France?",
        "assistant: Paris.",
        "user: Second city?",
        "assistant: Lyon.",
    ]
    first_answer = lines[1].split()[0]
    assert fe.run(f"%cm branch early --from {first_answer}").strip() == "on new branch 'early'"
    assert fe.run("%cm history").splitlines() == ["user: Capital of France?", "assistant: Paris."]
    # An id the context does not have says where the ids are.
    assert "`%cm history --ids`" in _usage_error(fe, "%cm branch late --from m-not-there")


def test_help_on_one_subcommand_says_what_it_does(fe: FrontEnd) -> None:
    page = fe.run("%cm help approve")
    assert page.startswith("%cm approve [TOOL_CALL_ID]")
    assert "--remember context" in page
    assert "%cm deny" not in page  # that subcommand's page, not the list
    assert fe.run("%cm help %%cm").startswith("%%cm [SPEC]")
    assert fe.run("%cm help ls").startswith("%cm ls")
    assert "did you mean 'approve'?" in _usage_error(fe, "%cm help aprove")


def test_help_options_show_the_help(fe: FrontEnd) -> None:
    # As most command lines take them: the help, not "unknown option '--help'".
    assert fe.run("%cm --help").startswith("%cm                      the current context")
    assert fe.run("%cm new --help").startswith("%cm new [TITLE]")
    assert fe.run("%cm history -h").startswith("%cm history")
    assert fe.run("%cm send --help").startswith("%cm send [--branch B]")
    assert fe.run("%%cm --help\nnot sent").startswith("%%cm [SPEC]")


def test_bad_magics_give_one_line_usage_errors(fe: FrontEnd) -> None:
    _use_scripted(fe, "")
    assert "unknown subcommand 'frobnicate'" in _usage_error(fe, "%cm frobnicate")
    assert "unknown subcommand 'hlep' (did you mean 'help'?)" in _usage_error(fe, "%cm hlep")
    assert "unknown option '--bogus'" in _usage_error(fe, "%cm history --bogus 3")
    assert "(did you mean '--temperature'?)" in _usage_error(fe, "%%cm --temprature 1\nhi")
    assert "--last" in _usage_error(fe, "%cm history --last zero")
    assert "no branch 'nope'" in _usage_error(fe, "%cm switch nope")
    assert "call-404" in _usage_error(fe, "%cm approve call-404")
    assert "no variable 'missing'" in _usage_error(fe, "%%cm\nTell me about {missing}")
    assert "--ab" in _usage_error(fe, '%%cm --ab "only one"\nhi')
    assert "--var" in _usage_error(fe, "%%cm --var 2x\nhi")
    # (`%cm send` takes its text as typed, so an apostrophe there is no error.)
    assert "No closing quotation" in _usage_error(fe, '%cm branch "unbalanced')
    assert "no context 'c-nothing-here'" in _usage_error(fe, "%cm use c-nothing-here")
    assert "there is no branch 'nope'" in _usage_error(fe, "%cm approve --branch nope")
    assert "there is no branch 'nope'" in _usage_error(fe, "%cm deny call-1 --branch nope")


def test_new_refuses_an_empty_provider_rather_than_using_the_default(fe: FrontEnd) -> None:
    before = _printed(fe, "len(ContextSession.list())")
    assert "invalid provider spec ''" in _usage_error(fe, "%cm new Empty --provider ''")
    assert _printed(fe, "len(ContextSession.list())") == before  # nothing made


def test_without_a_current_context_a_magic_says_how_to_make_one(tmp_path: Path) -> None:
    with front_end(tmp_path) as fresh:
        fresh.run("%load_ext cm_notebook")
        message = _usage_error(fresh, "%cm history")
        assert "%cm new" in message
        assert "%cm new" in _usage_error(fresh, "%%cm\nhello")
        out = fresh.run("%cm new Greetings --provider scripted")
        assert out.strip() == "context 'Greetings' is current (provider: scripted)"
        fresh.run("%cm send hi")
        assert _printed(fresh, "(await _).content") == "echo: hi"
        fresh.run("%cm")  # the current context's live view
        assert _printed(fresh, "repr(_)") == "<cm_notebook SessionView>"
        fresh.run("greetings = _.session")
        fresh.run("%cm new Other --provider scripted")
        # A context that stops being current stays open for whoever holds it.
        assert _printed(fresh, "(await greetings.send('still open')).content") == "echo: still open"
        fresh.run("%cm use Greetings")  # by title
        fresh.run("%cm")
        assert _printed(fresh, "_.session is greetings")
        assert "* " in fresh.run("%cm ls")


@pytest.mark.slow
@pytest.mark.local_model
def test_a_cell_streams_a_reply_from_the_bundled_model(tmp_path: Path) -> None:
    pytest.importorskip("xllamacpp")
    with front_end(tmp_path) as fresh:
        fresh.run("%load_ext cm_notebook\n%cm new Capitals")
        reply = _reply_output(
            fresh,
            "%%cm --temperature 0 --max-tokens 24 --var answer\nWhat is the capital of France?",
        )
        text = ast.literal_eval(fresh.run("print(repr((await _).content))", timeout=180).strip())
        assert text.strip()  # a 135M model's facts are not the point: that it streams is
        assert _printed(fresh, "answer") == text
        first = html.escape(text.split()[0], quote=False)
        fresh.wait_for(lambda: first in _html(fresh, reply), what="the reply in the output")


def test_stop_retry_and_export(fe: FrontEnd) -> None:
    _use_scripted(
        fe,
        '.hang(after_chunks=2, text="half an answer")'
        '.error("permanent", message="the key is wrong")'
        '.reply("Fixed.")',
    )
    reply = _reply_output(fe, "%%cm\nTake your time")
    fe.wait_for(lambda: "half" in _html(fe, reply), what="the start of the reply")
    assert fe.run("%cm stop").strip() == "stopping the reply on branch 'main'"
    assert _printed(fe, "(await _).status.value") == "interrupted"
    assert fe.run("%cm stop").strip() == "nothing to stop: no reply is being written"

    fe.run("%%cm\nAgain")
    failure = fe.execute("await _")[0]
    assert failure["status"] == "error"
    assert "the key is wrong" in failure["evalue"]
    fe.run("%cm retry")
    assert _printed(fe, "(await _).content") == "Fixed."

    assert "Fixed." in fe.run("doc = %cm export\nprint(doc.data)")
    fe.run("doc = %cm export --format json")
    assert _printed(fe, "json.loads(doc)['format']") == "cm_notebook.export"


def test_stop_with_nothing_on_the_branch_names_where_replies_are_written(fe: FrontEnd) -> None:
    # An --ab cell's arms run on branches of their own, not the active one.
    _use_scripted(fe, '.hang(after_chunks=1, text="a").hang(after_chunks=1, text="b")')
    fe.run("%%cm --ab 'Be terse.' 'Be long.'\nHello")
    fe.wait_for(
        lambda: _printed(fe, "[b for b in s.branches if s.running_turn_id(b)]") != [],
        what="the arms to run",
    )
    said = fe.run("%cm stop").strip()
    assert said.startswith("nothing to stop on branch 'main'; replies are being written on")
    assert "`%cm stop --branch main-" in said
    assert "`%cm stop --all`" in said
    assert fe.run("%cm stop --all").strip() == "stopping 1 cell of this kernel"
    fe.run("await _")


def test_system_sets_the_branch_prompt_and_forks_a_branch_with_replies(fe: FrontEnd) -> None:
    _use_scripted(fe, "")
    assert "new branch" not in fe.run('%%cm --system "Be brief."\nFirst')
    fe.run("await _")
    assert _printed(fe, "(s.active_branch, s.system_prompt_of())") == ("main", "Be brief.")
    # main has a reply made under "Be brief.": a new prompt forks, and the message goes
    # there (and the cell says so).
    said = fe.run('%%cm --branch main --system "Be loud."\nSecond')
    assert "on new branch 'main-system-1': 'main' has replies under another" in said
    assert _printed(fe, "(await _).content") == "echo: Second"
    assert _printed(fe, "_.turn.branch") == "main-system-1"
    assert _printed(fe, "s.system_prompt_of('main-system-1')") == "Be loud."
    assert _printed(fe, "[m.content for m in s.history('main')]") == ["First", "echo: First"]
    # A cell refused for its settings forks nothing and leaves the active branch.
    before = _printed(fe, "(s.active_branch, sorted(s.branch_names))")
    said = _usage_error(fe, '%%cm --system "Be formal." --temperature 9\nThird')
    assert "temperature" in said
    said = _usage_error(fe, '%%cm --system "Be formal." nosuch:model\nThird')
    assert "nosuch" in said
    assert _printed(fe, "(s.active_branch, sorted(s.branch_names))") == before


def test_a_long_reply_is_updated_at_a_pace_its_rendering_allows_and_ends_whole(
    fe: FrontEnd,
) -> None:
    # Each update renders the whole Markdown so far on the kernel's loop: for a long
    # reply the gap after an update grows with what that update took, and the finished
    # reply is still shown whole at once.
    _use_scripted(fe, '.reply("**bold** word " * 40_000 + "THE END", chunks=20_000, delay=0.01)')
    reply = _reply_output(fe, "%%cm\nWrite at length.")
    fe.run("view = _\nawait view")
    assert _html(fe, reply).endswith("THE END</p>\n</div>")
    assert _html(fe, reply) == _printed(fe, "view.html()")
    cost, interval = _printed(fe, "(view._throttle.flush_cost, view._throttle.interval)")
    assert cost > 0
    assert interval >= cost / RENDER_SHARE


def test_a_reply_shows_its_reasoning_and_says_when_it_only_reasoned_or_refused(
    fe: FrontEnd,
) -> None:
    fe.run(
        """
        from cm_notebook import ContextSession
        from cm_notebook.providers.base import Finish, ReasoningDelta, RefusalDelta, TextDelta
        class Thinker:
            name = "thinker"
            model = "thinker-1"
            def __init__(self):
                self.replies = 0
            async def stream(self, request):
                self.replies += 1
                if self.replies == 1:  # cut off while it was still thinking
                    yield ReasoningDelta("I must think hard about this.")
                    yield Finish("length")
                elif self.replies == 2:
                    yield ReasoningDelta("Two plus two.")
                    yield TextDelta("It is 4.")
                    yield Finish("stop")
                else:
                    yield RefusalDelta("I can't help with that.")
                    yield Finish("stop")
            async def aclose(self):
                pass
        s = ContextSession.create("thinking", provider=Thinker())
        %cm use s
        """
    )
    shown = {}
    for cell in ("%%cm\nHard question?", "%%cm\n2+2?", "%%cm\nRob a bank?"):
        shown[cell] = _reply_output(fe, cell)
        fe.run("await _")
    only_thought, answered, refused = shown.values()
    fe.wait_for(lambda: "gave no answer" in _html(fe, only_thought), what="no answer said")
    assert "Reasoning (6 words)" in _html(fe, only_thought)
    assert "I must think hard about this." in _html(fe, only_thought)
    assert "(empty reply)" not in _html(fe, only_thought)
    fe.wait_for(lambda: "Reasoning (3 words)" in _html(fe, answered), what="reasoning shown")
    fe.wait_for(lambda: "the model refused" in _html(fe, refused), what="the refusal said")
