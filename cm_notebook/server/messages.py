"""Messages and turns: pages of a branch, one message, send, edit, regenerate, stop."""

from __future__ import annotations

from ..errors import BranchNotFoundError, StateError
from ..ids import validate_branch_name
from ..model import Message, MessageStatus
from ..session import ContextSession
from ..store.folders import context_folder_of
from ..store.stream_tail import streamed_reasoning, streamed_text
from ..turn import Turn
from .base import CMHandler, operation
from .bodies import (
    EditMessage,
    MessagePage,
    MessagesQuery,
    Regenerate,
    Retry,
    SendMessage,
    Stop,
    TurnStarted,
)

__all__ = [
    "EditHandler",
    "MessageHandler",
    "MessagesHandler",
    "RegenerateHandler",
    "RetryHandler",
    "StopHandler",
    "as_streamed",
    "page",
]

_TURN_ERRORS = (400, 404, 409)


def page(session: ContextSession, query: MessagesQuery) -> MessagePage:
    """The last ``limit`` messages of a branch, ending just before ``before`` if given."""
    branch = query.branch if query.branch is not None else session.active_branch
    # One more than asked: whether it exists says if there are older messages.
    messages = session.history(branch, before=query.before, limit=query.limit + 1)
    has_more = len(messages) > query.limit
    shown = [as_streamed(session, message) for message in messages[-query.limit :]]
    return MessagePage(branch=branch, messages=shown, has_more=has_more)


def as_streamed(session: ContextSession, message: Message) -> Message:
    """``message``, with the text (and reasoning) it has streamed so far if it is being
    written.

    A reply's file holds its text as of its last checkpoint (one a second); the deltas
    since are in the signal log, and the events stream sends only those after the
    client's number. Read from the file alone, a client that takes a message and then
    follows the stream from the context's ``last_seq`` would miss the text between; so
    too the reasoning of a thinking model, which may stream nothing else for minutes.
    """
    log = session.signal_log_path
    if message.status is not MessageStatus.STREAMING or log is None:
        return message
    folder = context_folder_of(log)
    update: dict[str, object] = {}
    text = streamed_text(folder, message)
    if text is not None:
        update["content"] = text
    reasoning = streamed_reasoning(folder, message)
    if reasoning is not None:
        update["metadata"] = message.metadata.model_copy(update={"reasoning": reasoning})
    return message.model_copy(update=update) if update else message


class MessagesHandler(CMHandler):
    """A branch's messages; a new user message."""

    @operation(
        "A page of a branch's messages, oldest first", response=MessagePage, query=MessagesQuery
    )
    async def get(self, context_id: str) -> None:
        session = await self.session(context_id)
        query = self.query(MessagesQuery)
        # Reads message files: on a worker thread, not the server's event loop (a
        # session may be read from any thread).
        self.reply(await self.blocking(session, page, session, query))

    @operation(
        "Send a user message and start the reply",
        status=202,
        response=TurnStarted,
        body=SendMessage,
        errors=_TURN_ERRORS,
    )
    async def post(self, context_id: str) -> None:
        session = await self.session(context_id)
        request = self.body(SendMessage)
        turn = session.send(request.text, branch=request.branch, **request.params)
        # Collected from the start: a message that cannot be stored fails the turn too,
        # and this request answers that error; nobody else would retrieve it.
        self.sessions.watch(turn)
        await turn.accepted()  # acknowledged only once the message is durable
        _answer_started(self, turn)


def _started(handler: CMHandler, turn: Turn) -> None:
    # 202 at once: the reply's progress comes as signals on the events stream.
    handler.sessions.watch(turn)
    _answer_started(handler, turn)


def _answer_started(handler: CMHandler, turn: Turn) -> None:
    handler.reply(TurnStarted(turn_id=turn.id, branch=turn.branch), status=202)


class MessageHandler(CMHandler):
    """One message."""

    @operation("One message", response=Message)
    async def get(self, context_id: str, message_id: str) -> None:
        session = await self.session(context_id)

        # Reads the message's file: on a worker thread, not the event loop.
        def read() -> Message:
            return as_streamed(session, session.get(message_id))

        self.reply(await self.blocking(session, read))


class EditHandler(CMHandler):
    """Edit an earlier user message."""

    @operation(
        "Replace a user message on a new branch and start the reply",
        status=202,
        response=TurnStarted,
        body=EditMessage,
        errors=_TURN_ERRORS,
    )
    async def post(self, context_id: str, message_id: str) -> None:
        session = await self.session(context_id)
        request = self.body(EditMessage)
        # Stores the new branch, the edited message and the switch before the reply
        # starts (each may wait for another process's lock): on a worker thread, not
        # the event loop. The turn still runs on the session's loop.
        turn = await self.blocking(
            session, session.edit, message_id, request.text, branch=request.branch, **request.params
        )
        _started(self, turn)


class RegenerateHandler(CMHandler):
    """A new reply to the last prompt."""

    @operation(
        "A new reply to the branch's last prompt (a sibling of the old one)",
        status=202,
        response=TurnStarted,
        body=Regenerate,
        errors=_TURN_ERRORS,
    )
    async def post(self, context_id: str) -> None:
        session = await self.session(context_id)
        request = self.body(Regenerate)
        # Reads the branch and moves its head back to the prompt before the reply
        # starts: on a worker thread, not the event loop (as for an edit).
        turn = await self.blocking(
            session, session.regenerate, branch=request.branch, **request.params
        )
        _started(self, turn)


class RetryHandler(CMHandler):
    """The failed reply asked again."""

    @operation(
        "Ask again for the branch's reply that failed for good (a missing key, an unknown "
        "model), as it was asked: its parameters, the branch's provider",
        status=202,
        response=TurnStarted,
        body=Retry,
        errors=_TURN_ERRORS,
    )
    async def post(self, context_id: str) -> None:
        session = await self.session(context_id)
        request = self.body(Retry)
        # Reads the branch and moves its head back to the prompt: off the event loop.
        turn = await self.blocking(session, session.retry, branch=request.branch)
        _started(self, turn)


class StopHandler(CMHandler):
    """Stop a reply."""

    @operation(
        "Stop the reply being generated on a branch, here or in a kernel (its text is kept)",
        status=202,
        response=TurnStarted,
        body=Stop,
        errors=_TURN_ERRORS,
    )
    async def post(self, context_id: str) -> None:
        session = await self.session(context_id)
        request = self.body(Stop)
        branch = request.branch if request.branch is not None else session.active_branch
        branch = validate_branch_name(branch)  # "../.." is malformed (400), not unknown
        if branch not in session.branch_names:
            raise BranchNotFoundError(f"there is no branch {branch!r} in context {context_id!r}")
        # Also a reply that another process (a kernel) generates: it is asked to stop.
        turn_id = session.stop(branch)
        if turn_id is None:
            raise StateError(f"no reply is being generated on branch {branch!r}; nothing to stop")
        self.reply(TurnStarted(turn_id=turn_id, branch=branch), status=202)
