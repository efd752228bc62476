"""Which pygments lexer may colour a code block of a given size, so that no block can
hold the kernel's thread (where views render) for long, whatever its language tag.

pygments' lexers are regular expressions, and many are not linear in their input.
Timed on 29 inputs (code in a few languages, runs of one character, unclosed quotes
and brackets, repeated ``%%``, long lines, random text) at 2,000 and 8,000 characters,
108 of pygments 2.21's 604 lexers grew faster than linearly: ``systemd`` took 1.5 s
on 8,000 characters of one line, ``csharp`` 0.22 s on 2,000 characters of indented
lines (past 2 s on 8,000), ``java`` 1.6 s on 8,000 after an unclosed quote, ``yaml``
0.37 s on 8,000 of ``%%``, the ``ipython`` lexer 0.8 s on 8,000 of ``*``; ``maple``
backtracks exponentially: 0.17 s on an unclosed string of 40 characters, more than
3 s on 60. No size is small enough to trust a lexer that has not been timed, so:

* the lexers in :data:`_LINEAR` grew linearly on every input, also at 40,000
  characters: up to the caller's limit (markdown's ``MAX_HIGHLIGHTED_CHARS``);
* those in :data:`_CAPPED` grew quadratically (``matlab`` only past 8,000: 0.9 s on
  40,000 characters after an unclosed quote): up to the size where their slowest input
  takes about 50 ms (their time at 2,000, 8,000 or 40,000 characters scaled by the
  square);
* any other lexer, one pygments adds later included: none, the block is shown plain.

Keyed on the lexer's class (module and name), not the tag typed: ``py``, ``python3``
and ``python`` are one lexer, and a plugin's class of the same name is not vetted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pygments.filter import Filter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name
from pygments.lexers.python import PythonLexer
from pygments.token import Error, Text, _TokenType, is_token_subtype
from pygments.util import ClassNotFound

__all__ = ["lexer_for"]

_LINEAR = frozenset(
    {
        "pygments.lexers.python.PythonLexer",
        "pygments.lexers.python.PythonConsoleLexer",
        "pygments.lexers.javascript.JavascriptLexer",
        "pygments.lexers.jsx.JsxLexer",
        "pygments.lexers.javascript.TypeScriptLexer",
        "pygments.lexers.jsx.TsxLexer",
        "pygments.lexers.data.JsonLexer",
        "pygments.lexers.shell.BashLexer",
        "pygments.lexers.c_cpp.CLexer",
        "pygments.lexers.c_cpp.CppLexer",
        "pygments.lexers.rust.RustLexer",
        "pygments.lexers.go.GoLexer",
        "pygments.lexers.jvm.KotlinLexer",
        "pygments.lexers.jvm.ScalaLexer",
        "pygments.lexers.objective.SwiftLexer",
        "pygments.lexers.sql.SqlLexer",
        "pygments.lexers.sql.PostgresLexer",
        "pygments.lexers.sql.MySqlLexer",
        "pygments.lexers.html.HtmlLexer",
        "pygments.lexers.html.XmlLexer",
        "pygments.lexers.css.CssLexer",
        "pygments.lexers.css.ScssLexer",
        "pygments.lexers.markup.MarkdownLexer",
        "pygments.lexers.diff.DiffLexer",
        "pygments.lexers.special.TextLexer",
        "pygments.lexers.configs.IniLexer",
        "pygments.lexers.configs.DockerLexer",
        "pygments.lexers.ruby.RubyLexer",
        "pygments.lexers.php.PhpLexer",
        "pygments.lexers.scripting.LuaLexer",
        "pygments.lexers.haskell.HaskellLexer",
        "pygments.lexers.erlang.ElixirLexer",
        "pygments.lexers.julia.JuliaLexer",
        "pygments.lexers.javascript.DartLexer",
        "pygments.lexers.markup.TexLexer",
        "pygments.lexers.make.CMakeLexer",
        "pygments.lexers.graphql.GraphQLLexer",
        "pygments.lexers.dsls.ProtoBufLexer",
        "pygments.lexers.shell.BatchLexer",
        "pygments.lexers.templates.DjangoLexer",
        "pygments.lexers.templates.HtmlDjangoLexer",
    }
)

_CAPPED = {
    "pygments.lexers.dotnet.CSharpLexer": 750,
    "pygments.lexers.jvm.JavaLexer": 1_000,
    "pygments.lexers.r.SLexer": 1_000,
    "pygments.lexers.make.MakefileLexer": 1_000,
    "pygments.lexers.configs.TerraformLexer": 1_000,
    "pygments.lexers.ml.OcamlLexer": 1_500,
    "ipython_pygments_lexers.IPython3Lexer": 1_500,
    "ipython_pygments_lexers.IPythonConsoleLexer": 1_500,
    "pygments.lexers.data.YamlLexer": 2_500,
    "pygments.lexers.shell.BashSessionLexer": 2_500,
    "pygments.lexers.markup.RstLexer": 2_500,
    "pygments.lexers.sql.TransactSqlLexer": 2_500,
    "pygments.lexers.configs.TOMLLexer": 3_000,
    "pygments.lexers.perl.PerlLexer": 3_000,
    "pygments.lexers.shell.PowerShellLexer": 3_000,
    "pygments.lexers.matlab.MatlabLexer": 8_000,
}


class _ErrorsAsText(Filter):
    # The Python lexer marks IPython's own syntax (``!ls``) as an error, which the
    # style draws with a red border: plain text is what it is to that lexer.
    def filter(
        self, lexer: Lexer | None, stream: Iterable[tuple[_TokenType, str]]
    ) -> Iterator[tuple[_TokenType, str]]:
        for kind, value in stream:
            yield (Text if is_token_subtype(kind, Error) else kind), value


def _python_for_ipython() -> Lexer:
    lexer = PythonLexer()
    lexer.add_filter(_ErrorsAsText())
    return lexer


#: IPython code is Python with magics: past the IPython lexer's cap the Python lexer
#: (linear) still colours it, rather than none at all.
_STAND_INS = {"ipython_pygments_lexers.IPython3Lexer": _python_for_ipython}


def lexer_for(tag: str, length: int, max_chars: int) -> Lexer | None:
    """The lexer to colour ``length`` characters of code tagged ``tag`` with, or None
    (unknown tag, unvetted lexer, or too long for it): shown plain then."""
    try:
        lexer = get_lexer_by_name(tag)
    except ClassNotFound:
        return None
    kind = f"{type(lexer).__module__}.{type(lexer).__qualname__}"
    cap = max_chars if kind in _LINEAR else min(_CAPPED.get(kind, 0), max_chars)
    if length <= cap:
        return lexer
    stand_in = _STAND_INS.get(kind)
    return stand_in() if stand_in and length <= max_chars else None
