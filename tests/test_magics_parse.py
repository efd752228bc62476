"""The magics' argument parsing and ``{name}`` interpolation, without a kernel."""

from __future__ import annotations

import pytest

pytest.importorskip("IPython")

from IPython.core.error import UsageError

from cm_notebook.magics._args import (
    COMMANDS,
    ApproveArgs,
    BranchArgs,
    CellArgs,
    HistoryArgs,
    SendArgs,
    StopArgs,
    TurnArgs,
)
from cm_notebook.magics._interpolate import field_names, interpolate
from cm_notebook.magics._parse import MagicArgs, parse_args, split_words


def cell(line: str) -> CellArgs:
    return parse_args(CellArgs, split_words(line, CellArgs.USAGE))


def test_a_leading_spec_and_options_like_jupyter_ai() -> None:
    args = cell("openai:gpt-4o-mini --temperature 0.2 -f code --var out --max-tokens 5")
    assert args.chosen_provider == "openai:gpt-4o-mini"
    assert (args.temperature, args.format, args.var, args.max_tokens) == (0.2, "code", "out", 5)


def test_ab_takes_every_prompt_up_to_the_next_option() -> None:
    args = cell('--ab "Answer in five words." "Answer like a pirate." --branch main')
    assert args.ab == ["Answer in five words.", "Answer like a pirate."]
    assert args.branch == "main"


def test_ab_takes_a_quoted_prompt_that_starts_with_dashes() -> None:
    # A word with a space in it is a value, not an option.
    assert cell("--ab '--be terse' 'B' --var out").ab == ["--be terse", "B"]
    assert cell("--ab='--terse' 'B'").ab == ["--terse", "B"]
    with pytest.raises(UsageError, match=r"give it after =, e\.g\. --ab='--terse'"):
        cell("--ab '--terse' 'B'")


@pytest.mark.parametrize(
    ("line", "ab", "fanout", "rest"),
    [
        (
            '--ab "Be terse." "Be a pirate." --temperature=0',
            ["Be terse.", "Be a pirate."],
            None,
            {"temperature": 0.0},
        ),
        ('--ab "A" "B" --max-tokens=50', ["A", "B"], None, {"max_tokens": 50}),
        ('--ab "A" "B" --var=out', ["A", "B"], None, {"var": "out"}),
        ("--fanout local scripted -f=code", None, ["local", "scripted"], None),
        ("--fanout local scripted --branch=exp", None, ["local", "scripted"], {"branch": "exp"}),
    ],
)
def test_a_list_option_stops_at_an_option_with_its_value_attached(
    line: str, ab: list[str] | None, fanout: list[str] | None, rest: dict[str, object] | None
) -> None:
    # "--temperature=0" is not a third system prompt, nor "--branch=exp" a provider spec.
    if rest is None:  # the short option is read as one, and refused with --fanout
        with pytest.raises(UsageError, match="drop -f"):
            cell(line)
        return
    args = cell(line)
    assert (args.ab, args.fanout) == (ab, fanout)
    assert {name: getattr(args, name) for name in rest} == rest


@pytest.mark.parametrize(
    "line", ['--ab "A" "B" --tempreature=0', '--ab "A" "B" --top-p 1', "--fanout a b --nope=1"]
)
def test_an_unknown_option_after_a_list_option_is_a_usage_error(line: str) -> None:
    with pytest.raises(UsageError, match="unknown option '--"):
        cell(line)


def test_a_spec_after_ab_s_prompts_is_refused_not_made_a_third_prompt() -> None:
    # `--ab` takes every word up to the next option: a known provider last among them
    # was meant as the model, and would silently have been a third arm.
    with pytest.raises(UsageError, match=r"'scripted' after --ab would be one more system"):
        cell("--ab 'Be terse.' 'Be thorough.' scripted")
    with pytest.raises(UsageError, match=r"put the SPEC first \(%%cm local --ab"):
        cell("--ab 'Be terse.' 'Be thorough.' local")
    # Before --ab, or as --provider, it picks the model; a word that names no provider
    # is a prompt.
    assert cell("scripted --ab 'Be terse.' 'Be thorough.'").chosen_provider == "scripted"
    assert cell("--ab A B --provider scripted").ab == ["A", "B"]
    assert cell("--ab 'Be terse.' terse").ab == ["Be terse.", "terse"]
    from cm_notebook.magics._help import help_text

    help_page = " ".join(help_text("%%cm").split())
    assert "a SPEC goes before it (`%%cm local --ab" in help_page


def test_the_help_says_what_var_stores_for_an_ab_or_fanout_cell() -> None:
    # Not the reply's text: the arms' Comparison (see CellSender._store).
    from cm_notebook.magics._help import HELP, help_text

    for page in (HELP, help_text("%%cm")):
        assert "(with --ab / --fanout: the arms' Comparison, once they end)" in " ".join(
            page.split()
        )


def test_fanout_splits_specs_on_commas() -> None:
    assert cell("--fanout local, openai:gpt-4o-mini").fanout == ["local", "openai:gpt-4o-mini"]


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("--temperature hot", "--temperature"),
        ("--temperature -1", "--temperature"),
        ("-f html", "--format"),
        ("--var 1x", "not a Python variable name"),
        ("--temperature nan", "finite number"),
        ('--ab "A" "B" -f text', "drop -f"),
        ("--fanout local,scripted --format code", "drop -f"),
        ("--var class", "not a Python variable name"),
        ("--var \ufb01le", "Python reads '\ufb01le' as 'file': use --var file"),
        ("--var cafe\u0301", "use --var caf\u00e9"),
        ("--var print", "'print' is a name the kernel uses itself"),
        ("--var get_ipython", "'get_ipython' is a name the kernel uses itself"),
        ("--var Out", "'Out' is a name the kernel uses itself"),
        ("--var __builtins__", "'__builtins__' is a name the kernel uses itself"),
        ("--var __name__", "'__name__' is a name the kernel uses itself"),
        ("--var _3", "'_3' is a name the kernel uses itself"),
        ("--var _i12", "'_i12' is a name the kernel uses itself"),
        ("--var _sh", "'_sh' is a name the kernel uses itself"),
        ("--var _exit_code", "'_exit_code' is a name the kernel uses itself"),
        ("--ab only-one", "two or more system prompts"),
        ("--fanout local", "two or more provider specs"),
        ("local --provider openai", "give the provider once"),
        ('--ab "A" "B" --fanout local,scripted', "pick one"),
        ("--nope", "unknown option '--nope'"),
        ("--branch", "--branch needs a value"),
        ("a b", "unexpected 'b'"),
        ("--var x --var y", "given twice"),
        ('--system "unclosed', "No closing quotation"),
    ],
)
def test_bad_cell_options_are_one_line_usage_errors(line: str, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        cell(line)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message
    assert message.endswith(CellArgs.USAGE)


@pytest.mark.parametrize("name", ["_private", "__mangled", "_1st", "_ix", "answer_"])
def test_a_var_name_the_kernel_does_not_use_is_taken(name: str) -> None:
    assert cell(f"--var {name}").var == name


def test_subcommand_models() -> None:
    assert parse_args(SendArgs, ["hello", "there"]).text == "hello there"
    branch = parse_args(BranchArgs, ["terse", "--from", "m-1", "--system", "Be brief."])
    assert (branch.name, branch.from_message, branch.system) == ("terse", "m-1", "Be brief.")
    assert parse_args(HistoryArgs, ["--last=3"]).last == 3
    approve = parse_args(ApproveArgs, ["call-1", "--args", '{"city": "Rome"}'])
    assert approve.args == {"city": "Rome"}
    assert approve.remember == "once"
    assert parse_args(ApproveArgs, ["--remember", "context"]).remember == "context"
    with pytest.raises(UsageError, match="not JSON"):
        parse_args(ApproveArgs, ["call-1", "--args", "{city"])
    with pytest.raises(UsageError, match="TOOL_CALL_ID"):
        parse_args(ApproveArgs, ["--args", "{}"])
    # Bounded as a model's arguments are: no RecursionError from a deep text.
    with pytest.raises(UsageError, match="too large to be a call's arguments: nested deeper"):
        parse_args(ApproveArgs, ["call-1", "--args", "[" * 100_000])


@pytest.mark.parametrize(
    "words", [["--args", "null"], ["call-1", "--args", "null"], ["call-1", "--args", "[1]"]]
)
def test_approve_args_that_are_no_json_object_are_refused(words: list[str]) -> None:
    # `null` was read as no --args: every pending call approved unedited.
    with pytest.raises(UsageError, match="--args: the call's arguments are a JSON object, not"):
        parse_args(ApproveArgs, words)


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (SendArgs, ["hello", "--branch", ""]),
        (StopArgs, ["--branch", " "]),
        (TurnArgs, ["--branch="]),
        (CellArgs, ["--branch", ""]),
    ],
)
def test_an_empty_branch_name_is_refused_by_every_command(
    model: type[MagicArgs], words: list[str]
) -> None:
    # Some took it for the active branch (`%cm stop --branch ''` stopped its reply).
    with pytest.raises(UsageError, match="--branch: give a branch name, or leave --branch out"):
        parse_args(model, words)


def test_interpolation_fills_fields_and_keeps_escaped_braces() -> None:
    namespace = {"country": "France", "numbers": [1, 2], "x": 0.5}
    text, used = interpolate("{country} {numbers[1]} {x:.2f} {{literal}} {country!r}", namespace)
    assert text == "France 2 0.50 {literal} 'France'"
    assert used == ["country", "numbers", "x"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Tell me about {missing}", "no variable 'missing'"),
        ("a lone { brace", "literal braces"),
        ("{}", "needs a variable name"),
        ("{country.nope}", "cannot fill in"),
        ('Return JSON like {"a": 1}', 'write each of them twice: {{"a": 1}} sends'),
        ("{1, 2}", "'1, 2' is no variable name"),
    ],
)
def test_interpolation_errors_say_what_to_do(text: str, says: str) -> None:
    with pytest.raises(UsageError, match=says.replace("(", r"\(")):
        interpolate(text, {"country": "France"})


def test_a_field_is_the_variable_python_reads_for_its_name() -> None:
    # "cafe" + a combining acute (NFD) and the ligature "ﬁ" are, to Python, "café" and
    # "fi" (NFKC): code typed either way defines those.
    namespace = {"café": "espresso", "file": "notes.txt"}
    text, used = interpolate("A {cafe\u0301} and {\ufb01le!r}, {café}", namespace)
    assert text == "A espresso and 'notes.txt', espresso"
    assert used == ["café", "file"]
    assert field_names("{cafe\u0301} {\ufb01le.x:{cafe\u0301}}") == ["café", "file"]


def test_each_attribute_of_a_field_is_the_one_python_reads() -> None:
    # In code, ``menu.cafe\u0301`` and ``menu.\ufb01le`` read the attributes ``café`` and
    # ``file`` (NFKC), as a variable's name does; an index is a key, taken as typed.
    namespace: dict[str, object] = {}
    exec("class Menu:\n    café = 'espresso'\n    file = 'notes.txt'\nmenu = Menu()", namespace)
    assert eval("menu.cafe\u0301, menu.\ufb01le", namespace) == ("espresso", "notes.txt")
    namespace["prices"] = {"cafe\u0301": 2}
    text, used = interpolate(
        "{menu.cafe\u0301}, {menu.\ufb01le!r}, {prices[cafe\u0301]}", namespace
    )
    assert text == "espresso, 'notes.txt', 2"
    assert used == ["menu", "prices"]


class _Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("repr boom")

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        raise RuntimeError("format boom")


@pytest.mark.parametrize(
    ("text", "says"),
    [("{bad}", "format boom"), ("{bad!r}", "repr boom"), ("{bad!s:>5}", "repr boom")],
)
def test_a_value_that_cannot_be_written_as_text_is_named_in_one_line(text: str, says: str) -> None:
    # Its own __format__ / __str__ / __repr__ raising was a traceback through the formatter.
    with pytest.raises(UsageError, match=r"\{bad\} in the cell: the _Unprintable in 'bad'") as info:
        interpolate(text, {"bad": _Unprintable()})
    assert f"RuntimeError: {says}" in str(info.value)


@pytest.mark.parametrize("field", ["{}", "{0}", "{0.upper}", "{1}"])
def test_a_field_without_a_name_is_said_as_typed(field: str) -> None:
    with pytest.raises(UsageError) as caught:
        interpolate(f"Say {field}", {})
    assert str(caught.value).startswith(f"{field} in a %%cm cell needs a variable name")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "{country:.2f}",
            "{country:.2f} in the cell: the format spec '.2f' does not fit the str in "
            "'country' (Unknown format code 'f' for object of type 'str'); fix what "
            "follows ':'",
        ),
        ("{n:q}", "the format spec 'q' does not fit the float in 'n'"),
        (
            "{country!z}",
            "{country!z} in the cell: '!z' is no conversion; use !r (repr), !s (str) or !a (ascii)",
        ),
    ],
)
def test_a_bad_format_spec_or_conversion_is_blamed_not_the_value(text: str, says: str) -> None:
    with pytest.raises(UsageError) as caught:
        interpolate(text, {"country": "France", "n": 1.5})
    assert says in str(caught.value)
    assert "give a variable that holds text" not in str(caught.value)


@pytest.mark.parametrize(
    "value",
    [
        "sk-proj-" + "A1b2C3d4" * 4,  # an OpenAI key, by its shape
        "ghp_" + "x" * 36,
        "postgres://ada:hunter2@db.example/prod",
        "Bearer abcdefgh12345678",
    ],
)
def test_a_secret_is_not_filled_into_a_message(value: str) -> None:
    with pytest.raises(UsageError, match=r"\{creds\} holds what looks like a secret") as caught:
        interpolate("Use {creds} to log in", {"creds": value})
    assert value not in str(caught.value)


def test_a_credential_variable_s_value_is_not_filled_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "plain-looking-value-42")
    with pytest.raises(UsageError, match="looks like a secret"):
        interpolate("{x}", {"x": "the token is plain-looking-value-42"})


def test_data_with_credential_words_is_filled_in() -> None:
    row = {"key": "France", "token": 3}
    text, _ = interpolate("{row} and key=value", {"row": row})
    assert text == "{'key': 'France', 'token': 3} and key=value"


def test_a_code_reply_is_shown_as_code_even_with_backticks_inside() -> None:
    from cm_notebook.magics._reply import render_reply

    code = "# build the fence\nfence = '```'\nx = a*b*c"
    shown = render_reply(code, "code")
    assert "<h1>" not in shown
    assert "<em>" not in shown
    assert "# build the fence" in shown
    assert "x = a*b*c" in shown
    # A reply the model fenced itself is shown as it meant: highlighted, no fences.
    fenced = render_reply("```python\nx = 1\n```", "code")
    assert '<code class="language-python">' in fenced
    assert "```" not in fenced


def test_the_magic_s_help_lists_every_subcommand() -> None:
    from cm_notebook.magics._magics import CMMagics

    doc = CMMagics.cm.__doc__ or ""
    for usage in ("%cm export", "%cm approve", "%%cm [SPEC]", "--var NAME"):
        assert usage in doc


@pytest.mark.parametrize("name", [*COMMANDS, "%%cm"])
def test_every_subcommand_has_a_help_page_that_fits_a_cell(name: str) -> None:
    from cm_notebook.magics._help import help_text

    page = help_text(name)
    usage, _, text = page.partition("\n\n")
    assert usage == (CellArgs.USAGE if name == "%%cm" else COMMANDS[name].USAGE) or (
        name in ("ls", "branches") and usage == f"%cm {name}"
    )
    assert text.strip()
    assert "``" not in text  # no reST markup left
    assert "parse_text_args" not in text  # nor the code's own words
    assert all(len(line) <= 88 for line in text.splitlines())


def test_the_export_help_says_markdown_holds_one_branch_and_json_every_one() -> None:
    # As to_markdown and export_context do: a transcript of one branch; the whole tree.
    from cm_notebook.magics._help import help_text

    page = " ".join(help_text("export").split())
    markdown, _, json_part = page.partition("--format json")
    assert "active branch" in markdown
    assert "every branch" not in markdown
    assert "every branch" in json_part


def test_an_exported_json_is_a_str_shown_as_itself() -> None:
    from IPython.lib.pretty import pretty

    from cm_notebook.magics._commands import JSONText

    text = JSONText('{"title": "it\'s"}\n')
    assert isinstance(text, str)
    assert pretty(text) == '{"title": "it\'s"}\n'  # not a quoted repr with escapes


@pytest.mark.parametrize(
    ("name", "words", "says"),
    [("use", [], "the target is missing"), ("branch", [""], "the name: String should")],
)
def test_a_missing_or_bad_word_is_not_called_an_option(
    name: str, words: list[str], says: str
) -> None:
    from cm_notebook.magics._args import COMMANDS

    with pytest.raises(UsageError) as caught:
        parse_args(COMMANDS[name], words)
    assert str(caught.value).startswith(says)
    assert "--" not in str(caught.value).split(". Usage")[0]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Tell me about {city}.", ["city"]),
        ("{a.b} and {c[0]} and {a!r} and {d:.2f}", ["a", "c", "d"]),
        ("{x:{width}}", ["x", "width"]),
        ("{{literal}} only", []),
        ("a lone { brace", []),  # not a template: filling it in says what is wrong
        ("no fields", []),
    ],
)
def test_field_names_are_the_variables_a_cell_reads(text: str, names: list[str]) -> None:
    assert field_names(text) == names
