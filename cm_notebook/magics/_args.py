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
    """``%cm new``: create a context and make it current."""

    USAGE = "%cm new [TITLE] [--provider SPEC] [--system TEXT]"
    REST = "title"
    title: str | None = None
    provider: str | None = None
    system: str | None = None


class UseArgs(MagicArgs):
    """``%cm use``: make a stored context (or a session in a variable) current."""

    USAGE = "%cm use ID|TITLE|VARIABLE"
    REST = "target"
    target: str = Field(min_length=1)


class NoArgs(MagicArgs):
    """Subcommands without arguments (``ls``, ``branches``)."""

    USAGE = "%cm ls | %cm branches"


class SendArgs(MagicArgs):
    """``%cm send``: one message from a line, exactly as typed (see ``parse_text_args``)."""

    USAGE = "%cm send [--branch B] [--] TEXT"
    REST = "text"
    text: str = Field(min_length=1)
    branch: str | None = None


class BranchArgs(MagicArgs):
    """``%cm branch``: fork a branch (from the head, or from a message) and switch to it."""

    USAGE = "%cm branch NAME [--from MESSAGE_ID] [--system TEXT]"
    POSITIONAL = ("name",)
    SHORT: ClassVar[dict[str, str]] = {"--from": "from_message"}
    name: str = Field(min_length=1)
    from_message: str | None = None
    system: str | None = None


class SwitchArgs(MagicArgs):
    """``%cm switch``: make a branch the active one."""

    USAGE = "%cm switch NAME"
    POSITIONAL = ("name",)
    name: str = Field(min_length=1)


class HistoryArgs(MagicArgs):
    """``%cm history``: the messages of a branch."""

    USAGE = "%cm history [--last N] [--branch B]"
    last: int | None = Field(None, ge=1)
    branch: str | None = None


class CompareArgs(MagicArgs):
    """``%cm compare``: branches side by side (all of them without names)."""

    USAGE = "%cm compare [BRANCH ...]"
    REST = "branches"
    branches: list[str] = Field(default_factory=list)


class ApproveArgs(MagicArgs):
    """``%cm approve``: approve one pending tool call (or all), maybe with edited arguments;
    ``--remember session|context`` also allows the tool from now on."""

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
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg}); e.g. --args '{{\"x\": 1}}'") from exc

    @model_validator(mode="after")
    def _args_need_id(self) -> ApproveArgs:
        if self.args is not None and self.id is None:
            raise ValueError("--args edits one call: give its TOOL_CALL_ID too")
        return self


class DenyArgs(MagicArgs):
    """``%cm deny``: deny one pending tool call (or all) and tell the model why."""

    USAGE = "%cm deny [TOOL_CALL_ID] [--reason TEXT] [--branch B]"
    POSITIONAL = ("id",)
    id: str | None = None
    # Optional, as in the view: without one the model is told the user denied it.
    reason: str = Field("denied by the user", min_length=1)
    branch: str | None = None


class TurnArgs(MagicArgs):
    """``%cm retry``: act on a branch's turn (default: the active branch)."""

    USAGE = "%cm retry [--branch B]"
    branch: str | None = None


class StopArgs(MagicArgs):
    """``%cm stop``: stop a branch's reply; ``--all``: and every cell of this kernel in
    the context still waiting or under way (a Run All to abort)."""

    USAGE = "%cm stop [--branch B] [--all]"
    branch: str | None = None
    all: bool = False


class ExportArgs(MagicArgs):
    """``%cm export``: the conversation as Markdown (shown) or JSON (returned)."""

    USAGE = "%cm export [--format markdown|json] [--branch B]"
    SHORT: ClassVar[dict[str, str]] = {"-f": "format"}
    format: Literal["markdown", "json"] = "markdown"
    branch: str | None = None


class HelpArgs(MagicArgs):
    """``%cm help``: every subcommand's usage."""

    USAGE = "%cm help"


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
    """``%%cm``: the cell body is the message; options choose where and how it goes."""

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
