"""``/contexts`` and ``/contexts/{context_id}``: list, create, read, rename, delete."""

from __future__ import annotations

from ..errors import InvalidIdError
from ..fsm import State
from ..session import ContextSession
from ..store.folders import SkippedFolder
from .base import CMHandler, operation
from .bodies import ContextDetail, ContextList, CreateContext, SkippedContext, UpdateContext
from .provider_choice import check_client_choice

__all__ = ["ContextHandler", "ContextsHandler", "detail", "reported_state", "shown_name"]


def reported_state(session: ContextSession, branch: str, running: bool) -> State:
    """The state of ``branch`` as a client should read it: never Idle while a turn runs.

    A send is acknowledged (202) once its user message is stored, before the turn's
    first step reaches the branch's state machine, which still says Idle then; a
    client polling ``state`` until Idle would stop at once and read no reply. A turn
    that runs and has not moved the machine yet is waiting for the model's answer.
    """
    state = session.state_of(branch)
    if running and state is State.IDLE:
        return State.AWAITING_RESPONSE
    return state


def detail(session: ContextSession, streams: int = 0) -> ContextDetail:
    """A context's metadata and what its session is doing."""
    metadata = session.metadata
    running = {}
    for name in metadata.branches:
        turn_id = session.running_turn_id(name)  # the server's, or a kernel's
        if turn_id is not None:
            running[name] = turn_id
    # Read once per branch, so ``state`` and ``states`` always agree.
    states = {name: reported_state(session, name, name in running) for name in metadata.branches}
    return ContextDetail(
        context=metadata,
        state=states[metadata.active_branch],
        states=states,
        running=running,
        pending_tool_calls=session.pending_tool_calls,
        last_seq=session.last_seq,
        streams=streams,
    )


def shown_name(name: str) -> str:
    """``name`` as JSON can carry it: a folder name that is not UTF-8 (its undecodable
    bytes read as lone surrogates) shows those bytes as ``\\xNN`` escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class ContextsHandler(CMHandler):
    """Every context; a new one."""

    @operation(
        "List contexts, most recently updated first, and the folders that are not "
        "readable contexts",
        response=ContextList,
        errors=(),
    )
    async def get(self) -> None:
        contexts, skipped = await self.sessions.list()
        unreadable = [self._skipped(folder) for folder in skipped]
        self.reply(ContextList(contexts=contexts, skipped=unreadable))

    def _skipped(self, folder: SkippedFolder) -> SkippedContext:
        shown = shown_name(folder.name)
        if isinstance(folder.error, InvalidIdError):
            # No request can name this folder (its name is no valid id, maybe not even
            # text): the remedy the error gives, and a DELETE, cannot help a client.
            message = (
                f"the folder '{shown}' among the contexts is not a context: its name is "
                "not a valid context id, so no request can reach it; move it out of the "
                "server's data folder (or, if it holds a context, name it after that "
                "context's id)"
            )
        else:
            # Worded as errors are (no server paths; a DELETE of the folder's id as the
            # remedy), about the context whose folder it is.
            # (The name passed as valid before anything else was read, so it is text.)
            message = shown_name(self.reword(folder.error, folder.name))
        return SkippedContext(id=shown, message=message, reason=type(folder.error).__name__)

    @operation(
        "Create a context", status=201, response=ContextDetail, body=CreateContext, errors=(400,)
    )
    async def post(self) -> None:
        request = self.body(CreateContext)
        check_client_choice(
            request.provider, request.provider_options, allowed=self.sessions.client_endpoints
        )
        session = await self.sessions.create(
            title=request.title,
            provider=request.provider,
            provider_options=request.provider_options,
            system=request.system,
            tags=request.tags,
        )
        self.reply(detail(session), status=201)


class ContextHandler(CMHandler):
    """One context."""

    @operation("A context's metadata and state", response=ContextDetail)
    async def get(self, context_id: str) -> None:
        session = await self.session(context_id)
        self.reply(detail(session, self.sessions.streams(session.id)))

    @operation(
        "Rename a context", response=ContextDetail, body=UpdateContext, errors=(400, 404, 409)
    )
    async def patch(self, context_id: str) -> None:
        session = await self.session(context_id)
        request = self.body(UpdateContext)
        # A metadata write (it may wait for another process's lock): on a worker thread,
        # not the event loop. The session publishes its signal on its loop's thread.
        await self.blocking(session, session.rename, request.title)
        self.reply(detail(session, self.sessions.streams(session.id)))

    @operation(
        "Delete a context (its running replies are stopped; 409 while another process "
        "is writing into it)",
        status=204,
        errors=(400, 404, 409),
    )
    async def delete(self, context_id: str) -> None:
        await self.sessions.delete(context_id)
        self.set_status(204)
        self.finish()
