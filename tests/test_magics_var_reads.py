"""Run All over a ``%%cm --var`` cell and the Python cells after it, in a real kernel:
a cell that names the variable while its reply is still being written waits for the
reply, as if the cells had run one by one; any other cell runs at once.
"""

from __future__ import annotations

import ast
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from widget_frontend import FrontEnd, front_end

from cm_notebook.magics._cell_reads import cell_reads
from cm_notebook.magics._var_reads import WAIT_FUNCTION, _waiting_before


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("var-reads-data")) as frontend:
        frontend.run("%load_ext cm_notebook")
        yield frontend


def _context(fe: FrontEnd, title: str, first: str) -> None:
    # A current context whose first reply is ``first`` (a dict of the scripted
    # provider's), the replies after it echo their question.
    fe.use_scripted(title, f"[{first}]")


def _slow_paris(fe: FrontEnd, title: str) -> None:
    _context(fe, title, '{"reply": "Paris", "chunks": "words", "delay": 0.3}')


def test_a_cell_reading_a_var_still_to_come_waits_for_its_reply(fe: FrontEnd) -> None:
    # The first run of a notebook: without the wait, a NameError.
    _slow_paris(fe, "first run")
    fe.run("%%cm --var capital\nName a city.")
    assert fe.run("print(capital)") == "Paris\n"


def test_a_cell_does_not_read_the_value_a_previous_run_left(fe: FrontEnd) -> None:
    # Run All a second time: the variable holds the last run's answer. An f-string
    # names it too.
    _slow_paris(fe, "second run")
    fe.run('city = "Rome"')
    fe.run("%%cm --var city\nName a city.")
    assert fe.run('said = f"{city}!"\nprint(said)') == "Paris!\n"


def test_a_cell_waits_for_every_reply_whose_var_it_reads(fe: FrontEnd) -> None:
    # The second question reads the first answer ({first} waits for it), and a Python
    # cell after both reads both answers.
    _slow_paris(fe, "two vars")
    fe.run("%%cm --var first\nName a city.")
    fe.run("%%cm --var second\nWhy {first}?")
    assert fe.run("print(first, '/', second)") == "Paris / echo: Why Paris?\n"


def test_line_numbers_of_a_traceback_stay_the_cell_s(fe: FrontEnd) -> None:
    _slow_paris(fe, "tracebacks")
    fe.run("%%cm --var town\nName a city.")
    reply, output = fe.execute("town\n1 / 0")
    assert reply["ename"] == "ZeroDivisionError"
    assert "line 2" in output
    assert "line 3" not in output


def test_a_cell_starting_with_a_compound_statement_waits_too(fe: FrontEnd) -> None:
    _slow_paris(fe, "compound")
    fe.run("%%cm --var word\nName a city.")
    code = "for letter in word[:2]:\n    print(letter)"
    assert fe.run(code) == "P\na\n"


def test_a_capture_cell_whose_python_names_the_var_waits_too(fe: FrontEnd) -> None:
    _slow_paris(fe, "capture")
    fe.run("%%cm --var captured_city\nName a city.")
    fe.run("%%capture printed\nprint(captured_city)")
    assert fe.run("print(printed.stdout, end='')") == "Paris\n"


def test_a_time_line_naming_the_var_waits_too(fe: FrontEnd) -> None:
    # %time compiles its code itself, while the cell runs: no await goes in there.
    _slow_paris(fe, "time line")
    fe.run("%%cm --var timed\nName a city.")
    assert fe.run("%time print(timed)").startswith("Paris\n")


def test_cells_a_wait_would_break_run_as_they_are_and_history_keeps_the_cell(
    fe: FrontEnd,
) -> None:
    _slow_paris(fe, "left alone")
    fe.run('left = "old"')
    fe.run("%%cm --var left\nName a city.")
    # Valid one statement at a time (as IPython runs a cell with no await), not as one
    # module (a use before `global`): it runs at once, as it would have.
    reply, output = fe.execute("print(left[:0] + 'ran')\nglobal left")
    assert reply["status"] == "ok", output
    assert output == "ran\n"
    # A comment above a loop holds the wait: the traceback's lines are the cell's.
    reply, output = fe.execute("# first letters\nfor c in left[:1]:\n    pass\n1 / 0")
    assert reply["ename"] == "ZeroDivisionError"
    assert "line 4" in output
    assert "line 5" not in output
    # What the cell's history entry holds (%save writes it) is the cell as written.
    fe.run("%%cm --var kept_in_history\nAnother?")
    fe.run("upper = kept_in_history.upper()")
    assert fe.run("print(repr(In[-2]))") == "'upper = kept_in_history.upper()'\n"


def test_a_cell_starting_with_future_imports_waits_after_them(fe: FrontEnd) -> None:
    _slow_paris(fe, "future")
    fe.run("%%cm --var future_city\nName a city.")
    code = "from __future__ import annotations\nprint(future_city)"
    assert fe.run(code) == "Paris\n"


def test_the_last_cell_setting_a_var_wins_whichever_reply_ends_last(fe: FrontEnd) -> None:
    # Two cells give the same --var on two branches; the first one's reply ends last.
    # One by one, the variable holds the second cell's answer.
    _slow_paris(fe, "same var")
    fe.run('slow.branch("side")\nslow.switch("main")')
    fe.run("%%cm --var same\nName a city.")
    fe.run("%%cm --var same --branch side\nAnother?")
    assert fe.run("print(same)") == "echo: Another?\n"
    fe.wait_for(
        lambda: fe.run("print(slow.history('main')[-1].status.value)") == "complete\n",
        what="the first reply's end",
    )
    assert fe.run("print(same)") == "echo: Another?\n"


def test_reset_clears_a_var_after_its_reply_has_set_it(fe: FrontEnd) -> None:
    # One by one, %reset comes after the reply: the variable is gone, and stays gone.
    _slow_paris(fe, "reset")
    fe.run("%%cm --var gone\nName a city.")
    fe.run("%reset -f")
    fe.run("import asyncio\nawait asyncio.sleep(1)")  # the reply would have ended by now
    reply, output = fe.execute("gone")
    assert reply["ename"] == "NameError", output


def test_an_earlier_cell_s_value_is_waited_for_when_a_later_one_fails(fe: FrontEnd) -> None:
    # Two cells give --var; the later one fails and sets nothing. One by one, the
    # variable holds the earlier one's answer.
    paris = '{"reply": "Paris", "chunks": "words", "delay": 0.3}'
    _context(fe, "later fails", f'{paris}, {{"error": "permanent", "delay": 0.1}}')
    fe.run('slow.branch("b")\nslow.switch("main")')
    fe.run("%%cm --var kept\nName a city.")
    fe.run("%%cm --var kept --branch b\nAnother.")
    assert fe.run("print(kept)") == "Paris\n"


def test_a_cell_reading_a_var_whose_reply_failed_does_not_run(fe: FrontEnd) -> None:
    # Run All a second time: the reply that sets the variable fails. The cell after it
    # would go on with the last run's value: it does not run, and says why in one line.
    _context(fe, "setter fails", '{"error": "permanent", "after_chunks": 1, "delay": 0.3}')
    fe.run('stale = "from the last run"')
    fe.run("%%cm --var stale\nName a city.")
    reply, output = fe.execute("print('python sees:', stale)")
    assert reply["ename"] == "UsageError", output
    assert "python sees" not in output
    assert reply["evalue"].startswith(
        "this cell did not run: the reply that sets `stale` failed, so `stale` has no new value"
    )
    assert "%cm retry" in reply["evalue"]


def test_magics_python_code_counts_after_options_and_inside_capture(fe: FrontEnd) -> None:
    _slow_paris(fe, "magic code")
    fe.run("%%cm --var opt\nName a city.")
    assert fe.run("%timeit -n1 -r1 print(len(opt))").startswith("5\n")
    fe.run("%%cm\nAnother?")
    fe.run("%%capture captured\ndoc = %cm export -f json")
    assert fe.run("print('echo: Another?' in doc)") == "True\n"


def test_xdel_def_and_functions_defined_before_count_as_naming_the_var(fe: FrontEnd) -> None:
    _slow_paris(fe, "other names")
    fe.run("def show():\n    return f'shown: {city_of_show}'")
    fe.run("%%cm --var city_of_show\nName a city.")
    assert fe.run("print(show())") == "shown: Paris\n"
    fe.run("%%cm --var rebound\nAnother?")
    fe.run("def rebound():\n    return 42")
    fe.run("import asyncio\nawait asyncio.sleep(0.5)")  # the reply would have ended
    assert fe.run("print(rebound())") == "42\n"
    fe.run("%%cm --var dropped\nAnd another?")
    fe.run("%xdel dropped")
    reply, output = fe.execute("dropped")
    assert reply["ename"] == "NameError", output


def test_a_shell_command_filling_in_the_var_waits_too(fe: FrontEnd) -> None:
    _slow_paris(fe, "shell")
    fe.run("%%cm --var shell_city\nName a city.")
    assert fe.run("!echo $shell_city").strip() == "Paris"


def test_a_magic_filling_in_the_var_in_its_line_waits_too(fe: FrontEnd) -> None:
    _slow_paris(fe, "magic line")
    fe.run("%%cm --var env_city\nName a city.")
    fe.run("%env CM_TEST_CITY=$env_city")
    assert fe.run("import os; print(os.environ['CM_TEST_CITY'])").strip() == "Paris"
    fe.run("import pathlib, tempfile; tmp = pathlib.Path(tempfile.mkdtemp())")
    _slow_paris(fe, "cell magic line")
    fe.run("%%cm --var file_city\nName a city.")
    fe.run("%%writefile {str(tmp / file_city.lower())}.txt\nhello")
    assert fe.run("print((tmp / 'paris.txt').read_text())").strip() == "hello"


def test_a_cell_that_does_not_name_the_var_runs_at_once(fe: FrontEnd) -> None:
    # The reply hangs until stopped: a cell that waited for it would time out. The
    # name inside a string is text, not a read.
    _context(fe, "unrelated", '{"hang": True, "after_chunks": 1, "text": "so far"}')
    fe.run("%%cm --var hung\nName a city.")
    assert fe.run('print("hung", 1 + 1)', timeout=20) == "hung 2\n"
    fe.run("%cm stop")


def test_interrupting_the_wait_says_the_reply_goes_on(fe: FrontEnd) -> None:
    _context(fe, "interrupted", '{"hang": True, "after_chunks": 1, "text": "so far"}')
    fe.run("%%cm --var stuck\nName a city.")
    msg_id = fe.client.execute("print(stuck)", stop_on_error=False)
    time.sleep(1)  # the cell is waiting (nothing it could print says so)
    fe.manager.interrupt_kernel()
    reply = fe.reply(msg_id)
    assert reply["ename"] in ("CancelledError", "KeyboardInterrupt")
    said = fe.output(msg_id)
    assert "stopped waiting for the reply that sets `stuck`; it goes on" in said
    assert "this cell did not run" in said
    # The reply was not stopped by it. Stopped now, it leaves its text so far, and
    # reading the variable waits no more.
    assert fe.run("print(slow.history()[-1].status.value)") == "streaming\n"
    fe.run("%cm stop")
    assert fe.run("print(stuck)") == "so far\n"


def test_with_autoawait_off_a_cell_runs_as_it_is(fe: FrontEnd) -> None:
    # No top-level await can run then: the cell reads what is there, as before.
    _slow_paris(fe, "autoawait off")
    fe.run("%autoawait off")
    try:
        fe.run("%%cm --var later\nName a city.")
        reply, output = fe.execute("later")
        assert reply["ename"] == "NameError", output
    finally:
        fe.run("%autoawait on")
    assert fe.run("print((await _).content)") == "Paris\n"


def test_a_cell_waiting_for_a_reply_that_asks_for_a_tool_lets_the_click_through(
    fe: FrontEnd,
) -> None:
    # The reply waits for Approve; the cell naming its --var waits for the reply. The
    # click (a comm message to the kernel) still lands while the cell waits.
    fe.run(
        """
        from cm_notebook import ContextSession, tool
        from cm_notebook.testing import ScriptedProvider

        @tool
        def add(a: int, b: int) -> int:
            '''Add two numbers.'''
            return a + b

        asks = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("The sum is 3.")
        s = ContextSession.create("asks", provider=asks, tools=[add])
        %cm use s
        """
    )
    fe.run("%%cm --var total\nWhat is 1 + 2?")
    fe.run("view = _\ncalls = await s.wait_for_approval()")
    button = fe.wait_for(
        lambda: fe.run(
            "rows = list(view.approvals.rows.values())\n"
            "print(rows[0].approve_button.model_id if rows else '')"
        ).strip(),
        what="the Approve button",
    )
    msg_id = fe.client.execute("print(total)")
    # The waiting cell says why it waits.
    asks = "the reply that sets `total` asks to run a tool: Approve or Deny it in that cell's view"
    fe.wait_for(lambda: asks in fe.output(msg_id), what="why the cell waits")
    fe.click(button)
    assert fe.reply(msg_id)["status"] == "ok"
    assert fe.output(msg_id).endswith("runs once the reply has ended\nThe sum is 3.\n")


def test_exporting_json_waits_for_the_replies_above(fe: FrontEnd) -> None:
    # As `%cm export` (Markdown) does in its view: the document has the reply.
    _slow_paris(fe, "export json")
    fe.run("%%cm\nName a city.")
    fe.run("doc = %cm export --format json")
    contents = "import json\nprint([m['content'] for m in json.loads(doc)['messages']])"
    assert fe.run(contents) == "['Name a city.', 'Paris']\n"
    # A cell that only exports (shown as its value) waits too; nothing under way then:
    # no wait.
    fe.run("%%cm\nAnd another?")
    fe.run("%cm export -f json")
    assert fe.run("print('echo: And another?' in _)") == "True\n"


def test_exporting_json_below_a_reply_that_asks_for_a_tool_says_so(fe: FrontEnd) -> None:
    # The export waits for the reply, which waits for Approve: the cell says so.
    fe.run(
        """
        from cm_notebook import ContextSession, tool
        from cm_notebook.testing import ScriptedProvider

        @tool
        def add(a: int, b: int) -> int:
            '''Add two numbers.'''
            return a + b

        asks = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("The sum is 3.")
        s = ContextSession.create("asks json", provider=asks, tools=[add])
        %cm use s
        """
    )
    fe.run("%%cm\nWhat is 1 + 2?")
    fe.run("view = _\ncalls = await s.wait_for_approval()")
    button = fe.wait_for(
        lambda: fe.run(
            "rows = list(view.approvals.rows.values())\n"
            "print(rows[0].approve_button.model_id if rows else '')"
        ).strip(),
        what="the Approve button",
    )
    msg_id = fe.client.execute("doc = %cm export --format json")
    asks = "a reply above asks to run a tool: Approve or Deny it in that cell's view"
    fe.wait_for(lambda: asks in fe.output(msg_id), what="why the cell waits")
    fe.click(button)
    assert fe.reply(msg_id)["status"] == "ok"
    assert fe.run("print('The sum is 3.' in doc)") == "True\n"


def test_exporting_json_after_making_another_context_current_waits_for_its_replies(
    fe: FrontEnd,
) -> None:
    # Which context the cell exports is known only once its `%cm use` has run.
    _slow_paris(fe, "export elsewhere")
    fe.run("paris_context = slow")
    fe.run("%%cm\nName a city.")
    fe.run("%cm new somewhere else")
    fe.run("%cm use paris_context\ndoc = %cm export --format json")
    contents = "import json\nprint([m['content'] for m in json.loads(doc)['messages']])"
    assert fe.run(contents) == "['Name a city.', 'Paris']\n"


# -- where the wait goes, on code a cell may hold (no kernel needed) ------------------

CALL = f"await {WAIT_FUNCTION}(['x'])"


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("x\n", f"{CALL}; x\n"),
        ("# a comment\n\ny = x\n", f"# a comment\n\n{CALL}; y = x\n"),
        ("f(\n  x)\nprint(1)\n", f"{CALL}; f(\n  x)\nprint(1)\n"),
        ("s = 'a\\x0cb'\r\nx\r\n", f"{CALL}; s = 'a\\x0cb'\r\nx\r\n"),
        ("for c in x:\n    print(c)\n", f"{CALL}\nfor c in x:\n    print(c)\n"),
        ("@wrap\ndef f():\n    return x\n", f"{CALL}\n@wrap\ndef f():\n    return x\n"),
        ("reply = await x\n", f"{CALL}; reply = await x\n"),
        ("# a loop\nfor c in x:\n    pass\n", f"{CALL}  # a loop\nfor c in x:\n    pass\n"),
        (
            '"""Notes."""\nfrom __future__ import annotations\nprint(x)\n',
            f'"""Notes."""\nfrom __future__ import annotations\n{CALL}; print(x)\n',
        ),
        (
            "from __future__ import annotations\ny: int = x\n",
            f"from __future__ import annotations\n{CALL}; y: int = x\n",
        ),
    ],
)
def test_the_wait_goes_before_the_first_statement_keeping_line_numbers(
    cell: str, expected: str
) -> None:
    tree = ast.parse(cell)
    changed = _waiting_before(cell, tree, CALL)
    assert changed == expected
    # Every statement of the cell is still there, in order, the wait among them.
    after = [ast.dump(s) for s in ast.parse(changed).body]
    after.remove(ast.dump(ast.parse(CALL).body[0]))
    assert after == [ast.dump(s) for s in tree.body]


@pytest.mark.parametrize(
    "cell",
    [
        "from __future__ import annotations\n",
        # Valid as IPython runs it without a wait (a statement at a time), not as one
        # module: a wait would make it fail.
        "print(x)\nglobal x\n",
    ],
)
def test_a_cell_where_no_wait_can_go_is_left_as_it_is(cell: str) -> None:
    assert _waiting_before(cell, ast.parse(cell), CALL) is None


@pytest.mark.parametrize(
    ("cell", "named"),
    [
        ("def x(): pass", {"x"}),
        ("class x: pass", {"x"}),
        ("import json as x", {"x"}),
        ("import x.path", {"x"}),
        ("def f():\n    global x\n    x = 1", {"f", "x"}),
        ("try:\n    pass\nexcept E as x:\n    pass", {"E", "x"}),
        ("match v:\n    case [*x]:\n        pass", {"v", "x"}),
        ("print('x')", {"print"}),
        ("get_ipython().system('echo $x ${y} {z}')", {"get_ipython", "x", "y", "z"}),
        ("get_ipython().run_line_magic('pinfo2', 'x.upper')", {"get_ipython", "x"}),
        ("get_ipython().run_line_magic('env', 'K=$x $$y {{z}}')", {"get_ipython", "x"}),
        (
            "get_ipython().run_cell_magic('bash', '-s {x.upper()} {n:>3}', '$y')",
            {"get_ipython", "x", "n"},
        ),
        ("get_ipython().run_line_magic('env', 'K={x')", {"get_ipython"}),
    ],
)
def test_what_a_cell_names(cell: str, named: set[str]) -> None:
    assert cell_reads(ast.parse(cell), {}, lambda code: code).names == named


def test_functions_defined_in_the_kernel_are_followed_to_what_they_read() -> None:
    namespace: dict[str, object] = {}
    exec("def inner():\n    return x\ndef outer():\n    return [inner() for _ in y]", namespace)
    assert {"x", "y", "inner"} <= cell_reads(ast.parse("outer()"), namespace, str).names


def test_a_magic_that_opts_out_of_filling_in_names_nothing_by_it() -> None:
    cell = "get_ipython().run_line_magic('cm', 'ask $x {y}')"
    reads = cell_reads(ast.parse(cell), {}, str, lambda magic, is_cell: magic != "cm")
    assert reads.names == {"get_ipython"}
