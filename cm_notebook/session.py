"""``ContextSession``: the one source of truth for a conversation.

A session owns one context: its message tree and branches (through a
:class:`~cm_notebook.store.Store`), one state machine per branch, the tools on offer
and the signal bus that every view listens to. Views (widgets, magics, the REST API)
are thin clients: they subscribe to signals and pull what they show. A process has one
live session per context (:mod:`cm_notebook._registry`): opening it again returns it.

The send path starts here (session -> turn runner -> state machine -> provider ->
store -> signals): :meth:`ContextSession.send` claims the branch, stores the user's
message with a compare-and-set on the branch head (on the store's thread when called
on an event loop, so the loop never waits for the disk), and starts a turn on the
session's event loop, returning a :class:`~cm_notebook.turn.Turn` at once, so a
notebook cell never blocks (see :mod:`cm_notebook._loop`); :mod:`cm_notebook.runner`
goes on from there. Every change publishes a signal; every write that moves a head is a
compare-and-set on it.

The public API is split by responsibility: :mod:`cm_notebook._session_reading`
(title, history, tree, system prompts, comparisons), :mod:`cm_notebook._session_branches`
(fork, switch, delete, a branch's prompt), :mod:`cm_notebook._session_scores` (rating
and scoring replies), :mod:`cm_notebook._session_data` (replies as records, a
DataFrame, CSV; stability), :mod:`cm_notebook._session_stream` (``stream()``) and this
module (construction, sending, tools, signals).
"""

from __future__ import annotations

import asyncio
import builtins
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import events as ev
from . import fsm
from ._auto_names import NamePicks
from ._held_interrupt import HeldInterrupt
from ._json_values import checked_message_metadata, refuse_unstorable
from ._loop import running_loop
from ._migration_mark import is_unfinished_migration, unfinished_warning
from ._registry import REGISTRY, key_for
from ._session_approvals import ApprovalMethods
from ._session_branches import SessionBranches
from ._session_data import DataMethods
from ._session_experiments import ExperimentMethods
from ._session_options import SessionOptions, Unpack, check_names, departs_from_defaults
from ._session_retry import RetryMethods
from ._session_stop import StopMethods
from ._session_stream import StreamMethods
from ._session_transfer import ExportSource, TransferMethods, import_export, kept_if_opened
from ._sessionio import StoreAccess
from ._url_secrets import refuse_url_secrets
from .errors import (
    BranchExistsError,
    BusyError,
    InvalidInputError,
    StateError,
)
from .ids import validate_branch_name, validate_new_branch_name
from .model import ContextMetadata, Message, ProviderSettings, ToolCall
from .params import MAX_PROVIDER_OPTIONS_CHARS as OPTIONS_LIMIT
from .params import check_stored_size, validate_text
from .providers.pool import ProviderLike, check_buildable, check_spec, spec_of
from .redact import refuse_secrets
from .render import SAVED_MESSAGES, conversation_html
from .sampling import for_regenerate
from .store import FileStore, Store
from .titles import UNTITLED, checked_tags, validate_title
from .turn import Turn

if TYPE_CHECKING:  # the views import ipywidgets; loaded only when a view is asked for
    from .widgets import CompareView, SessionView

__all__ = ["ContextSession", "SessionOptions"]


class ContextSession(
    ApprovalMethods,
    ExperimentMethods,
    RetryMethods,
    StopMethods,
    StreamMethods,
    DataMethods,
    TransferMethods,
    SessionBranches,
):
    """One conversation: a tree of messages with named branches, and the engine around it.

    Create one with :meth:`create` or :meth:`open`; list stored ones with :meth:`list`.
    """

    # -- construction ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        title: str | None = None,
        *,
        data_dir: str | Path | None = None,
        system: str | None = None,
        store: Store | None = None,
        tags: Sequence[str] = (),
        provider_options: Mapping[str, Any] | None = None,
        **options: Unpack[SessionOptions],
    ) -> ContextSession:
        """Create a new context and return its session.

        ``options`` are those of :class:`~cm_notebook.session.SessionOptions`:
        ``provider`` (default ``"local"``), ``tools``, ``approval``, ``retry``,
        ``max_tool_rounds``, ``tool_timeout``, ``auto_title``. ``provider`` is a spec
        (``"local"``, ``"openai:gpt-4o-mini"``, ``"anthropic:claude-..."``) or a Provider
        instance (e.g. a ScriptedProvider). ``provider_options`` (e.g.
        ``{"base_url": ...}``) are stored with the context; they must not contain secrets
        (keys come from the environment).
        Without a ``title`` (or with one of white space only) the context is named after
        its first message; with ``auto_title`` the model is then asked for a better title
        in the background.
        """
        session, opened, metadata = cls._unwritten(
            title,
            data_dir=data_dir,
            system=system,
            store=store,
            tags=tags,
            provider_options=provider_options,
            options=options,
        )
        session._metadata = session._io.call(opened.create_context(metadata))
        REGISTRY.add(key_for(store, data_dir, metadata.id), session)
        return session

    @classmethod
    async def acreate(
        cls,
        title: str | None = None,
        *,
        data_dir: str | Path | None = None,
        system: str | None = None,
        store: Store | None = None,
        tags: Sequence[str] = (),
        provider_options: Mapping[str, Any] | None = None,
        **options: Unpack[SessionOptions],
    ) -> ContextSession:
        """:meth:`create`, for a caller on an event loop that must not wait for the disk.

        The same arguments and checks; the new folder is written (its fsyncs, and a wait
        while another process creates a context) off the loop, which goes on meanwhile.
        The session belongs to the running loop, as one made by :meth:`create` there.
        """
        session, opened, metadata = cls._unwritten(
            title,
            data_dir=data_dir,
            system=system,
            store=store,
            tags=tags,
            provider_options=provider_options,
            options=options,
        )
        written = session._io.submit(opened.create_context(metadata))
        session._metadata = await asyncio.wrap_future(written)
        REGISTRY.add(key_for(store, data_dir, metadata.id), session)
        return session

    @classmethod
    def _unwritten(
        cls,
        title: str | None,
        *,
        data_dir: str | Path | None,
        system: str | None,
        store: Store | None,
        tags: Sequence[str],
        provider_options: Mapping[str, Any] | None,
        options: SessionOptions,
    ) -> tuple[ContextSession, Store, ContextMetadata]:
        # create()'s checks and its session, before anything is written.
        check_names(options, "create")
        if options.get("provider") is None:  # left out, or None: the default
            options["provider"] = "local"
        provider = options["provider"]
        # None, "" or only white space: no title (named after the first message).
        blank = not title or (isinstance(title, str) and not title.strip())
        title = UNTITLED if blank else validate_title(title)
        if system is not None and not isinstance(system, str):
            raise InvalidInputError(f"system must be a string, got {type(system).__name__}")
        spec = (
            check_spec(provider)  # as stored: its name lower-cased
            if isinstance(provider, str)
            else spec_of(provider)  # type: ignore[arg-type]  # checked by spec_of
        )
        try:
            # Checked here first for an error that names the argument the caller wrote.
            refuse_unstorable(dict(provider_options or {}), "provider_options")
            refuse_secrets(dict(provider_options or {}), "provider_options")
            refuse_url_secrets(dict(provider_options or {}), "provider_options")
            check_stored_size(dict(provider_options or {}), "provider_options", OPTIONS_LIMIT)
            settings = ProviderSettings(spec=spec, params=dict(provider_options or {}))
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from None
        if isinstance(provider, str):
            # A spec every send would fail with (an option the provider does not take,
            # a model file that is not there) would be stored: built once now, refused.
            check_buildable(spec, settings.params)
        metadata = ContextMetadata(
            title=title, system_prompt=system, provider=settings, tags=checked_tags(tags)
        )
        # Build (and so validate) the session before anything is written.
        opened = store if store is not None else FileStore(data_dir)
        session = cls(opened, metadata, options, owns_store=store is None)
        return session, opened, metadata

    @classmethod
    def open(
        cls,
        context_id: str,
        *,
        data_dir: str | Path | None = None,
        store: Store | None = None,
        **options: Unpack[SessionOptions],
    ) -> ContextSession:
        """Open a stored context. ``provider`` overrides the stored default for this session.

        ``options`` are those of :meth:`create` (``provider``, ``tools``, ``approval``,
        ``retry``, ``max_tool_rounds``, ``tool_timeout``, ``auto_title``).
        A context has one live session per process: if it is open already (in this
        thread or another), that same session is returned, and ``close()`` must then be
        called once per open (the last one closes it); one left open by an event loop
        that has ended (an ``asyncio.run()`` that returned) is closed for all its holders
        instead, and a fresh session made. Options only apply to a session
        being opened; giving them for one already open raises
        :class:`~cm_notebook.errors.StateError`. ``auto_title``: as in :meth:`create`,
        for a context that is still untitled.
        A context whose migration from v1 has not finished opens with an
        :class:`~cm_notebook.migrate.UnfinishedMigrationWarning`.
        """
        check_names(options, "open")
        key = key_for(store, data_dir, context_id)
        with REGISTRY.lock:
            live = REGISTRY.find(key)
            if isinstance(live, ContextSession) and live._retire_if_loop_gone():
                live = None  # made in an asyncio.run() that ended: a fresh one below
            if live is not None:
                assert isinstance(live, ContextSession)
                if departs_from_defaults(options):
                    REGISTRY.release(live)
                    raise StateError(
                        f"context {context_id!r} is already open in this process, and a context "
                        "has one session per process: open it without options to share it "
                        "(change tools with session.tools), or close it first"
                    )
                return live
            opened = store if store is not None else FileStore(data_dir)
            metadata = StoreAccess(opened).call(opened.get_metadata(context_id))
            if is_unfinished_migration(metadata):  # opens: it may be all there is of it
                warnings.warn(
                    unfinished_warning(metadata, getattr(opened, "data_dir", None)),
                    stacklevel=2,
                )
            session = cls(opened, metadata, options, owns_store=store is None)
            # Tool calls a killed process left open on the active branch are settled now,
            # so the views show what became of them (see cm_notebook._dead_rounds).
            active = metadata.active_branch
            session._dead_rounds.if_free(active, metadata.branches[active].head)
            REGISTRY.add(key, session)
            return session

    @classmethod
    def from_export(
        cls,
        source: ExportSource,
        *,
        new_id: bool = False,
        allow_tools: bool = False,
        data_dir: str | Path | None = None,
        store: Store | None = None,
        **options: Unpack[SessionOptions],
    ) -> ContextSession:
        """Import an export as a context and open it: a document from :meth:`export`, its
        JSON (text, bytes or decoded), or the path of a file ``cm-notebook export`` wrote.

        The context keeps the document's id (ContextExistsError if one is there: open
        that one, or pass ``new_id=True`` to import a copy beside it). Tools the export
        allowed to run without asking ask here, unless ``allow_tools=True``. ``options``
        are :meth:`open`'s; a context they cannot be opened with is not kept.
        """
        check_names(options, "open")
        opened = store if store is not None else FileStore(data_dir)
        context_id = import_export(source, store=opened, fresh_id=new_id, allow_tools=allow_tools)
        with kept_if_opened(opened, context_id):
            return cls.open(context_id, data_dir=data_dir, store=store, **options)

    @classmethod
    def list(
        cls, data_dir: str | Path | None = None, *, store: Store | None = None
    ) -> builtins.list[ContextMetadata]:
        """Metadata of every stored context, most recently updated first."""
        store = store if store is not None else FileStore(data_dir)
        return StoreAccess(store).call(store.list_contexts())

    @property
    def pending_tool_calls(self) -> builtins.list[ToolCall]:
        """Tool calls waiting for :meth:`approve` or :meth:`deny`: those of this
        session's turns, oldest first, then those waiting in other processes that
        opened the context (a server's, a kernel's), which these methods decide too.
        A call asked in another process is listed once this process has read the
        context's signal log (milliseconds; the first read after opening may take
        longer for a large log)."""
        return self._approvals.calls() + [each.call for each in self._waiting_elsewhere(None)]

    async def wait_for_approval(self, timeout: float | None = 60.0) -> builtins.list[ToolCall]:
        """Wait until tool calls need :meth:`approve` / :meth:`deny`, and return them.

        Returns ``[]`` if no turn is running (or they all finished without asking, or
        failed). Raises TimeoutError after ``timeout`` seconds. For one turn, use
        :meth:`Turn.wait_for_approval <cm_notebook.turn.Turn.wait_for_approval>`, which
        raises the turn's error if it failed before asking.
        """
        return await self._approvals.wait(self._all_idle, timeout)

    def turn(self, branch: str | None = None) -> Turn | None:
        """The turn running on ``branch`` (default: active), if any."""
        with self._lock:
            runner = self._runners.get(self._branch_name(branch))
        return runner.turn if runner is not None else None

    # -- sending -----------------------------------------------------------------------

    def check_send(
        self, *, branch: str | None = None, provider: ProviderLike | None = None, **params: Any
    ) -> None:
        """Raise what :meth:`send` would for this branch, provider and parameters, and do
        nothing else: for a caller that changes the context before it sends (``%%cm
        --system`` forks a branch) and must not when the send would be refused."""
        current = self._read_metadata()
        name = current.active_branch if branch is None else validate_branch_name(branch)
        self._defaults.for_request(current, name, provider, params)

    def send(
        self,
        text: str,
        *,
        branch: str | None = None,
        provider: ProviderLike | None = None,
        metadata: Mapping[str, Any] | None = None,
        **params: Any,
    ) -> Turn:
        """Add a user message and start the reply; returns at once with a :class:`Turn`.

        ``params`` are generation parameters (``temperature``, ``max_tokens``, ``top_p``,
        ``seed``, ``stop``, ``model``...); a name the provider does not accept is refused
        (its ``parameters`` attribute lists the ones it does). ``metadata`` is recorded in
        the user message's metadata (e.g. ``%%cm`` notes which kernel variables filled the
        text). ``await turn`` (notebooks) or ``turn.result(timeout)`` (scripts) gives the
        final assistant message.

        ``provider`` (a spec or a Provider) answers this request instead of the branch's.
        A spec of the session's own provider with another model (``openai:gpt-4o`` in a
        session created with ``openai:...``) is built with the session's
        ``provider_options``, its ``base_url`` included: it asks the same server (a
        gateway or local server serving several models). The reply records that server
        in ``metadata.endpoint``; to ask the provider's own API instead, pass a Provider
        built without it (e.g. ``OpenAIProvider("gpt-4o")``).

        From a script, ``send()`` returns once the user message is durable and raises if
        it cannot be stored. On an event loop (a notebook cell, async code) the loop never
        waits for the disk: the message is written in the background, starting at once;
        the reply is asked for only once it is durable, the session's own reads see it
        at once, and if it cannot be stored the turn fails with that error
        (``await turn.accepted()`` waits for the write alone).

        Ctrl-C (KeyboardInterrupt) during ``send()`` leaves the branch as a stop does.
        Before the message is stored, nothing is: the send leaves no trace. Once its
        write has begun, the message is stored and its reply stopped at once, as
        :meth:`stop` stops one: a reply with status ``interrupted`` (empty, or the
        little text it had) follows it, so the branch goes on user, assistant
        (:meth:`regenerate` asks for a full reply). The KeyboardInterrupt is raised
        once that stop is over, its message saying so; a bare one means nothing was
        stored. While another process holds the context's lock, a Ctrl-C takes effect
        when the wait for it ends (at most the store's ``lock_timeout``).
        """
        text = validate_text(text)
        noted = checked_message_metadata(metadata)
        current = self._read_metadata()
        name = current.active_branch if branch is None else validate_branch_name(branch)
        chosen, generation = self._defaults.for_request(current, name, provider, params)
        untitled = current.title == UNTITLED
        script = running_loop() is None
        # Ctrl-C is held from the claim until the turn has started (_held_interrupt).
        with HeldInterrupt() as ctrl_c:
            with self._claim(name) as claim:
                head = self._head(name)
                user = Message(role="user", parent_id=head, content=text, metadata=noted)
                ctrl_c.raise_pending()  # nothing stored yet: the send leaves no trace
                if script:
                    # A script: store the message here, so a failure raises from send().
                    self._append_prompt(name, user)
                    turn = self._start(claim, fsm.Send(), user.id, chosen, generation)
                else:
                    # On an event loop (a notebook cell, async code): the loop must not
                    # wait for the disk. The message is stored on the store's thread,
                    # starting now; the turn waits for it to be durable before it asks
                    # for a reply, and fails with the store's error if it cannot be.
                    stored = self._start_prompt(name, user)

                    async def prologue(turn: Turn) -> None:
                        await asyncio.wrap_future(stored)
                        if untitled:
                            await self._title_quietly(user, turn, chosen)

                    turn = self._start(
                        claim, fsm.Send(), user.id, chosen, generation, prologue, prompt=stored
                    )
            if script and untitled:  # the turn holds the claim now
                self._io.call(self._title_quietly(user, turn, chosen))
        if ctrl_c.pending:
            said = (
                "send() was interrupted once your message was being stored: it is "
                f"stored (id {user.id})"
            )
            raise self._stop_interrupted(turn, said)
        return turn

    def edit(
        self,
        message_id: str,
        text: str,
        *,
        branch: str | None = None,
        provider: ProviderLike | None = None,
        from_branch: str | None = None,
        **params: Any,
    ) -> Turn:
        """Replace an earlier user message: a new sibling on a new branch, then a reply.

        The new branch (``branch``, default ``"<source>-edit-N"``) becomes active; the
        original conversation stays on its branch. It inherits the defaults (system
        prompt, provider, parameters) of the branch edited: ``from_branch`` if given
        (it must hold the message), else the active branch if it holds it, else the
        oldest branch that does. Ctrl-C during ``edit()``: as in :meth:`send`.
        """
        text = validate_text(text)
        original = self.get(message_id)
        if original.role != "user":
            raise InvalidInputError(
                f"message {message_id!r} is the {original.role}'s; only user messages "
                "can be edited (use regenerate() for a new reply)"
            )
        # The edit answers as the branch the message was edited on, not whichever
        # branch happens to be active (a view may show another one).
        source = self._source_branch(original.id, from_branch) or self.active_branch
        chosen, generation = self._defaults.for_request(
            self._read_metadata(), source, provider, params
        )
        edited = Message(role="user", parent_id=original.parent_id, content=text)
        picks = NamePicks("the edit")
        while True:
            if branch is None:
                name = self._free_branch_name(f"{source}-edit", picks.refuses)
            else:
                name = validate_new_branch_name(branch)
            created = False
            try:
                with HeldInterrupt() as ctrl_c, self._claim(name) as claim:
                    ctrl_c.raise_pending()  # nothing written yet: no trace
                    metadata = self._read_metadata()
                    made = self._io.call(
                        self._store.create_branch(
                            self.id,
                            name,
                            head=original.parent_id,
                            forked_from=original.id,
                            **self._defaults.inherit(metadata, source),
                        )
                    )
                    created = True
                    self._defaults.pass_on(metadata, source, made)
                    self._publish(ev.BranchCreated(branch=name, head=original.parent_id))
                    self._append_prompt(name, edited)
                    self.switch(name)
                    turn = self._start(claim, fsm.Send(), edited.id, chosen, generation)
                if ctrl_c.pending:
                    said = (
                        "edit() was interrupted once it had begun: the edited message "
                        f"is stored (id {edited.id})"
                    )
                    raise self._stop_interrupted(turn, said)
                return turn
            except (BranchExistsError, BusyError) as exc:
                # A name chosen here that another process created (or is creating: it
                # holds the name's claim) since the branches were read: choose again.
                # Not a name the user gave, nor once this call made the branch.
                if branch is not None or created:
                    raise
                picks.taken(name, exc)

    def regenerate(
        self, *, branch: str | None = None, provider: ProviderLike | None = None, **params: Any
    ) -> Turn:
        """A new reply to the last user (or tool) message: a sibling of the current reply.

        The branch's head moves to the new reply; the old one stays in the tree
        (see :meth:`siblings`). The new reply is sampled (a fresh ``seed`` unless one is
        given here, not the branch's; a ``temperature`` of 0.8 unless given here or as
        the branch's default), so a greedy model does not repeat itself; the reply's
        ``metadata.parameters`` say which (see :mod:`cm_notebook.sampling`). Ctrl-C
        during ``regenerate()``: as in :meth:`send` (nothing moved, or the new reply
        stopped at once).
        """
        name = self._branch_name(branch)
        chosen, generation = self._defaults.for_request(
            self._read_metadata(), name, provider, params
        )
        generation = for_regenerate(generation, params)
        with HeldInterrupt() as ctrl_c, self._claim(name, answer_dead_round=False) as claim:
            ctrl_c.raise_pending()  # nothing moved yet: no trace
            prompt = self._rewind_to_prompt(name)
            turn = self._start(claim, fsm.Send(), prompt, chosen, generation)
        if ctrl_c.pending:
            raise self._stop_interrupted(turn, "regenerate() was interrupted once it had begun")
        return turn

    # -- signals -----------------------------------------------------------------------

    def subscribe(
        self,
        callback: Callable[[ev.Event], None],
        *,
        branch: str | None = None,
        kinds: Iterable[str] | None = None,
    ) -> Callable[[], None]:
        """Call ``callback(event)`` for every signal; returns an unsubscribe function.

        ``branch`` keeps the signals of one branch, ``kinds`` those of some kinds (e.g.
        ``{"ContentDelta", "MessageCompleted"}``; see :data:`~cm_notebook.events.SIGNAL_KINDS`).
        Safe to call from any thread; callbacks run on the session's event loop thread,
        so keep them quick.
        """
        return self._bus.subscribe(callback, branch=branch, kinds=kinds)

    def events(self, since: int = 0) -> builtins.list[ev.Event]:
        """Signals after sequence number ``since`` (a single Resync if they are gone)."""
        return self._on_loop(lambda: self._bus.events(since))

    def event_stream(self, since: int | None = None) -> ev.EventStream:
        """An async iterator of signals (for servers and async views)."""
        return self._bus.stream(since)

    @property
    def last_seq(self) -> int:
        """The sequence number of the last signal (consistent with :meth:`events`)."""
        return self._on_loop(lambda: self._bus.last_seq)

    def __repr__(self) -> str:
        return f"<ContextSession {self.id!r} title={self._metadata.title!r}>"

    def _repr_html_(self) -> str:
        # Static HTML: a saved notebook shows the conversation without a kernel, its
        # last messages as the chat view does (a long branch would be megabytes).
        metadata = self._read_metadata()
        data_dir = getattr(self._store, "data_dir", None)  # the export it advises, for it
        return conversation_html(
            metadata,
            self.history(),
            last=SAVED_MESSAGES,
            data_dir=data_dir if isinstance(data_dir, Path) else None,
        )

    def _ipython_display_(self) -> None:
        # In a notebook: the live views, then a static snapshot kept current for saving.
        from .widgets import display_session

        display_session(self)

    def view(self) -> SessionView:
        """The live view of this session (status, branch tree, chat, approvals); its
        parts are ``.status``, ``.tree``, ``.chat``, ``.approvals``."""
        from .widgets import SessionView

        return SessionView(self)

    def compare_view(self, *branches: str) -> CompareView:
        """``branches`` (default: all) side by side from where they diverge, kept current."""
        from .widgets import CompareView

        return CompareView(self, *branches)
