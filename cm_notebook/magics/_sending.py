"""Sending from cells: ``%cm send``, ``%%cm`` (with ``--system``, ``--ab``, ``--fanout``)
and ``%cm retry``, in the order the cells ran.

Nothing here waits for a model: each returns a view at once (DESIGN fact 7). A cell
sends now, or queues (:mod:`._queue`) behind this kernel's cell before it on its branch,
behind a command above it that reads the context once the cells above it have run, and
behind the cells whose ``--var`` its ``{name}`` fields read: such a field is filled in
once that cell's reply has ended, so Run All asks with the new answer, never with a
value left from an earlier run (nor fails for a variable not set yet). When none of
those replies set it (failed, not sent), the cell is not sent and says why.
"""

from __future__ import annotations

import concurrent.futures
import re
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError

from ..compare import Comparison
from ..fanout import FanOut
from ..model import Message
from ..provenance import describe_variables
from ..session import ContextSession
from ..turn import Turn
from . import _args as a
from ._comparison import ComparisonView
from ._interpolate import field_names, interpolate
from ._queue import CellQueue, Queued, Setter, not_set, release
from ._reply import ReplyView
from ._saved import SavedComparisonView

__all__ = ["CellSender"]


@dataclass(frozen=True)
class _Message:
    """A cell's message with its ``{name}`` fields filled in, and their provenance."""

    text: str
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def metadata(self) -> dict[str, Any] | None:
        """What the user message records: which kernel variables fed it."""
        if not self.variables:
            return None
        return {"interpolated": list(self.variables), "variables": self.variables}


class CellSender:
    """Sends cells' messages on a session, in the order the cells ran."""

    def __init__(self, namespace: MutableMapping[str, Any]) -> None:
        self.namespace = namespace
        # This kernel's last cell per (context, branch): a cell sent while it is under
        # way queues behind it (Run All over cells of questions).
        self._queue = CellQueue()
        # The cells that will set each ``--var`` name, while they are under way.
        # Every such cell, oldest first: the latest may fail and set nothing, leaving the
        # value to an earlier one still under way.
        self._setting: dict[str, list[Setter]] = {}
        # Per ``--var`` name: how many cells were given it, and which of them (by that
        # count) set the value it holds.
        self._var_cells: dict[str, int] = {}
        self._var_set_by: dict[str, int] = {}

    def send(self, session: ContextSession, args: a.SendArgs) -> ReplyView:
        """``%cm send``: one line as a message (no ``{name}`` fields)."""
        message = _Message(args.text)
        return self._reply(session, args.branch, lambda branch, _view: (branch, message), ())

    def cell(
        self, session: ContextSession, args: a.CellArgs, body: str
    ) -> ReplyView | ComparisonView:
        """``%%cm``: the cell body (with ``{name}`` filled in) as a message."""
        body = _LINE_END.sub("\n", body)  # a cell saved with Windows line endings
        if not body.strip():
            raise UsageError(f"the cell is empty: write the message below the magic. {args.USAGE}")
        params: dict[str, Any] = {}
        if args.temperature is not None:
            params["temperature"] = args.temperature
        if args.max_tokens is not None:
            params["max_tokens"] = args.max_tokens
        setters, later = self._setters_of(body)
        # Per variable read: the cells it waits for. If none of them sets it (failed,
        # stopped), the value is an earlier run's: the cell is not sent.
        reading = {name: self.setters_of(name) for name in later}
        # The other variables as they are now, as if the cells ran one by one (a cell
        # after this one may change them before it is sent).
        namespace = ChainMap(
            {
                name: self.namespace[name]
                for name in field_names(body)
                if name not in later and name in self.namespace
            },
            self.namespace,
        )

        def message() -> _Message:
            for name, cells in reading.items():
                unset = not_set(name, cells)
                if unset is not None:
                    raise unset
            text, used = interpolate(body, namespace)
            text = _trimmed(text)
            if not text:
                raise UsageError("the message is empty once its {...} fields are filled in")
            # Provenance: which kernel variables fed it (see cm_notebook.provenance).
            return _Message(text, describe_variables(used, namespace))

        # Filled in now, so a mistake fails the cell; later when a field waits for a reply,
        # but checked now with those replies left open: a mistake in any other field (a
        # name not defined) still fails the cell, not the send once the replies came.
        now = None if setters else message()
        if setters:
            interpolate(body, ChainMap(dict.fromkeys(later, _OPEN_REPLY), namespace))
        if args.ab is not None or args.fanout is not None:
            view: ReplyView | ComparisonView = self._fan_out(
                session, args, params, now or message, setters
            )
        else:
            # A bad provider or parameter is refused now, even when the send is queued
            # (and before --system changes the context).
            session.check_send(
                branch=self._checked_on(session, args.branch),
                provider=args.chosen_provider,
                **params,
            )

            def prepare(branch: str, reply: ReplyView | None) -> tuple[str, _Message]:
                filled = now if now is not None else message()
                if reply is not None:
                    reply.variables = filled.variables
                if args.system is not None:
                    tell = print if reply is None else reply.notice
                    branch = _with_system(session, args.system, branch, tell)
                return branch, filled

            view = self._reply(
                session,
                args.branch,
                prepare,
                setters,
                provider=args.chosen_provider,
                params=params,
                form=args.format,
                on_done=self._store(args.var),
                variables=now.variables if now is not None else {},
            )
        if args.system is not None and isinstance(view, ReplyView) and view.turn is None:
            # Queued: its --system may fork a branch and make it active when it is sent.
            moved: concurrent.futures.Future[None] = concurrent.futures.Future()
            view.sent.add_done_callback(lambda _sent: release(moved))
            self._queue.add_move(session, moved)
        if args.var is not None:
            if isinstance(view, ReplyView):
                view.var = args.var  # for a %cm retry of its reply
            setting = self._setting.setdefault(args.var, [])
            setting[:] = [*self.setters_of(args.var), view]
        return view

    def retry(self, session: ContextSession, args: a.TurnArgs) -> ReplyView:
        """``%cm retry``: the failed reply again, once this kernel's reply above it on the
        branch has ended; a cell after it waits for it."""
        target = args.branch or session.active_branch
        before = self._queue.before(session, target)
        # This kernel's last cell on the branch, if it has a --var: the retried reply of
        # its failed reply fills that variable, as the reply would have.
        last = self._queue.last(session, target)
        cell = last if isinstance(last, ReplyView) and last.var is not None else None
        on_done = _if_failed(cell) if cell is not None else None
        reads = self._queue.reads(session)
        if before is None and not reads:
            reply = ReplyView(session, session.retry(branch=args.branch), on_done=on_done)
        else:
            # Run All: the reply above may still fail, or not; retry once it has ended.

            def queued() -> Turn:
                return session.retry(branch=_continued(before, args.branch, target))

            waits = _waits(before, (), reads)
            reply = ReplyView(
                session, None, branch=target, waits=waits, send=queued, on_done=on_done
            )
        self._queue.add(session, reply.branch, reply)
        if cell is not None and cell.var is not None:
            # A later cell's {name} (or Python naming it) waits for the retried reply.
            reply.var = cell.var
            self._setting.setdefault(cell.var, []).append(reply)
        return reply

    def reply_under_way(self, session: ContextSession, branch: str | None) -> ReplyView | None:
        """This kernel's reply on ``branch`` (default: active) still to come, if any."""
        before = self._queue.before(session, branch or session.active_branch)
        return before if isinstance(before, ReplyView) else None

    def still_coming(self, session: ContextSession | None) -> list[concurrent.futures.Future[None]]:
        """What a command run after this kernel's cells in the context (None: in any
        context) waits for: each cell not finished yet (its reply, every arm's)
        finishing, and each command above it that reads the context having read."""
        cells = [cell.finished for cell in self._queue.under_way(session)]
        return [*cells, *self._queue.reads(session)]

    def cells_under_way(self, session: ContextSession | None) -> list[Queued]:
        """This kernel's cells in the context (None: in any context) not finished yet,
        oldest first."""
        return self._queue.under_way(session)

    def read_after(
        self, session: ContextSession | None, read: concurrent.futures.Future[None]
    ) -> None:
        """A command reads the context (None: every context, ``%cm ls``) once
        :meth:`still_coming` is done, and is done reading when ``read`` is: the cells and
        commands after it in the context (on any branch) wait for that, so it shows the
        context as of its place in the notebook."""
        self._queue.add_read(session, read)

    def move_after(self, session: ContextSession, moved: concurrent.futures.Future[None]) -> None:
        """A command may change the active branch once :meth:`still_coming` is done,
        and has when ``moved`` is: a view of the context below it attaches after that."""
        self._queue.add_move(session, moved)

    def moves(self, session: ContextSession) -> list[concurrent.futures.Future[None]]:
        """The commands and queued cells in the context that may still change its
        active branch (each done once it has, or will not)."""
        return self._queue.moves(session)

    def stop_all(self, session: ContextSession) -> int:
        """Stop this kernel's cells in the context still to come; how many there were."""
        return self._queue.stop_all(session)

    def queue_after(self, session: ContextSession, command: Queued, moves_to: str) -> None:
        """Let the cells after ``command`` on the active branch, or on the branch
        ``moves_to`` it makes or switches to, wait for it."""
        self._queue.add(session, session.active_branch, command)
        self._queue.add(session, moves_to, command)

    def _checked_on(self, session: ContextSession, branch: str | None) -> str | None:
        # The branch to check a send's settings against now: ``branch``, or the active
        # one when ``branch`` is to be made by a `%cm branch` above still waiting.
        if branch is None or branch in session.branches:
            return branch
        return None if self._queue.before(session, branch) is not None else branch

    # -- the views -------------------------------------------------------------------

    def _reply(
        self,
        session: ContextSession,
        branch: str | None,
        prepare: Callable[[str, ReplyView | None], tuple[str, _Message]],
        setters: Sequence[Queued],
        *,
        provider: str | None = None,
        params: Mapping[str, Any] | None = None,
        **view: Any,
    ) -> ReplyView:
        # Sent now; or queued behind this kernel's cell before it on the branch and the
        # cells setting the variables it reads. A turn another process runs is refused
        # as busy. ``prepare(branch, view)`` gives the branch to send on (--system may
        # fork one; the view, when queued, is told so) and the message.
        target = branch or session.active_branch
        before = self._queue.before(session, target)
        reads = self._queue.reads(session)

        def send(branch: str, reply: ReplyView | None) -> Turn:
            on, message = prepare(branch, reply)
            return session.send(
                message.text,
                branch=on,
                provider=provider,
                metadata=message.metadata,
                **dict(params or {}),
            )

        if before is None and not setters and not reads:
            reply = ReplyView(session, send(target, None), **view)
        else:

            def queued() -> Turn:
                return send(_continued(before, branch, target), reply)

            waits = _waits(before, setters, reads)
            reply = ReplyView(session, None, branch=target, waits=waits, send=queued, **view)
        self._queue.add(session, target, reply)
        return reply

    def _fan_out(
        self,
        session: ContextSession,
        args: a.CellArgs,
        params: dict[str, Any],
        message: _Message | Callable[[], _Message],
        setters: Sequence[Queued],
    ) -> ComparisonView:
        variants: list[dict[str, Any]]
        if args.ab is not None:
            variants = [{"system": system, **params} for system in args.ab]
            if args.chosen_provider is not None:
                variants = [{**v, "provider": args.chosen_provider} for v in variants]
        else:
            variants = [{"provider": spec, **params} for spec in args.fanout or []]
            if args.system is not None:
                # Every arm is asked under the cell's prompt (its own branch keeps it), so
                # only the providers differ between the answers compared.
                variants = [{**v, "system": args.system} for v in variants]
        base = args.branch or session.active_branch
        on_done = self._store(args.var)
        before = self._queue.before(session, base)
        reads = self._queue.reads(session)
        view: SavedComparisonView
        if before is None and not reads and isinstance(message, _Message):
            fan = session.fan_out(message.text, variants, branch=base, metadata=message.metadata)
            view = SavedComparisonView(session, fan, on_done, branch=base)
            view.variables = message.variables
        else:
            # Refused now what the fan-out would refuse for a provider or parameter.
            for variant in variants:
                session.check_send(
                    branch=self._checked_on(session, base),
                    provider=variant.get("provider"),
                    **params,
                )
            fill = message

            def start() -> FanOut:
                filled = fill if isinstance(fill, _Message) else fill()
                view.filled_in(filled.variables)
                forked = _continued(before, args.branch, base)
                view.branch = forked  # where a cell after it that names none goes
                return session.fan_out(
                    filled.text, variants, branch=forked, metadata=filled.metadata
                )

            view = SavedComparisonView(
                session,
                None,
                on_done,
                branch=base,
                waits=_waits(before, setters, reads),
                start=start,
                arms=len(variants),
            )
        self._queue.add(session, base, view)
        return view

    # -- variables -------------------------------------------------------------------

    def names_being_set(self) -> frozenset[str]:
        """The ``--var`` names whose cells are still under way (their value to come)."""
        return frozenset(name for name in self._setting if self.setters_of(name))

    def setters_of(self, name: str) -> list[Setter]:
        """The cells still under way that set the ``--var`` ``name``, oldest first."""
        return [cell for cell in self._setting.get(name, ()) if not cell.finished.done()]

    def setters(self, names: Iterable[str]) -> list[Queued]:
        """The cells still under way that set the ``--var`` of any of ``names``, each
        once."""
        found: list[Queued] = []
        for name in names:
            found += [cell for cell in self.setters_of(name) if cell not in found]
        return found

    def _setters_of(self, body: str) -> tuple[list[Queued], set[str]]:
        # The cells still under way whose --var the body's {name} fields read, and
        # those names (filled in once those cells' replies have ended).
        being_set = self.names_being_set()
        names = [name for name in field_names(body) if name in being_set]
        return self.setters(names), set(names)

    def _store(self, name: str | None) -> Callable[[Any], None] | None:
        # ``--var``: a reply's text, or an --ab / --fanout cell's Comparison.
        if name is None:
            return None

        number = self._var_cells[name] = self._var_cells.get(name, 0) + 1

        def store(result: Message | Comparison) -> None:
            # As one by one: a reply that ends after a later cell's (on another branch)
            # does not overwrite the value that cell set.
            if number < self._var_set_by.get(name, 0):
                return
            self._var_set_by[name] = number
            self.namespace[name] = result.content if isinstance(result, Message) else result

        return store


#: A line ending other than "\n" (Windows' "\r\n", an old Mac's "\r").
_LINE_END = re.compile(r"\r\n?")


class _OpenReply:
    """A reply not yet come, as a field's value in the check of a cell's other fields:
    any attribute, item or format of it is fine (the reply's text decides later)."""

    def __getattr__(self, name: str) -> _OpenReply:
        return self

    def __getitem__(self, key: object) -> _OpenReply:
        return self

    def __format__(self, spec: str) -> str:
        return ""

    def __repr__(self) -> str:
        return ""

    __str__ = __repr__


_OPEN_REPLY = _OpenReply()


def _waits(
    before: Queued | None,
    setters: Sequence[Queued],
    reads: Sequence[concurrent.futures.Future[None]],
) -> list[concurrent.futures.Future[None]]:
    # What a queued cell waits for: the cell before it letting go of the branch, the
    # replies whose --var it reads having ended (the variable set), and the commands
    # above it that read the context having read it.
    first = [before.released] if before is not None else []
    return [*first, *(s.finished for s in setters), *reads]


def _with_system(
    session: ContextSession, system: str, branch: str, tell: Callable[[str], None]
) -> str:
    # The branch keeps the prompt for its later messages too. A branch with replies made
    # under another prompt is forked (see edit_system): the message goes on the fork.
    # Running the cell again changes nothing more: the prompt is the same.
    forked = session.edit_system(system, branch=branch).name
    if forked != branch:
        tell(
            f"on new branch {forked!r}: {branch!r} has replies under another system prompt "
            "(`%cm branches` lists them)"
        )
    return forked


def _if_failed(cell: ReplyView) -> Callable[[Message], None] | None:
    # What a retried reply's final message is handed to: the --var of ``cell``, the
    # cell whose failed reply it replaces (nothing if that reply did not fail, e.g. a
    # retry queued behind it in a Run All).
    store = cell.on_done
    if store is None:
        return None

    def on_done(final: Message) -> None:
        if cell.failed:
            store(final)

    return on_done


def _continued(before: Queued | None, given: str | None, target: str) -> str:
    # The branch a queued cell sends on: the one it names, else the one the cell before
    # it ended on (a --system cell there may have moved to a fork, as running the cells
    # one by one would have).
    return target if given is not None or before is None else before.branch


def _trimmed(text: str) -> str:
    """A cell body as its message: without the blank lines above it nor the whitespace
    (the newline ending the cell) after it, the first line's indentation kept."""
    lines = text.splitlines(keepends=True)
    while lines and not lines[0].strip():
        del lines[0]
    return "".join(lines).rstrip()
