"""What each ``%cm`` subcommand and ``%%cm`` do, on the current context.

:class:`Commands` holds the kernel's current session and runs validated arguments
(:mod:`._args`) against it. Nothing here waits for a model: sending returns a view at
once and the reply streams into it (DESIGN fact 7). Errors of the session
(:class:`~cm_notebook.errors.CMError`: an unknown branch or tool call, a busy branch)
become one-line :class:`~IPython.core.error.UsageError` messages.
"""

from __future__ import annotations

import builtins
import shlex
import warnings
from collections.abc import Callable, MutableMapping
from typing import Any

from IPython.core.error import UsageError
from IPython.display import Markdown

from .. import fsm
from .._unicode import for_terminal
from ..errors import ContextNotFoundError, InvalidIdError
from ..export import ExportDocument, export_context, to_json, to_markdown
from ..ids import validate_branch_name, validate_message_id
from ..model import ContextMetadata, Message, MessageStatus, ToolCall
from ..render import one_line, stop_note
from ..session import ContextSession
from ..store import StoreWarning
from . import _args as a
from ._comparison import ComparisonView
from ._decisions import PendingDecision, decided_text
from ._deferred import DeferredCommand
from ._help import help_text
from ._letting_go import LettingGo
from ._remedies import for_magics
from ._reply import ReplyView
from ._saved import LaterCompareView, LaterSessionView, SavedCompareView, SavedSessionView
from ._sending import CellSender

__all__ = ["NO_CONTEXT", "Commands"]

#: What a magic says when there is no current context.
NO_CONTEXT = (
    "no current context: `%cm new [TITLE] [--provider SPEC]` makes one, "
    "`%cm use ID|TITLE` opens a stored one (`%cm ls` lists them)"
)


class Commands:
    """The ``%cm`` subcommands, on the kernel's current session."""

    def __init__(self, namespace: MutableMapping[str, Any]) -> None:
        self.namespace = namespace
        self.current: ContextSession | None = None
        # The current session when the magics opened it themselves (their hold on it);
        # None when it is a kernel variable's (``%cm use s``), which its owner closes.
        self._held: ContextSession | None = None
        #: Sends cells' messages, in the order the cells ran.
        self.sender = CellSender(namespace)
        #: Gives back the hold on a context no longer current, once it is free.
        self.letting_go = LettingGo(namespace, self.sender.still_coming)

    def session(self) -> ContextSession:
        """The current session, or a usage error that says how to get one."""
        if self.current is None:
            raise UsageError(NO_CONTEXT)
        return self.current

    # -- contexts --------------------------------------------------------------------

    def new(self, args: a.NewArgs) -> None:
        """Create a context and make it current."""
        # (An empty --provider is refused as a bad spec, not taken for the default.)
        provider = "local" if args.provider is None else args.provider
        session = ContextSession.create(args.title, provider=provider, system=args.system)
        self._make_current(session, held=True)
        print(f"context {session.title!r} is current (provider: {session.metadata.provider.spec})")

    def use(self, args: a.UseArgs) -> None:
        """Make a context current: a session in a kernel variable, an id or a title."""
        named = self.namespace.get(args.target)
        if isinstance(named, ContextSession):
            if named.closed:  # every command on it would fail as closed
                raise UsageError(
                    f"the session in {args.target!r} (context {named.title!r}) is closed: "
                    f"`%cm use {named.id}` opens the context again, or open it in Python "
                    f"(ContextSession.open({named.id!r})) and `%cm use` that"
                )
            self._make_current(named, held=False)
        else:
            found, unreadable = self._find(args.target)
            current = self.current
            # A closed current session is opened again: a closed session's error says
            # to run exactly this.
            if current is None or current.id != found or current.closed:
                self._make_current(self._open(found, unreadable), held=True)
        print(f"context {self.session().title!r} is current")

    def _make_current(self, session: ContextSession, *, held: bool) -> None:
        # ``held``: the magics opened ``session`` (a hold of theirs). The hold on the
        # context current before is given back once nothing uses it (see _letting_go).
        before = self._held
        self.current = session
        if held:
            self._held = session
            if before is session:  # opened again while held: one hold is enough
                self.letting_go.give_back(session)
        elif session is not before:
            self._held = None  # a variable's session: its owner closes it
        if before is not None and before is not self._held:
            self.letting_go.give_back(before)

    def _find(self, target: str) -> tuple[str, int]:
        # The id of the context ``target`` names, and how many stored ones are unreadable.
        stored, damaged = _listed()
        if any(meta.id == target for meta in stored):
            return target, len(damaged)
        titled = [meta.id for meta in stored if meta.title == target]
        if len(titled) == 1:
            return titled[0], len(damaged)
        if titled:
            raise UsageError(f"{len(titled)} contexts are titled {target!r}: use an id {titled}")
        # Not listed: a context whose files are damaged is left out of the list (its
        # title cannot be read), but opening it by id says which file and what to do.
        return target, len(damaged)

    def _open(self, target: str, unreadable: int) -> ContextSession:
        try:
            return ContextSession.open(target)
        except (ContextNotFoundError, InvalidIdError) as exc:
            # The one meant may be a damaged context, named by title: its title is unknown.
            hint = (
                f"; {unreadable} stored context{'s' if unreadable > 1 else ''} cannot be "
                "read, so their titles are unknown: `%cm ls` names them by id, and "
                "`cm-notebook check ID` says what is wrong"
                if unreadable
                else ""
            )
            raise UsageError(
                for_magics(f"no context {target!r}: `%cm ls` lists the stored ones{hint}")
            ) from exc
        # Any other error of the store (CorruptDataError, SchemaVersionError...) is the
        # context's own, shown as it is (see _remedies.translated).

    def ls(self, _args: a.NoArgs) -> DeferredCommand | None:
        """List stored contexts, most recent first; ``*`` marks the current one. Run
        while this kernel's cells are under way (Run All), once they have run: the
        branches counted are those running the cells one by one gives there."""
        session = self.current
        current = session.id if session is not None else None
        waits = self.sender.still_coming(None)  # in any context
        if session is None or not waits:
            _list_contexts(current)
            return None
        command = DeferredCommand(session, waits, lambda: _list_contexts(current), "lists them")
        self.sender.read_after(None, command.released)  # a read of every context
        return command

    def view(self) -> SavedSessionView | LaterSessionView:
        """Bare ``%cm``: the live view of the context, then its saved-notebook copy. Run
        below a command or cell still to come that may change the active branch (Run
        All), it shows the branch active once that has run, as one by one."""
        session = self.session()
        moves = self.sender.moves(session)
        if not moves:
            return SavedSessionView(session)
        later = LaterSessionView(session, moves)
        # The cells and commands below wait until it has attached: a `%cm switch` below
        # does not move it first.
        self.sender.read_after(session, later.attached)
        return later

    # -- sending ---------------------------------------------------------------------

    def send(self, args: a.SendArgs) -> ReplyView:
        """Send one line as a message; the reply streams into the returned view."""
        view = self.sender.send(self.session(), args)
        if args.from_end is not None:
            # The line's last words were an option, not the message's: say so.
            print(
                f"sent on branch {view.branch!r} ({args.from_end} ended the line; "
                "`%cm send -- TEXT` sends TEXT exactly as typed, options included)"
            )
        return view

    def cell(self, args: a.CellArgs, body: str) -> ReplyView | ComparisonView:
        """``%%cm``: the cell body (with ``{name}`` filled in) as a message."""
        return self.sender.cell(self.session(), args, body)

    def retry(self, args: a.TurnArgs) -> ReplyView:
        """Try the failed reply again; it streams into the returned view."""
        return self.sender.retry(self.session(), args)

    def stop(self, args: a.StopArgs) -> None:
        """Stop the reply being written on a branch (its text so far is kept); with
        ``--all``, every cell of this kernel in the context still to come too."""
        session = self.session()
        branch = args.branch or session.active_branch
        if branch not in session.branches:  # before anything is stopped
            raise UsageError(
                f"there is no branch {branch!r}; the branches are {sorted(session.branches)}"
            )
        cells = self.sender.stop_all(session) if args.all else 0
        # session.stop also reaches a reply another process (kernel, server) generates.
        stopping = session.stop(branch) is not None
        if cells:
            print(f"stopping {cells} cell{'s' if cells != 1 else ''} of this kernel")
        elif stopping:
            print(f"stopping the reply on branch {branch!r}")
        else:
            print(_nothing_to_stop(session, branch))

    # -- branches --------------------------------------------------------------------

    def branch(self, args: a.BranchArgs) -> DeferredCommand | None:
        """Fork a branch and switch to it (after this kernel's cells under way)."""
        session = self.session()
        _well_formed(args.name)  # now: only whether it exists waits for the cells above
        if args.from_message is not None:
            validate_message_id(args.from_message)

        def fork() -> None:
            session.branch(args.name, args.from_message, system=args.system)
            print(f"on new branch {args.name!r}")

        return self._after_cells(session, fork, "forks", moves_to=args.name)

    def switch(self, args: a.SwitchArgs) -> DeferredCommand | None:
        """Make a branch the active one (after this kernel's cells under way)."""
        session = self.session()
        _well_formed(args.name)

        def switch() -> None:
            if args.name not in session.branches:
                raise UsageError(
                    f"no branch {args.name!r}; the branches are {sorted(session.branches)}"
                )
            session.switch(args.name)
            print(f"on branch {args.name!r}")

        return self._after_cells(session, switch, "switches", moves_to=args.name)

    def branches(self, args: a.NoArgs) -> DeferredCommand | None:
        """The branches; ``*`` marks the active one, with each one's own system prompt."""
        session = self.session()
        return self._after_cells(session, lambda: self._branches(session, args), "lists them")

    def _branches(self, session: ContextSession, _args: a.NoArgs) -> None:
        for name in session.branches:
            mark = "*" if name == session.active_branch else " "
            count = len(session.history(name))
            prompt = session.system_prompt_of(name)
            about = f"  system: {for_terminal(_short(prompt))}" if prompt else ""
            print(f"{mark} {name}  ({count} messages){about}")

    def history(self, args: a.HistoryArgs) -> DeferredCommand | None:
        """The messages of a branch (the last N with ``--last``)."""
        session = self.session()
        _well_formed(args.branch)
        return self._after_cells(session, lambda: self._history(session, args), "shows them")

    def _history(self, session: ContextSession, args: a.HistoryArgs) -> None:
        messages = session.history(args.branch, limit=args.last)
        if not messages:
            print("no messages yet")
        for message in messages:
            calls = [f"[tool call {c.name}({c.arguments}) {c.id}]" for c in message.tool_calls]
            parts = (message.content, *calls, *_ending(message))
            # A reply's text may hold "\r", ANSI escapes or bidi overrides, which the
            # notebook's stream output acts on: shown escaped, as the CLI shows them.
            line = f"{message.role}: " + " ".join(part for part in parts if part)
            print(for_terminal(f"{message.id}  {line}" if args.ids else line))
        # A turn under way that the messages do not show yet (magics never wait for one).
        branch = args.branch or session.active_branch
        if session.running_turn_id(branch) is None:
            return
        if session.state_of(branch) is fsm.State.AWAITING_TOOL_APPROVAL:
            print("… waiting for a decision on its tool calls: %cm approve or %cm deny")
        elif not messages or messages[-1].status is not MessageStatus.STREAMING:
            print("assistant: … (a reply is being generated; `await _` waits for it)")

    def compare(self, args: a.CompareArgs) -> SavedCompareView | LaterCompareView:
        """Branches side by side (default: all), kept current; then a saved copy. Run
        while this kernel's cells in the context are under way, once they have run."""
        session = self.session()
        _well_formed(*args.branches)
        branches = list(dict.fromkeys(args.branches))  # a branch named twice is one
        waits = self.sender.still_coming(session)
        if waits:
            later = LaterCompareView(session, branches, waits)
            self.sender.read_after(session, later.chosen)  # the branches it compares
            return later
        return SavedCompareView(session, *branches)

    def _after_cells(
        self,
        session: ContextSession,
        run: Callable[[], None],
        what: str,
        *,
        moves_to: str | None = None,
    ) -> DeferredCommand | None:
        # Now, or once this kernel's cells under way in the context have ended (Run All:
        # as if the cells had run one by one); see _deferred.
        waits = self.sender.still_coming(session)
        if not waits:
            run()
            return None
        command = DeferredCommand(session, waits, run, what)
        if moves_to is not None:  # the cells after it go where it leaves the context
            self.sender.queue_after(session, command, moves_to)
            self.sender.move_after(session, command.released)  # and a `%cm` view below
        else:  # the cells after it wait until it has read the context
            self.sender.read_after(session, command.released)
        return command

    # -- tools -----------------------------------------------------------------------

    def approve(self, args: a.ApproveArgs) -> PendingDecision | None:
        """Approve one pending tool call (or all); the waiting reply resumes. With none
        waiting while this kernel's reply on the branch is under way (Run All), the
        calls it asks for are approved then."""
        session = self.session()

        def decide() -> builtins.list[ToolCall]:
            return session.approve(
                args.id, arguments=args.args, branch=args.branch, remember=args.remember
            )

        return self._decide(session, args.id, args.branch, decide, "approved")

    def deny(self, args: a.DenyArgs) -> PendingDecision | None:
        """Deny one pending tool call (or all) with a reason told to the model; as
        :meth:`approve`, later when the reply under way has not asked yet."""
        session = self.session()

        def decide() -> builtins.list[ToolCall]:
            return session.deny(args.id, reason=args.reason, branch=args.branch)

        return self._decide(session, args.id, args.branch, decide, "denied")

    def _decide(
        self,
        session: ContextSession,
        call_id: str | None,
        branch: str | None,
        decide: Callable[[], builtins.list[ToolCall]],
        verb: str,
    ) -> PendingDecision | None:
        # (A `%cm branch` above, still to run, may make the branch.)
        if (
            branch is not None
            and branch not in session.branches
            and not self.sender.still_coming(session)
        ):
            raise UsageError(
                f"there is no branch {branch!r}; the branches are {sorted(session.branches)}"
            )
        waiting = [
            call for call in session.pending_tool_calls if call_id is None or call.id == call_id
        ]
        reply = self.sender.reply_under_way(session, branch)
        if not waiting and reply is not None:
            return PendingDecision(reply, decide, verb)
        print(decided_text(decide(), verb))
        return None

    # -- export and help -------------------------------------------------------------

    def export(self, args: a.ExportArgs) -> Markdown | JSONText | DeferredCommand:
        """The conversation as Markdown (shown; after this kernel's replies under way)
        or as lossless JSON text (returned; the cell waits for those replies first, see
        :mod:`._var_reads`)."""
        session = self.session()
        _well_formed(args.branch)

        def document() -> ExportDocument:
            # The same document as `cm-notebook export`, read through the session's store.
            return session._io.call(export_context(session._store, session.id, branch=args.branch))

        if args.format == "json":
            return JSONText(to_json(document()))

        def markdown() -> Markdown:
            return Markdown(to_markdown(document(), branch=args.branch))  # type: ignore[no-untyped-call]

        waits = self.sender.still_coming(session)
        if waits:
            command = DeferredCommand(session, waits, markdown, "exports it")
            self.sender.read_after(session, command.released)
            return command
        return markdown()

    def help(self, args: a.HelpArgs) -> None:
        """Every subcommand's usage, or one subcommand's usage and what it does."""
        print(help_text(args.subcommand))


def _list_contexts(current: str | None) -> None:
    # `%cm ls`: the stored contexts, ``*`` marking the one whose id is ``current``.
    stored, damaged = _listed()
    if not stored and not damaged:
        print("no contexts yet: `%cm new [TITLE]` makes one")
    for meta in stored:
        mark = "*" if meta.id == current else " "
        title = for_terminal(meta.title)  # as the CLI does: a title is anyone's text
        count = len(meta.branches)
        print(f"{mark} {meta.id}  {title}  ({count} branch{'es' if count != 1 else ''})")
    for problem in damaged:
        print(f"! not listed: {for_terminal(str(problem))}")


def _listed() -> tuple[list[ContextMetadata], list[Warning | str]]:
    """The stored contexts, and the warnings naming those left out as damaged.

    A damaged context is left out of the list with a StoreWarning, which Python shows
    once per place: caught here, for the caller to say every time.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stored = ContextSession.list()
    damaged = [w.message for w in caught if issubclass(w.category, StoreWarning)]
    for other in caught:
        if not issubclass(other.category, StoreWarning):
            warnings.warn(other.message, other.category, stacklevel=3)
    return stored, damaged


class JSONText(str):
    """The JSON of an export: a ``str`` to assign (``doc = %cm export -f json``), shown
    as the text itself when a cell ends with it, not as a quoted repr."""

    def _repr_pretty_(self, printer: Any, _cycle: bool) -> None:
        printer.text(str(self))


def _well_formed(*names: str | None) -> None:
    # A malformed branch name (``../..``) is refused when the cell runs, even by a
    # command that waits for the cells above it; whether the branch exists waits.
    for name in names:
        if name is not None:
            validate_branch_name(name)


def _ending(message: Message) -> list[str]:
    # How a reply that did not simply complete ended: a failed one would otherwise show
    # as a bare "assistant:" line, and a stopped, cut-off, filtered or refused one as
    # a whole answer.
    why = message.metadata.error
    if message.status is MessageStatus.STREAMING:
        return ["… (still streaming)"]
    if message.status is MessageStatus.ERROR:
        return [f"[error: {why}]" if why else "[error]"]
    if message.status is MessageStatus.INTERRUPTED:
        return [f"[stopped before the end: {why}]" if why else "[stopped before the end]"]
    stopped = stop_note(message)
    if stopped:
        return [f"[{stopped[0]}]"]
    return []


def _short(text: str, width: int = 60) -> str:
    return one_line(text, width)


def _nothing_to_stop(session: ContextSession, branch: str) -> str:
    # What `%cm stop` says when no reply is written on ``branch``: where replies are
    # (an --ab cell's arms, a --branch cell's reply), and how to stop them.
    running = [b for b in sorted(session.branches) if b != branch and session.running_turn_id(b)]
    if not running:
        return "nothing to stop: no reply is being written"
    names = ", ".join(repr(b) for b in running)
    alone = len(running) == 1
    where = f"branch {names}" if alone else f"branches {names}"
    return (
        f"nothing to stop on branch {branch!r}; replies are being written on {where}: "
        f"`%cm stop --branch {shlex.quote(running[0])}` stops {'it' if alone else 'one there'}, "
        "`%cm stop --all` stops this kernel's replies"
    )
