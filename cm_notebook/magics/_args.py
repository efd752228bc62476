"""The arguments of every ``%cm`` subcommand and of ``%%cm``, as validated models.

Each model's ``USAGE`` is the line shown with its errors and in ``%cm help``; see
:mod:`._parse` for how a line becomes one of these.
"""

from __future__ import annotations

import builtins
import json
import keyword
import re
import unicodedata
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from .. import _json
from ..errors import CMError
from ..providers import available_providers, parse_spec
from ..tools._tool import MAX_ARGUMENTS_CHARS
from ._parse import MagicArgs

__all__ = [
    "COMMANDS",
    "ApproveArgs",
    "BranchArgs",
    "CellArgs",
    "CompareArgs",
    "DenyArgs",
    "ExportArgs",
    "HelpArgs",
    "HistoryArgs",
    "NewArgs",
    "NoArgs",
    "SendArgs",
    "StopArgs",
    "SwitchArgs",
    "TurnArgs",
    "UseArgs",
]

Format = Literal["markdown", "text", "code"]


class NewArgs(MagicArgs):
    """``%cm new``: create a context and make it current.

    TITLE names it (without one, its first message does); ``--provider SPEC`` picks the
    model (``local``, the built-in offline one, by default; ``openai:gpt-4o-mini``,
    ``anthropic:MODEL``...); ``--system TEXT`` is the system prompt of its branch main.
    """

    USAGE = "%cm new [TITLE] [--provider SPEC] [--system TEXT]"
    REST = "title"
    title: str | None = None
    provider: str | None = None
    system: str | None = None


class UseArgs(MagicArgs):
    """``%cm use``: make a stored context current, by id or title (``%cm ls`` lists
    them), or a ``ContextSession`` held in a kernel variable. The context current
    before (as after ``%cm new``) is closed once nothing in the kernel uses it: a reply
    view of it still gives its reply."""

    USAGE = "%cm use ID|TITLE|VARIABLE"
    REST = "target"
    target: str = Field(min_length=1)


class NoArgs(MagicArgs):
    """Subcommands without arguments (``ls``, ``branches``)."""

    USAGE = "%cm ls | %cm branches"


class SendArgs(MagicArgs):
    """``%cm send``: the rest of the line, but for its options, is one message, exactly
    as typed (quotes and a trailing ``?`` kept); the reply streams into the cell's output.

    ``--branch B`` sends it on branch B instead of the active one. It may come before
    the text or as the line's last two words: a line ending in ``--branch B`` is sent
    on branch B without them, and the cell says so. ``--`` ends the options: the rest
    of the line is the message exactly as typed, even one that starts with ``--`` or
    ends with ``--branch B``. A longer message: ``%%cm``.
    """

    USAGE = "%cm send [--branch B] [--] TEXT"
    REST = "text"
    text: str = Field(min_length=1)
    branch: str | None = None


class BranchArgs(MagicArgs):
    """``%cm branch``: fork a branch named NAME and switch to it.

    It starts from the active branch's last message, or from ``--from MESSAGE_ID``
    (``%cm history --ids`` shows them); ``--system TEXT`` gives it a system prompt of its
    own. Run while this kernel's replies are under way, it forks once they have ended.
    """

    USAGE = "%cm branch NAME [--from MESSAGE_ID] [--system TEXT]"
    POSITIONAL = ("name",)
    SHORT: ClassVar[dict[str, str]] = {"--from": "from_message"}
    name: str = Field(min_length=1)
    from_message: str | None = None
    system: str | None = None


class SwitchArgs(MagicArgs):
    """``%cm switch``: make branch NAME the active one (``%cm branches`` lists them):
    the next message goes there."""

    USAGE = "%cm switch NAME"
    POSITIONAL = ("name",)
    name: str = Field(min_length=1)


class HistoryArgs(MagicArgs):
    """``%cm history``: the messages of the active branch (or ``--branch B``) with the
    tool calls they made, the last N of them with ``--last N``; ``--ids`` starts each
    line with the message's id, for ``%cm branch NAME --from MESSAGE_ID``."""

    USAGE = "%cm history [--last N] [--branch B] [--ids]"
    last: int | None = Field(None, ge=1)
    branch: str | None = None
    ids: bool = False


class CompareArgs(MagicArgs):
    """``%cm compare``: the named branches side by side from where they part (all of
    them when none is named), kept current as they grow; the saved notebook keeps a
    copy."""

    USAGE = "%cm compare [BRANCH ...]"
    REST = "branches"
    branches: list[str] = Field(default_factory=list)


class ApproveArgs(MagicArgs):
    """``%cm approve``: approve the pending tool call TOOL_CALL_ID (all of them without
    one); the reply waiting for it goes on.

    ``--args JSON`` runs the call with these arguments instead of the model's, e.g.
    ``--args '{"city": "Paris"}'``; ``--branch B`` decides B's calls; ``--remember
    session`` also allows the tool for this session, ``--remember context`` for every
    session of the context.
    """

    USAGE = (
        "%cm approve [TOOL_CALL_ID] [--args JSON] [--branch B] [--remember once|session|context]"
    )
    POSITIONAL = ("id",)
    id: str | None = None
    args: dict[str, Any] | None = None
    branch: str | None = None
    remember: Literal["once", "session", "context"] = "once"

    @field_validator("args", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:  # within the limits a model's arguments have (CONTRIBUTING: bounded JSON)
            parsed = _json.loads(value, max_chars=MAX_ARGUMENTS_CHARS)
        except _json.JSONLimitError as exc:
            raise ValueError(f"too large to be a call's arguments: {exc.msg}") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg}); e.g. --args '{{\"x\": 1}}'") from exc
        if not isinstance(parsed, dict):
            # `null` above all: read as "no --args", it approved every call unedited.
            raise ValueError(
                f"the call's arguments are a JSON object, not {value.strip()[:40]!r}: e.g. "
                "--args '{\"x\": 1}' (leave --args out to run the call as the model asked)"
            )
        return parsed

    @model_validator(mode="after")
    def _args_need_id(self) -> ApproveArgs:
        if self.args is not None and self.id is None:
            raise ValueError("--args edits one call: give its TOOL_CALL_ID too")
        return self


class DenyArgs(MagicArgs):
    """``%cm deny``: deny the pending tool call TOOL_CALL_ID (all of them without one);
    the model is told ``--reason TEXT`` (by default, that the user denied it) and the
    reply goes on without the tool."""

    USAGE = "%cm deny [TOOL_CALL_ID] [--reason TEXT] [--branch B]"
    POSITIONAL = ("id",)
    id: str | None = None
    # Optional, as in the view: without one the model is told the user denied it.
    reason: str = Field("denied by the user", min_length=1)
    branch: str | None = None


class TurnArgs(MagicArgs):
    """``%cm retry``: try the active branch's failed reply again (or ``--branch B``'s);
    it streams into the cell's output."""

    USAGE = "%cm retry [--branch B]"
    branch: str | None = None


class StopArgs(MagicArgs):
    """``%cm stop``: stop the reply being written on the active branch (or ``--branch
    B``); its text so far is kept. ``--all`` also stops every cell of this kernel in the
    context still waiting or under way: a Run All to abort."""

    USAGE = "%cm stop [--branch B] [--all]"
    branch: str | None = None
    all: bool = False


class ExportArgs(MagicArgs):
    """``%cm export``: the active branch (or ``--branch B``) as Markdown shown in the
    cell, or with ``--format json`` as the lossless JSON text the cell returns, every
    branch (or ``--branch B`` alone): ``doc = %cm export --format json``;
    ``cm-notebook import`` reads it."""

    USAGE = "%cm export [--format markdown|json] [--branch B]"
    SHORT: ClassVar[dict[str, str]] = {"-f": "format"}
    format: Literal["markdown", "json"] = "markdown"
    branch: str | None = None


class HelpArgs(MagicArgs):
    """``%cm help``: every subcommand's usage; with a SUBCOMMAND (or ``%%cm``), its usage
    and what it does."""

    USAGE = "%cm help [SUBCOMMAND]"
    POSITIONAL = ("subcommand",)
    subcommand: str | None = None


#: Names IPython keeps in a kernel's namespace (besides the builtins).
_KERNEL_NAMES = frozenset(
    {
        "In",
        "Out",
        "_",
        "__",
        "___",
        "_i",
        "_ii",
        "_iii",
        "_oh",
        "_ih",
        "_dh",
        "_sh",
        "_exit_code",
        "exit",
        "quit",
        "get_ipython",
    }
)

#: IPython's numbered history names: ``_3`` (an output), ``_i3`` (an input).
_NUMBERED_HISTORY = re.compile(r"_i?[0-9]+")


def _kernel_name(value: str) -> bool:
    """Whether a reply stored as ``value`` would replace a name the kernel needs."""
    return (
        value in _KERNEL_NAMES
        or hasattr(builtins, value)
        # __builtins__, __name__, __doc__...: Python's own names.
        or (value.startswith("__") and value.endswith("__"))
        or _NUMBERED_HISTORY.fullmatch(value) is not None
    )


class CellArgs(MagicArgs):
    """``%%cm``: the cell's body is the message; the reply streams into the output.

    SPEC (or ``--provider SPEC``) picks the model for this message; ``--branch B`` sends
    it on B; ``--temperature`` and ``--max-tokens`` set this request's parameters;
    ``--system TEXT`` gives the branch that system prompt from this message on (a branch
    with replies under another prompt is forked first); ``-f`` shows the reply as
    Markdown (the default), plain text or code. ``--ab "A" "B"`` asks it once under each
    system prompt, ``--fanout local,openai:gpt-4o-mini`` once with each model, each on
    a branch of its own, and ends in their comparison. ``--ab`` takes every word up to
    the next option: a SPEC goes before it (``%%cm local --ab "A" "B"``) or as
    ``--provider SPEC``.
    """

    USAGE = (
        "%%cm [SPEC] [--branch B] [--provider SPEC] [--temperature T] [--max-tokens N] "
        "[--system TEXT] "
        '[--var NAME] [-f markdown|text|code] [--ab "SYSTEM A" "SYSTEM B" ...] '
        "[--fanout SPEC,SPEC,...]"
    )
    POSITIONAL = ("spec",)
    SHORT: ClassVar[dict[str, str]] = {"-f": "format"}
    spec: str | None = None
    branch: str | None = None
    provider: str | None = None
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_tokens: int | None = Field(None, ge=1)
    system: str | None = None
    var: str | None = None
    format: Format = "markdown"
    ab: list[str] | None = None
    fanout: list[str] | None = None

    @field_validator("var")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.isidentifier() or keyword.iskeyword(value):
            raise ValueError(f"{value!r} is not a Python variable name")
        spelled = unicodedata.normalize("NFKC", value)
        if spelled != value:
            # Python reads the name in code as its NFKC form: stored as given, no code
            # could reach it.
            raise ValueError(f"Python reads {value!r} as {spelled!r}: use --var {spelled}")
        if _kernel_name(value):
            # The reply would replace it in the kernel: print, __builtins__, In, _3...
            raise ValueError(
                f"{value!r} is a name the kernel uses itself; pick another, such as --var answer"
            )
        return value

    @field_validator("fanout")
    @classmethod
    def _specs(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        specs = [spec.strip() for word in value for spec in word.split(",") if spec.strip()]
        if len(specs) < 2:
            raise ValueError("needs two or more provider specs, e.g. --fanout local,scripted")
        return specs

    @model_validator(mode="after")
    def _consistent(self) -> CellArgs:
        if self.spec is not None and self.provider is not None:
            raise ValueError("give the provider once: a leading SPEC or --provider, not both")
        if self.ab is not None and self.fanout is not None:
            raise ValueError("--ab and --fanout are two experiments: pick one per cell")
        if "format" in self.model_fields_set and (self.ab is not None or self.fanout is not None):
            raise ValueError("-f formats one reply; --ab and --fanout end in a comparison: drop -f")
        if self.ab is not None and self.chosen_provider is None and _is_spec(self.ab[-1]):
            # `--ab "A" "B" local`: a third system prompt, "local", not the model.
            spec = self.ab[-1]
            raise ValueError(
                f"{spec!r} after --ab would be one more system prompt, not the model: put "
                f'the SPEC first (%%cm {spec} --ab "A" "B"), or give --provider {spec}'
            )
        if self.ab is not None and len(self.ab) < 2:
            raise ValueError('--ab needs two or more system prompts: --ab "A" "B"')
        if self.ab is not None and self.system is not None:
            raise ValueError("--ab gives each arm its system prompt: drop --system")
        if self.fanout is not None and (self.spec or self.provider):
            raise ValueError("--fanout names the providers: drop the SPEC / --provider")
        return self

    @property
    def chosen_provider(self) -> str | None:
        """The provider for this message (a leading SPEC or ``--provider``)."""
        return self.spec if self.spec is not None else self.provider


def _is_spec(word: str) -> bool:
    """Whether ``word`` names a known provider (``local``, ``openai:gpt-4o-mini``)."""
    try:
        name, _model = parse_spec(word)
    except CMError:
        return False
    return name in available_providers()


#: Each subcommand's argument model (``help`` lists them in this order).
COMMANDS: dict[str, type[MagicArgs]] = {
    "new": NewArgs,
    "use": UseArgs,
    "ls": NoArgs,
    "send": SendArgs,
    "branch": BranchArgs,
    "switch": SwitchArgs,
    "branches": NoArgs,
    "history": HistoryArgs,
    "compare": CompareArgs,
    "approve": ApproveArgs,
    "deny": DenyArgs,
    "retry": TurnArgs,
    "stop": StopArgs,
    "export": ExportArgs,
    "help": HelpArgs,
}
